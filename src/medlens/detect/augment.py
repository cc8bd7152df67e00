"""Resizing and training-window sampling for 2D detection, and its ``medlens.augment`` setup.

:func:`letterbox` is what inference feeds the network; :class:`CropSampler` cuts training
windows from ``(H, W)`` uint8 grey pixels and moves their pixel-edge ``xyxy`` boxes with them;
the random transforms are the project-wide batched ones (``BoxAugment2D``, ``IntensityAugment``).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from medlens.augment.boxes import BoxAugment2D
from medlens.augment.intensity import IntensityAugment
from medlens.detect.boxes import Boxes


def letterbox(pixels: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Resize so the longer side is ``size`` and pad right/bottom to ``size x size``.

    Returns the padded pixels and the scale (network pixels per image pixel).

    Example:
        >>> out, scale = letterbox(np.zeros((100, 200), np.uint8), 64)
        >>> out.shape, scale
        ((64, 64), 0.32)
    """
    height, width = pixels.shape
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = cv2.resize(
        pixels, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    )
    out = np.zeros((size, size), dtype=pixels.dtype)
    out[:new_h, :new_w] = resized
    return out, scale


@dataclasses.dataclass(kw_only=True)
class CropSampler:
    """Training windows: letterbox scale, then a ``crop_size`` square, often around a box.

    ``input_size``: the long side an image is resized to (as at inference); ``crop_size``: the
    square training window in network pixels; ``focus_probability``: chance that the window
    is centred near a random box (objects are small and rare); boxes keeping less than
    ``min_visible`` of their area in the window are dropped. Only sampling happens here: the
    random flips, zoom, shift and intensity come from :mod:`medlens.augment` on the batch.

    Example:
        >>> sampler = CropSampler(input_size=64, crop_size=32)
        >>> boxes = Boxes(np.array([[40.0, 40.0, 60.0, 60.0]]))
        >>> crop, moved = sampler(np.zeros((128, 128), np.uint8), boxes, np.random.default_rng(0))
        >>> crop.shape, moved.size.tolist()
        ((32, 32), [[10.0, 10.0]])
    """

    input_size: int = 384
    crop_size: int = 256
    focus_probability: float = 0.7
    min_visible: float = 0.5

    def __call__(
        self, pixels: np.ndarray, boxes: Boxes, rng: np.random.Generator
    ) -> tuple[np.ndarray, Boxes]:
        resized, scale = letterbox(pixels, self.input_size)  # exactly what inference sees
        xyxy = boxes.xyxy * scale
        size = self.crop_size
        scaled_h, scaled_w = (round(n * scale) for n in pixels.shape)
        if len(boxes) and rng.random() < self.focus_probability:
            box = xyxy[rng.integers(len(boxes))]
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            x0 = cx - rng.uniform(0.15, 0.85) * size
            y0 = cy - rng.uniform(0.15, 0.85) * size
        else:
            x0 = rng.uniform(min(0.0, scaled_w - size), max(0.0, scaled_w - size))
            y0 = rng.uniform(min(0.0, scaled_h - size), max(0.0, scaled_h - size))
        x0, y0 = round(x0), round(y0)
        out = np.zeros((size, size), dtype=pixels.dtype)
        src_x, src_y = max(x0, 0), max(y0, 0)
        end_x, end_y = min(x0 + size, resized.shape[1]), min(y0 + size, resized.shape[0])
        if end_x > src_x and end_y > src_y:
            out[src_y - y0 : end_y - y0, src_x - x0 : end_x - x0] = resized[
                src_y:end_y, src_x:end_x
            ]
        moved = Boxes(xyxy - np.array([x0, y0, x0, y0]), labels=boxes.labels)
        return out, visible_part(moved, (0, 0, size, size), min_visible=self.min_visible)


def visible_part(boxes: Boxes, region: tuple[int, int, int, int], *, min_visible: float) -> Boxes:
    """Boxes clipped to ``region`` (x0, y0, x1, y1); those keeping < ``min_visible`` dropped.

    Example:
        >>> boxes = Boxes(np.array([[5.0, 5.0, 15.0, 15.0], [8.0, 0.0, 12.0, 4.0]]))
        >>> visible_part(boxes, (0, 0, 10, 10), min_visible=0.3).xyxy.tolist()
        [[8.0, 0.0, 10.0, 4.0]]
    """
    x0, y0, x1, y1 = region
    clipped = np.clip(boxes.xyxy, [x0, y0, x0, y0], [x1, y1, x1, y1])
    area = np.prod(boxes.xyxy[:, 2:] - boxes.xyxy[:, :2], axis=1)
    visible = np.prod(np.clip(clipped[:, 2:] - clipped[:, :2], 0, None), axis=1)
    keep = (visible >= min_visible * np.maximum(area, 1e-6)) & (visible > 1.0)
    return Boxes(clipped[keep], labels=boxes.labels[keep])


def mosaic(
    windows: list[tuple[np.ndarray, Boxes]],
    rng: np.random.Generator,
    *,
    min_visible: float = 0.5,
) -> tuple[np.ndarray, Boxes]:
    """YOLO's mosaic: one square window made of the middle parts of four windows.

    The four ``(S, S)`` windows (from :class:`CropSampler`, so at inference scale: nothing is
    shrunk, which small stones could not afford) fill the quadrants around a random split
    point in the middle half of the window; each quadrant shows the central part of its
    window, where a focused crop puts its object. Boxes follow their pixels; boxes keeping
    less than ``min_visible`` of their area are dropped. More objects and unrelated contexts
    per step, for the same compute, is the regularisation YOLO relies on for small datasets.

    Example:
        >>> window = np.full((64, 64), 9, np.uint8), Boxes(np.array([[24.0, 24.0, 40.0, 40.0]]))
        >>> pixels, boxes = mosaic([window] * 4, np.random.default_rng(0), min_visible=0.1)
        >>> pixels.shape, bool((pixels == 9).all()), len(boxes)
        ((64, 64), True, 4)
    """
    if len(windows) != 4:
        raise ValueError(f"mosaic takes 4 windows, got {len(windows)}")
    size = windows[0][0].shape[0]
    split_x, split_y = (round(rng.uniform(0.25, 0.75) * size) for _ in range(2))
    out = np.zeros((size, size), dtype=windows[0][0].dtype)
    parts = []
    quadrants = [
        (0, 0, split_x, split_y),
        (split_x, 0, size, split_y),
        (0, split_y, split_x, size),
        (split_x, split_y, size, size),
    ]
    for (pixels, boxes), (qx0, qy0, qx1, qy1) in zip(windows, quadrants, strict=True):
        # the quadrant-sized middle of this window goes to the quadrant
        src_x, src_y = (size - (qx1 - qx0)) // 2, (size - (qy1 - qy0)) // 2
        out[qy0:qy1, qx0:qx1] = pixels[src_y : src_y + qy1 - qy0, src_x : src_x + qx1 - qx0]
        shift = np.array([qx0 - src_x, qy0 - src_y] * 2, dtype=np.float64)
        moved = Boxes(boxes.xyxy + shift, labels=boxes.labels)
        parts.append(visible_part(moved, (qx0, qy0, qx1, qy1), min_visible=min_visible))
    xyxy = np.concatenate([p.xyxy for p in parts]).reshape(-1, 4)
    labels = np.concatenate([p.labels for p in parts])
    return out, Boxes(xyxy, labels=labels)


def default_box_augment() -> BoxAugment2D:
    """Flip, zoom and shift with exact boxes (``medlens.augment``) for detector training."""
    return BoxAugment2D(
        horizontal_flip_prob=0.5,
        scale_prob=0.7,
        scale=(0.7, 1.4),
        translate_prob=0.5,
        translate_fraction=0.1,
        min_visible_fraction=0.5,
    )


def default_intensity_augment() -> IntensityAugment:
    """Gamma, contrast and light noise on 0..1 grey pixels (``medlens.augment``)."""
    return IntensityAugment(
        spatial_dims=2,
        gamma_prob=0.7,
        gamma=(0.75, 1.35),
        contrast_prob=0.7,
        contrast=(0.75, 1.3),
        noise_prob=0.2,
        noise_std=0.02,
    )
