"""The ``--device`` option of every command: one parser, one set of errors."""

from __future__ import annotations

import torch

from medlens.errors import MedlensError

_CHOICES = "auto, cpu, cuda or cuda:N"


def torch_device(name: str) -> torch.device:
    """The torch device for ``--device NAME``: ``auto`` (CUDA where there is one, else the
    CPU), ``cpu``, ``cuda`` or ``cuda:N``; a user error for anything else, or for CUDA on a
    machine without it.

    Example:
        >>> torch_device("cpu")
        device(type='cpu')
        >>> try:
        ...     torch_device("gpu")
        ... except MedlensError as error:
        ...     print(error)
        unknown device 'gpu'; use auto, cpu, cuda or cuda:N
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MedlensError(f"unknown device '{name}'", hint=f"use {_CHOICES}") from None
    if device.type not in ("cpu", "cuda"):
        raise MedlensError(f"unsupported device '{name}'", hint=f"use {_CHOICES}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise MedlensError(
                f"--device {name} but no CUDA device is available", hint="use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MedlensError(
                f"--device {name} but this machine has {torch.cuda.device_count()} CUDA device(s)",
                hint="count from cuda:0",
            )
    return device
