"""Inference-side levers for a 2D segmentation recipe, measured on cross-validation folds.

Each fold's model predicts its own validation frames once per view: the plan's frame size and
other square sizes (``--sizes``), each unflipped and mirrored along axis 0, axis 1 and both.
The foreground probabilities are resized back to the frame (as ``medlens predict`` does) and
kept, so every combination is scored on the same passes:

- the probability threshold (0.5 is the argmax of two classes), with a threshold chosen on the
  other folds (leave one fold out) so that the choice is not tuned on the frames it scores;
- subsets of the four mirrorings (``--tta`` averages all four);
- several frame sizes averaged (multi-scale TTA), with and without the mirrorings;
- post-processing of the mask: holes filled, components under a share of the largest one
  dropped (the share chosen on the other folds), the largest component alone.

Differences are paired per frame against the single pass at the plan's size, with 95%
bootstrap intervals over frames. About 8 s per view and fold of 180 frames on 2 cores.

Run::

    python benchmarks/polyp_inference_variants.py ../shared/data/kvasir-seg \\
        runs/git-polyp-73f92ba runs/cvs1-s1/last runs/cvs2-s1/last runs/cvs3-s1/last \\
        runs/cvs4-s1/last
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from paired_dice import fold_validation_cases

THRESHOLDS = np.round(np.arange(0.25, 0.751, 0.05), 2)
SHARES = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)  # of the largest component's area
MIRRORS = ((), (0,), (1,), (0, 1))  # spatial axes of a 2D frame


def view_probabilities(model: Path, cases: list, sizes: list[int]) -> tuple[dict, list, int]:
    """{(size, mirror): [foreground probability per frame, float16]}, the truth masks and the
    model's own frame size."""
    from medlens.data.segmentation import read_case_image, read_case_label
    from medlens.infer.segmentation import sliding_window_logits
    from medlens.models.segmentation import SegmentationPlan, image_to_network_array
    from medlens.models.zoo import load_model

    network, card = load_model(model)
    network.eval()
    base = SegmentationPlan.from_dict(card.preprocessing["plan"])
    images = [read_case_image(case.image) for case in cases]
    truths = [
        read_case_label(case.label).reshape(image.spatial_shape[:2]) > 0
        for case, image in zip(cases, images, strict=True)
    ]
    views: dict[tuple[int, tuple[int, ...]], list[np.ndarray]] = {}
    with torch.inference_mode():
        for size in sizes:
            plan = dataclasses.replace(base, frame_size=[size, size])
            for mirror in MIRRORS:
                flipped = [axis + 2 for axis in mirror]  # (N, C, I, J) batches
                out = views.setdefault((size, mirror), [])
                for start in range(0, len(images), 16):
                    chunk = images[start : start + 16]
                    batch = torch.stack(
                        [torch.from_numpy(image_to_network_array(im, plan)) for im in chunk]
                    )
                    batch = batch.flip(flipped) if mirror else batch
                    probabilities = sliding_window_logits(network, batch, plan, batch_size=16)
                    probabilities = probabilities.flip(flipped) if mirror else probabilities
                    for image, frame in zip(chunk, probabilities, strict=True):
                        shape = image.spatial_shape[:2]
                        if tuple(frame.shape[1:]) != tuple(shape):
                            frame = torch.nn.functional.interpolate(
                                frame[None], size=shape, mode="bilinear", align_corners=False
                            )[0]
                        out.append(frame[1].float().numpy().astype(np.float16))
    return views, truths, base.frame_size[0]


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    total = predicted.sum() + truth.sum()
    return 1.0 if total == 0 else 2.0 * float((predicted & truth).sum()) / float(total)


def postprocess(mask: np.ndarray, kind: str, share: float = 0.0) -> np.ndarray:
    """``fill``: holes filled; ``share``: components under ``share`` x the largest dropped;
    ``largest``: the largest component alone."""
    from scipy import ndimage

    if kind == "fill":
        return ndimage.binary_fill_holes(mask)
    components, count = ndimage.label(mask)
    if count < 2:
        return mask
    areas = np.bincount(components.ravel())[1:]
    keep = areas >= (areas.max() if kind == "largest" else share * areas.max())
    return keep[components - 1] & mask


def chosen_on_other_folds(
    by_option: np.ndarray, folds: np.ndarray, options: Sequence[float]
) -> tuple[np.ndarray, str, str]:
    """Per-frame Dice with each fold scored at the option best on the other folds (leave one
    fold out); also the picks and the mean Dice per option, as text. ``by_option``: (frames,
    options)."""
    chosen = np.empty(len(by_option))
    picks = []
    for fold in np.unique(folds):
        best = int(np.argmax(by_option[folds != fold].mean(0)))
        chosen[folds == fold] = by_option[folds == fold, best]
        picks.append(f"{options[best]:.2f}")
    curve = ", ".join(f"{o:.2f}: {m:.4f}" for o, m in zip(options, by_option.mean(0), strict=True))
    return chosen, "/".join(picks), curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("models", type=Path, nargs="+", help="one model folder per fold")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 256, 288, 320])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if len(args.models) < 2:  # the threshold is chosen on the folds not scored
        parser.error("give one model per fold, at least two")
    torch.set_num_threads(args.threads)

    from medlens.data.segmentation import find_cases
    from medlens.evaluate.stats import bootstrap_ci

    all_cases = find_cases(args.data)
    views: dict = {}
    truths: list[np.ndarray] = []
    fold_of_frame: list[int] = []
    plan_size = None
    for index, model in enumerate(args.models):
        cases, _ = fold_validation_cases(model, all_cases, data=args.data)
        fold_views, fold_truths, size = view_probabilities(model, cases, args.sizes)
        plan_size = plan_size or size
        if size != plan_size:
            raise SystemExit(f"{model}: frame size {size}, the first model's is {plan_size}")
        for key, frames in fold_views.items():
            views.setdefault(key, []).extend(frames)
        truths.extend(fold_truths)
        fold_of_frame.extend([index] * len(cases))
        print(f"{model}: {len(cases)} frames", flush=True)
    folds = np.asarray(fold_of_frame)

    def scores(combo: list, threshold: float = 0.5, post: tuple = ()) -> np.ndarray:
        masks = (
            np.mean([views[k][i].astype(np.float32) for k in combo], 0) > threshold
            for i in range(len(truths))
        )
        if post:
            masks = (postprocess(mask, *post) for mask in masks)
        return np.asarray([dice(m, t) for m, t in zip(masks, truths, strict=True)])

    single = scores([(plan_size, ())])

    def line(name: str, passes: int, values: np.ndarray) -> str:
        low, high = bootstrap_ci(values - single)
        return (f"| {name} | {passes} | {values.mean():.4f} | "
                f"{np.mean(values - single):+.4f} [{low:+.4f}, {high:+.4f}] |")  # fmt: skip

    print(f"\n{len(truths)} frames, {len(args.models)} folds; reference: one pass at "
          f"{plan_size}x{plan_size}, threshold 0.5 ({single.mean():.4f})\n")  # fmt: skip
    print("| variant | passes | mean Dice | paired difference [95% CI] |")
    print("| --- | --- | --- | --- |")

    # thresholds: one pass, then all four mirrorings; chosen leaving the scored fold out
    for mirrors in ([()], list(MIRRORS)):
        combo = [(plan_size, m) for m in mirrors]
        by_threshold = np.stack([scores(combo, t) for t in THRESHOLDS], axis=1)
        chosen, picks, curve = chosen_on_other_folds(by_threshold, folds, THRESHOLDS)
        print(line(f"threshold chosen on the other folds ({picks})", len(mirrors), chosen))
        print(f"|   by threshold: {curve} | | | |")
    # post-processing, on one pass and on the four mirrorings
    for mirrors in ([()], list(MIRRORS)):
        combo = [(plan_size, m) for m in mirrors]
        for post in (("fill",), ("largest",)):
            print(
                line(
                    f"{post[0]}, {len(mirrors)} mirroring(s)",
                    len(mirrors),
                    scores(combo, post=post),
                )
            )
        by_share = np.stack([scores(combo, post=("share", f)) for f in SHARES], axis=1)
        chosen, picks, curve = chosen_on_other_folds(by_share, folds, SHARES)
        name = f"small components dropped, share chosen on the other folds ({picks})"
        print(line(f"{name}, {len(mirrors)} mirroring(s)", len(mirrors), chosen))
        print(f"|   by share: {curve} | | | |")
    for count in range(1, len(MIRRORS) + 1):
        for mirrors in itertools.combinations(MIRRORS, count):
            name = "mirror subset " + " + ".join(str(m) if m else "()" for m in mirrors)
            print(line(name, count, scores([(plan_size, m) for m in mirrors])))
    for mirrors in ([()], list(MIRRORS)):
        for count in range(1, len(args.sizes) + 1):
            for sizes in itertools.combinations(args.sizes, count):
                if sizes == (plan_size,) and mirrors == [()]:
                    continue
                combo = [(s, m) for s in sizes for m in mirrors]
                name = f"sizes {'+'.join(map(str, sizes))}, {len(mirrors)} mirroring(s)"
                print(line(name, len(combo), scores(combo)))


if __name__ == "__main__":
    main()
