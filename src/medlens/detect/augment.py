"""Box-aware augmentation and resizing for 2D detection (numpy + OpenCV).

Everything works on ``(H, W)`` uint8 grey pixels and pixel-edge ``xyxy`` boxes together, so
the boxes always follow the pixels. ``medlens.augment`` holds the project-wide transforms;
these are the few the detector trains with, kept here so boxes and pixels move in one call.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

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


@dataclasses.dataclass
class DetectionAugment:
    """Random scale, translation (crop), horizontal flip and intensity for training crops.

    ``input_size``: the long side an image is resized to (as at inference); ``crop_size``: the
    square training window; ``scale_range``: extra zoom factor; ``focus_probability``: chance
    that the window is centred near a random box (objects are small and rare).
    """

    input_size: int = 384
    crop_size: int = 256
    scale_range: tuple[float, float] = (0.7, 1.4)
    flip_probability: float = 0.5
    focus_probability: float = 0.7
    contrast_range: tuple[float, float] = (0.75, 1.3)
    brightness_range: tuple[float, float] = (-25.0, 25.0)
    gamma_range: tuple[float, float] = (0.75, 1.35)
    min_visible: float = 0.5

    def __call__(
        self, pixels: np.ndarray, boxes: Boxes, rng: np.random.Generator
    ) -> tuple[np.ndarray, Boxes]:
        height, width = pixels.shape
        scale = self.input_size / max(height, width) * rng.uniform(*self.scale_range)
        flip = rng.random() < self.flip_probability
        xyxy = boxes.xyxy * scale
        size = self.crop_size
        scaled_w, scaled_h = width * scale, height * scale
        if len(boxes) and rng.random() < self.focus_probability:
            box = xyxy[rng.integers(len(boxes))]
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            x0 = cx - rng.uniform(0.15, 0.85) * size
            y0 = cy - rng.uniform(0.15, 0.85) * size
        else:
            x0 = rng.uniform(min(0.0, scaled_w - size), max(0.0, scaled_w - size))
            y0 = rng.uniform(min(0.0, scaled_h - size), max(0.0, scaled_h - size))
        # one affine warp does scale + crop (+ flip) with a single interpolation
        matrix = np.array([[scale, 0.0, -x0], [0.0, scale, -y0]])
        if flip:
            matrix = np.array([[-1.0, 0.0, size], [0.0, 1.0, 0.0]]) @ np.vstack([matrix, [0, 0, 1]])
        out = cv2.warpAffine(
            pixels, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        )
        moved = xyxy - np.array([x0, y0, x0, y0])
        if flip:
            moved = np.stack([size - moved[:, 2], moved[:, 1], size - moved[:, 0], moved[:, 3]], 1)
        clipped = np.clip(moved, 0, size)
        area = np.prod(moved[:, 2:] - moved[:, :2], axis=1)
        visible = np.prod(np.clip(clipped[:, 2:] - clipped[:, :2], 0, None), axis=1)
        keep = (visible >= self.min_visible * np.maximum(area, 1e-6)) & (visible > 1.0)
        out = self.intensity(out, rng)
        return out, Boxes(clipped[keep], labels=boxes.labels[keep])

    def intensity(self, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        values = pixels.astype(np.float32) / 255.0
        values = np.power(values, rng.uniform(*self.gamma_range))
        values = (
            values * rng.uniform(*self.contrast_range) + rng.uniform(*self.brightness_range) / 255.0
        )
        return np.clip(values * 255.0, 0, 255).astype(np.uint8)
