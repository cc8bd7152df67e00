"""Exponential moving average of a network's weights, for validating and shipping.

Both trainers (``medlens train seg`` and ``medlens train detect``) use it behind
``--ema-decay``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def moving_average(
    network: torch.nn.Module, *, decay: float, state: dict[str, Any] | None = None
) -> AveragedModel:
    """An EMA copy of ``network``; ``state`` is a saved ``AveragedModel.state_dict()``.

    BatchNorm statistics are averaged too (``use_buffers``), so ``.module`` is usable as is.
    Call ``update_parameters(network)`` after each optimizer step.

    >>> average = moving_average(torch.nn.Linear(2, 1), decay=0.9)
    >>> int(average.n_averaged)
    0
    """
    average = AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    if state is not None:
        average.load_state_dict(state)
    return average
