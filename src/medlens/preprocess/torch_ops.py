"""Torch (CPU or CUDA) versions of the heavy deterministic steps.

They work on ``(C, I, J, K)`` tensors on any device and agree with the numpy/SimpleITK/scipy
paths within the tolerances stated in each docstring (checked by tests on CPU torch and, when
a GPU is present, on CUDA):

* :func:`resample_linear` / :func:`resample_nearest`: separable, gather-based (an axis-aligned
  trilinear resampling is three 1D linear ones); matches SimpleITK's linear interpolator to
  ~1e-4 relative inside the image (edges: clamped, ITK extrapolates half a voxel the same way);
  nearest labels are identical except at exact half-voxel ties (>99.5% of voxels).
* :func:`gaussian_filter`: separable convolution, replicate borders, kernel truncated at
  4 sigma: matches ``scipy.ndimage.gaussian_filter(mode="nearest", truncate=4)`` to ~1e-5.
* :func:`median_filter`: exact (same as ``scipy.ndimage.median_filter(mode="nearest")``).
* :func:`z_score`: matches numpy float64 to ~1e-5.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def output_positions(
    in_size: int, in_spacing: float, out_size: int, out_spacing: float, device: torch.device
) -> torch.Tensor:
    """Input (continuous) indices of the output voxels, same origin (voxel 0 centres agree)."""
    return torch.arange(out_size, device=device, dtype=torch.float64) * (out_spacing / in_spacing)


def _linear_axis(values: torch.Tensor, axis: int, positions: torch.Tensor) -> torch.Tensor:
    size = values.shape[axis]
    positions = positions.clamp(0, size - 1)
    low = positions.floor().long().clamp(max=size - 1)
    high = (low + 1).clamp(max=size - 1)
    weight = (positions - low).to(values.dtype)
    shape = [1] * values.ndim
    shape[axis] = -1
    weight = weight.view(shape)
    low_values = values.index_select(axis, low)
    high_values = values.index_select(axis, high)
    return torch.lerp(low_values, high_values, weight)


def resample_linear(
    values: torch.Tensor,
    spacing: tuple[float, float, float],
    new_spacing: tuple[float, float, float],
    new_shape: tuple[int, int, int],
) -> torch.Tensor:
    """Trilinear resampling of ``(C, I, J, K)`` onto a grid with the same origin/direction."""
    out = values if values.is_floating_point() else values.float()
    # shrink the axis with the largest reduction first: less data for the next passes
    order = sorted(range(3), key=lambda a: new_shape[a] / max(values.shape[1 + a], 1))
    for axis in order:
        if new_shape[axis] == out.shape[1 + axis] and spacing[axis] == new_spacing[axis]:
            continue
        positions = output_positions(
            out.shape[1 + axis], spacing[axis], new_shape[axis], new_spacing[axis], out.device
        )
        out = _linear_axis(out, 1 + axis, positions)
    return out


def resample_nearest(
    values: torch.Tensor,
    spacing: tuple[float, float, float],
    new_spacing: tuple[float, float, float],
    new_shape: tuple[int, int, int],
) -> torch.Tensor:
    """Nearest-neighbour resampling (labels): values copied exactly, dtype kept."""
    out = values
    for axis in range(3):
        if new_shape[axis] == out.shape[1 + axis] and spacing[axis] == new_spacing[axis]:
            continue
        positions = output_positions(
            out.shape[1 + axis], spacing[axis], new_shape[axis], new_spacing[axis], out.device
        )
        # ITK's nearest rounds half up (floor(x + 0.5)); torch.round would round half to even
        index = torch.floor(positions + 0.5).long().clamp(0, out.shape[1 + axis] - 1)
        out = out.index_select(1 + axis, index)
    return out


def gaussian_kernel(sigma: float, truncate: float = 4.0, *, device=None, dtype=None):
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype), radius


def gaussian_filter(
    values: torch.Tensor, sigma_voxels: tuple[float, float, float], *, truncate: float = 4.0
) -> torch.Tensor:
    """Separable Gaussian blur of ``(C, I, J, K)`` with replicate borders."""
    out = values if values.is_floating_point() else values.float()
    out = out[:, None]  # (C, 1, I, J, K): channels as batch
    for axis, sigma in enumerate(sigma_voxels):
        if sigma <= 0 or out.shape[2 + axis] == 1:
            continue
        kernel, radius = gaussian_kernel(sigma, truncate, device=out.device, dtype=out.dtype)
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        pad = [0] * 6
        # F.pad lists the last axis first
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"), kernel.view(shape))
    return out[:, 0]


def median_filter(values: torch.Tensor, radius: tuple[int, int, int]) -> torch.Tensor:
    """Median over a ``(2r+1)`` box with replicate borders, processed in slabs along i."""
    out = values if values.is_floating_point() else values.float()
    ri, rj, rk = radius
    padded = F.pad(out[:, None], [rk, rk, rj, rj, ri, ri], mode="replicate")[:, 0]
    window = (2 * ri + 1) * (2 * rj + 1) * (2 * rk + 1)
    result = torch.empty_like(out)
    size_i = out.shape[1]
    # bound the unfolded memory (window x slab voxels) to ~64M values
    slab = max(1, int(64e6 // max(1, window * out.shape[2] * out.shape[3] * out.shape[0])))
    for start in range(0, size_i, slab):
        stop = min(size_i, start + slab)
        block = padded[:, start : stop + 2 * ri]
        patches = block.unfold(1, 2 * ri + 1, 1).unfold(2, 2 * rj + 1, 1).unfold(3, 2 * rk + 1, 1)
        patches = patches.reshape(*patches.shape[:4], window)
        # lower median == scipy's rank filter at window // 2 (odd windows: the median)
        result[:, start:stop] = patches.median(dim=-1).values
    return result


def z_score(values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``(x - mean) / std`` per channel, statistics inside ``mask`` if given.

    ``torch.var_mean`` (Welford, accurate to ~1e-6 relative in float32, and far faster on
    the CPU than casting every element to float64); the output keeps the input's memory
    layout (no transposing copy of Fortran-ordered arrays).
    """
    out = values if values.is_floating_point() else values.float()
    result = torch.empty_like(out)
    for channel in range(out.shape[0]):
        data = out[channel]
        selected = data[mask[0].bool()] if mask is not None else data
        variance, mean = torch.var_mean(selected, correction=0)
        std = float(variance) ** 0.5
        centred = result[channel]
        torch.sub(data, float(mean), out=centred)
        centred.div_(std if std > 0 else 1.0)
    return result


def output_shape(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    new_spacing: tuple[float, float, float],
) -> tuple[int, int, int]:
    """Keep the field of view: ``round(size * spacing / new_spacing)``, size-1 axes kept."""
    return tuple(
        1 if size == 1 else max(1, int(math.floor(size * old / new + 0.5)))
        for size, old, new in zip(shape, spacing, new_spacing, strict=True)
    )  # type: ignore[return-value]
