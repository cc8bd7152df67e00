"""``medlens evaluate PRED GT --out DIR``: match cases by name, compute metrics, write results.

Segmentation (masks in any format :func:`medlens.io.read_image` reads) writes
``DIR/metrics.csv`` (one row per case and label), ``DIR/summary.json`` and
``DIR/report.html``. Detection (YOLO ``.txt`` folders with an optional 6th confidence column,
or COCO json) writes ``DIR/detection.csv`` (one row per class), ``DIR/summary.json`` and
``DIR/report.html``. Every file is written atomically.

Cases match by file name without the image suffix (``case_001.nii.gz`` matches
``case_001.nrrd``). A case present on one side only is listed in the summary and counted as
a failure: a missing prediction is scored as an empty prediction (Dice 0 for every reference
label, flag ``missing_prediction``); a prediction without reference cannot be scored and is
listed under ``missing_reference``. Labels found in a prediction but never in the reference
are listed under ``labels_not_in_reference`` (and scored: they are pure false positives).

Raster masks (PNG/JPEG) with values above 1 are thresholded at 127 (JPEG-compressed binary
masks such as Kvasir-SEG's); colour masks use their first channel.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from medlens.errors import MedlensError
from medlens.evaluate.detection_folders import (
    DETECTION_COLUMNS,
    evaluate_detection,
    read_coco,
    read_yolo_folder,
)
from medlens.evaluate.folders import EvaluateOptions, is_detection_input
from medlens.evaluate.segmentation_folders import (
    CSV_COLUMNS,
    METRIC_COLUMNS,
    compare_with_baseline,
    evaluate_segmentation,
    read_metrics_csv,
    resample_to,
)


def evaluate_folders(
    pred_path: str | Path,
    gt_path: str | Path,
    out_dir: str | Path,
    options: EvaluateOptions = EvaluateOptions(),
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Segmentation or detection evaluation, chosen from what ``gt_path`` holds."""
    pred_path, gt_path, out_dir = Path(pred_path), Path(gt_path), Path(out_dir)
    for path in (pred_path, gt_path):
        if not path.exists():
            raise MedlensError("no such file or folder", path=path, hint="check the path")
    if is_detection_input(gt_path):
        return evaluate_detection(pred_path, gt_path, out_dir, options)
    return evaluate_segmentation(pred_path, gt_path, out_dir, options, progress=progress)


__all__ = [
    "CSV_COLUMNS",
    "DETECTION_COLUMNS",
    "EvaluateOptions",
    "METRIC_COLUMNS",
    "evaluate_detection",
    "evaluate_folders",
    "evaluate_segmentation",
    "compare_with_baseline",
    "read_coco",
    "read_metrics_csv",
    "read_yolo_folder",
    "resample_to",
]
