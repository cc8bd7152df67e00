"""Burned-in annotations: known per-device regions (recipe) plus text detection.

Text detection looks for what overlay text is on screen captures: bright, thin,
high-contrast strokes of character size that line up horizontally. A white top-hat keeps
thin bright structures, Otsu plus a brightness floor binarises them, connected components of
character size are kept, and a horizontal closing groups them into lines; a line with at least
two characters (or one wide word) is text. Tissue speckle is dimmer and not stroke-shaped; long
echo lines are wider than any character.
"""

from __future__ import annotations

import dataclasses
import functools
from importlib import resources
from typing import Any

import cv2
import numpy as np
import yaml

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (end exclusive), pixels


@dataclasses.dataclass(frozen=True)
class RecipeEntry:
    label: str
    match: dict[str, Any]
    regions: tuple[Box, ...]

    def matches(self, header: Any) -> bool:
        for keyword, wanted in self.match.items():
            value = getattr(header, keyword, None)
            if value is None:
                return False
            if isinstance(wanted, (int, float)):
                try:
                    if float(value) != float(wanted):
                        return False
                except (TypeError, ValueError):
                    return False
            else:
                text = "\\".join(map(str, value)) if isinstance(value, (list, tuple)) else value
                if str(wanted).lower() not in str(text).lower():
                    return False
        return True


@functools.lru_cache(maxsize=1)
def load_recipe() -> tuple[RecipeEntry, ...]:
    """``burned_in_regions.yaml``, parsed once per process."""
    text = resources.files("medlens.privacy").joinpath("burned_in_regions.yaml").read_text()
    return tuple(
        RecipeEntry(
            label=item["label"],
            match=dict(item["match"]),
            regions=tuple(tuple(int(v) for v in box) for box in item["regions"]),  # type: ignore[misc]
        )
        for item in yaml.safe_load(text)
    )


def recipe_regions(header: Any) -> list[tuple[str, Box]]:
    """(label, box) of every recipe entry that matches ``header`` (a pydicom Dataset)."""
    return [(e.label, box) for e in load_recipe() if e.matches(header) for box in e.regions]


def detect_text_boxes(gray: np.ndarray, *, min_height: int = 6, max_height: int = 48) -> list[Box]:
    """Boxes around lines of overlay text in a 2D uint8 image.

    Example:
        >>> image = np.zeros((100, 300), np.uint8)
        >>> _ = cv2.putText(image, "DOE JOHN 1951", (10, 50), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 255, 2)
        >>> boxes = detect_text_boxes(image)
        >>> len(boxes) == 1 and boxes[0][0] <= 10 and boxes[0][2] >= 190
        True
    """
    if gray.dtype != np.uint8:
        low, high = float(gray.min()), float(gray.max())
        gray = ((gray - low) * (255.0 / max(high - low, 1e-6))).astype(np.uint8)
    # thin bright strokes: white top-hat with a kernel wider than a stroke
    tophat = cv2.morphologyEx(
        gray, cv2.MORPH_TOPHAT, cv2.getStructuringElement(cv2.MORPH_RECT, (9, 9))
    )
    otsu, _ = cv2.threshold(tophat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    floor = max(otsu, 60.0)
    strokes = ((tophat >= floor) & (gray >= 120)).astype(np.uint8)
    count, _, stats, _ = _components(strokes)
    characters = np.zeros_like(strokes)
    for index in range(1, count):
        x, y, w, h, area = stats[index]
        character_sized = 3 <= h <= max_height and w <= 2 * max_height and area >= 4
        stroke_like = area <= 0.9 * w * h or w <= 3  # not a filled block (a thin bar is fine)
        if character_sized and stroke_like:
            characters[y : y + h, x : x + w] |= strokes[y : y + h, x : x + w]
    # join characters of one line: close gaps of about one character width
    joined = cv2.morphologyEx(
        characters, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (15, 3))
    )
    count, _, stats, _ = _components(joined)
    boxes: list[Box] = []
    for index in range(1, count):
        x, y, w, h, _ = stats[index]
        pieces = cv2.connectedComponents(characters[y : y + h, x : x + w], connectivity=8)[0] - 1
        if min_height <= h <= max_height and (pieces >= 2 and w >= h or w >= 2 * h):
            margin = 2
            boxes.append(
                (
                    max(int(x) - margin, 0),
                    max(int(y) - margin, 0),
                    min(int(x + w) + margin, gray.shape[1]),
                    min(int(y + h) + margin, gray.shape[0]),
                )
            )
    return boxes


def _components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """8-connected components with stats; 16-bit labels when they fit (3x faster)."""
    label_type = cv2.CV_16U if int(np.count_nonzero(mask)) < 65535 else cv2.CV_32S
    return cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=label_type)


def to_gray(frame: np.ndarray) -> np.ndarray:
    """(rows, cols) or (rows, cols, 3) -> (rows, cols) uint8-ish for detection."""
    if frame.ndim == 3:
        return frame.max(axis=2)
    return frame


def blank(pixels: np.ndarray, boxes: list[Box], *, color: bool, value: float = 0) -> np.ndarray:
    """Copy of ``pixels`` ((frames,) rows, cols(, samples)) with every box set to ``value``."""
    out = pixels.copy()
    for x0, y0, x1, y1 in boxes:
        if color:
            out[..., y0:y1, x0:x1, :] = value
        else:
            out[..., y0:y1, x0:x1] = value
    return out
