"""Geometry: resample to a spacing, reorient, crop to foreground, pad/crop to a size.

Every step updates ``spacing_mm``, ``origin_mm`` and ``direction`` so that each voxel keeps
its world position (a labelled point stays on the same anatomy).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import SimpleITK as sitk
import torch

from medlens.errors import MedlensError, MedlensWarning
from medlens.image import Image
from medlens.preprocess import torch_ops
from medlens.preprocess.base import (
    Transform,
    as_triple,
    check_choice,
    check_positive,
    register,
)

_SITK_INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline,
    "nearest": sitk.sitkNearestNeighbor,
}


def to_sitk(values: np.ndarray, image: Image) -> sitk.Image:
    """One ``(I, J, K)`` channel as a SimpleITK image with the image's geometry."""
    result = sitk.GetImageFromArray(np.ascontiguousarray(values.transpose(2, 1, 0)))
    result.SetSpacing(image.spacing_mm.tolist())
    result.SetOrigin(image.origin_mm.tolist())
    result.SetDirection(image.direction.flatten().tolist())
    return result


def from_sitk(result: sitk.Image) -> np.ndarray:
    """A SimpleITK image back to an ``(I, J, K)`` array (a copy: a view would dangle once
    the SimpleITK image is freed)."""
    return sitk.GetArrayFromImage(result).transpose()  # (K, J, I) -> (I, J, K); 2D too


@register("resample")
@dataclasses.dataclass(kw_only=True)
class Resample(Transform):
    """Resample to a target voxel spacing (mm), same origin, direction and field of view.

    Args:
        spacing_mm: target spacing, one value or (i, j, k). Axes of size 1 (2D) are kept.
        interpolation: images: ``"linear"`` or ``"bspline"`` (cubic B-spline, SimpleITK).
        label_interpolation: label maps: ``"nearest"`` or ``"one_hot_linear"`` (each class
            resampled linearly, then arg-max: thin structures survive downsampling).

    Output: float32 image (labels keep their dtype and classes). New shape is
    ``round(shape * spacing / spacing_mm)``. Numpy arrays go through SimpleITK; torch
    tensors (CPU/CUDA) through :func:`~medlens.preprocess.torch_ops.resample_linear`
    (B-spline on tensors falls back to SimpleITK on the CPU).

    Example:
        >>> image = Image(np.zeros((1, 10, 10, 4), np.float32), spacing_mm=(1, 1, 3))
        >>> Resample(spacing_mm=2)(image).spatial_shape
        (5, 5, 6)
    """

    spacing_mm: float | tuple[float, float, float] = 1.0
    interpolation: str = "linear"
    label_interpolation: str = "nearest"
    geometric = True

    def __post_init__(self) -> None:
        spacing = as_triple(self.spacing_mm, "spacing_mm")
        for value in spacing:
            check_positive(value, "resample spacing_mm")
        self.spacing_mm = spacing
        check_choice(self.interpolation, "interpolation", ("linear", "bspline"))
        check_choice(self.label_interpolation, "label_interpolation", ("nearest", "one_hot_linear"))

    def target(self, image: Image) -> tuple[tuple[float, ...], tuple[int, int, int]]:
        spacing = tuple(
            float(old) if size == 1 else new
            for old, new, size in zip(
                image.spacing_mm, self.spacing_mm, image.spatial_shape, strict=True
            )
        )
        old = tuple(float(v) for v in image.spacing_mm)
        return spacing, torch_ops.output_shape(image.spatial_shape, old, spacing)

    def _unchanged(self, image: Image) -> bool:
        spacing, shape = self.target(image)
        return shape == image.spatial_shape and np.allclose(spacing, image.spacing_mm)

    def apply(self, image: Image) -> Image:
        if self._unchanged(image):
            return image.with_array(image.array)
        spacing, shape = self.target(image)
        if isinstance(image.array, torch.Tensor) and self.interpolation == "linear":
            values = torch_ops.resample_linear(image.array, tuple(image.spacing_mm), spacing, shape)
            return image.with_array(values, spacing_mm=np.array(spacing))
        if isinstance(image.array, torch.Tensor):
            device = image.array.device
            result = self._sitk(image.with_array(image.numpy()), spacing, shape, "bspline")
            return result.with_array(torch.from_numpy(result.numpy()).to(device))
        return self._sitk(image, spacing, shape, self.interpolation)

    def apply_label(self, label: Image) -> Image:
        if self._unchanged(label):
            return label.with_array(label.array)
        spacing, shape = self.target(label)
        if self.label_interpolation == "nearest":
            if isinstance(label.array, torch.Tensor):
                values = torch_ops.resample_nearest(
                    label.array, tuple(label.spacing_mm), spacing, shape
                )
                return label.with_array(values, spacing_mm=np.array(spacing))
            return self._sitk(label, spacing, shape, "nearest")
        return self._one_hot_linear(label, spacing, shape)

    def _sitk(
        self, image: Image, spacing: tuple[float, ...], shape: tuple[int, ...], method: str
    ) -> Image:
        values = image.numpy()
        keep_dtype = method == "nearest"
        channels = []
        for channel in values:
            # SimpleITK interpolates in double and writes float32 directly: no float copy of
            # the (possibly int16) input is needed
            source = to_sitk(channel, image)
            resampled = sitk.Resample(
                source,
                [int(s) for s in shape],
                sitk.Transform(),
                _SITK_INTERPOLATORS[method],
                image.origin_mm.tolist(),
                list(spacing),
                image.direction.flatten().tolist(),
                0,
                source.GetPixelID() if keep_dtype else sitk.sitkFloat32,
            )
            channels.append(from_sitk(resampled))
        array = np.stack(channels) if len(channels) > 1 else channels[0][None]
        return image.with_array(array, spacing_mm=np.array(spacing))

    def _one_hot_linear(
        self, label: Image, spacing: tuple[float, ...], shape: tuple[int, ...]
    ) -> Image:
        is_tensor = isinstance(label.array, torch.Tensor)
        values = label.tensor()
        classes = torch.unique(values).tolist()
        best_score = None
        best_class = None
        for value in classes:
            one_hot = (values == value).float()
            score = torch_ops.resample_linear(one_hot, tuple(label.spacing_mm), spacing, shape)
            if best_score is None:
                best_score = score
                best_class = torch.full_like(score, value, dtype=values.dtype)
            else:
                better = score > best_score
                best_score = torch.where(better, score, best_score)
                best_class = torch.where(
                    better, torch.as_tensor(value, dtype=values.dtype), best_class
                )
        array = best_class if is_tensor else best_class.cpu().numpy()
        return label.with_array(array, spacing_mm=np.array(spacing))


@register("reorient")
@dataclasses.dataclass(kw_only=True)
class Reorient(Transform):
    """Permute and flip axes so they point as ``orientation`` says (no interpolation).

    Letters name where each axis points (ITK/nibabel convention): ``"RAS"`` = i to the
    Right, j Anterior, k Superior (nibabel canonical); ``"LPS"`` = DICOM/ITK identity.

    Example:
        >>> image = Image(np.zeros((1, 2, 3, 4)), direction=np.diag([-1.0, -1.0, 1.0]))
        >>> Reorient(orientation="LPS")(image).orientation_code()
        'LPS'
    """

    orientation: str = "RAS"
    geometric = True

    def __post_init__(self) -> None:
        code = self.orientation.upper()
        pairs = ({"L", "R"}, {"P", "A"}, {"S", "I"})
        if len(code) != 3 or sorted(
            next(i for i, pair in enumerate(pairs) if letter in pair)
            if any(letter in pair for pair in pairs)
            else -1
            for letter in code
        ) != [0, 1, 2]:
            raise MedlensError(
                f"orientation must be 3 letters, one of each pair L/R, P/A, S/I (e.g. RAS, "
                f"LPS), got {self.orientation!r}"
            )
        self.orientation = code

    def plan(self, image: Image) -> tuple[list[int], list[bool]]:
        """For each new axis: the old axis it comes from and whether it is flipped."""
        letters = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}
        world_axis_of = [int(np.argmax(np.abs(image.direction[:, a]))) for a in range(3)]
        if sorted(world_axis_of) != [0, 1, 2]:
            raise MedlensError(
                "image axes are too oblique to reorient by permutation (two axes closest to the "
                "same world axis)",
                path=image.metadata.get("path"),
                hint="resample onto an axis-aligned grid first",
            )
        permutation, flips = [], []
        for letter in self.orientation:
            world_axis, sign = letters[letter]
            old_axis = world_axis_of.index(world_axis)
            permutation.append(old_axis)
            flips.append(bool(np.sign(image.direction[world_axis, old_axis]) != sign))
        return permutation, flips

    def apply(self, image: Image) -> Image:
        permutation, flips = self.plan(image)
        if permutation == [0, 1, 2] and not any(flips):
            return image.with_array(image.array)
        shape = image.spatial_shape
        # origin = world position of the old voxel that becomes index (0, 0, 0)
        corner = np.zeros(3)
        for old_axis, flip in zip(permutation, flips, strict=True):
            if flip:
                corner[old_axis] = shape[old_axis] - 1
        origin = image.index_to_world(corner)
        direction = np.stack(
            [
                image.direction[:, old] * (-1.0 if flip else 1.0)
                for old, flip in zip(permutation, flips, strict=True)
            ],
            axis=1,
        )
        spacing = image.spacing_mm[permutation]
        axes = [0] + [1 + a for a in permutation]
        flip_axes = [1 + new for new, flip in enumerate(flips) if flip]
        if isinstance(image.array, torch.Tensor):
            values = image.array.permute(*axes)
            values = torch.flip(values, flip_axes) if flip_axes else values
        else:
            values = np.transpose(image.array, axes)
            values = np.flip(values, flip_axes) if flip_axes else values
        return image.with_array(values, spacing_mm=spacing, origin_mm=origin, direction=direction)

    def apply_label(self, label: Image) -> Image:
        return self.apply(label)


def crop(image: Image, start: list[int], stop: list[int]) -> Image:
    """Crop ``[start, stop)`` per axis, origin moved to the new first voxel."""
    values = image.array[:, start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]]
    return image.with_array(values, origin_mm=image.index_to_world(np.array(start, float)))


@register("crop_foreground")
@dataclasses.dataclass(kw_only=True)
class CropForeground(Transform):
    """Crop to the bounding box of voxels brighter than ``threshold`` (plus a margin).

    Args:
        threshold: foreground = any channel ``> threshold``; default (None): above the
            image minimum (i.e. everything that is not the background fill value).
        margin_voxels: voxels kept around the box on every side (clipped to the image).

    With a pipeline ``label=``, the same box crops the label map. An empty foreground
    leaves the image unchanged (with a warning).
    """

    threshold: float | None = None
    margin_voxels: int = 0
    geometric = True

    def __post_init__(self) -> None:
        if self.margin_voxels < 0:
            raise MedlensError(f"margin_voxels must be >= 0, got {self.margin_voxels}")

    def box(self, image: Image) -> tuple[list[int], list[int]] | None:
        values = image.array
        if isinstance(values, torch.Tensor):
            threshold = values.min() if self.threshold is None else self.threshold
            mask = (values > threshold).any(dim=0)
            found = [torch.nonzero(mask.any(dim=d)).flatten() for d in ((1, 2), (0, 2), (0, 1))]
            if any(f.numel() == 0 for f in found):
                return None
            bounds = [(int(f[0]), int(f[-1]) + 1) for f in found]
        else:
            threshold = values.min() if self.threshold is None else self.threshold
            mask = (values > threshold).any(axis=0)
            bounds = []
            for axes in ((1, 2), (0, 2), (0, 1)):
                hits = np.flatnonzero(mask.any(axis=axes))
                if hits.size == 0:
                    return None
                bounds.append((int(hits[0]), int(hits[-1]) + 1))
        shape = image.spatial_shape
        start = [max(0, low - self.margin_voxels) for low, _ in bounds]
        stop = [
            min(size, high + self.margin_voxels)
            for (_, high), size in zip(bounds, shape, strict=True)
        ]
        return start, stop

    def _crop_with(self, image: Image, box: tuple[list[int], list[int]] | None) -> Image:
        if box is None:
            warnings.warn(
                f"{image.metadata.get('path', 'image')}: no foreground above the threshold, "
                "image left uncropped",
                MedlensWarning,
                stacklevel=3,
            )
            return image.with_array(image.array)
        return crop(image, *box)

    def apply(self, image: Image) -> Image:
        return self._crop_with(image, self.box(image))

    def apply_label(self, label: Image) -> Image:
        return self._crop_with(label, CropForeground(threshold=0).box(label))

    def apply_pair(self, image: Image, label: Image) -> tuple[Image, Image]:
        if not image.same_grid(label):
            raise MedlensError(
                "image and label are not on the same voxel grid; crop_foreground needs both "
                "aligned",
                path=label.metadata.get("path"),
            )
        box = self.box(image)
        from medlens.preprocess.base import record

        return (
            record(self._crop_with(image, box), self, seconds=0.0),
            record(self._crop_with(label, box), self, seconds=0.0),
        )


@register("pad_crop")
@dataclasses.dataclass(kw_only=True)
class PadCrop(Transform):
    """Centre pad and/or crop to ``size`` voxels (i, j, k); geometry kept exact.

    Args:
        size: target shape (i, j, k).
        pad_value: value for padded image voxels (labels pad with 0); ``None`` = image minimum.
    """

    size: tuple[int, int, int] = (128, 128, 128)
    pad_value: float | None = None
    geometric = True

    def __post_init__(self) -> None:
        size = tuple(int(v) for v in self.size)
        if len(size) != 3 or min(size) < 1:
            raise MedlensError(f"pad_crop size must be 3 positive integers, got {self.size}")
        self.size = size  # type: ignore[assignment]

    def _apply(self, image: Image, pad_value: float) -> Image:
        shape = image.spatial_shape
        # negative start = padding before; same centre rule as MONAI/TorchIO (extra voxel at end)
        start = [(old - new) // 2 for old, new in zip(shape, self.size, strict=True)]
        values = image.array
        if isinstance(values, torch.Tensor):
            out = torch.full(
                (values.shape[0], *self.size), pad_value, dtype=values.dtype, device=values.device
            )
        else:
            out = np.full((values.shape[0], *self.size), pad_value, dtype=values.dtype)
        src = [
            slice(max(0, s), max(0, s) + min(old - max(0, s), new - max(0, -s)))
            for s, old, new in zip(start, shape, self.size, strict=True)
        ]
        dst = [
            slice(max(0, -s), max(0, -s) + (sl.stop - sl.start))
            for s, sl in zip(start, src, strict=True)
        ]
        out[(slice(None), *dst)] = values[(slice(None), *src)]
        return image.with_array(out, origin_mm=image.index_to_world(np.array(start, float)))

    def apply(self, image: Image) -> Image:
        value = self.pad_value if self.pad_value is not None else float(image.array.min())
        return self._apply(image, value)

    def apply_label(self, label: Image) -> Image:
        return self._apply(label, 0)
