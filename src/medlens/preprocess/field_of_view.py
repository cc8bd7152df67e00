"""The endoscope's field of view in a frame: the bright region inside black borders.

Video processors show the endoscope image inside a black screen, with patient text and
indicators beside it, and many hospitals record that whole screen. A 2D model that resizes
the frame to its input size then sees the scene squeezed into part of its input, at another
scale and aspect than in training (benchmarks/results/polyp_robustness.md: the polyp model
lost 0.135 Dice on such screen captures). :func:`field_of_view_box` finds the field, so that
prediction can run on it and paste the result back (``crop_to_field_of_view`` in the plan).
"""

from __future__ import annotations

import cv2
import numpy as np

#: crop only when the field's box covers at most this share of the frame's area: a frame whose
#: borders are thin (all but 3 of 898 Kvasir-SEG frames) is left whole, as the model was trained
MAX_FIELD_SHARE = 0.8
#: and only when the field is a substantial part of the screen (not a thumbnail or a logo)
MIN_FIELD_SHARE = 0.15


def field_of_view_box(
    frame: np.ndarray, *, black_level: float = 0.08
) -> tuple[slice, slice] | None:
    """Rows and columns of the field of view of ``frame`` (rows, columns[, channels]), or None
    where the frame is (nearly) all field or holds no clear one.

    The field is the largest connected region brighter than ``black_level`` (a share of the
    frame's maximum value) after an opening that erases text strokes and thin indicators
    (1.5% of the shorter side).

    Example:
        >>> screen = np.zeros((720, 1280, 3), np.uint8)
        >>> screen[72:648, 160:736] = 120  # the endoscope image
        >>> screen[100:130, 800:1100] = 255  # patient text (a thin bright block here)
        >>> field_of_view_box(screen)
        (slice(72, 648, None), slice(160, 736, None))
        >>> field_of_view_box(np.full((256, 256, 3), 90, np.uint8)) is None
        True
    """
    brightness = frame.max(axis=2) if frame.ndim == 3 else frame
    peak = float(brightness.max())
    if peak <= 0:
        return None
    bright = (brightness > black_level * peak).astype(np.uint8)
    width = max(3, round(0.015 * min(bright.shape)))
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (width, width))
    bright = cv2.morphologyEx(bright, cv2.MORPH_OPEN, kernel)
    count, _, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=8)
    if count < 2:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    left, top, box_width, box_height = stats[largest, :4]
    share = box_width * box_height / bright.size
    if not MIN_FIELD_SHARE <= share <= MAX_FIELD_SHARE:
        return None
    return slice(int(top), int(top + box_height)), slice(int(left), int(left + box_width))
