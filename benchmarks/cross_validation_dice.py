"""Cross-validated Dice of a 2D segmentation recipe: one trained model per fold, pooled frames.

One split of 180 frames says little about "Dice on unseen frames": on Kvasir-SEG the same
recipe scored 0.892 on the shipped card's split and 0.905 on fold 1
(``results/polyp_input_size.md``, section 5). This script scores each fold's model on its own
validation frames through ``medlens.infer`` (PyTorch, CPU, no TTA) and reports each fold's mean
Dice, the mean of the fold means, and the mean over all frames with a 95% bootstrap interval.
Frames that are validation in several folds (``--val-cases`` forces the card's demo frames
into every fold) count once in the pooled mean, with their Dice averaged over those folds.

Run::

    python benchmarks/cross_validation_dice.py ../shared/data/kvasir-seg \
        runs/cv0-s2/last runs/cv1-s2/last ...

Each model folder's validation frames come from ``split.json`` in its parent (the run
folder), else from the model card's training split (a shipped model). ``--tta`` scores with
the plan's mirror TTA (4 passes for the polyp plans: ``medlens predict --tta``). About 15 s
per fold of 180 frames on 2 cores (x4 with ``--tta``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from paired_dice import fold_validation_cases, per_frame_dice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, help="images/ + masks/ folder (or MSD layout)")
    parser.add_argument("models", type=Path, nargs="+", help="one model folder per fold")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--per-frame-csv", type=Path, help="also write fold, frame and Dice per row (CSV)"
    )
    parser.add_argument("--tta", action="store_true", help="mirror TTA as `predict --tta`")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from medlens.data.segmentation import find_cases
    from medlens.evaluate.stats import bootstrap_ci

    all_cases = find_cases(args.data)
    per_frame: dict[str, list[float]] = {}
    rows = []
    frame_rows = ["fold,frame,dice"]
    for model in args.models:
        cases, fold = fold_validation_cases(model, all_cases, data=args.data)
        scores = per_frame_dice(model, cases, tta=args.tta)
        for case, score in zip(cases, scores, strict=True):
            per_frame.setdefault(case.case_id, []).append(float(score))
            frame_rows.append(f"{fold},{case.case_id},{score:.6f}")
        low, high = bootstrap_ci(scores)
        rows.append((model, fold, len(cases), np.nanmean(scores), low, high,
                     int((scores < 0.5).sum())))  # fmt: skip

    print("| model | fold | frames | mean Dice [95% CI] | below 0.5 |")
    print("| --- | --- | --- | --- | --- |")
    for model, fold, count, mean, low, high, below in rows:
        print(f"| {model} | {fold} | {count} | {mean:.4f} [{low:.3f}, {high:.3f}] | {below} |")
    pooled = np.asarray([np.nanmean(v) for v in per_frame.values()])
    low, high = bootstrap_ci(pooled)
    fold_means = np.mean([row[3] for row in rows])
    print(
        f"\nMean of the {len(rows)} fold means: {fold_means:.4f}. Over the {pooled.size} distinct "
        f"frames: {np.nanmean(pooled):.4f} [{low:.3f}, {high:.3f}], "
        f"{int((pooled < 0.5).sum())} below 0.5."
    )
    if args.per_frame_csv:
        args.per_frame_csv.write_text("\n".join(frame_rows) + "\n")


if __name__ == "__main__":
    main()
