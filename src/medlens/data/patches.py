"""Training cases in memory and random patches from them (nnU-Net's foreground oversampling).

:func:`load_cases` reads and normalises every case once, as the plan says, padded to at least
the patch size; :func:`sample_batch` draws a batch of patches, a share of them centred on a
foreground voxel.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from medlens.data.segmentation import (
    CasePaths,
    check_label_classes,
    read_case_pair,
)
from medlens.models.segmentation import (
    SegmentationPlan,
    image_to_network_array,
    label_to_network_array,
)


@dataclasses.dataclass
class LoadedCase:
    """One training or validation case in memory, ready for patch sampling."""

    case_id: str
    image: torch.Tensor  # (C, *spatial) normalised, float16 (memory), padded to >= patch
    label: torch.Tensor  # (*spatial) uint8, padded
    crop: tuple[slice, ...]  # region of the unpadded image inside the padded arrays
    foreground: torch.Tensor  # (N, dims) indices of foreground voxels (for oversampling)


def pad_to(array: np.ndarray, shape: list[int], value: float) -> tuple[np.ndarray, tuple]:
    """Pad the last ``len(shape)`` axes with ``value`` to at least ``shape``, centred.

    Returns the padded array and the slices of the original inside it.

    >>> padded, crop = pad_to(np.ones((1, 3, 5)), [4, 4], 0.0)
    >>> padded.shape, crop
    ((1, 4, 5), (slice(0, 3, None), slice(0, 5, None)))
    """
    spatial = array.shape[-len(shape) :]
    before = [max(0, (s - a)) // 2 for a, s in zip(spatial, shape, strict=True)]
    after = [max(0, s - a - b) for a, s, b in zip(spatial, shape, before, strict=True)]
    pad = [(0, 0)] * (array.ndim - len(shape)) + list(zip(before, after, strict=True))
    crop = tuple(slice(b, b + a) for b, a in zip(before, spatial, strict=True))
    return np.pad(array, pad, constant_values=value), crop


def frame_pixels(case: LoadedCase) -> np.ndarray:
    """(rows, columns) mean over channels of a 2D case, without its padding."""
    return case.image[(slice(None), *case.crop)].float().mean(0).numpy()


def load_cases(
    cases: list[CasePaths], plan: SegmentationPlan, *, progress: Any = None
) -> list[LoadedCase]:
    """Read, check and normalise ``cases`` as ``plan`` says, padded to at least its patch.

    Images are kept as float16 (half the memory of a preloaded dataset); ``progress`` is
    called once per case.
    """
    loaded = []
    allowed = sorted(plan.labels)
    for case in cases:
        image, label = read_case_pair(case)
        check_label_classes(label, allowed, case.label)
        array = image_to_network_array(image, plan)
        label_array = label_to_network_array(label, image, plan)
        array, crop = pad_to(array, plan.patch_size, 0.0)
        label_array, _ = pad_to(label_array, plan.patch_size, 0)
        foreground = np.argwhere(label_array > 0)
        if len(foreground) > 2000:  # a sample is enough to pick crop centres
            keep = np.random.default_rng(0).choice(len(foreground), 2000, replace=False)
            foreground = foreground[keep]
        loaded.append(
            LoadedCase(
                case.case_id,
                torch.from_numpy(array.astype(np.float16)),
                torch.from_numpy(label_array.astype(np.uint8)),
                crop,
                torch.from_numpy(foreground),
            )
        )
        if progress is not None:
            progress()
    return loaded


def sample_batch(
    cases: list[LoadedCase],
    indices: list[int],
    patch: list[int],
    batch_size: int,
    generator: np.random.Generator,
    foreground_fraction: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random patches; a share of them centred on a random foreground voxel (nnU-Net)."""
    images, labels = [], []
    for _ in range(batch_size):
        case = cases[indices[int(generator.integers(len(indices)))]]
        shape = case.label.shape
        if generator.random() < foreground_fraction and len(case.foreground):
            centre = case.foreground[int(generator.integers(len(case.foreground)))].tolist()
            start = [
                int(np.clip(c - p // 2, 0, s - p))
                for c, p, s in zip(centre, patch, shape, strict=True)
            ]
        else:
            start = [
                int(generator.integers(0, s - p + 1)) for p, s in zip(patch, shape, strict=True)
            ]
        region = tuple(slice(b, b + p) for b, p in zip(start, patch, strict=True))
        images.append(case.image[(slice(None), *region)])
        labels.append(case.label[region])
    return torch.stack(images).float(), torch.stack(labels)[:, None].long()


class PatchDataset(torch.utils.data.Dataset):
    """One random patch per training case and visit, for loaders that need a dataset.

    DP-SGD (Opacus) samples cases with a Poisson sampler over such a dataset, which is what
    its privacy accounting assumes; the plain trainer samples patches with ``sample_batch``.
    """

    def __init__(
        self,
        cases: list[LoadedCase],
        patch: list[int],
        *,
        foreground_fraction: float,
        seed: int,
    ) -> None:
        self.cases = cases
        self.patch = patch
        self.foreground_fraction = foreground_fraction
        self.generator = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = sample_batch(
            self.cases, [index], self.patch, 1, self.generator, self.foreground_fraction
        )
        return images[0], labels[0]


def infinite_batches(loader: Any) -> Any:
    """Batches of ``loader`` epoch after epoch, skipping the empty ones Poisson sampling makes."""
    while True:
        for images, labels in loader:
            if len(images):
                yield images, labels
