"""Batched random intensity augmentation (labels are never touched).

Each effect is drawn per sample (with its probability) and applied to the whole batch with
tensor operations: per-sample parameters are ``[B, 1, ...]`` tensors broadcast over voxels,
Gaussian blur with per-sample sigma is a grouped separable convolution. Simulated low
resolution loops over the *selected samples* (a handful of interpolate calls), never voxels.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from medlens.augment.spatial import (
    check_batch,
    check_probability,
    check_range,
    device_generator,
    uniform,
)
from medlens.errors import MedlensError


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[B]`` -> ``[B, 1, 1, ...]`` on the device and dtype of ``like``."""
    return values.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.ndim - 1)))


def gaussian_kernels_1d(sigmas: torch.Tensor, radius: int) -> torch.Tensor:
    """``[N, 2r+1]`` normalised Gaussians; sigma 0 gives the identity (delta) kernel."""
    offsets = torch.arange(-radius, radius + 1, dtype=sigmas.dtype, device=sigmas.device)
    safe = sigmas.clamp(min=1e-6)[:, None]
    kernels = torch.exp(-0.5 * (offsets[None, :] / safe) ** 2)
    kernels = torch.where(sigmas[:, None] > 1e-3, kernels, (offsets[None, :] == 0).to(sigmas))
    return kernels / kernels.sum(dim=1, keepdim=True)


def blur_per_channel(images: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, C, *spatial]`` with one sigma (voxels) per ``B*C``."""
    batch, channels = images.shape[:2]
    spatial = images.shape[2:]
    n = len(spatial)
    radius = max(1, int(math.ceil(3.0 * float(sigmas.max()))))
    kernels = gaussian_kernels_1d(sigmas.to(images.device, images.dtype), radius)
    flat = images.reshape(1, batch * channels, *spatial)
    conv = F.conv3d if n == 3 else F.conv2d
    for axis in range(n):
        shape = [batch * channels, 1] + [1] * n
        shape[2 + axis] = 2 * radius + 1
        padding = [0] * n
        padding[axis] = radius
        # replicate padding keeps edge intensities (zero padding would darken borders)
        pad = []
        for a in reversed(range(n)):
            pad += [padding[a], padding[a]]
        flat = conv(
            F.pad(flat, pad, mode="replicate"), kernels.view(shape), groups=batch * channels
        )
    return flat.view(batch, channels, *spatial)


@dataclasses.dataclass(kw_only=True)
class IntensityAugment:
    """Random gamma, contrast, bias field, blur, low resolution and Gaussian noise.

    Applied in that order (noise last, as acquisition noise sits on top of everything).
    Image intensities can be in any unit; gamma works on each sample's own min..max range
    and maps back to it.

    Args:
        gamma_prob / gamma: probability and range of the gamma exponent.
        contrast_prob / contrast: probability and range of the factor around the mean.
        bias_field_prob / bias_field_strength: probability and std of a smooth
            multiplicative field ``exp(f)`` (``f`` from a 3-point-per-axis random grid).
        blur_prob / blur_sigma_voxels: probability and range of Gaussian sigma (voxels).
        low_resolution_prob / low_resolution_factor: probability and range of the
            downsampling factor (nearest down, linear back up: simulates thick slices).
        noise_prob / noise_std: probability and maximum std of additive Gaussian noise,
            in image units (the std is uniform in ``[0, noise_std]``).

    Example:
        >>> augment = IntensityAugment(gamma_prob=1.0, noise_prob=1.0, noise_std=0.1)
        >>> augment(torch.rand(2, 1, 8, 8, 8), generator=torch.Generator().manual_seed(1))[0].shape
        torch.Size([2, 1, 8, 8, 8])
    """

    spatial_dims: int = 3
    gamma_prob: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)
    contrast_prob: float = 0.0
    contrast: tuple[float, float] = (0.75, 1.25)
    bias_field_prob: float = 0.0
    bias_field_strength: float = 0.3
    blur_prob: float = 0.0
    blur_sigma_voxels: tuple[float, float] = (0.5, 1.0)
    low_resolution_prob: float = 0.0
    low_resolution_factor: tuple[float, float] = (1.0, 2.0)
    noise_prob: float = 0.2
    noise_std: float = 0.1

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise MedlensError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        for name in (
            "gamma_prob",
            "contrast_prob",
            "bias_field_prob",
            "blur_prob",
            "low_resolution_prob",
            "noise_prob",
        ):
            check_probability(getattr(self, name), name)
        check_range(self.gamma, "gamma", low=0.0, strict=True)
        check_range(self.contrast, "contrast", low=0.0)
        check_range(self.blur_sigma_voxels, "blur_sigma_voxels", low=0.0)
        check_range(self.low_resolution_factor, "low_resolution_factor", low=1.0)
        for name in ("noise_std", "bias_field_strength"):
            if float(getattr(self, name)) < 0:
                raise MedlensError(f"{name} must be >= 0, got {getattr(self, name)}")

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        images, labels = check_batch(images, labels, self.spatial_dims)
        if not images.is_floating_point():
            images = images.float()
        batch = images.shape[0]
        spatial_axes = tuple(range(2, images.ndim))

        def chosen(probability: float) -> torch.Tensor:
            return torch.rand(batch, generator=generator) < probability

        out = images
        if self.gamma_prob > 0:
            hit = chosen(self.gamma_prob)
            exponent = uniform(*self.gamma, (batch,), generator)
            exponent = torch.where(hit, exponent, torch.ones_like(exponent))
            if hit.any():
                low = out.amin(dim=spatial_axes, keepdim=True)
                span = (out.amax(dim=spatial_axes, keepdim=True) - low).clamp(min=1e-8)
                unit = ((out - low) / span).clamp(0, 1)
                out = unit.pow(_per_sample(exponent, out)) * span + low
        if self.contrast_prob > 0:
            hit = chosen(self.contrast_prob)
            factor = uniform(*self.contrast, (batch,), generator)
            factor = torch.where(hit, factor, torch.ones_like(factor))
            mean = out.mean(dim=spatial_axes, keepdim=True)
            out = (out - mean) * _per_sample(factor, out) + mean
        if self.bias_field_prob > 0:
            hit = chosen(self.bias_field_prob)
            device_gen = device_generator(generator, out.device)
            coarse = torch.randn(
                (batch, 1, *([3] * self.spatial_dims)),
                generator=device_gen,
                device=out.device,
                dtype=out.dtype,
            )
            coarse = coarse * self.bias_field_strength * _per_sample(hit.float(), coarse)
            mode = "bicubic" if self.spatial_dims == 2 else "trilinear"
            field = F.interpolate(coarse, size=out.shape[2:], mode=mode, align_corners=True)
            out = out * torch.exp(field)
        if self.blur_prob > 0:
            hit = chosen(self.blur_prob)
            sigmas = uniform(*self.blur_sigma_voxels, (batch,), generator) * hit
            if hit.any():
                per_channel = sigmas.repeat_interleave(out.shape[1])
                out = blur_per_channel(out, per_channel)
        if self.low_resolution_prob > 0:
            hit = chosen(self.low_resolution_prob)
            factors = uniform(*self.low_resolution_factor, (batch,), generator)
            if hit.any():
                out = out.clone()
                mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
                for b in torch.nonzero(hit).flatten().tolist():
                    size = [max(1, round(s / float(factors[b]))) for s in out.shape[2:]]
                    small = F.interpolate(out[b : b + 1], size=size, mode="nearest")
                    out[b : b + 1] = F.interpolate(
                        small, size=out.shape[2:], mode=mode, align_corners=False
                    )
        if self.noise_prob > 0:
            hit = chosen(self.noise_prob)
            std = uniform(0.0, self.noise_std, (batch,), generator) * hit
            if hit.any():
                device_gen = device_generator(generator, out.device)
                noise = torch.randn(
                    out.shape, generator=device_gen, device=out.device, dtype=out.dtype
                )
                out = out + noise * _per_sample(std, out)
        return out, labels
