"""Segment images with a trained model: sliding windows, Gaussian blending, mirror TTA.

The network sees the image resampled and normalised as its plan says; the prediction is
taken back to the source grid (resampling undone, padding removed) so that the label map
overlays the input voxel for voxel.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from medlens.image import Image
from medlens.models.segmentation import (
    SegmentationPlan,
    check_input,
    image_to_network_array,
)

#: a network's forward: normalised inputs (N, C, *spatial) -> logits (N, classes, *spatial)
Network = Callable[[torch.Tensor], torch.Tensor]


def _autocast(device: torch.device, enabled: bool) -> Any:
    if not enabled:
        return torch.autocast(device.type, enabled=False)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast("cpu", dtype=torch.bfloat16)


def cpu_bf16_supported() -> bool:
    """True when this CPU runs bfloat16 convolutions natively (AVX512-BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def window_size(
    plan: SegmentationPlan, shape: Sequence[int], *, max_ratio: float = 1.5
) -> list[int]:
    """The sliding window for an image of ``shape`` voxels: the plan's patch, or one window
    over the whole image where that costs at most ``max_ratio`` patches.

    An image a few voxels larger than the patch along one axis would take two overlapping
    patches (twice the work, plus blending); the network is fully convolutional, so one
    window padded up to its size divisor does the job for less. 8 of the first 39
    hippocampus cases are such images (e.g. 36x47x41 against a 40x56x40 patch).

    >>> plan = SegmentationPlan(dims=3, in_channels=1, labels={0: "bg", 1: "fg"},
    ...     patch_size=[40, 56, 40], batch_size=2, spacing_mm=None, normalisation={},
    ...     filters=[8, 16], kernel_size=[[3, 3, 3]] * 2, strides=[[1, 1, 1], [2, 2, 2]])
    >>> window_size(plan, [36, 47, 41]), window_size(plan, [30, 40, 30])
    ([40, 56, 42], [40, 56, 40])
    >>> window_size(plan, [512, 512, 400])
    [40, 56, 40]
    """
    divisor = plan.size_divisor()
    whole = [
        max(p, math.ceil(s / d) * d)
        for s, p, d in zip(shape[: plan.dims], plan.patch_size, divisor, strict=True)
    ]
    if math.prod(whole) <= max_ratio * math.prod(plan.patch_size):
        return whole
    return list(plan.patch_size)


def sliding_window_logits(
    network: Network | Sequence[Network],
    array: torch.Tensor,
    plan: SegmentationPlan,
    *,
    overlap: float = 0.5,
    batch_size: int = 4,
    tta: bool = False,
    amp: bool = False,
) -> torch.Tensor:
    """Softmax probabilities ``(classes, *spatial)`` for a normalised ``(C, *spatial)`` array
    (or ``(N, classes, ...)`` for a batch ``(N, C, ...)`` of same-size images).

    Windows of ``plan.patch_size`` are blended with Gaussian weights (MONAI's
    ``sliding_window_inference``; windows of all batch images share the network batches);
    ``tta`` averages over all mirrorings of the plan's ``test_time_mirror_axes`` (default: its
    ``mirror_axes``). An image that barely exceeds the patch is one window (:func:`window_size`).
    Several networks (an ensemble, e.g. the folds of a cross-validation, trained with one plan)
    each see every window and mirroring; their softmax probabilities are averaged, as nnU-Net
    does with its folds.
    """
    from monai.inferers import sliding_window_inference

    members = list(network) if isinstance(network, Sequence) else [network]
    device = array.device
    batched = array.ndim == plan.dims + 2
    inputs = array if batched else array[None]
    mirrored = plan.test_time_mirror_axes
    if mirrored is None:
        mirrored = plan.trained_mirror_axes()
    axes = [axis + 2 for axis in mirrored]  # only mirrorings the network was trained on
    flips: list[tuple[int, ...]] = [()]
    if tta:
        flips = [
            combo for r in range(1, len(axes) + 1) for combo in itertools.combinations(axes, r)
        ]
        flips.insert(0, ())

    def predictor(patch: torch.Tensor) -> torch.Tensor:
        if patch.ndim == 4:
            patch = patch.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp):
            total = None
            for member, flip in itertools.product(members, flips):
                source = patch.flip(flip) if flip else patch
                out = torch.softmax(member(source).float(), dim=1)
                out = out.flip(flip) if flip else out
                total = out if total is None else total + out
        return total / (len(members) * len(flips))

    with torch.inference_mode():
        probabilities = sliding_window_inference(
            inputs,
            roi_size=window_size(plan, inputs.shape[2:]),
            sw_batch_size=batch_size,
            predictor=predictor,
            overlap=overlap,
            mode="gaussian",
            padding_mode="constant",
            cval=0.0,
        )
    return probabilities if batched else probabilities[0]


def keep_largest_component(label: np.ndarray, values: list[int]) -> np.ndarray:
    """Keep only the largest connected component of each class in ``values`` (in place)."""
    from scipy import ndimage

    for value in values:
        mask = label == value
        if not mask.any():
            continue
        structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
        components, count = ndimage.label(mask, structure=structure)
        if count <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        label[mask & (components != int(np.argmax(sizes)))] = 0
    return label


def class_argmax(probabilities: torch.Tensor) -> torch.Tensor:
    """uint8 index of the largest of ``(classes, *spatial)`` (first one on ties).

    A running maximum over the classes: ``argmax(0)`` over a short leading axis measured
    ~200x slower on this CPU, and its int64 result would cost 8 bytes per voxel.

    Example:
        >>> class_argmax(torch.tensor([[0.2, 0.5], [0.7, 0.5], [0.1, 0.0]])).tolist()
        [1, 0]
    """
    best = probabilities[0].clone()
    label = torch.zeros(probabilities.shape[1:], dtype=torch.uint8)
    for index in range(1, probabilities.shape[0]):
        better = probabilities[index] > best
        label[better] = index
        torch.maximum(best, probabilities[index], out=best)
    return label


def uses_amp(device: torch.device, plan: SegmentationPlan) -> bool:
    # bf16 on CPU pays off for the dense 3D convolutions only (depthwise 2D ones get slower)
    return device.type == "cuda" or (
        device.type == "cpu" and plan.network == "DynUNet" and cpu_bf16_supported()
    )


def _probabilities_to_label(
    probabilities: torch.Tensor,
    image: Image,
    plan: SegmentationPlan,
    *,
    postprocess: bool,
    path: Any,
) -> Image:
    source_shape = image.spatial_shape[: plan.dims]
    if tuple(probabilities.shape[1:]) != tuple(source_shape):
        # back to the source grid: interpolate probabilities, not labels
        mode = "trilinear" if plan.dims == 3 else "bilinear"
        probabilities = torch.nn.functional.interpolate(
            probabilities[None], size=source_shape, mode=mode, align_corners=False
        )[0]
    # in slabs of ~16 M voxels: the running maximum is a float32 copy of one slab, not a volume
    label_tensor = torch.empty(probabilities.shape[1:], dtype=torch.uint8)
    step = max(1, 2**24 // max(1, int(np.prod(probabilities.shape[1:-1]))))
    for start in range(0, probabilities.shape[-1], step):
        label_tensor[..., start : start + step] = class_argmax(
            probabilities[..., start : start + step]
        )
    del probabilities
    label = label_tensor.numpy()
    if postprocess and plan.largest_component:
        label = keep_largest_component(label, plan.largest_component)
    if plan.dims == 2:
        label = label[..., None]
    return Image(
        label[None],
        spacing_mm=image.spacing_mm,
        origin_mm=image.origin_mm,
        direction=image.direction,
        modality=image.modality,
        labels={k: v for k, v in plan.labels.items() if k != 0},
        metadata={"source": str(path) if path is not None else ""},
    )


def field_of_view(image: Image, plan: SegmentationPlan) -> tuple[Image, tuple[slice, slice] | None]:
    """The part of a 2D frame to predict on (``plan.crop_to_field_of_view``) and its
    (rows, columns) box in the frame; the frame itself and None where nothing is cropped."""
    from medlens.preprocess.field_of_view import field_of_view_box

    if plan.dims != 2 or not plan.crop_to_field_of_view:
        return image, None
    array = image.numpy()  # (channels, columns, rows, 1)
    box = field_of_view_box(array[..., 0].transpose(2, 1, 0))
    if box is None:
        return image, None
    rows, columns = box
    cropped = np.ascontiguousarray(array[:, columns, rows, :])
    origin = image.index_to_world([columns.start, rows.start, 0])
    return image.with_array(cropped, origin_mm=origin), box


def paste_label(label: Image, image: Image, box: tuple[slice, slice] | None) -> Image:
    """``label`` (predicted on the ``box`` of ``image``) on the whole frame: background
    outside the field of view."""
    if box is None:
        return label
    rows, columns = box
    whole = np.zeros((1, *image.spatial_shape), dtype=label.numpy().dtype)
    whole[:, columns, rows, :] = label.numpy()
    return image.with_array(
        whole, labels=label.labels, metadata=label.metadata, modality=label.modality
    )


def predict_image(
    network: torch.nn.Module | Sequence[torch.nn.Module],
    image: Image,
    plan: SegmentationPlan,
    *,
    device: str | torch.device = "cpu",
    tta: bool = False,
    batch_size: int = 4,
    overlap: float = 0.5,
    postprocess: bool = True,
    path: Any = None,
) -> Image:
    """Label map of ``image`` on its own grid (same shape, spacing, origin, direction).

    ``network``: one network or several trained with ``plan`` (their probabilities are averaged).
    """
    check_input(image, plan, path=path)
    device = torch.device(device)
    field, box = field_of_view(image, plan)
    array = torch.from_numpy(image_to_network_array(field, plan)).to(device)
    probabilities = sliding_window_logits(
        network, array, plan, overlap=overlap, batch_size=batch_size, tta=tta,
        amp=uses_amp(device, plan),
    )  # fmt: skip
    del array
    label = _probabilities_to_label(probabilities, field, plan, postprocess=postprocess, path=path)
    return paste_label(label, image, box)


def predict_images(
    network: torch.nn.Module | Sequence[torch.nn.Module],
    images: list[Image],
    plan: SegmentationPlan,
    *,
    device: str | torch.device = "cpu",
    tta: bool = False,
    batch_size: int = 8,
    overlap: float = 0.5,
    postprocess: bool = True,
    paths: list[Any] | None = None,
) -> list[Image]:
    """:func:`predict_image` for several images; same-size ones share network batches
    (2D frames: one forward pass for ``batch_size`` frames)."""
    paths = paths or [None] * len(images)
    device = torch.device(device)
    results: list[Image | None] = [None] * len(images)
    groups: dict[tuple[int, ...], list[int]] = {}
    arrays = []
    fields = []
    for index, (image, path) in enumerate(zip(images, paths, strict=True)):
        check_input(image, plan, path=path)
        fields.append(field_of_view(image, plan))
        arrays.append(torch.from_numpy(image_to_network_array(fields[-1][0], plan)))
        groups.setdefault(tuple(arrays[-1].shape), []).append(index)
    for indices in groups.values():
        stacked = torch.stack([arrays[i] for i in indices]).to(device)
        probabilities = sliding_window_logits(
            network, stacked, plan, overlap=overlap, batch_size=batch_size, tta=tta,
            amp=uses_amp(device, plan),
        )  # fmt: skip
        for row, index in enumerate(indices):
            field, box = fields[index]
            label = _probabilities_to_label(
                probabilities[row], field, plan, postprocess=postprocess, path=paths[index]
            )
            results[index] = paste_label(label, images[index], box)
    return results  # type: ignore[return-value]


def dice_per_class(prediction: np.ndarray, truth: np.ndarray, classes: list[int]) -> list[float]:
    """Dice of each class (NaN when the class is absent from both)."""
    scores = []
    for value in classes:
        p = prediction == value
        t = truth == value
        denominator = p.sum() + t.sum()
        scores.append(float("nan") if denominator == 0 else 2.0 * (p & t).sum() / denominator)
    return scores
