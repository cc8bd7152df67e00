"""The transform base class, the name registry and shared parameter checks.

Every deterministic preprocessing step is a small keyword-only dataclass deriving from
:class:`Transform`. Calling it on an :class:`~medlens.image.Image` returns a new image (the
input is never modified) with the geometry updated whenever voxels move, and one entry
appended to ``metadata["provenance"]`` saying what was done with which parameters.

Label maps (images with ``labels`` set, or passed as ``label=`` to a pipeline) go through
:meth:`Transform.apply_label`: geometric steps move them with nearest-neighbour (or one-hot
linear) interpolation, intensity steps leave them untouched.

Numpy arrays are processed with SimpleITK/OpenCV/scikit-image/numpy; torch tensors (CPU or
CUDA) with the torch implementations in :mod:`medlens.preprocess.torch_ops` where a step has
one (resampling, Gaussian/median filtering, normalisation), so ``image.to_device`` style use
keeps data on the GPU.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch

from medlens.errors import MedlensError
from medlens.image import Image

#: name -> transform class, filled by :func:`register`.
REGISTRY: dict[str, type[Transform]] = {}


def register(name: str) -> Callable[[type[Transform]], type[Transform]]:
    """Class decorator: make a transform loadable from pipeline YAML under ``name``."""

    def decorate(cls: type[Transform]) -> type[Transform]:
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return decorate


@dataclasses.dataclass(kw_only=True)
class Transform:
    """Base of all deterministic transforms: ``image = transform(image)``."""

    name: ClassVar[str] = "transform"
    #: True if voxels move (labels must follow); False for intensity-only steps.
    geometric: ClassVar[bool] = False

    def __call__(self, image: Image) -> Image:
        started = time.perf_counter()
        result = self.apply_label(image) if image.labels is not None else self.apply(image)
        return record(same_kind(result, image), self, seconds=time.perf_counter() - started)

    def apply(self, image: Image) -> Image:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply_label(self, label: Image) -> Image:
        """Label maps: unchanged by intensity steps (geometric steps override this)."""
        if self.geometric:  # pragma: no cover - every geometric transform overrides
            raise NotImplementedError(f"{self.name} does not handle label maps")
        return label

    def apply_pair(self, image: Image, label: Image) -> tuple[Image, Image]:
        """Image and its label map together (crop-to-foreground overrides: one box)."""
        return self(image), self.labelled(label)

    def labelled(self, label: Image) -> Image:
        started = time.perf_counter()
        result = same_kind(self.apply_label(label), label)
        return record(result, self, seconds=time.perf_counter() - started)

    def parameters(self) -> dict[str, Any]:
        """Options as plain YAML-able values."""
        values = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, tuple):
                value = list(value)
            if isinstance(value, np.generic):
                value = value.item()
            values[field.name] = value
        return values

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.parameters()}


def same_kind(result: Image, source: Image) -> Image:
    """Tensors in, tensors out (on the same device): steps that only have a numpy
    implementation (SimpleITK, OpenCV, scikit-image) hand their result back as a tensor."""
    if isinstance(source.array, torch.Tensor) and isinstance(result.array, np.ndarray):
        values = np.ascontiguousarray(result.array)
        return result.with_array(torch.from_numpy(values).to(source.array.device))
    return result


def record(image: Image, transform: Transform, *, seconds: float) -> Image:
    """Append a provenance entry (a fresh list: the input image's history is untouched)."""
    image = image.with_array(image.array)  # never touch the caller's image object
    history = list(image.metadata.get("provenance", []))
    history.append(
        {"transform": transform.name, **transform.parameters(), "seconds": round(seconds, 6)}
    )
    image.metadata = {**image.metadata, "provenance": history}
    return image


# --------------------------------------------------------------------------- checks
def check_positive(value: float, name: str, *, allow_zero: bool = False) -> None:
    bad = value < 0 if allow_zero else value <= 0
    if not np.isfinite(value) or bad:
        relation = ">= 0" if allow_zero else "> 0"
        raise MedlensError(f"{name} must be {relation}, got {value}")


def check_choice(value: str, name: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise MedlensError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def check_percentiles(low: float, high: float) -> None:
    if not 0 <= low < high <= 100:
        raise MedlensError(f"percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")


def as_triple(value: float | tuple[float, ...] | list[float], name: str) -> tuple[float, ...]:
    """A scalar or 3 values -> 3 floats (per axis i, j, k)."""
    values = [float(value)] * 3 if np.isscalar(value) else [float(v) for v in value]  # type: ignore[union-attr]
    if len(values) != 3:
        raise MedlensError(f"{name} needs 1 or 3 values, got {value}")
    return tuple(values)


def float_array(image: Image) -> np.ndarray:
    """The voxels as a float32 numpy array (float64 kept)."""
    values = image.numpy()
    if values.dtype in (np.float32, np.float64):
        return values
    return values.astype(np.float32)


def float_tensor(image: Image) -> torch.Tensor:
    values = image.tensor()
    return values if values.is_floating_point() else values.float()


def require_colour(image: Image, name: str) -> None:
    """Colour transforms need 3 channels (RGB)."""
    if image.num_channels != 3:
        raise MedlensError(
            f"{name} is a colour transform and needs an RGB image (3 channels), got "
            f"{image.num_channels} channel(s)",
            path=image.metadata.get("path"),
            hint="use it for endoscopy/dermoscopy photos, not for grey-level scans",
        )
