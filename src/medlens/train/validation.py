"""Validation of a segmentation network during training: Dice per class on whole held-out
images, predicted as ``medlens predict`` does, and the choice of largest-component
post-processing (nnU-Net's rule)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medlens.data.patches import (
    LoadedCase,
)
from medlens.infer.segmentation import (
    dice_per_class,
    keep_largest_component,
    sliding_window_logits,
)
from medlens.models.segmentation import SegmentationPlan


def validate(
    network: torch.nn.Module,
    cases: list[LoadedCase],
    plan: SegmentationPlan,
    device: torch.device,
    amp: bool,
) -> dict[str, Any]:
    """Mean Dice per foreground class over whole validation images (NaN-free mean).

    Where the plan proposes largest-component post-processing, the predictions are also
    scored with it, and ``largest_component["kept"]`` lists the classes it raises the mean
    Dice of: nnU-Net's rule for choosing post-processing on validation.
    """
    classes = [c for c in sorted(plan.labels) if c != 0]
    candidates = list(plan.largest_component)
    network.eval()
    scores, scores_largest = [], []
    for case in cases:
        array = case.image[(slice(None), *case.crop)].float().to(device)
        probabilities = sliding_window_logits(
            network, array, plan, batch_size=plan.batch_size, amp=amp
        )
        prediction = probabilities.argmax(0).cpu().numpy()
        truth = case.label[case.crop].numpy()
        scores.append(dice_per_class(prediction, truth, classes))
        if candidates:
            largest = keep_largest_component(prediction, candidates)  # in place, last use
            scores_largest.append(dice_per_class(largest, truth, classes))
    network.train()
    table = np.array(scores, dtype=float)
    per_class = np.nanmean(table, axis=0)
    metrics: dict[str, Any] = {
        "dice_per_label": {
            plan.labels[c]: round(float(d), 4) for c, d in zip(classes, per_class, strict=True)
        },
        "mean_dice": round(float(np.nanmean(per_class)), 4),
        "cases": len(cases),
        "per_case": {
            case.case_id: [round(float(s), 4) for s in row]
            for case, row in zip(cases, table, strict=True)
        },
    }
    if candidates:
        per_class_largest = np.nanmean(np.array(scores_largest, dtype=float), axis=0)
        metrics["largest_component"] = {
            "candidates": candidates,
            "dice_per_label": {
                plan.labels[c]: round(float(d), 4)
                for c, d in zip(classes, per_class_largest, strict=True)
            },
            "kept": [
                c
                for c, with_it, without in zip(classes, per_class_largest, per_class, strict=True)
                if c in candidates and with_it > without
            ],
        }
    return metrics
