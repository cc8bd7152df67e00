"""Mirror TTA and two-model ensembles of 2D segmentation models, per frame, paired.

For each model (scored on the validation frames of ``--split``, through ``medlens.infer`` in
PyTorch on the CPU, float32), the per-frame Dice without TTA, with one mirroring (axis 0 or
axis 1: 2 passes) and with all four (both axes: ``medlens predict --tta``); for each pair of
models, their ensemble (probabilities averaged, as ``medlens predict A,B``) against the
pair's mean and against the better of the two. Differences are paired per frame with 95%
bootstrap intervals (``medlens.evaluate.stats``).

Run (one fold's models; ``--csv`` appends the per-frame rows)::

    python benchmarks/polyp_tta_ensembles.py ../shared/data/kvasir-seg \
        --split runs/cv1-s1/split.json runs/cv1-s2/last runs/cv1-s1/last --csv frames.csv

and pool TTA over models of several folds (one model per fold, so no frame counts twice)::

    python benchmarks/polyp_tta_ensembles.py --summarize frames.csv --pool A,B,C

About 1 minute per model and 180 frames on 1 thread.
"""

from __future__ import annotations

import argparse
import csv
import itertools
from pathlib import Path

import numpy as np
import torch

VARIANTS = {"none": [()], "axis0": [(), (-2,)], "axis1": [(), (-1,)],
            "both": [(), (-2,), (-1,), (-2, -1)]}  # fmt: skip


def foreground_probabilities(model: Path, cases: list) -> dict[str, np.ndarray]:
    """Foreground probability of each frame on its own grid, for every TTA variant."""
    from medlens.data.segmentation import read_case_image
    from medlens.infer.segmentation import sliding_window_logits
    from medlens.models.segmentation import SegmentationPlan, image_to_network_array
    from medlens.models.zoo import load_model

    network, card = load_model(model)
    plan = SegmentationPlan.from_dict(card.preprocessing["plan"])
    out: dict[str, list[np.ndarray]] = {name: [] for name in VARIANTS}
    with torch.inference_mode():
        for start in range(0, len(cases), 8):
            chunk = [read_case_image(c.image) for c in cases[start : start + 8]]
            batch = torch.stack([torch.from_numpy(image_to_network_array(i, plan)) for i in chunk])
            passes = {
                flip: sliding_window_logits(network, batch.flip(flip) if flip else batch, plan)
                for flip in VARIANTS["both"]
            }
            for name, flips in VARIANTS.items():
                mean = sum(passes[f].flip(f) if f else passes[f] for f in flips) / len(flips)
                for row, image in enumerate(chunk):
                    size = tuple(image.spatial_shape[:2])
                    fg = mean[row : row + 1, 1:2]
                    if tuple(fg.shape[-2:]) != size:
                        fg = torch.nn.functional.interpolate(
                            fg, size=size, mode="bilinear", align_corners=False
                        )
                    out[name].append(fg[0, 0].numpy())
    return {name: np.stack(values) for name, values in out.items()}


def dice(probability: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-frame Dice of ``probability > 0.5`` (1 where both are empty)."""
    predicted = probability > 0.5
    overlap = (predicted & truth).sum(axis=(1, 2))
    total = predicted.sum(axis=(1, 2)) + truth.sum(axis=(1, 2))
    return np.where(total > 0, 2 * overlap / np.maximum(total, 1), 1.0)


def difference(values: np.ndarray) -> str:
    from medlens.evaluate.stats import bootstrap_ci

    low, high = bootstrap_ci(values)
    return f"{values.mean():+.4f} [{low:+.4f}, {high:+.4f}]"


def score(args: argparse.Namespace) -> None:
    from paired_dice import validation_cases

    from medlens.data.segmentation import find_cases, read_case_label
    from medlens.data.splits import read_split_file

    all_cases = find_cases(args.data)
    _, val, _ = read_split_file(args.split, [c.case_id for c in all_cases])  # or a model card
    cases = validation_cases(all_cases, val, data=args.data)
    truth = np.stack([read_case_label(c.label)[..., 0] > 0 for c in cases])
    probabilities = {m: foreground_probabilities(m, cases) for m in args.models}
    scores = {
        model: {variant: dice(p, truth) for variant, p in by_variant.items()}
        for model, by_variant in probabilities.items()
    }

    print(f"{len(cases)} frames of {args.split}\n")
    print("| model | no TTA | axis 0 - none | axis 1 - none | both (4 passes) - none |")
    print("| --- | --- | --- | --- | --- |")
    for model, by_variant in scores.items():
        none = by_variant["none"]
        gains = [difference(by_variant[v] - none) for v in ("axis0", "axis1", "both")]
        print(f"| {model} | {none.mean():.4f} | " + " | ".join(gains) + " |")
    if len(args.models) > 1:
        print("\n| ensemble (no TTA) | Dice | minus the pair's mean | minus the better model |")
        print("| --- | --- | --- | --- |")
    for first, second in itertools.combinations(args.models, 2):
        a, b = scores[first]["none"], scores[second]["none"]
        together = dice((probabilities[first]["none"] + probabilities[second]["none"]) / 2, truth)
        better = a if a.mean() >= b.mean() else b
        gains = f"{difference(together - (a + b) / 2)} | {difference(together - better)}"
        print(f"| {first} + {second} | {together.mean():.4f} | {gains} |")
    if args.csv:
        new = not args.csv.exists()
        with args.csv.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["model", "frame", *VARIANTS])
            for model, by_variant in scores.items():
                for index, case in enumerate(cases):
                    values = [f"{by_variant[v][index]:.5f}" for v in VARIANTS]
                    writer.writerow([str(model), case.case_id, *values])


def summarize(args: argparse.Namespace) -> None:
    with args.summarize.open() as handle:
        rows = list(csv.DictReader(handle))
    pooled = [name.strip() for name in (args.pool or "").split(",") if name.strip()]
    unknown = sorted(set(pooled) - {r["model"] for r in rows})
    if unknown:
        raise SystemExit(f"--pool names models not in {args.summarize}: {unknown}")
    chosen = [r for r in rows if r["model"] in pooled]
    print(f"{len(chosen)} frames of {len(pooled)} models\n")
    print("| variant | minus no TTA [95% CI] |")
    print("| --- | --- |")
    for variant in ("axis0", "axis1", "both"):
        gain = np.array([float(r[variant]) - float(r["none"]) for r in chosen])
        print(f"| {variant} | {difference(gain)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, nargs="?", help="images/ + masks/ folder")
    parser.add_argument("models", type=Path, nargs="*", help="model folders of one split")
    parser.add_argument("--split", type=Path, help="split.json or model card")
    parser.add_argument("--csv", type=Path, help="append per-frame Dice rows here")
    parser.add_argument("--summarize", type=Path, help="a --csv file: pool TTA gains")
    parser.add_argument("--pool", help="comma-separated model names (as in the CSV) to pool")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_intermixed_args()
    torch.set_num_threads(args.threads)
    if args.summarize:
        summarize(args)
    elif args.data and args.models and args.split:
        score(args)
    else:
        parser.error("give DATA, --split and MODELs, or --summarize CSV --pool NAMES")


if __name__ == "__main__":
    main()
