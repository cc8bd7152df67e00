"""A detector with and without its false-positive reduction stage, paired on the val split.

The model (default: the shipped ``kidney-stones``) runs once per arm on every val image of its
dataset (conf 0.001, as COCO scoring wants): the network alone, then with the rescoring its card
carries (``medlens.detect.rescore``). Reported: AP50, AP75, mAP@[.5:.95] and FROC, the paired
image-bootstrap interval of the AP50 difference, and the false positives by kind, counted
above the score at which 90% of the labelled boxes are found (the false positives that
cost AP50 there; raw counts at one threshold would mislead, since the stage recalibrates scores):

* background: overlaps no labelled box;
* inside a missed box: its centre lies in a labelled box that no detection matched;
* duplicate: its centre lies in a labelled box already matched by a higher-scored detection;
* other: overlaps a labelled box without its centre inside one.

Usage::

    python benchmarks/detection_rescoring.py     # writes benchmarks/results/detection_rescoring.md
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def false_positive_kinds(found: list, truth: list, *, recall: float = 0.9) -> Counter:
    """Kinds of the false positives ranked above the point where ``recall`` of the labelled
    boxes is reached (COCO matching at IoU 0.5): the ones that cost AP50 there."""
    from medlens.detect.boxes import box_iou

    true_scores, false_positives = [], []
    for boxes, gt in zip(found, truth, strict=True):
        taken = np.zeros(len(gt), bool)
        unmatched = []
        for index in np.argsort(-boxes.scores, kind="mergesort"):
            ious = box_iou(boxes.xyxy[index : index + 1], gt.xyxy)[0] if len(gt) else np.zeros(0)
            candidates = np.where(taken, -1.0, ious)
            if len(gt) and candidates.max() >= 0.5:
                taken[int(candidates.argmax())] = True
                true_scores.append(boxes.scores[index])
            else:
                unmatched.append((index, ious))
        for index, ious in unmatched:
            centre = (boxes.xyxy[index, :2] + boxes.xyxy[index, 2:]) / 2
            inside = (
                np.all((gt.xyxy[:, :2] < centre) & (centre < gt.xyxy[:, 2:]), axis=1)
                if len(gt)
                else np.zeros(0, bool)
            )
            if (inside & ~taken).any():
                kind = "inside a missed box"
            elif inside.any():
                kind = "duplicate"
            elif len(gt) and ious.max() > 0:
                kind = "other"
            else:
                kind = "background"
            false_positives.append((boxes.scores[index], kind))
    needed = int(np.ceil(recall * sum(len(gt) for gt in truth)))
    ranked = np.sort(true_scores)[::-1]
    if len(ranked) < needed:
        return Counter({"recall not reached": 1})
    return Counter(kind for score, kind in false_positives if score >= ranked[needed - 1])


def paired_ap50_difference(
    found_a: list, found_b: list, truth: list, *, resamples: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """AP50(b) - AP50(a) with a 95% percentile bootstrap over images (the same draw for both)."""
    from medlens.evaluate.detection import average_precision, flatten_box_lists

    def ap50(found: list, picks: np.ndarray) -> float:
        pred_xyxy, pred_scores, _, pred_ids = flatten_box_lists([found[i] for i in picks])
        gt_xyxy, _, _, gt_ids = flatten_box_lists([truth[i] for i in picks], scores=False)
        return average_precision(pred_xyxy, pred_scores, pred_ids, gt_xyxy, gt_ids)

    everything = np.arange(len(truth))
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(truth), len(truth)) for _ in range(resamples)]
    differences = [ap50(found_b, picks) - ap50(found_a, picks) for picks in draws]
    low, high = np.percentile(differences, [2.5, 97.5])
    return ap50(found_b, everything) - ap50(found_a, everything), float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="kidney-stones")
    parser.add_argument("--data", type=Path, default=None, help="default: the card's data")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "detection_rescoring.md"
    )
    args = parser.parse_args()

    from medlens.detect.data import load_detection_data
    from medlens.detect.infer import load_detector
    from medlens.evaluate.detection import box_list_metrics

    detector, card = load_detector(args.model, conf=0.001, engine="torch")
    if detector.rescoring is None:
        raise SystemExit(f"{args.model} has no rescoring stage: run `medlens rescore` first")
    data = args.data or Path(card.training["data"])
    samples, _ = load_detection_data(data, "val", names=dict(card.labels))
    pixels, truth = [s.pixels for s in samples], [s.boxes for s in samples]
    arms = {
        "network only": dataclasses.replace(detector, rescoring=None)(pixels),
        "with the rescoring": detector(pixels),
    }
    rows = []
    for name, found in arms.items():
        strict = box_list_metrics(found, truth, froc_iou_threshold=0.5)[0]
        loose = box_list_metrics(found, truth, froc_iou_threshold=0.1)[0]
        kinds = false_positive_kinds(found, truth)
        rows.append(
            f"| {name} | {strict['ap50']:.4f} | {strict['ap75']:.4f} | {strict['map50_95']:.4f} "
            f"| {strict['froc_1']:.4f} | {loose['froc_1']:.4f} | {kinds['background']} | "
            f"{kinds['inside a missed box']} | {kinds['duplicate']} | {kinds['other']} |"
        )
    difference, low, high = paired_ap50_difference(*arms.values(), truth)
    entry = card.preprocessing["rescoring"]
    lines = [
        f"# False-positive reduction of `{card.name}`: paired on its val split",
        "",
        f"`python benchmarks/detection_rescoring.py --model {args.model}` "
        f"({datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC); {len(samples)} val images, "
        f"{sum(len(t) for t in truth)} boxes of `{data}`; conf 0.001, COCO 101-point AP "
        "(`medlens.evaluate.detection`); the PyTorch engine.",
        "",
        f"Stage (from the card): `sigmoid({entry['score_weight']:.3f} * logit(score) + "
        f"{entry['peak_weight']:.3f} * peak + {entry['bias']:.3f})` for boxes scored >= "
        f"{entry['min_score']}, peak = brightest grey (0-1) inside the box; "
        f"fitted on {entry['fitted_on']}.",
        "",
        "| arm | AP50 | AP75 | mAP@[.5:.95] | sens@1FP (IoU 0.5) | sens@1FP (IoU 0.1) "
        "| FP ranked above 90% recall: background | inside a missed box | duplicate | other |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"AP50 with minus without, paired over images (1000 draws): **{difference:+.4f}** "
        f"[{low:+.4f}, {high:+.4f}].",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
