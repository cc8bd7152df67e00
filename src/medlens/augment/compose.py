"""One training augmentation object: spatial (fused resampling) then intensity."""

from __future__ import annotations

import dataclasses

import torch

from medlens.augment.intensity import IntensityAugment
from medlens.augment.spatial import SpatialAugment
from medlens.errors import MedlensError


@dataclasses.dataclass(kw_only=True)
class Augment:
    """Spatial then intensity augmentation of a batch, image and label consistently.

    Call as ``images, labels = augment(images, labels, generator=generator)`` with
    ``images`` ``[B, C, *spatial]`` float and ``labels`` ``[B, 1, *spatial]`` (or None), on
    CPU or CUDA. The same ``generator`` seed gives the same output (on the same device).

    Example:
        >>> augment = Augment.default(spatial_dims=3)
        >>> g = torch.Generator().manual_seed(0)
        >>> images = torch.rand(2, 1, 16, 16, 16)
        >>> labels = torch.zeros(2, 1, 16, 16, 16, dtype=torch.long)
        >>> images, labels = augment(images, labels, generator=g)
        >>> images.shape, labels.dtype
        (torch.Size([2, 1, 16, 16, 16]), torch.int64)
    """

    spatial: SpatialAugment | None = None
    intensity: IntensityAugment | None = None

    def __post_init__(self) -> None:
        if (
            self.spatial is not None
            and self.intensity is not None
            and self.spatial.spatial_dims != self.intensity.spatial_dims
        ):
            raise MedlensError(
                f"spatial ({self.spatial.spatial_dims}D) and intensity "
                f"({self.intensity.spatial_dims}D) augmentations disagree on spatial_dims"
            )

    @classmethod
    def default(cls, *, spatial_dims: int, elastic: bool = True) -> Augment:
        """Sensible segmentation-training defaults (nnU-Net-like ranges)."""
        return cls(
            spatial=SpatialAugment(
                spatial_dims=spatial_dims,
                flip_prob=0.5,
                affine_prob=0.5,
                rotate_deg=15.0,
                scale=(0.85, 1.15),
                elastic_prob=0.2 if elastic else 0.0,
                elastic_magnitude_voxels=2.0,
            ),
            intensity=IntensityAugment(
                spatial_dims=spatial_dims,
                gamma_prob=0.3,
                contrast_prob=0.15,
                noise_prob=0.15,
                noise_std=0.1,
                blur_prob=0.1,
            ),
        )

    def to_dict(self) -> dict:
        """Plain values (for model cards / YAML): ``{"spatial": {...}, "intensity": {...}}``."""
        return {
            "spatial": None if self.spatial is None else dataclasses.asdict(self.spatial),
            "intensity": None if self.intensity is None else dataclasses.asdict(self.intensity),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Augment:
        """Inverse of :meth:`to_dict`; unknown options are a clear error."""
        parts = {}
        for key, part_cls in (("spatial", SpatialAugment), ("intensity", IntensityAugment)):
            options = (data or {}).get(key)
            if options is None:
                parts[key] = None
                continue
            valid = {f.name for f in dataclasses.fields(part_cls)}
            unknown = sorted(set(options) - valid)
            if unknown:
                raise MedlensError(
                    f"unknown {key} augmentation option(s) {', '.join(unknown)}",
                    hint=f"valid: {', '.join(sorted(valid))}",
                )
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
            parts[key] = part_cls(**values)
        return cls(**parts)

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.spatial is not None:
            images, labels = self.spatial(images, labels, generator=generator)
        if self.intensity is not None:
            images, labels = self.intensity(images, labels, generator=generator)
        return images, labels
