"""Intensity: CT windows, z-score, percentile scaling, histogram matching.

All return float32 images; label maps pass through unchanged.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from medlens.errors import MedlensError
from medlens.image import Image
from medlens.preprocess import torch_ops
from medlens.preprocess.base import (
    Transform,
    check_choice,
    check_percentiles,
    check_positive,
    float_array,
    register,
)

#: Named CT windows, (level, width) in HU (common radiology presets).
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (40.0, 40.0),
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (40.0, 400.0),
    "liver": (60.0, 150.0),
    "bone": (400.0, 1800.0),
}


@register("ct_window")
@dataclasses.dataclass(kw_only=True)
class CTWindow(Transform):
    """Clip HU to a window and scale it to [0, 1] (or keep HU with ``output="hu"``).

    Args:
        window: a name from :data:`CT_WINDOWS` (brain, subdural, stroke, lung, mediastinum,
            abdomen, liver, bone); or None and give ``level``/``width`` in HU.
        level, width: window centre and width in HU (width > 0).
        output: ``"unit"`` -> [0, 1] float32; ``"hu"`` -> clipped HU float32.

    Example:
        >>> image = Image(np.array([-1000.0, 0.0, 40.0, 1000.0]).reshape(1, 4, 1, 1))
        >>> CTWindow(window="brain")(image).numpy().ravel().tolist()
        [0.0, 0.0, 0.5, 1.0]
    """

    window: str | None = None
    level: float | None = None
    width: float | None = None
    output: str = "unit"

    def __post_init__(self) -> None:
        if self.window is not None:
            if self.window not in CT_WINDOWS:
                raise MedlensError(
                    f"unknown CT window {self.window!r}; valid: {', '.join(CT_WINDOWS)}",
                    hint="or give level and width in HU",
                )
            if self.level is None and self.width is None:
                self.level, self.width = CT_WINDOWS[self.window]
        if self.level is None or self.width is None:
            raise MedlensError("ct_window needs a window name or both level and width (HU)")
        check_positive(float(self.width), "ct_window width")
        check_choice(self.output, "output", ("unit", "hu"))

    def apply(self, image: Image) -> Image:
        low = float(self.level) - float(self.width) / 2
        high = float(self.level) + float(self.width) / 2
        if isinstance(image.array, torch.Tensor):
            values = image.array.float().clamp(low, high)
        else:
            values = np.clip(float_array(image), low, high).astype(np.float32)
        if self.output == "unit":
            values = (values - low) / (high - low)
        return image.with_array(values)


#: from this many voxels on, numpy arrays are normalised with torch (multi-threaded)
_TORCH_MIN_VOXELS = 2_000_000


def _foreground(values, threshold: float | None):
    return values > (values.min() if threshold is None else threshold)


@register("z_score")
@dataclasses.dataclass(kw_only=True)
class ZScore(Transform):
    """``(x - mean) / std`` per channel; statistics over all voxels or the foreground.

    Args:
        foreground_only: compute mean/std inside the foreground (voxels above
            ``threshold``; default threshold = image minimum, e.g. the zero background of
            skull-stripped MRI). All voxels are normalised either way.
        threshold: foreground threshold (image units).
        label_mask: in a pipeline run with ``label=``, compute the statistics inside the
            label map's foreground (``label > 0``) instead (e.g. an organ or brain mask).

    Output float32, mean 0 and std 1 over the chosen voxels. Torch tensors use
    :func:`~medlens.preprocess.torch_ops.z_score` (same result to ~1e-5).
    """

    foreground_only: bool = False
    threshold: float | None = None
    label_mask: bool = False

    def apply_pair(self, image: Image, label: Image) -> tuple[Image, Image]:
        if not self.label_mask:
            return super().apply_pair(image, label)
        if not image.same_grid(label):
            raise MedlensError(
                "z_score label_mask needs the label on the image grid",
                path=label.metadata.get("path"),
            )
        from medlens.preprocess.base import record, same_kind

        mask = np.asarray(label.numpy()[0] > 0)
        if not mask.any():
            raise MedlensError(
                "z_score label_mask: the label map is empty", path=label.metadata.get("path")
            )
        values = float_array(image)
        out = np.empty(values.shape, np.float32)
        for channel, data in enumerate(values):
            selected = data[mask]
            mean, std = selected.mean(dtype=np.float64), selected.std(dtype=np.float64)
            out[channel] = (data - mean) / (std if std > 0 else 1.0)
        result = same_kind(image.with_array(out), image)
        return record(result, self, seconds=0.0), self.labelled(label)

    def apply(self, image: Image) -> Image:
        if isinstance(image.array, torch.Tensor):
            mask = None
            if self.foreground_only:
                mask = _foreground(image.array, self.threshold).any(dim=0, keepdim=True)
            return image.with_array(torch_ops.z_score(image.array, mask))
        values = float_array(image)
        mask = _foreground(values, self.threshold).any(axis=0) if self.foreground_only else None
        if values.size < _TORCH_MIN_VOXELS:
            # small images: numpy (float64 statistics); torch's thread start-up would dominate
            out = np.empty(values.shape, np.float32)
            for channel, data in enumerate(values):
                selected = data[mask] if mask is not None else data
                mean, std = selected.mean(dtype=np.float64), selected.std(dtype=np.float64)
                out[channel] = (data - mean) / (std if std > 0 else 1.0)
            return image.with_array(out)
        if any(stride < 0 for stride in values.strides):
            values = np.ascontiguousarray(values)
        # large images: the torch implementation on the numpy memory (no copy): multi-threaded
        # reductions, no float64 temporaries
        tensor = torch.from_numpy(values)
        torch_mask = None if mask is None else torch.from_numpy(mask)[None]
        out = torch_ops.z_score(tensor, torch_mask).numpy()
        return image.with_array(out)


@register("percentile_scale")
@dataclasses.dataclass(kw_only=True)
class PercentileScale(Transform):
    """Map the ``low``..``high`` percentiles to ``out_min``..``out_max`` (per channel).

    Args:
        low, high: percentiles in [0, 100].
        out_min, out_max: output range.
        clip: clip the result to the output range.
    """

    low: float = 0.5
    high: float = 99.5
    out_min: float = 0.0
    out_max: float = 1.0
    clip: bool = True

    def __post_init__(self) -> None:
        check_percentiles(self.low, self.high)
        if self.out_max <= self.out_min:
            raise MedlensError(f"out_max must exceed out_min, got {self.out_min}..{self.out_max}")

    def apply(self, image: Image) -> Image:
        values = float_array(image)
        out = np.empty(values.shape, np.float32)
        for channel, data in enumerate(values):
            low, high = np.percentile(data, [self.low, self.high])
            span = high - low if high > low else 1.0
            scaled = (data - low) / span * (self.out_max - self.out_min) + self.out_min
            out[channel] = np.clip(scaled, self.out_min, self.out_max) if self.clip else scaled
        return image.with_array(out)


@register("histogram_match")
@dataclasses.dataclass(kw_only=True)
class HistogramMatch(Transform):
    """Match the intensity histogram to a reference image (SimpleITK HistogramMatching).

    Args:
        reference: path of the reference image (any format medlens reads).
        bins: histogram levels; match_points: quantiles matched.
        threshold_at_mean: ignore voxels below the mean (background) in both images.
    """

    reference: str = ""
    bins: int = 256
    match_points: int = 7
    threshold_at_mean: bool = True

    def __post_init__(self) -> None:
        if not self.reference:
            raise MedlensError("histogram_match needs a reference image path")
        if self.bins < 2 or self.match_points < 1:
            raise MedlensError("histogram_match needs bins >= 2 and match_points >= 1")
        self._reference_values: np.ndarray | None = None

    def reference_values(self) -> np.ndarray:
        if self._reference_values is None:
            from medlens.io import read_image

            path = Path(self.reference)
            self._reference_values = float_array(read_image(path))[0]
        return self._reference_values

    def parameters(self):  # the cached reference is not a parameter
        values = super().parameters()
        values.pop("_reference_values", None)
        return values

    def apply(self, image: Image) -> Image:
        reference = sitk.GetImageFromArray(self.reference_values().astype(np.float32))
        channels = []
        for data in float_array(image):
            source = sitk.GetImageFromArray(np.ascontiguousarray(data, dtype=np.float32))
            matched = sitk.HistogramMatching(
                source,
                reference,
                numberOfHistogramLevels=self.bins,
                numberOfMatchPoints=self.match_points,
                thresholdAtMeanIntensity=self.threshold_at_mean,
            )
            channels.append(sitk.GetArrayFromImage(matched))
        return image.with_array(np.stack(channels).astype(np.float32))
