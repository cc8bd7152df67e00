"""Evaluation: segmentation and detection metrics, statistics, reports, speed measurement.

* :func:`medlens.evaluate.segmentation.segmentation_metrics` -- per-label Dice, IoU,
  precision, recall, HD95/ASSD (mm), NSD, volumes (ml), MONAI-identical definitions.
* :func:`medlens.evaluate.detection.average_precision`, :func:`~medlens.evaluate.detection.froc`,
  :func:`~medlens.evaluate.detection.detection_metrics` -- COCO-style AP and FROC/CPM for 2D
  ``(N, 4)`` and 3D ``(N, 6)`` corner boxes;
  :func:`~medlens.evaluate.detection.average_precision_ci` -- AP with an image bootstrap CI.
* :func:`medlens.evaluate.stats.summarize`, :func:`~medlens.evaluate.stats.paired_comparison`
  -- mean/median/std with bootstrap CI, Wilcoxon signed-rank comparison of two models.
* :func:`medlens.evaluate.runner.evaluate_folders` -- what ``medlens evaluate`` runs.
* :func:`medlens.evaluate.bench.benchmark_model` -- what ``medlens bench`` runs.
"""

from medlens.evaluate.detection import (
    average_precision,
    average_precision_ci,
    box_iou,
    box_list_metrics,
    detection_metrics,
    flatten_box_lists,
    froc,
    match_detections,
)
from medlens.evaluate.segmentation import (
    binary_metrics,
    segmentation_metrics,
    surface_distances,
    surface_mask,
)
from medlens.evaluate.stats import bootstrap_ci, paired_comparison, summarize

__all__ = [
    "average_precision",
    "average_precision_ci",
    "binary_metrics",
    "bootstrap_ci",
    "box_iou",
    "box_list_metrics",
    "detection_metrics",
    "flatten_box_lists",
    "froc",
    "match_detections",
    "paired_comparison",
    "segmentation_metrics",
    "summarize",
    "surface_distances",
    "surface_mask",
]
