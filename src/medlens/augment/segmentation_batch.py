"""The built-in augmentation of ``medlens train seg``, batch by batch on any device.

:func:`augment_batch` (mirror, rotation/scale, intensity) is the default recipe;
:func:`camera_augment` adds what another endoscope changes (``--camera-augment``) and
:func:`rescale_batch` draws each batch at one of :func:`multi_scale_sizes` (``--multi-scale``).
``--augment medlens`` uses :class:`medlens.augment.Augment` instead.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from medlens.augment.colour import ColourAugment
from medlens.augment.intensity import IntensityAugment
from medlens.errors import MedlensError

if TYPE_CHECKING:
    from medlens.models.segmentation import SegmentationPlan

#: the built-in augmentation's rotation range (+- degrees in each plane) unless asked otherwise
DEFAULT_ROTATION_DEGREES = 15.0


def augment_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    mirror_axes: list[int] | None = None,
    *,
    rotation_degrees: float = DEFAULT_ROTATION_DEGREES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched torch augmentation (flips, rotation/scale, intensity) on any device.

    The default of ``medlens train seg``: mirror each of ``mirror_axes`` (spatial axes,
    0 = i; default all) with p=0.5,
    rotate (+-``rotation_degrees`` in each plane) and scale (0.85-1.15) with p=0.3 through one
    ``grid_sample`` (linear for images, nearest for labels), brightness (x0.85-1.15),
    contrast, gamma (0.7-1.5, p=0.3) and Gaussian noise (p=0.15), per sample.
    """
    device = images.device
    batch = images.shape[0]
    dims = images.ndim - 2

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator).to(device)

    # spatial: rotation + scale through an affine grid
    apply = rand(batch) < 0.3
    if bool(apply.any()):
        theta = torch.zeros(batch, dims, dims + 1, device=device)
        for b in range(batch):
            if not apply[b]:
                theta[b, :, :dims] = torch.eye(dims, device=device)
                continue
            angles = (rand(3) * 2 - 1) * math.radians(rotation_degrees)
            scale = float(0.85 + rand(1) * 0.3)
            if dims == 2:
                c, s = math.cos(angles[0]), math.sin(angles[0])
                matrix = torch.tensor([[c, -s], [s, c]], device=device)
            else:
                matrix = torch.eye(3, device=device)
                for axis, angle in enumerate(angles.tolist()):
                    c, s = math.cos(angle), math.sin(angle)
                    rotation = torch.eye(3, device=device)
                    i, j = [a for a in range(3) if a != axis]
                    rotation[i, i], rotation[i, j], rotation[j, i], rotation[j, j] = c, -s, s, c
                    matrix = matrix @ rotation
            theta[b, :, :dims] = matrix / scale
        grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
        warped = torch.nn.functional.grid_sample(
            images, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        warped_labels = torch.nn.functional.grid_sample(
            labels.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
        ).long()
        keep = apply.view(-1, *([1] * (dims + 1)))
        images = torch.where(keep, warped, images)
        labels = torch.where(keep, warped_labels, labels)
    # mirroring, per sample and spatial axis (tensor dim = spatial axis + 2)
    for axis in range(dims) if mirror_axes is None else mirror_axes:
        flip = rand(batch) < 0.5
        if bool(flip.any()):
            images[flip] = images[flip].flip(axis + 2)
            labels[flip] = labels[flip].flip(axis + 2)
    # intensity, per sample
    shape = (batch,) + (1,) * (dims + 1)
    images = images * (0.85 + 0.3 * rand(batch)).view(shape)
    mean = images.mean(dim=tuple(range(2, 2 + dims)), keepdim=True)
    contrast = (0.75 + 0.5 * rand(batch)).view(shape)
    images = (images - mean) * contrast + mean
    gamma_on = (rand(batch) < 0.3).view(shape)
    if bool(gamma_on.any()):
        gamma = (0.7 + 0.8 * rand(batch)).view(shape)
        low = images.amin(dim=tuple(range(1, 2 + dims)), keepdim=True)
        high = images.amax(dim=tuple(range(1, 2 + dims)), keepdim=True)
        span = (high - low).clamp_min(1e-6)
        gammaed = ((images - low) / span).clamp_min(0) ** gamma * span + low
        images = torch.where(gamma_on, gammaed, images)
    noise_on = (rand(batch) < 0.15).view(shape)
    noise = torch.randn(images.shape, generator=generator).to(device) * 0.1
    images = images + noise * noise_on
    return images, labels


def check_scale_range(scale_range: tuple[float, float]) -> tuple[float, float]:
    """``--multi-scale`` LOW,HIGH: 0 < LOW <= 1 <= HIGH, so the frame size is among the sizes."""
    low, high = scale_range
    if not 0 < low <= 1 <= high:
        raise MedlensError(
            f"--multi-scale takes LOW,HIGH with 0 < LOW <= 1 <= HIGH, got '{low:g},{high:g}'",
            hint="e.g. --multi-scale 0.75,1.25",
        )
    return low, high


def multi_scale_sizes(
    patch_size: list[int], divisor: list[int], scale_range: tuple[float, float]
) -> list[list[int]]:
    """Batch sizes for multi-scale training: ``patch_size`` times ``scale_range``, every
    multiple of the network's stride (``divisor``) in between, the same step on each axis.

    >>> multi_scale_sizes([256, 256], [32, 32], (0.75, 1.25))
    [[192, 192], [224, 224], [256, 256], [288, 288], [320, 320]]
    """
    low, high = check_scale_range(scale_range)
    # LOW > 0, so every size down to LOW times the patch stays positive
    steps_down = min(int((p - p * low) // d) for p, d in zip(patch_size, divisor, strict=True))
    steps_up = min(int((p * high - p) // d) for p, d in zip(patch_size, divisor, strict=True))
    return [
        [p + step * d for p, d in zip(patch_size, divisor, strict=True)]
        for step in range(-steps_down, steps_up + 1)
    ]


def rescale_batch(
    images: torch.Tensor, labels: torch.Tensor, size: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize a 2D batch to ``size`` (bilinear images, nearest labels); a no-op at its size."""
    if list(images.shape[2:]) == list(size):
        return images, labels
    images = torch.nn.functional.interpolate(
        images, size=size, mode="bilinear", align_corners=False, antialias=False
    )
    labels = torch.nn.functional.interpolate(labels.float(), size=size, mode="nearest").long()
    return images, labels


def camera_augment(plan: SegmentationPlan) -> Any:
    """For RGB frames (plan normalisation ``rgb``): what another hospital's endoscope changes.

    White balance (per-channel gain 0.85-1.15) and saturation (x0.6-1.3), each p=0.3, then
    defocus (Gaussian blur, sigma 0.5-1.5 px, p=0.15) and a lower-resolution sensor or heavy
    compression (down x1-2 and back, p=0.15). ``--camera-augment`` turns it on; a fine-tune
    of the polyp model with it gained on defocus (+0.030) and JPEG (+0.020) but lost 0.010
    on clean Kvasir frames (benchmarks/results/polyp_robustness.md). None for other plans.
    """
    if plan.normalisation.get("scheme") != "rgb" or plan.in_channels != 3:
        return None
    colour = ColourAugment(mean=plan.normalisation["mean"], std=plan.normalisation["std"])
    optics = IntensityAugment(
        spatial_dims=plan.dims, gamma_prob=0.0, noise_prob=0.0, blur_prob=0.15,
        blur_sigma_voxels=(0.5, 1.5), low_resolution_prob=0.15, low_resolution_factor=(1.0, 2.0),
    )  # fmt: skip

    def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        images, _ = colour(images, generator=generator)
        return optics(images, generator=generator)[0]

    return augment
