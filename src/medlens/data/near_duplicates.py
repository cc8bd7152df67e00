"""Near-duplicate images across a split: leaked validation and grouping slices by scan.

Slice-level datasets exported from a labelling tool (e.g. the kidney-stone CT set) often put
neighbouring slices of one scan on both sides of the train/val split. Neighbours look alike
(thumbnail correlation about 0.99) and carry the same annotator's boxes, so validation then
measures recall of a seen scan, not accuracy on a new patient. This module finds such
neighbours from the pixels alone and groups them, so a split can hold out whole scans.

Similarity is the Pearson correlation of 64x64 grey thumbnails (area-averaged, so it ignores
noise and JPEG artefacts). On the kidney-stone set, slices of one scan have a nearest
neighbour at >= 0.97 (99 % of them), while the nearest slice of another scan is below 0.94
for 90 % of slices; 0.96 splits the 600 slices into about 50 scans.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> scan = rng.random((48, 48))
>>> slices = [scan, scan + 0.01 * rng.random((48, 48)), rng.random((48, 48))]
>>> similarity_groups(np.stack([thumbnail_signature(s) for s in slices])).tolist()
[0, 0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

SIGNATURE_SIZE_PX = 64
SAME_SCAN_SIMILARITY = 0.96
BLOCK_ROWS = 512  # rows of a similarity block: 512 x 100k images is 200 MB of float32


def thumbnail_signature(pixels: np.ndarray, *, size_px: int = SIGNATURE_SIZE_PX) -> np.ndarray:
    """Unit-norm, zero-mean ``size_px`` x ``size_px`` grey thumbnail of a 2D image.

    The dot product of two signatures is the correlation of the thumbnails (-1..1).
    ``pixels``: (rows, columns) grey or (rows, columns, channels) colour.
    """
    grey = pixels.mean(axis=2) if pixels.ndim == 3 else pixels
    thumb = cv2.resize(grey.astype(np.float32), (size_px, size_px), interpolation=cv2.INTER_AREA)
    thumb = thumb.ravel() - thumb.mean()
    norm = float(np.linalg.norm(thumb))
    return thumb / norm if norm > 0 else thumb


def similarity_groups(
    signatures: np.ndarray, *, threshold: float = SAME_SCAN_SIMILARITY
) -> np.ndarray:
    """Group index per image: images linked by a chain of similarities >= ``threshold``.

    Chains matter: the first and last slice of a scan differ, but each is close to its
    neighbour. ``signatures``: (images, features) from :func:`thumbnail_signature`.
    """
    rows, columns = [], []
    for start in range(0, len(signatures), BLOCK_ROWS):  # sparse links, never an N x N matrix
        block_rows, block_columns = np.nonzero(
            signatures[start : start + BLOCK_ROWS] @ signatures.T >= threshold
        )
        rows.append(block_rows + start)
        columns.append(block_columns)
    rows_all, columns_all = np.concatenate(rows), np.concatenate(columns)
    linked = coo_matrix(
        (np.ones(len(rows_all), bool), (rows_all, columns_all)),
        shape=(len(signatures), len(signatures)),
    )
    _, groups = connected_components(linked, directed=False)
    return groups


@dataclass(frozen=True)
class LeakReport:
    """How many validation images have a near-duplicate among the training images."""

    leaked: int
    total: int
    threshold: float
    examples: list[tuple[str, str, float]]  # (val name, nearest train name, similarity)

    def card_entry(self, noun: str) -> str:
        """One line for a model card, e.g. ``card_entry("image")``."""
        return (
            f"{self.leaked} of {self.total} val {noun}s have a training {noun} with thumbnail "
            f"similarity >= {self.threshold}"
        )

    def message(self, remedy: str) -> str:
        """The warning for a training log; ``remedy`` says what the user can do about it."""
        shown = "; ".join(f"{v} ~ {t} ({s:.3f})" for v, t, s in self.examples[:3])
        return (
            f"{self.leaked} of {self.total} validation images have a near-duplicate among the "
            f"training images (thumbnail similarity >= {self.threshold}), e.g. {shown}. "
            f"Validation then overstates accuracy on new patients; {remedy}"
        )


def validation_leaks(
    train_signatures: np.ndarray,
    val_signatures: np.ndarray,
    *,
    train_names: list[str],
    val_names: list[str],
    threshold: float = SAME_SCAN_SIMILARITY,
) -> LeakReport:
    """Validation images whose nearest training image is at least ``threshold`` similar."""
    if len(train_signatures) == 0 or len(val_signatures) == 0:
        return LeakReport(0, len(val_signatures), threshold, [])
    nearest = np.empty(len(val_signatures), int)
    best = np.empty(len(val_signatures), np.float32)
    for start in range(0, len(val_signatures), BLOCK_ROWS):  # memory: a block, not val x train
        similarity = val_signatures[start : start + BLOCK_ROWS] @ train_signatures.T
        nearest[start : start + len(similarity)] = similarity.argmax(axis=1)
        best[start : start + len(similarity)] = similarity.max(axis=1)
    order = np.argsort(-best)
    examples = [
        (val_names[i], train_names[nearest[i]], float(best[i]))
        for i in order
        if best[i] >= threshold
    ]
    return LeakReport(int((best >= threshold).sum()), len(val_names), threshold, examples)


def leaks_between(
    train_images: Sequence[np.ndarray],
    val_images: Sequence[np.ndarray],
    *,
    train_names: list[str],
    val_names: list[str],
    threshold: float = SAME_SCAN_SIMILARITY,
) -> LeakReport:
    """:func:`validation_leaks` of 2D images (grey or colour pixel arrays)."""
    if not train_images or not val_images:
        return LeakReport(0, len(val_images), threshold, [])
    return validation_leaks(
        np.stack([thumbnail_signature(pixels) for pixels in train_images]),
        np.stack([thumbnail_signature(pixels) for pixels in val_images]),
        train_names=train_names,
        val_names=val_names,
        threshold=threshold,
    )


def grouped_validation(groups: np.ndarray, *, val_fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean mask of validation images: whole groups, drawn at random (``seed``), until
    at least ``val_fraction`` of the images are in validation."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, not {val_fraction}")
    rng = np.random.default_rng(seed)
    target = val_fraction * len(groups)
    is_val = np.zeros(len(groups), bool)
    for group in rng.permutation(np.unique(groups)):
        if is_val.sum() >= target:
            break
        is_val |= groups == group
    if is_val.all():
        raise ValueError(
            "all images are near-duplicates of each other: no group is left to train on"
        )
    return is_val
