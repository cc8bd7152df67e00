"""Detection metrics for 2D and 3D boxes: COCO-style AP, mAP@[.5:.95], FROC and CPM.

Boxes are corner arrays: ``(N, 4)`` as ``x1, y1, x2, y2`` for 2D and ``(N, 6)`` as
``x1, y1, z1, x2, y2, z2`` for 3D, in any consistent unit (pixels or mm). Areas and volumes
are continuous (``x2 - x1``, no "+1" pixel convention), as pycocotools computes them.

**Matching** (per image, per class, as COCOeval): detections are taken in descending score
order (stable sort), at most ``max_detections`` per image; each takes the still-unmatched
ground-truth box of highest IoU if that IoU >= the threshold, else it is a false positive.

**AP** is computed over all images of a class from the score-ranked detections: precision is
made monotone (the maximum precision at any higher recall), then

* ``interpolation="coco101"`` (default, what pycocotools reports): the mean of the
  interpolated precision at the 101 recall points 0, 0.01, ..., 1 (0 past the last recall);
* ``interpolation="all"``: the area under the monotone precision-recall curve (all-point
  interpolation, PASCAL VOC 2010+).

A class without ground-truth boxes has undefined AP (``NaN``, left out of means and counted).

**FROC** (LUNA16 style): a detection is a true positive when it matches a lesion (IoU >=
``iou_threshold``, 0.1 by default, as loose hit criteria are usual for lesion detection);
sensitivity is plotted against false positives per image, where the number of images counts
every image, with or without lesions or detections. Sensitivity at a rate is the highest
sensitivity reached while the false-positive rate is <= that rate. CPM is the mean sensitivity
at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medlens.errors import MedlensError

AP_IOU_THRESHOLDS = (0.1, 0.25, 0.5, 0.75)
COCO_IOU_THRESHOLDS = tuple(np.round(np.linspace(0.5, 0.95, 10), 2).tolist())
FROC_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def _boxes(boxes: Any, name: str) -> np.ndarray:
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return array.reshape(0, array.shape[-1] if array.ndim == 2 else 4)
    if array.ndim != 2 or array.shape[1] not in (4, 6):
        raise MedlensError(
            f"{name} must be an (N, 4) or (N, 6) array of box corners, got {array.shape}"
        )
    half = array.shape[1] // 2
    if np.any(array[:, half:] < array[:, :half]):
        raise MedlensError(f"{name} has boxes with max corner < min corner (need x1<=x2 ...)")
    return array


def box_iou(boxes_a: Any, boxes_b: Any) -> np.ndarray:
    """Pairwise IoU of 2D ``(N, 4)`` or 3D ``(N, 6)`` corner boxes -> ``(N, M)``.

    Example:
        >>> box_iou([[0, 0, 2, 2]], [[1, 0, 3, 2], [0, 0, 2, 2]]).round(4).tolist()
        [[0.3333, 1.0]]
    """
    a = _boxes(boxes_a, "boxes_a")
    b = _boxes(boxes_b, "boxes_b")
    if a.shape[1] != b.shape[1] and len(a) and len(b):
        raise MedlensError("cannot compare 2D boxes with 3D boxes")
    half = a.shape[1] // 2
    low = np.maximum(a[:, None, :half], b[None, :, :half])
    high = np.minimum(a[:, None, half:], b[None, :, half:])
    intersection = np.clip(high - low, 0, None).prod(axis=2)
    size_a = (a[:, half:] - a[:, :half]).prod(axis=1)
    size_b = (b[:, half:] - b[:, :half]).prod(axis=1)
    union = size_a[:, None] + size_b[None, :] - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, intersection / union, 0.0)


def match_detections(
    pred_boxes: Any,
    pred_scores: Any,
    pred_image_ids: Any,
    gt_boxes: Any,
    gt_image_ids: Any,
    *,
    iou_threshold: float = 0.5,
    max_detections: int | None = 100,
) -> tuple[np.ndarray, np.ndarray, int]:
    """COCO matching of one class: (scores, is_true_positive) of kept detections, and #GT.

    Detections beyond ``max_detections`` per image (by score) are dropped, as COCOeval does.
    """
    pred = _boxes(pred_boxes, "pred_boxes")
    gt = _boxes(gt_boxes, "gt_boxes")
    scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
    pred_ids = np.asarray(pred_image_ids).reshape(-1)
    gt_ids = np.asarray(gt_image_ids).reshape(-1)
    if not (len(pred) == len(scores) == len(pred_ids)):
        raise MedlensError("pred_boxes, pred_scores and pred_image_ids differ in length")
    if len(gt) != len(gt_ids):
        raise MedlensError("gt_boxes and gt_image_ids differ in length")
    kept_scores: list[np.ndarray] = []
    kept_hits: list[np.ndarray] = []
    threshold = min(iou_threshold, 1 - 1e-10)  # as COCOeval
    for image_id in np.unique(pred_ids):
        in_image = np.flatnonzero(pred_ids == image_id)
        order = in_image[np.argsort(-scores[in_image], kind="mergesort")]
        if max_detections is not None:
            order = order[:max_detections]
        truths = gt[gt_ids == image_id]
        hits = np.zeros(len(order), bool)
        if len(truths):
            ious = box_iou(pred[order], truths)
            taken = np.zeros(len(truths), bool)
            for row in range(len(order)):
                candidates = np.where(taken, -1.0, ious[row])
                best = int(np.argmax(candidates))
                if candidates[best] >= threshold:
                    taken[best] = True
                    hits[row] = True
        kept_scores.append(scores[order])
        kept_hits.append(hits)
    if not kept_scores:
        return np.zeros(0), np.zeros(0, bool), len(gt)
    return np.concatenate(kept_scores), np.concatenate(kept_hits), len(gt)


def _ranked(scores: np.ndarray, hits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="mergesort")
    hits = hits[order]
    return np.cumsum(hits), np.cumsum(~hits)


def average_precision(
    pred_boxes: Any,
    pred_scores: Any,
    pred_image_ids: Any,
    gt_boxes: Any,
    gt_image_ids: Any,
    *,
    iou_threshold: float = 0.5,
    interpolation: str = "coco101",
    max_detections: int | None = 100,
) -> float:
    """AP of one class at one IoU threshold (``NaN`` if there is no ground truth).

    Example (two images; one hit, one miss-localised box, one missed lesion):
        >>> ap = average_precision(
        ...     [[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.8], ["a", "b"],
        ...     [[0, 0, 10, 10], [0, 0, 10, 10]], ["a", "b"], interpolation="all")
        >>> ap
        0.5
    """
    scores, hits, num_gt = match_detections(
        pred_boxes,
        pred_scores,
        pred_image_ids,
        gt_boxes,
        gt_image_ids,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
    )
    return _ap_of_matches(scores, hits, num_gt, interpolation)


def _ap_of_matches(scores: np.ndarray, hits: np.ndarray, num_gt: int, interpolation: str) -> float:
    if num_gt == 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    true_positives, false_positives = _ranked(scores, hits)
    recall = true_positives / num_gt
    precision = true_positives / np.maximum(true_positives + false_positives, np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # monotone envelope
    if interpolation == "coco101":
        points = np.linspace(0.0, 1.0, 101)
        index = np.searchsorted(recall, points, side="left")
        sampled = np.where(
            index < len(precision), precision[np.minimum(index, len(precision) - 1)], 0
        )
        return float(sampled.mean())
    if interpolation == "all":
        recall_steps = np.concatenate([[0.0], recall])
        return float(np.sum((recall_steps[1:] - recall_steps[:-1]) * precision))
    raise MedlensError(f"unknown interpolation '{interpolation}'", hint="use 'coco101' or 'all'")


def average_precision_ci(
    pred_boxes: Any,
    pred_scores: Any,
    pred_image_ids: Any,
    gt_boxes: Any,
    gt_image_ids: Any,
    *,
    pred_labels: Any = None,
    gt_labels: Any = None,
    image_ids: Sequence[Any] | None = None,
    iou_threshold: float = 0.5,
    confidence: float = 0.95,
    num_resamples: int = 2000,
    seed: int = 0,
    interpolation: str = "coco101",
    max_detections: int | None = 100,
) -> tuple[float, float, float]:
    """AP with a percentile bootstrap interval over images: ``(ap, low, high)``.

    Images are resampled with replacement (a resampled image brings all its boxes and
    detections), so the interval shows how much AP would move on another set of images of
    the same kind: with ~150 boxes it is several points wide. ``image_ids`` lists every image
    (images without boxes or detections count too); by default the ids seen in either list.
    With ``pred_labels`` and ``gt_labels`` it is the mean AP over the classes that have ground
    truth (in the data, and in each resample), boxes matched within their class.

    Example:
        >>> ap, low, high = average_precision_ci(
        ...     [[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.8], ["a", "b"],
        ...     [[0, 0, 10, 10], [0, 0, 10, 10]], ["a", "b"], num_resamples=200)
        >>> round(ap, 3), 0.0 <= low <= ap <= high <= 1.0
        (0.505, True)
    """
    pred_ids = np.asarray(pred_image_ids).reshape(-1)
    gt_ids = np.asarray(gt_image_ids).reshape(-1)
    images = (
        list(image_ids)
        if image_ids is not None
        else list(dict.fromkeys([*pred_ids.tolist(), *gt_ids.tolist()]))
    )
    pred = _boxes(pred_boxes, "pred_boxes")
    gt = _boxes(gt_boxes, "gt_boxes")
    scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
    pred_cls = np.zeros(len(pred), int) if pred_labels is None else np.asarray(pred_labels)
    gt_cls = np.zeros(len(gt), int) if gt_labels is None else np.asarray(gt_labels)
    if len(pred_cls) != len(pred) or len(gt_cls) != len(gt):
        raise MedlensError("labels and boxes differ in length")
    classes = sorted(set(pred_cls.tolist()) | set(gt_cls.tolist())) or [0]
    # (scores, hits, number of boxes) of each class in each image, matched once
    per_image: list[dict[int, tuple[np.ndarray, np.ndarray, int]]] = []
    for image in images:
        in_pred, in_gt = pred_ids == image, gt_ids == image
        matches = {}
        for cls in classes:
            p, g = in_pred & (pred_cls == cls), in_gt & (gt_cls == cls)
            matches[cls] = match_detections(
                pred[p],
                scores[p],
                np.zeros(int(p.sum())),
                gt[g],
                np.zeros(int(g.sum())),
                iou_threshold=iou_threshold,
                max_detections=max_detections,
            )
        per_image.append(matches)

    def ap_of(indices: np.ndarray) -> float:
        chosen = [per_image[i] for i in indices]
        values = [
            _ap_of_matches(
                np.concatenate([c[cls][0] for c in chosen]) if chosen else np.zeros(0),
                np.concatenate([c[cls][1] for c in chosen]) if chosen else np.zeros(0, bool),
                sum(c[cls][2] for c in chosen),
                interpolation,
            )
            for cls in classes
        ]
        finite = [v for v in values if np.isfinite(v)]
        return float(np.mean(finite)) if finite else float("nan")

    point = ap_of(np.arange(len(images)))
    rng = np.random.default_rng(seed)
    resampled = np.array(
        [ap_of(rng.integers(len(images), size=len(images))) for _ in range(num_resamples)]
    )
    resampled = resampled[np.isfinite(resampled)]
    if not len(images) or resampled.size == 0:
        return point, float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(resampled, [tail, 100 - tail])
    return point, float(low), float(high)


def froc(
    pred_boxes: Any,
    pred_scores: Any,
    pred_image_ids: Any,
    gt_boxes: Any,
    gt_image_ids: Any,
    *,
    num_images: int,
    iou_threshold: float = 0.1,
    fp_rates: Sequence[float] = FROC_RATES,
) -> dict[str, Any]:
    """FROC of one class: sensitivity at false positives per image, and the CPM.

    Args:
        num_images: all images evaluated, including those without lesions or detections.

    Returns:
        ``{"fp_rates": [...], "sensitivities": [...], "cpm": float,
        "curve_fp_per_image": array, "curve_sensitivity": array}``; sensitivities are ``NaN``
        when there is no lesion.

    Example:
        >>> result = froc([[0, 0, 4, 4], [9, 9, 12, 12]], [0.9, 0.5], [0, 0],
        ...               [[0, 0, 4, 4]], [0], num_images=2)
        >>> result["sensitivities"][:2], result["cpm"]
        ([1.0, 1.0], 1.0)
    """
    if num_images <= 0:
        raise MedlensError("FROC needs num_images > 0")
    scores, hits, num_gt = match_detections(
        pred_boxes,
        pred_scores,
        pred_image_ids,
        gt_boxes,
        gt_image_ids,
        iou_threshold=iou_threshold,
        max_detections=None,
    )
    if num_gt == 0:
        nan = [float("nan")] * len(fp_rates)
        return {
            "fp_rates": list(fp_rates),
            "sensitivities": nan,
            "cpm": float("nan"),
            "curve_fp_per_image": np.zeros(0),
            "curve_sensitivity": np.zeros(0),
        }
    true_positives, false_positives = _ranked(scores, hits)
    sensitivity = np.concatenate([[0.0], true_positives / num_gt])
    fp_per_image = np.concatenate([[0.0], false_positives / num_images])
    values = [float(sensitivity[fp_per_image <= rate].max()) for rate in fp_rates]
    return {
        "fp_rates": list(fp_rates),
        "sensitivities": values,
        "cpm": float(np.mean(values)),
        "curve_fp_per_image": fp_per_image,
        "curve_sensitivity": sensitivity,
    }


def detection_metrics(
    pred_boxes: Any,
    pred_scores: Any,
    pred_image_ids: Any,
    gt_boxes: Any,
    gt_image_ids: Any,
    *,
    pred_labels: Any = None,
    gt_labels: Any = None,
    num_images: int | None = None,
    interpolation: str = "coco101",
    max_detections: int | None = 100,
    froc_iou_threshold: float = 0.1,
) -> list[dict[str, Any]]:
    """Per-class AP@0.1/0.25/0.5/0.75, mAP@[.5:.95], FROC sensitivities and CPM.

    Labels default to 0 for every box. ``num_images`` defaults to the number of distinct
    image ids among predictions and ground truth; pass it when some images have neither.

    Returns one dict per class with keys ``class, n_gt, n_pred, ap10, ap25, ap50, ap75,
    map50_95, froc_0.125 ... froc_8, cpm``.
    """
    pred = _boxes(pred_boxes, "pred_boxes")
    gt = _boxes(gt_boxes, "gt_boxes")
    scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
    pred_ids = np.asarray(pred_image_ids).reshape(-1)
    gt_ids = np.asarray(gt_image_ids).reshape(-1)
    pred_cls = np.zeros(len(pred), int) if pred_labels is None else np.asarray(pred_labels)
    gt_cls = np.zeros(len(gt), int) if gt_labels is None else np.asarray(gt_labels)
    if num_images is None:
        num_images = len(set(pred_ids.tolist()) | set(gt_ids.tolist()))
    rows = []
    for cls in sorted(set(pred_cls.tolist()) | set(gt_cls.tolist())):
        p = pred_cls == cls
        g = gt_cls == cls
        args = (pred[p], scores[p], pred_ids[p], gt[g], gt_ids[g])
        row: dict[str, Any] = {"class": cls, "n_gt": int(g.sum()), "n_pred": int(p.sum())}
        for threshold in AP_IOU_THRESHOLDS:
            row[f"ap{round(threshold * 100):02d}"] = average_precision(
                *args,
                iou_threshold=threshold,
                interpolation=interpolation,
                max_detections=max_detections,
            )
        coco = [
            average_precision(
                *args,
                iou_threshold=threshold,
                interpolation=interpolation,
                max_detections=max_detections,
            )
            for threshold in COCO_IOU_THRESHOLDS
        ]
        row["map50_95"] = float(np.mean(coco))
        result = froc(*args, num_images=max(num_images, 1), iou_threshold=froc_iou_threshold)
        for rate, value in zip(result["fp_rates"], result["sensitivities"], strict=True):
            row[f"froc_{rate:g}"] = value
        row["cpm"] = result["cpm"]
        rows.append(row)
    return rows


def flatten_box_lists(
    lists: Sequence[Any], *, width: int = 4, scores: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-image box lists -> ``(corners, scores, labels, image_indices)`` over all images.

    ``lists[i]`` has ``xyxy`` ``(N, width)`` corners and ``labels`` (and ``scores`` unless
    ``scores=False``, e.g. ground truth: then the scores come back empty).

    Example:
        >>> from types import SimpleNamespace as Box
        >>> one = Box(xyxy=np.array([[0.0, 0, 1, 1]]), scores=np.array([0.9]), labels=[0])
        >>> none = Box(xyxy=np.zeros((0, 4)), scores=np.zeros(0), labels=[])
        >>> [a.tolist() for a in flatten_box_lists([none, one])]
        [[[0.0, 0.0, 1.0, 1.0]], [0.9], [0], [1]]
    """

    def flat(field: str) -> np.ndarray:
        parts = [np.asarray(getattr(b, field), dtype=np.float64).reshape(-1) for b in lists]
        return np.concatenate(parts) if parts else np.zeros(0)

    corners = [np.reshape(b.xyxy, (-1, width)) for b in lists] or [np.zeros((0, width))]
    indices = [np.full(len(b.xyxy), i) for i, b in enumerate(lists)] or [np.zeros(0)]
    return (
        np.concatenate(corners),
        flat("scores") if scores else np.zeros(0),
        flat("labels").astype(int),
        np.concatenate(indices),
    )


def box_list_metrics(
    found: Sequence[Any],
    truth: Sequence[Any],
    *,
    froc_iou_threshold: float = 0.1,
    interpolation: str = "coco101",
    max_detections: int | None = 100,
) -> list[dict[str, Any]]:
    """:func:`detection_metrics` for per-image box lists, as a detector returns them.

    ``found[i]`` and ``truth[i]`` belong to image ``i``; each has ``xyxy`` ``(N, 4|6)``
    corners and integer ``labels`` (``found`` also ``scores``), e.g.
    :class:`medlens.detect.Boxes`. Every image counts in FROC's false positives per image.

    Example:
        >>> from types import SimpleNamespace as Box
        >>> hit = Box(xyxy=np.array([[0.0, 0, 10, 10]]), scores=np.array([0.9]), labels=[0])
        >>> miss = Box(xyxy=np.zeros((0, 4)), scores=np.zeros(0), labels=[])
        >>> gt = Box(xyxy=np.array([[0.0, 0, 10, 10]]), labels=[0])
        >>> row = box_list_metrics([hit, miss], [gt, gt])[0]
        >>> round(row["ap50"], 3), row["froc_1"]  # COCO's 101 recall points: 51/101
        (0.505, 0.5)
    """
    if len(found) != len(truth):
        raise MedlensError(f"{len(found)} prediction lists for {len(truth)} images")
    width = next((np.shape(b.xyxy)[1] for b in [*found, *truth] if len(b.xyxy)), 4)
    pred_boxes, pred_scores, pred_labels, pred_ids = flatten_box_lists(found, width=width)
    gt_boxes, _, gt_labels, gt_ids = flatten_box_lists(truth, width=width, scores=False)
    return detection_metrics(
        pred_boxes,
        pred_scores,
        pred_ids,
        gt_boxes,
        gt_ids,
        pred_labels=pred_labels,
        gt_labels=gt_labels,
        num_images=len(truth),
        interpolation=interpolation,
        max_detections=max_detections,
        froc_iou_threshold=froc_iou_threshold,
    )
