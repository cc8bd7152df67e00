"""Enhancement: CLAHE (2D and 3D), gamma, histogram equalisation, unsharp mask."""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from medlens.image import Image
from medlens.preprocess.base import Transform, check_positive, float_array, register


def _unit_range(data: np.ndarray) -> tuple[np.ndarray, float, float]:
    low, high = float(data.min()), float(data.max())
    span = high - low if high > low else 1.0
    return (data - low) / span, low, span


@register("clahe")
@dataclasses.dataclass(kw_only=True)
class CLAHE(Transform):
    """Contrast-limited adaptive histogram equalisation (scikit-image, 2D and 3D).

    Args:
        clip_limit: in (0, 1]; higher = more contrast.
        kernel_fraction: tile size as a fraction of each axis (default 1/8).

    Output float32 in [0, 1] (each channel scaled from its own min..max first).
    """

    clip_limit: float = 0.01
    kernel_fraction: float = 0.125

    def __post_init__(self) -> None:
        check_positive(self.clip_limit, "clahe clip_limit")
        check_positive(self.kernel_fraction, "clahe kernel_fraction")

    def apply(self, image: Image) -> Image:
        from skimage.exposure import equalize_adapthist

        channels = []
        for data in float_array(image):
            squeezed = data[..., 0] if data.shape[-1] == 1 else data
            unit, _, _ = _unit_range(squeezed)
            kernel = tuple(max(2, int(round(s * self.kernel_fraction))) for s in unit.shape)
            out = equalize_adapthist(unit, kernel_size=kernel, clip_limit=self.clip_limit)
            channels.append(out.reshape(data.shape).astype(np.float32))
        return image.with_array(np.stack(channels))


@register("gamma")
@dataclasses.dataclass(kw_only=True)
class Gamma(Transform):
    """``x -> low + span * ((x - low) / span) ** gamma`` on each channel's min..max range."""

    gamma: float = 1.0

    def __post_init__(self) -> None:
        check_positive(self.gamma, "gamma")

    def apply(self, image: Image) -> Image:
        channels = []
        for data in float_array(image):
            unit, low, span = _unit_range(data)
            channels.append((low + span * unit**self.gamma).astype(np.float32))
        return image.with_array(np.stack(channels))


@register("histogram_equalize")
@dataclasses.dataclass(kw_only=True)
class HistogramEqualize(Transform):
    """Global histogram equalisation (scikit-image); output float32 in [0, 1]."""

    bins: int = 256

    def __post_init__(self) -> None:
        check_positive(self.bins, "bins")

    def apply(self, image: Image) -> Image:
        from skimage.exposure import equalize_hist

        out = np.stack(
            [
                equalize_hist(d[..., 0] if d.shape[-1] == 1 else d, nbins=int(self.bins)).reshape(
                    d.shape
                )
                for d in float_array(image)
            ]
        )
        return image.with_array(out.astype(np.float32))


@register("unsharp_mask")
@dataclasses.dataclass(kw_only=True)
class UnsharpMask(Transform):
    """Sharpen: ``x + amount * (x - gaussian(x, sigma_mm))``; output float32, same units."""

    sigma_mm: float = 1.0
    amount: float = 1.0

    def __post_init__(self) -> None:
        check_positive(self.sigma_mm, "unsharp sigma_mm")
        check_positive(self.amount, "unsharp amount", allow_zero=True)

    def apply(self, image: Image) -> Image:
        sigma = tuple(
            0.0 if s == 1 else self.sigma_mm / sp
            for s, sp in zip(image.spatial_shape, image.spacing_mm, strict=True)
        )
        values = float_array(image)
        out = np.stack(
            [
                d + self.amount * (d - ndimage.gaussian_filter(d, sigma, mode="nearest"))
                for d in values
            ]
        )
        return image.with_array(out.astype(np.float32))
