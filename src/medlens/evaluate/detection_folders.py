"""``medlens evaluate`` on boxes (YOLO txt folders or COCO json): AP, FROC, HTML report.

See :mod:`medlens.evaluate.runner` for what is written.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from medlens.detect.data import coco_box
from medlens.errors import MedlensError, MedlensWarning
from medlens.evaluate.detection import detection_metrics, froc, match_detections
from medlens.evaluate.folders import (
    EvaluateOptions,
    failures_html,
    list_cases,
    load_speed,
    require_matching_cases,
    speed_html,
    write_csv,
    write_json,
)
from medlens.evaluate.report import (
    image_tag,
    line_plot,
    table_html,
    write_report,
)

DETECTION_COLUMNS = (
    "class",
    "n_gt",
    "n_pred",
    "ap10",
    "ap25",
    "ap50",
    "ap75",
    "map50_95",
    "froc_0.125",
    "froc_0.25",
    "froc_0.5",
    "froc_1",
    "froc_2",
    "froc_4",
    "froc_8",
    "cpm",
)


@dataclasses.dataclass
class BoxSet:
    """Boxes of many images: corners (N, 4|6), scores, image ids, class labels."""

    boxes: np.ndarray
    scores: np.ndarray
    image_ids: np.ndarray
    labels: np.ndarray
    images: list[str]


def read_yolo_folder(folder: Path, *, with_scores: bool) -> BoxSet:
    """YOLO txt files ``class cx cy w h [confidence]`` (normalised) -> corner boxes.

    IoU does not change when both axes are scaled, so normalised coordinates are compared
    directly. A prediction line without a 6th column gets confidence 1.
    """
    files = list_cases(folder, suffixes=(".txt",))
    boxes, scores, ids, labels = [], [], [], []
    for name, path in files.items():
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) not in (5, 6) or (len(fields) == 6 and not with_scores):
                expected = "5 or 6" if with_scores else "5"
                raise MedlensError(
                    f"line {number}: expected {expected} values 'class cx cy w h"
                    f"{' [confidence]' if with_scores else ''}', got {len(fields)}",
                    path=path,
                )
            try:
                values = [float(v) for v in fields]
            except ValueError:
                raise MedlensError(f"line {number}: non-numeric value", path=path) from None
            cx, cy, w, h = values[1:5]
            boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
            scores.append(values[5] if len(values) == 6 else 1.0)
            ids.append(name)
            labels.append(int(values[0]))
    return BoxSet(
        np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        np.asarray(scores),
        np.asarray(ids, dtype=object),
        np.asarray(labels, dtype=int),
        list(files),
    )


def _coco_image_names(data: dict[str, Any]) -> dict[int, str]:
    return {int(i["id"]): Path(i.get("file_name", str(i["id"]))).stem for i in data["images"]}


def read_coco(path: Path, *, with_scores: bool, images: dict[int, str] | None = None) -> BoxSet:
    """COCO dataset json (``images``, ``annotations``) or results list -> corner boxes."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise MedlensError(f"cannot read COCO json ({error})", path=path) from None
    if isinstance(data, dict):
        images = _coco_image_names(data)
        annotations = data.get("annotations", [])
    else:
        annotations = data
    images = images or {}
    crowd = sum(1 for a in annotations if isinstance(a, dict) and a.get("iscrowd"))
    if crowd:
        warnings.warn(
            f"{path}: {crowd} crowd region(s) (iscrowd 1) are scored as ordinary boxes; "
            "pycocotools would ignore detections on them",
            MedlensWarning,
            stacklevel=2,
        )
    boxes, scores, ids, labels = [], [], [], []
    for annotation in annotations:
        name, (x, y, w, h), category = coco_box(annotation, path, needs_category=False)
        boxes.append([x, y, x + w, y + h])
        if with_scores and "score" not in annotation:
            raise MedlensError("prediction has an annotation without 'score'", path=path)
        try:
            scores.append(float(annotation.get("score", 1.0)))
            image_id = int(annotation["image_id"])
            labels.append(int(category))
        except (TypeError, ValueError):
            raise MedlensError(
                f"{name}: score, image_id and category_id must be numbers", path=path
            ) from None
        ids.append(images.get(image_id, str(image_id)))
    names = list(images.values()) or sorted(set(ids))
    return BoxSet(
        np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        np.asarray(scores),
        np.asarray(ids, dtype=object),
        np.asarray(labels, dtype=int),
        names,
    )


def evaluate_detection(
    pred_path: Path,
    gt_path: Path,
    out_dir: Path,
    options: EvaluateOptions = EvaluateOptions(),
) -> dict[str, Any]:
    """AP/FROC per class; write detection.csv, summary.json, report.html; return the summary."""
    if gt_path.is_file() and gt_path.suffix.lower() == ".json":
        gt = read_coco(gt_path, with_scores=False)
        id_to_name = _coco_image_names(json.loads(gt_path.read_text()))
        if not (pred_path.is_file() and pred_path.suffix.lower() == ".json"):
            raise MedlensError(
                "reference is COCO json, so the prediction must be a COCO results json",
                path=pred_path,
            )
        pred = read_coco(pred_path, with_scores=True, images=id_to_name)
        pred_images = set(pred.image_ids.tolist())
    else:
        gt = read_yolo_folder(gt_path, with_scores=False)
        pred = read_yolo_folder(pred_path, with_scores=True)
        pred_images = set(pred.images)
    gt_images = set(gt.images)
    require_matching_cases(sorted(pred_images), sorted(gt_images), prediction_path=pred_path)
    missing_prediction = sorted(gt_images - pred_images) if not gt_path.is_file() else []
    missing_reference = sorted(pred_images - gt_images)
    # predictions on images without a reference cannot be scored: drop them (listed above)
    keep = np.isin(pred.image_ids, list(gt_images))
    rows = detection_metrics(
        pred.boxes[keep],
        pred.scores[keep],
        pred.image_ids[keep],
        gt.boxes,
        gt.image_ids,
        pred_labels=pred.labels[keep],
        gt_labels=gt.labels,
        num_images=len(gt_images),
        froc_iou_threshold=options.froc_iou_threshold,
    )
    curves = []
    pr_curves = []
    for row in rows:
        p = (pred.labels[keep]) == row["class"]
        g = gt.labels == row["class"]
        args = (pred.boxes[keep][p], pred.scores[keep][p], pred.image_ids[keep][p])
        result = froc(
            *args,
            gt.boxes[g],
            gt.image_ids[g],
            num_images=max(len(gt_images), 1),
            iou_threshold=options.froc_iou_threshold,
        )
        curves.append(
            (f"class {row['class']}", result["curve_fp_per_image"], result["curve_sensitivity"])
        )
        scores, hits, num_gt = match_detections(*args, gt.boxes[g], gt.image_ids[g])
        if num_gt and len(scores):
            order = np.argsort(-scores, kind="mergesort")
            tp = np.cumsum(hits[order])
            precision = tp / np.arange(1, len(tp) + 1)
            pr_curves.append((f"class {row['class']} @IoU .5", tp / num_gt, precision))
    summary = {
        "task": "detection",
        "prediction": str(pred_path),
        "reference": str(gt_path),
        "num_images": len(gt_images),
        "num_failures": len(missing_prediction) + len(missing_reference),
        "missing_prediction": missing_prediction,
        "missing_reference": missing_reference,
        "labels_not_in_reference": sorted(set(pred.labels.tolist()) - set(gt.labels.tolist())),
        "interpolation": "COCO 101-point (pycocotools)",
        "froc_iou_threshold": options.froc_iou_threshold,
        "classes": {str(r["class"]): r for r in rows},
    }
    speed = load_speed(options.speed_json)
    if speed is not None:
        summary["speed"] = speed
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "detection.csv", rows, DETECTION_COLUMNS)
    write_json(out_dir / "summary.json", summary)
    figures = []
    if curves:
        figures.append(
            line_plot(
                [
                    # start left of 1/8 and carry the last sensitivity on to 8 FP/image
                    (n, np.append(np.maximum(x, 1 / 16), 10.0), np.append(y, y[-1]))
                    for n, x, y in curves
                    if len(x)
                ],
                xlabel="false positives per image",
                ylabel="sensitivity",
                title=f"FROC (hit: IoU >= {options.froc_iou_threshold:g})",
                logx=True,
                xticks=(0.125, 0.25, 0.5, 1, 2, 4, 8),
            )
        )
    if pr_curves:
        figures.append(
            line_plot(pr_curves, xlabel="recall", ylabel="precision", title="Precision-recall")
        )
    sections = [
        ("Per class", table_html(rows, DETECTION_COLUMNS)),
        (
            "Curves",
            "<div class='figs'>" + "".join(image_tag(f, "curve") for f in figures) + "</div>",
        ),
        ("Failures and warnings", failures_html(summary)),
        ("Speed", speed_html(speed)),
    ]
    write_report(
        out_dir / "report.html",
        title="medlens detection evaluation",
        subtitle=f"prediction {pred_path} vs reference {gt_path}; {len(gt_images)} images",
        sections=sections,
    )
    return summary
