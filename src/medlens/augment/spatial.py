"""Batched random spatial augmentation: flips, rot90, affine and elastic in ONE resampling.

Everything random about the geometry of a batch (flip, rot90, rotation, scale, shear,
translation, elastic displacement) is folded into a single sampling grid per batch:
``grid = affine_grid(theta) + upsampled coarse random displacement``; then one
``torch.nn.functional.grid_sample`` call resamples all images (bilinear) and one resamples
all labels (nearest). Interpolating once instead of once per transform is both faster and
sharper (no repeated blurring), and it runs unchanged on CPU and CUDA tensors.

Tensor layout: ``images`` ``[B, C, *spatial]`` float, ``labels`` ``[B, 1, *spatial]`` any
dtype (integer labels come back integer, with no new class values). ``spatial`` is
``(D, H, W)`` for 3D and ``(H, W)`` for 2D; axis numbers in options (``flip_axes``) count
spatial axes from 0. The output has the same shape as the input.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from medlens.errors import MedlensError


def check_probability(value: float, name: str) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise MedlensError(f"{name} must be a probability in [0, 1], got {value}")


def check_range(
    values: tuple[float, float], name: str, *, low: float | None = None, strict: bool = False
) -> None:
    if len(values) != 2 or float(values[0]) > float(values[1]):
        raise MedlensError(f"{name} must be (low, high) with low <= high, got {values}")
    if low is not None and (float(values[0]) <= low if strict else float(values[0]) < low):
        relation = ">" if strict else ">="
        raise MedlensError(f"{name} must be {relation} {low}, got {values}")


def device_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded from ``generator`` (reproducible on CPU and CUDA)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    derived = torch.Generator(device=device)
    derived.manual_seed(seed)
    return derived


def uniform(
    low: float, high: float, shape: tuple[int, ...], generator: torch.Generator | None
) -> torch.Tensor:
    """Uniform samples on the CPU generator (per-sample parameters are tiny)."""
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)


@functools.lru_cache(maxsize=64)
def spline_matrix(coarse: int, fine: int) -> np.ndarray:
    """``[fine, coarse]`` natural-cubic-spline interpolation weights on [-1, 1]."""
    if coarse == fine:
        return np.eye(fine)
    if coarse == 1:
        return np.ones((fine, 1))
    if coarse == 2:
        positions = np.linspace(0.0, 1.0, fine)
        return np.stack([1.0 - positions, positions], axis=1)
    from scipy.interpolate import CubicSpline

    spline = CubicSpline(np.linspace(-1, 1, coarse), np.eye(coarse), bc_type="natural")
    return spline(np.linspace(-1, 1, fine))


def upsample_separable(coarse: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``[B, *coarse, n]`` -> ``[B, *shape, n]`` (contiguous), one small matmul per axis."""
    out = coarse
    for axis in reversed(range(len(shape))):
        if out.shape[1 + axis] == shape[axis]:
            continue
        weights = torch.as_tensor(
            spline_matrix(out.shape[1 + axis], shape[axis]), dtype=out.dtype, device=out.device
        )
        moved = torch.movedim(out, 1 + axis, 1)  # [B, c, others..., n]
        others = moved.shape[2:]
        flat = moved.reshape(moved.shape[0], moved.shape[1], -1)  # copies only small tensors
        # axis 0 is done last: its product is already in the final contiguous layout
        out = torch.movedim(
            (weights @ flat).view(moved.shape[0], shape[axis], *others), 1, 1 + axis
        )
    return out.contiguous()


def rotation_matrices(angles_rad: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """``[B, n, n]`` rotations; 2D uses ``angles[:, 0]``, 3D composes rotations about 3 axes."""
    batch = angles_rad.shape[0]
    cos, sin = torch.cos(angles_rad), torch.sin(angles_rad)
    if spatial_dims == 2:
        matrix = torch.zeros(batch, 2, 2, dtype=angles_rad.dtype)
        matrix[:, 0, 0], matrix[:, 0, 1] = cos[:, 0], -sin[:, 0]
        matrix[:, 1, 0], matrix[:, 1, 1] = sin[:, 0], cos[:, 0]
        return matrix
    result = torch.eye(3, dtype=angles_rad.dtype).repeat(batch, 1, 1)
    for axis in range(3):
        first, second = [a for a in range(3) if a != axis]
        matrix = torch.eye(3, dtype=angles_rad.dtype).repeat(batch, 1, 1)
        matrix[:, first, first], matrix[:, first, second] = cos[:, axis], -sin[:, axis]
        matrix[:, second, first], matrix[:, second, second] = sin[:, axis], cos[:, axis]
        result = matrix @ result
    return result


@dataclasses.dataclass(kw_only=True)
class SpatialAugment:
    """Random flips, rot90, rotation/scale/shear/translation and elastic deformation, fused.

    Args:
        spatial_dims: 2 or 3.
        flip_prob: probability to flip each axis in ``flip_axes`` (independently).
        flip_axes: spatial axes that may be flipped (default: all).
        rot90_prob: probability of a random multiple-of-90-degree rotation in a plane of
            two equally sized axes (square/cubic patches; other planes are never used).
        affine_prob: probability of the random rotation/scale/shear/translation.
        rotate_deg: rotations are uniform in ``[-rotate_deg, rotate_deg]`` degrees (about
            each axis in 3D).
        scale: zoom factor range; > 1 enlarges the content.
        shear: shear coefficients are uniform in ``[-shear, shear]``.
        translate_voxels: shifts are uniform in ``[-t, t]`` voxels along each axis.
        elastic_prob: probability of an elastic deformation.
        elastic_magnitude_voxels: standard deviation of the random displacement, voxels.
        elastic_control_points: control points per axis of the coarse random displacement
            field (smoothly upsampled to the image; fewer points = smoother deformation).
        padding_mode: ``grid_sample`` padding for images: ``"zeros"``, ``"border"`` or
            ``"reflection"`` (labels always pad with 0 = background).

    Example:
        >>> augment = SpatialAugment(spatial_dims=2, rotate_deg=10, elastic_prob=0.5)
        >>> images, labels = torch.rand(4, 1, 32, 32), torch.randint(0, 3, (4, 1, 32, 32))
        >>> g = torch.Generator().manual_seed(0)
        >>> out_images, out_labels = augment(images, labels, generator=g)
        >>> out_images.shape, out_labels.dtype
        (torch.Size([4, 1, 32, 32]), torch.int64)
    """

    spatial_dims: int
    flip_prob: float = 0.5
    flip_axes: tuple[int, ...] | None = None
    rot90_prob: float = 0.0
    affine_prob: float = 0.5
    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.9, 1.1)
    shear: float = 0.0
    translate_voxels: float = 0.0
    elastic_prob: float = 0.0
    elastic_magnitude_voxels: float = 2.0
    elastic_control_points: int = 6
    padding_mode: str = "zeros"

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise MedlensError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        for name in ("flip_prob", "rot90_prob", "affine_prob", "elastic_prob"):
            check_probability(getattr(self, name), name)
        axes = tuple(range(self.spatial_dims)) if self.flip_axes is None else self.flip_axes
        if any(axis not in range(self.spatial_dims) for axis in axes):
            raise MedlensError(
                f"flip_axes must be spatial axes 0..{self.spatial_dims - 1}, got {axes}"
            )
        self.flip_axes = tuple(int(a) for a in axes)
        self.scale = tuple(float(v) for v in self.scale)  # type: ignore[assignment]
        check_range(self.scale, "scale", low=0.0, strict=True)
        for name in ("rotate_deg", "shear", "translate_voxels", "elastic_magnitude_voxels"):
            if float(getattr(self, name)) < 0:
                raise MedlensError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.elastic_control_points < 2:
            raise MedlensError(
                f"elastic_control_points must be >= 2, got {self.elastic_control_points}"
            )
        if self.padding_mode not in ("zeros", "border", "reflection"):
            raise MedlensError(
                f"padding_mode must be zeros, border or reflection, got {self.padding_mode!r}"
            )

    # ------------------------------------------------------------------ parameters
    def sample_matrices(
        self, batch: int, spatial_shape: tuple[int, ...], generator: torch.Generator | None
    ) -> torch.Tensor:
        """``[B, n, n+1]`` voxel-space maps from output to input positions (grid axis order).

        Grid axis order is torch's ``grid_sample`` order: x = last spatial axis first.
        """
        n = self.spatial_dims
        dtype = torch.float64
        matrix = torch.eye(n, dtype=dtype).repeat(batch, 1, 1)
        # flips: spatial axis a is grid component n - 1 - a
        flips = torch.ones(batch, n, dtype=dtype)
        for axis in self.flip_axes or ():
            hit = torch.rand(batch, generator=generator, dtype=dtype) < self.flip_prob
            flips[hit, n - 1 - axis] = -1.0
        matrix = torch.diag_embed(flips) @ matrix
        # rot90 in a plane of equal sizes
        if self.rot90_prob > 0:
            grid_sizes = list(reversed(spatial_shape))
            planes = [
                (a, b) for a in range(n) for b in range(a + 1, n) if grid_sizes[a] == grid_sizes[b]
            ]
            if not planes:
                raise MedlensError(
                    f"rot90 needs two equally sized spatial axes, patch shape {spatial_shape}",
                    hint="use square/cubic patches or rot90_prob=0",
                )
            hit = torch.rand(batch, generator=generator) < self.rot90_prob
            plane_index = torch.randint(0, len(planes), (batch,), generator=generator)
            quarter_turns = torch.randint(1, 4, (batch,), generator=generator)
            for b in range(batch):  # B tiny 3x3 matrices, not voxels
                if not hit[b]:
                    continue
                first, second = planes[int(plane_index[b])]
                angle = math.pi / 2 * int(quarter_turns[b])
                rotation = torch.eye(n, dtype=dtype)
                c, s = round(math.cos(angle)), round(math.sin(angle))
                rotation[first, first], rotation[first, second] = c, -s
                rotation[second, first], rotation[second, second] = s, c
                matrix[b] = rotation @ matrix[b]
        # rotation, shear, scale, translation
        translation = torch.zeros(batch, n, dtype=dtype)
        if self.affine_prob > 0:
            hit = (torch.rand(batch, generator=generator, dtype=dtype) < self.affine_prob).to(dtype)
            angles = uniform(
                -math.radians(self.rotate_deg), math.radians(self.rotate_deg), (batch, 3), generator
            )
            rotation = rotation_matrices(angles * hit[:, None], n)
            shear = torch.eye(n, dtype=dtype).repeat(batch, 1, 1)
            off_diagonal = ~torch.eye(n, dtype=torch.bool)
            shear_values = uniform(-self.shear, self.shear, (batch, n * n), generator)
            shear_values = shear_values.view(batch, n, n) * hit[:, None, None]
            shear = shear + shear_values * off_diagonal
            zoom = uniform(self.scale[0], self.scale[1], (batch, n), generator)
            zoom = torch.where(hit[:, None] > 0, zoom, torch.ones_like(zoom))
            matrix = matrix @ rotation @ shear @ torch.diag_embed(1.0 / zoom)
            translation = (
                uniform(-self.translate_voxels, self.translate_voxels, (batch, n), generator)
                * hit[:, None]
            )
        return torch.cat([matrix, translation[:, :, None]], dim=2)

    # ------------------------------------------------------------------ grid
    def sampling_grid(
        self,
        batch: int,
        spatial_shape: tuple[int, ...],
        *,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The fused ``[B, *spatial, n]`` normalised sampling grid (align_corners=True)."""
        n = self.spatial_dims
        voxel_maps = self.sample_matrices(batch, spatial_shape, generator)
        grid_sizes = torch.tensor(list(reversed(spatial_shape)), dtype=torch.float64)
        half = torch.clamp((grid_sizes - 1) / 2, min=0.5)
        # voxel (centred) -> normalised: divide by half size; theta = H^-1 M H | H^-1 t
        theta_linear = voxel_maps[:, :, :n] * half[None, None, :] / half[None, :, None]
        theta_shift = voxel_maps[:, :, n] / half[None, :]
        theta = torch.cat([theta_linear, theta_shift[:, :, None]], dim=2)
        # The grid is built at a few control points (affine map + random displacement) and
        # upsampled ONCE to full size with natural cubic splines, axis by axis (small
        # matrix products). A natural cubic spline reproduces linear functions exactly, so
        # the affine part is exact, and the elastic part is a smooth (C2) field. This is
        # cheaper than affine_grid at full size plus a separately upsampled field.
        elastic = self.elastic_prob > 0 and self.elastic_magnitude_voxels > 0
        points = self.elastic_control_points if elastic else 2
        coarse_shape = [min(points, size) if size > 1 else 1 for size in spatial_shape]
        coarse_grid = F.affine_grid(
            theta.to(device=device, dtype=dtype), [batch, 1, *coarse_shape], align_corners=True
        )  # [B, *coarse, n]
        if elastic:
            hit = torch.rand(batch, generator=generator) < self.elastic_prob
            device_gen = device_generator(generator, device)
            displacement = torch.randn(
                coarse_grid.shape, generator=device_gen, device=device, dtype=dtype
            )
            scale = (self.elastic_magnitude_voxels / half).to(device=device, dtype=dtype)
            weight = scale.view(*([1] * (n + 1)), n) * hit.to(device, dtype).view(
                batch, *([1] * (n + 1))
            )
            coarse_grid = coarse_grid + displacement * weight
        grid = upsample_separable(coarse_grid, spatial_shape)
        return grid

    # ------------------------------------------------------------------ apply
    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Resample ``images`` (bilinear) and ``labels`` (nearest) on one random grid."""
        images, labels = check_batch(images, labels, self.spatial_dims)
        spatial_shape = tuple(int(s) for s in images.shape[2:])
        compute_dtype = images.dtype if images.is_floating_point() else torch.float32
        grid = self.sampling_grid(
            images.shape[0],
            spatial_shape,
            device=images.device,
            dtype=compute_dtype,
            generator=generator,
        )
        out_images = F.grid_sample(
            images.to(compute_dtype),
            grid,
            mode="bilinear",
            padding_mode=self.padding_mode,
            align_corners=True,
        )
        out_labels = None
        if labels is not None:
            out_labels = F.grid_sample(
                labels.to(compute_dtype),
                grid,
                mode="nearest",
                padding_mode="zeros",
                align_corners=True,
            )
            if not labels.is_floating_point():
                # nearest copies input values exactly (or 0 outside): no rounding needed
                out_labels = out_labels.to(labels.dtype)
        return out_images, out_labels


def check_batch(
    images: torch.Tensor, labels: torch.Tensor | None, spatial_dims: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate ``[B, C, *spatial]`` shapes; returns the inputs unchanged."""
    if not isinstance(images, torch.Tensor):
        raise MedlensError(f"images must be a torch tensor, got {type(images).__name__}")
    if images.ndim != spatial_dims + 2:
        raise MedlensError(
            f"images must be [B, C, {'D, H, W' if spatial_dims == 3 else 'H, W'}] for "
            f"spatial_dims={spatial_dims}, got shape {tuple(images.shape)}"
        )
    if labels is not None:
        if labels.ndim != images.ndim or labels.shape[0] != images.shape[0]:
            raise MedlensError(
                f"labels shape {tuple(labels.shape)} does not match images "
                f"{tuple(images.shape)}; expected [B, 1, *spatial]"
            )
        if labels.shape[2:] != images.shape[2:]:
            raise MedlensError(
                f"labels spatial shape {tuple(labels.shape[2:])} differs from images "
                f"{tuple(images.shape[2:])}"
            )
        if labels.device != images.device:
            raise MedlensError("images and labels must be on the same device")
    return images, labels
