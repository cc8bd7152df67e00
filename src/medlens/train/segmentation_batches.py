"""Training batches of ``medlens train seg``: sampled patches, augmented on the device."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from medlens.augment.segmentation_batch import augment_batch, rescale_batch
from medlens.data.patches import LoadedCase, sample_batch
from medlens.models.segmentation import SegmentationPlan
from medlens.train.segmentation_config import TrainConfig


@dataclasses.dataclass
class BatchSource:
    """Training batches on the device: sampled patches (or DP-SGD's Poisson batches),
    augmented, optionally through the camera augmentation and rescaled (multi-scale)."""

    config: TrainConfig
    plan: SegmentationPlan
    device: torch.device
    train_cases: list[LoadedCase]
    train_indices: list[int]
    rng: np.random.Generator
    generator: torch.Generator
    memory_format: torch.memory_format
    dp_batches: Any = None
    frame_augment: Any = None
    batch_sizes_px: list[list[int]] | None = None

    def __post_init__(self) -> None:
        self.medlens_augment = None
        if self.config.augment == "medlens":
            from medlens.augment import Augment

            self.medlens_augment = Augment.default(spatial_dims=self.plan.dims)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.dp_batches is not None:
            images, labels = next(self.dp_batches)
        else:
            images, labels = sample_batch(
                self.train_cases,
                self.train_indices,
                self.plan.patch_size,
                self.plan.batch_size,
                self.rng,
                self.config.foreground_fraction,
            )
        images, labels = images.to(self.device), labels.to(self.device)
        if self.medlens_augment is not None:
            images, labels = self.medlens_augment(images, labels, generator=self.generator)
        else:
            images, labels = augment_batch(
                images,
                labels,
                self.generator,
                self.plan.mirror_axes,
                rotation_degrees=self.config.rotation_degrees,
            )
        if self.frame_augment is not None:
            images = self.frame_augment(images, self.generator)
        if self.batch_sizes_px is not None:
            pick = int(torch.randint(len(self.batch_sizes_px), (1,), generator=self.generator))
            images, labels = rescale_batch(images, labels, self.batch_sizes_px[pick])
        return images.contiguous(memory_format=self.memory_format), labels
