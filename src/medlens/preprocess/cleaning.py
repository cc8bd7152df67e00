"""Cleaning: NaN/inf repair, outlier clipping, corrupt-slice repair, CT background removal."""

from __future__ import annotations

import dataclasses

import numpy as np

from medlens.errors import MedlensError
from medlens.image import Image
from medlens.preprocess.base import (
    Transform,
    check_choice,
    check_percentiles,
    check_positive,
    float_array,
    register,
)


@register("repair_nonfinite")
@dataclasses.dataclass(kw_only=True)
class RepairNonFinite(Transform):
    """Replace NaN voxels and clamp +/-inf to the finite range.

    Args:
        fill: value for NaN: ``"minimum"`` (finite minimum, i.e. background), ``"median"``,
            ``"zero"``.

    Example:
        >>> image = Image(np.array([np.nan, 1.0, np.inf, -np.inf]).reshape(1, 4, 1, 1))
        >>> RepairNonFinite()(image).numpy().ravel().tolist()
        [1.0, 1.0, 1.0, 1.0]
    """

    fill: str = "minimum"

    def __post_init__(self) -> None:
        check_choice(self.fill, "fill", ("minimum", "median", "zero"))

    def apply(self, image: Image) -> Image:
        values = image.numpy()
        if values.dtype.kind != "f" or np.isfinite(values).all():
            return image.with_array(image.array)
        out = values.copy()
        for data in out:
            finite = data[np.isfinite(data)]
            if finite.size == 0:
                data[...] = 0.0
                continue
            fill = {"minimum": finite.min(), "median": np.median(finite), "zero": 0.0}[self.fill]
            data[np.isnan(data)] = fill
            data[np.isposinf(data)] = finite.max()
            data[np.isneginf(data)] = finite.min()
        return image.with_array(out)


@register("clip_percentiles")
@dataclasses.dataclass(kw_only=True)
class ClipPercentiles(Transform):
    """Clip outliers to the ``low``..``high`` percentiles (per channel); dtype kept."""

    low: float = 0.5
    high: float = 99.5

    def __post_init__(self) -> None:
        check_percentiles(self.low, self.high)

    def apply(self, image: Image) -> Image:
        values = image.numpy()
        out = np.empty_like(values)
        for channel, data in enumerate(values):
            low, high = np.percentile(data, [self.low, self.high])
            out[channel] = np.clip(data, low, high)
        return image.with_array(out)


def slice_defects(values: np.ndarray, *, jump_factor: float = 8.0) -> dict[str, list[int]]:
    """Indices (along the last axis) of blank, duplicated and intensity-jump slices."""
    k = values.shape[-1]
    flat = values.reshape(-1, k).astype(np.float64)
    means = flat.mean(axis=0)
    stds = flat.std(axis=0)
    overall_std = float(flat.std()) or 1.0
    blank = [z for z in range(k) if stds[z] <= 1e-6 * overall_std]
    duplicated = [
        z for z in range(1, k) if z not in blank and np.array_equal(flat[:, z], flat[:, z - 1])
    ]
    jumps: list[int] = []
    good = [z for z in range(k) if z not in blank and z not in duplicated]
    if len(good) >= 5:
        # a slice whose mean jumps away from BOTH nearest good neighbours, in the same
        # direction, by far more than the typical (median) slice-to-slice change; its
        # neighbours differ from it only on one side, so they are not flagged
        steps = np.abs(np.diff(means[good]))
        scale = max(float(np.median(steps)), 1e-3 * overall_std)
        for position in range(1, len(good) - 1):
            z, before, after = good[position], good[position - 1], good[position + 1]
            down, up = means[z] - means[before], means[z] - means[after]
            if np.sign(down) == np.sign(up) and min(abs(down), abs(up)) > jump_factor * scale:
                jumps.append(int(z))
    return {"blank": blank, "duplicated": duplicated, "intensity_jump": jumps}


@register("repair_corrupt_slices")
@dataclasses.dataclass(kw_only=True)
class RepairCorruptSlices(Transform):
    """Find blank, duplicated and intensity-jump slices along k; replace them by interpolation.

    A bad slice is replaced by the linear interpolation of the nearest good slices on each
    side (or copied from the one side that exists). What was found is stored in
    ``metadata["corrupt_slices"]`` (and in the provenance entry's ``seconds`` neighbour).

    Args:
        jump_factor: a slice is an intensity jump when its mean differs from its neighbours'
            by more than ``jump_factor`` x the median slice-to-slice change.
    """

    jump_factor: float = 8.0

    def __post_init__(self) -> None:
        check_positive(self.jump_factor, "jump_factor")

    def apply(self, image: Image) -> Image:
        values = float_array(image)
        if image.spatial_shape[2] < 3:
            return image.with_array(image.array)
        defects = slice_defects(values, jump_factor=self.jump_factor)
        bad = sorted(
            set(defects["blank"]) | set(defects["duplicated"]) | set(defects["intensity_jump"])
        )
        out = values.copy() if bad else values
        good = [z for z in range(values.shape[-1]) if z not in bad]
        if bad and not good:
            raise MedlensError("every slice looks corrupt", path=image.metadata.get("path"))
        for z in bad:
            below = [g for g in good if g < z]
            above = [g for g in good if g > z]
            if below and above:
                a, b = below[-1], above[0]
                weight = (z - a) / (b - a)
                out[..., z] = (1 - weight) * values[..., a] + weight * values[..., b]
            else:
                out[..., z] = values[..., (below or above)[-1 if below else 0]]
        result = image.with_array(out.astype(values.dtype, copy=False))
        result.metadata["corrupt_slices"] = defects
        return result


@register("remove_background")
@dataclasses.dataclass(kw_only=True)
class RemoveBackground(Transform):
    """Remove the CT table and everything outside the body: set it to ``fill_value``.

    The body mask is the largest 3D connected component above ``threshold_hu`` after an
    in-plane morphological opening (which cuts the thin table off the body; OpenCV, slice by
    slice), holes filled slice by slice (lungs and bowel gas stay inside).

    Args:
        threshold_hu: body / air threshold (HU).
        opening_mm: radius of the opening that detaches the table (mm).
        fill_value: value outside the body (HU; air).
    """

    threshold_hu: float = -500.0
    opening_mm: float = 3.0
    fill_value: float = -1024.0

    def __post_init__(self) -> None:
        check_positive(self.opening_mm, "opening_mm", allow_zero=True)

    def body_mask(self, image: Image) -> np.ndarray:
        """``(I, J, K)`` bool body mask (slices along k are axial for axial CT)."""
        import cv2
        import SimpleITK as sitk

        values = image.numpy()[0]
        mask = (values > self.threshold_hu).astype(np.uint8)
        # opening slice by slice (OpenCV, fast): the table is thin in-plane
        radius = np.round(self.opening_mm / image.spacing_mm[:2]).astype(int)
        if radius.max() > 0:
            kernel = cv2.getStructuringElement(
                cv2.MORPH_ELLIPSE, (2 * int(radius[1]) + 1, 2 * int(radius[0]) + 1)
            )
            for z in range(mask.shape[2]):
                mask[:, :, z] = cv2.morphologyEx(
                    np.ascontiguousarray(mask[:, :, z]), cv2.MORPH_OPEN, kernel
                )
        # largest 3D connected component (SimpleITK, multi-threaded); .T hands SimpleITK the
        # C-ordered view of the Fortran-ordered mask (no transposing copy)
        components = sitk.RelabelComponent(
            sitk.ConnectedComponent(sitk.GetImageFromArray(mask.T)), sortByObjectSize=True
        )
        body = (sitk.GetArrayViewFromImage(components) == 1).T.astype(np.uint8)
        # fill holes per slice: flood the outside from the border, the rest is body
        height, width = body.shape[:2]
        for z in range(body.shape[2]):
            padded = np.zeros((height + 2, width + 2), np.uint8)
            padded[1:-1, 1:-1] = body[:, :, z]
            flood_mask = np.zeros((height + 4, width + 4), np.uint8)
            cv2.floodFill(padded, flood_mask, (0, 0), 2)
            body[:, :, z] = padded[1:-1, 1:-1] != 2
        return body.astype(bool)

    def apply(self, image: Image) -> Image:
        image.require_3d_single_channel(source="remove_background")
        mask = self.body_mask(image)
        values = image.numpy()
        # one pass (boolean-mask assignment is several times slower on large volumes)
        out = np.where(mask[None], values, np.asarray(self.fill_value, dtype=values.dtype))
        return image.with_array(out)
