"""Per-frame Dice of several 2D segmentation models on the same validation frames, paired.

Two models trained on one split differ by a few thousandths of Dice; whether that is real
needs the difference per frame and a bootstrap interval of its mean, not two means side by
side. The first model is the reference: its card names the validation frames (or
``--split split.json`` from a training run does), every model predicts them through
``medlens.infer`` in PyTorch on the CPU (optionally with mirror TTA), and the table gives
each model's mean Dice with a 95% bootstrap interval, its median, the frames below 0.5, and
the paired difference to the reference (``medlens.evaluate.stats.paired_comparison``).

Run::

    python benchmarks/paired_dice.py ../shared/data/kvasir-seg models/polyp runs/X/model \
        [--tta [--tta-axes 0,1]] [--split runs/X/split.json]

Prints a Markdown table; about 15 s per model and 180 frames on 2 cores (x4 with ``--tta``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def per_frame_dice(
    model: Path,
    cases: list,
    *,
    tta: bool,
    tta_axes: list[int] | None = None,
    batch_size: int = 8,
) -> np.ndarray:
    """Foreground Dice of each case (mean over foreground classes present in either);
    ``tta_axes`` replaces the plan's test-time mirror axes so models compare like for like."""
    from medlens.data.segmentation import read_case_image, read_case_label
    from medlens.infer.segmentation import dice_per_class, predict_images
    from medlens.models.segmentation import SegmentationPlan
    from medlens.models.zoo import load_model

    network, card = load_model(model)
    network.eval()
    plan = SegmentationPlan.from_dict(card.preprocessing["plan"])
    if tta_axes is not None:
        plan.test_time_mirror_axes = list(tta_axes)
    classes = sorted(int(k) for k in card.labels if int(k) > 0)
    scores = []
    with torch.inference_mode():
        for start in range(0, len(cases), batch_size):
            chunk = cases[start : start + batch_size]
            images = [read_case_image(c.image) for c in chunk]
            predictions = predict_images(network, images, plan, tta=tta, batch_size=batch_size)
            for case, prediction in zip(chunk, predictions, strict=True):
                truth = read_case_label(case.label)
                dice = dice_per_class(np.asarray(prediction.array).reshape(truth.shape), truth,
                                      classes)  # fmt: skip
                scores.append(float(np.nanmean(dice)) if np.isfinite(dice).any() else np.nan)
    return np.asarray(scores)


def fold_validation_cases(model: Path, cases: list, *, data: Path) -> tuple[list, int | None]:
    """The validation cases and fold of a model: from ``split.json`` in its run folder, else
    from its card's training split (a shipped model); exits naming the model if neither says."""
    from medlens.data.splits import read_split_file
    from medlens.errors import MedlensError

    split_path = model.parent / "split.json"
    if not split_path.is_file():  # a shipped model: its card names the split
        split_path = model / "model.json"
    try:
        _, val, fold = read_split_file(split_path, [c.case_id for c in cases])
    except MedlensError as error:
        raise SystemExit(f"{model}: {error}") from None
    return validation_cases(cases, val, data=data), fold


def validation_cases(cases: list, val_ids: list[str], *, data: Path) -> list:
    """The cases named by ``val_ids``, in that order; exits naming any not in ``data``."""
    by_id = {c.case_id: c for c in cases}
    missing = [v for v in val_ids if v not in by_id]
    if missing:
        raise SystemExit(f"{len(missing)} validation frames are not in {data}: {missing[:3]}")
    return [by_id[v] for v in val_ids]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, help="images/ + masks/ folder (or MSD layout)")
    parser.add_argument("models", type=Path, nargs="+", help="model folders; first: reference")
    parser.add_argument("--split", type=Path, help="split.json of a run (else the first card's)")
    parser.add_argument("--tta", action="store_true", help="mirror TTA as the plan sets it")
    parser.add_argument(
        "--tta-axes", help="mirror axes for every model's TTA, e.g. 0,1 (else each plan's own)"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from medlens.data.segmentation import find_cases
    from medlens.evaluate.stats import bootstrap_ci, paired_comparison

    if args.split:
        val = json.loads(args.split.read_text())["val"]
    else:
        val = json.loads((args.models[0] / "model.json").read_text())["training"]["split"]["val"]
    cases = validation_cases(find_cases(args.data), val, data=args.data)
    tta_axes = [int(a) for a in args.tta_axes.split(",")] if args.tta_axes else None
    scores = [per_frame_dice(m, cases, tta=args.tta, tta_axes=tta_axes) for m in args.models]

    mirroring = "without mirror TTA"
    if args.tta:
        mirroring = f"with mirror TTA (axes {args.tta_axes or 'of each plan'})"
    print(f"{len(cases)} validation frames, {mirroring}\n")
    print("| model | mean Dice [95% CI] | median | below 0.5 | minus the first [95% CI] |")
    print("| --- | --- | --- | --- | --- |")
    for index, (model, values) in enumerate(zip(args.models, scores, strict=True)):
        low, high = bootstrap_ci(values)
        paired = "-"
        if index:
            result = paired_comparison(scores[0], values)
            paired = (
                f"{result['mean_difference']:+.4f} [{result['ci_low']:+.3f}, "
                f"{result['ci_high']:+.3f}]"
            )
        print(
            f"| {model} | {np.nanmean(values):.4f} [{low:.3f}, {high:.3f}] | "
            f"{np.nanmedian(values):.3f} | {int((values < 0.5).sum())} | {paired} |"
        )


if __name__ == "__main__":
    main()
