"""Boxes in pixel and physical coordinates, 2D and 3D, with IoU and non-maximum suppression.

Pixel boxes are ``xyxy`` in the image's index space (i along columns = x, j along rows = y,
k across slices), corners at pixel *edges*: a box covering pixel column 3 only is
``x0=3, x1=4``. 3D boxes are ``(x0, y0, z0, x1, y1, z1)``. ``to_world`` maps corners to LPS mm
through the image geometry (pixel centres sit at integer indices, so an edge is at ``-0.5``).

Example:
    >>> corners = np.array([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]])
    >>> b = Boxes(corners, scores=np.array([0.9, 0.8]))
    >>> len(b.nms(iou_threshold=0.5))
    1
"""

from __future__ import annotations

import dataclasses

import numpy as np

from medlens.image import Image


@dataclasses.dataclass
class Boxes:
    """``xyxy`` (N, 4) or (N, 6) pixel-edge corners, ``scores`` (N,), integer ``labels`` (N,)."""

    xyxy: np.ndarray
    scores: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, dtype=np.float64)
        if self.xyxy.size == 0:
            self.xyxy = self.xyxy.reshape(0, self.xyxy.shape[-1] if self.xyxy.ndim == 2 else 4)
        if self.xyxy.ndim != 2 or self.xyxy.shape[1] not in (4, 6):
            raise ValueError(
                f"boxes need 4 (2D) or 6 (3D) coordinates, got shape {self.xyxy.shape}"
            )
        n = len(self.xyxy)
        self.scores = (
            np.ones(n) if self.scores is None else np.asarray(self.scores, dtype=np.float64)
        )
        self.labels = (
            np.zeros(n, dtype=np.int64)
            if self.labels is None
            else np.asarray(self.labels, dtype=np.int64)
        )

    def __len__(self) -> int:
        return len(self.xyxy)

    @property
    def ndim(self) -> int:
        return self.xyxy.shape[1] // 2

    @property
    def size(self) -> np.ndarray:
        """Extent per axis in pixels, (N, 2) or (N, 3)."""
        return self.xyxy[:, self.ndim :] - self.xyxy[:, : self.ndim]

    def __getitem__(self, index: object) -> Boxes:
        return Boxes(self.xyxy[index], self.scores[index], self.labels[index])  # type: ignore[index]

    @classmethod
    def empty(cls, ndim: int = 2) -> Boxes:
        return cls(np.zeros((0, 2 * ndim)))

    def to_world(self, image: Image) -> np.ndarray:
        """Corner positions in LPS mm: (N, 2, 3) = (first corner, last corner) per box."""
        n, d = len(self), self.ndim
        corners = np.zeros((n, 2, 3))
        corners[:, 0, :d] = self.xyxy[:, :d] - 0.5
        corners[:, 1, :d] = self.xyxy[:, d:] - 0.5
        flat = corners.reshape(-1, 3)
        world = image.origin_mm + (image.direction @ (image.spacing_mm * flat).T).T
        return world.reshape(n, 2, 3)

    def size_mm(self, image: Image) -> np.ndarray:
        """Extent per axis in mm, (N, 2) or (N, 3)."""
        return self.size * np.asarray(image.spacing_mm)[: self.ndim]

    def nms(self, *, iou_threshold: float = 0.5) -> Boxes:
        """Greedy per-class non-maximum suppression, highest score first."""
        keep: list[int] = []
        for label in np.unique(self.labels):
            index = np.flatnonzero(self.labels == label)
            index = index[np.argsort(-self.scores[index], kind="stable")]
            while len(index):
                best, index = index[0], index[1:]
                keep.append(int(best))
                if len(index):
                    index = index[
                        box_iou(self.xyxy[best : best + 1], self.xyxy[index])[0] <= iou_threshold
                    ]
        keep.sort(key=lambda i: -self.scores[i])
        return self[np.asarray(keep, dtype=np.int64)]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of 2D or 3D ``xyxy`` boxes."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    d = a.shape[1] // 2
    low = np.maximum(a[:, None, :d], b[None, :, :d])
    high = np.minimum(a[:, None, d:], b[None, :, d:])
    inter = np.prod(np.clip(high - low, 0, None), axis=-1)
    vol_a = np.prod(a[:, d:] - a[:, :d], axis=-1)
    vol_b = np.prod(b[:, d:] - b[:, :d], axis=-1)
    union = vol_a[:, None] + vol_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
