"""Detection metrics used for per-epoch validation: AP at an IoU threshold and FROC.

``medlens.evaluate`` holds the project-wide evaluation; these are small, dependency-free
versions so training can validate on its own.

Example:
    >>> from medlens.detect.boxes import Boxes
    >>> truth = [Boxes(np.array([[0.0, 0.0, 10.0, 10.0]]))]
    >>> found = [Boxes(np.array([[0.0, 0.0, 10.0, 9.0]]), scores=np.array([0.9]))]
    >>> round(average_precision(found, truth), 3), froc_sensitivity(found, truth, fp_per_image=1.0)
    (1.0, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medlens.detect.boxes import Boxes, box_iou


def match_detections(
    detections: Sequence[Boxes], truths: Sequence[Boxes], *, iou_threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores and true-positive flags of all detections (greedy by score, per class), and the
    number of ground-truth boxes."""
    scores: list[float] = []
    hits: list[bool] = []
    total = 0
    for found, truth in zip(detections, truths, strict=True):
        total += len(truth)
        order = np.argsort(-found.scores, kind="stable")
        used = np.zeros(len(truth), dtype=bool)
        iou = box_iou(found.xyxy, truth.xyxy) if len(found) and len(truth) else None
        for index in order:
            hit = False
            if iou is not None:
                candidates = np.where(
                    (~used) & (truth.labels == found.labels[index]), iou[index], -1.0
                )
                best = int(np.argmax(candidates))
                if candidates[best] >= iou_threshold:
                    used[best] = True
                    hit = True
            scores.append(float(found.scores[index]))
            hits.append(hit)
    order = np.argsort(-np.asarray(scores), kind="stable")
    return np.asarray(scores)[order], np.asarray(hits, dtype=bool)[order], total


def average_precision(
    detections: Sequence[Boxes], truths: Sequence[Boxes], *, iou_threshold: float = 0.5
) -> float:
    """Area under the interpolated precision-recall curve (101 recall points, as COCO)."""
    _, hits, total = match_detections(detections, truths, iou_threshold=iou_threshold)
    if total == 0:
        return float("nan")
    if len(hits) == 0:
        return 0.0
    tp = np.cumsum(hits)
    fp = np.cumsum(~hits)
    recall = tp / total
    precision = tp / np.maximum(tp + fp, 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    points = np.linspace(0, 1, 101)
    index = np.searchsorted(recall, points, side="left")
    return float(np.mean([envelope[i] if i < len(envelope) else 0.0 for i in index]))


def froc_sensitivity(
    detections: Sequence[Boxes],
    truths: Sequence[Boxes],
    *,
    fp_per_image: float = 1.0,
    iou_threshold: float = 0.5,
) -> float:
    """Highest sensitivity reached with at most ``fp_per_image`` false positives per image."""
    _, hits, total = match_detections(detections, truths, iou_threshold=iou_threshold)
    if total == 0:
        return float("nan")
    fps = np.cumsum(~hits) / max(len(truths), 1)
    tps = np.cumsum(hits)
    allowed = fps <= fp_per_image
    return float(tps[allowed].max() / total) if allowed.any() else 0.0
