"""Segmentation inference speed and memory: medlens predict vs MONAI's sliding window.

Measures, in one process on the same inputs and thread count:

1. hippocampus: ``medlens predict hippocampus`` on 39 cases of ../shared/data/hippocampus
   (model load, NIfTI read, predict, NIfTI write; target <= 15 s) against a plain MONAI
   loop (nibabel read, z-score, ``sliding_window_inference`` Gaussian, argmax, nibabel write)
   with the same network;
2. polyp: frames per second of ``medlens predict polyp`` on 100 Kvasir frames (target >= 20)
   against the same MONAI loop on OpenCV-read frames;
3. peak memory of predicting a synthetic 512x512x400 volume with the 3D model (child
   process, peak RSS; target < 4 GB).

Background training is paused (SIGSTOP ``medlens_train_bg``) while timing and always resumed.
Run: ``python benchmarks/segmentation.py`` (writes benchmarks/results/segmentation.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results" / "segmentation.md"


def _background(sig: str) -> None:
    subprocess.run(["pkill", f"-{sig}", "-f", "medlens_train_bg"], check=False)


def _link_cases(folder: Path, sources: list[Path]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for source in sources:
        (folder / source.name).symlink_to(source)
    return folder


def monai_loop_3d(model: str, files: list[Path], out: Path) -> float:
    """Plain MONAI baseline: same network, nibabel I/O, MONAI sliding window."""
    import nibabel as nib
    import torch
    from monai.inferers import sliding_window_inference

    from medlens.infer.predict import load_segmenter

    started = time.perf_counter()
    network, plan, _ = load_segmenter(model)
    out.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        for path in files:
            nifti = nib.load(str(path))
            data = np.asarray(nifti.dataobj, dtype=np.float32)
            data = (data - data.mean()) / max(float(data.std()), 1e-6)
            logits = sliding_window_inference(
                torch.from_numpy(data)[None, None], plan.patch_size, 4, network,
                overlap=0.5, mode="gaussian",
            )  # fmt: skip
            label = logits[0].argmax(0).to(torch.uint8).numpy()
            nib.save(nib.Nifti1Image(label, nifti.affine), str(out / path.name))
    return time.perf_counter() - started


def monai_loop_2d(model: str, files: list[Path], out: Path) -> float:
    import cv2
    import torch
    from monai.inferers import sliding_window_inference

    from medlens.infer.predict import load_segmenter

    started = time.perf_counter()
    network, plan, _ = load_segmenter(model)
    mean = np.asarray(plan.normalisation["mean"], np.float32)
    std = np.asarray(plan.normalisation["std"], np.float32)
    out.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        for path in files:
            rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.float32)
            array = ((rgb - mean) / std).transpose(2, 1, 0)  # (C, x, y) like medlens
            logits = sliding_window_inference(
                torch.from_numpy(np.ascontiguousarray(array))[None], plan.patch_size, 4,
                network, overlap=0.5, mode="gaussian",
            )  # fmt: skip
            mask = logits[0].argmax(0).to(torch.uint8).numpy().T * 255
            cv2.imwrite(str(out / (path.stem + ".png")), mask)
    return time.perf_counter() - started


def medlens_predict(model: str, folder: Path, out: Path, *, tta: bool = False) -> float:
    from medlens.infer.predict import predict_paths

    started = time.perf_counter()
    predict_paths(model, folder, out, tta=tta, progress=False)
    return time.perf_counter() - started


def big_volume_child(model: str, shape: tuple[int, int, int], overlap: float) -> None:
    """Child process: predict a synthetic volume, print peak RSS (GB) as JSON."""
    import torch

    from medlens.image import Image
    from medlens.infer.predict import load_segmenter
    from medlens.infer.segmentation import predict_image

    network, plan, _ = load_segmenter(model)
    rng = np.random.default_rng(0)
    volume = rng.normal(100, 20, size=(1, *shape)).astype(np.float32)
    started = time.perf_counter()
    label = predict_image(network, Image(volume), plan, overlap=overlap, batch_size=8)
    seconds = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"peak_gb": peak_gb, "seconds": seconds, "shape": list(label.spatial_shape),
                      "threads": torch.get_num_threads()}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", type=int, default=39)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--big", default="512x512x400")
    parser.add_argument("--big-overlap", type=float, default=0.0)
    parser.add_argument("--child-big", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip-big", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    big_shape = tuple(int(v) for v in args.big.split("x"))
    if args.child_big:
        big_volume_child("hippocampus", big_shape, args.big_overlap)  # type: ignore[arg-type]
        return

    load = os.getloadavg()[0]
    _background("STOP")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    rows: list[str] = []
    try:
        time.sleep(2)
        idle_load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as temporary:
            tmp = Path(temporary)
            cases = sorted((DATA / "hippocampus" / "imagesTr").glob("*.nii.gz"))[: args.cases]
            folder = _link_cases(tmp / "hippo_in", cases)
            medlens_predict("hippocampus", folder, tmp / "warm")  # warm caches / imports
            ours = medlens_predict("hippocampus", folder, tmp / "ours")
            ours_tta = medlens_predict("hippocampus", folder, tmp / "ours_tta", tta=True)
            theirs = monai_loop_3d("hippocampus", cases, tmp / "monai")
            rows.append(
                f"| hippocampus, {len(cases)} cases (load+read+predict+write) | "
                f"{ours:.2f} s | {theirs:.2f} s | {theirs / ours:.2f}x | <= 15 s: "
                f"{'met' if ours <= 15 else 'NOT met'} (with --tta: {ours_tta:.2f} s) |"
            )
            frames = sorted((DATA / "kvasir-seg" / "images").glob("*.jpg"))[: args.frames]
            folder = _link_cases(tmp / "polyp_in", frames)
            medlens_predict("polyp", _link_cases(tmp / "polyp_warm", frames[:4]), tmp / "pw")
            ours = medlens_predict("polyp", folder, tmp / "polyp_ours")
            theirs = monai_loop_2d("polyp", frames, tmp / "polyp_monai")
            rows.append(
                f"| polyp, {len(frames)} frames (load+read+predict+write) | "
                f"{len(frames) / ours:.1f} frames/s | {len(frames) / theirs:.1f} frames/s | "
                f"{theirs / ours:.2f}x | >= 20 frames/s: "
                f"{'met' if len(frames) / ours >= 20 else 'NOT met'} |"
            )
        if not args.skip_big:
            child = subprocess.run(
                [sys.executable, __file__, "--child-big", "--threads", str(args.threads),
                 "--big", args.big, "--big-overlap", str(args.big_overlap)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if child.returncode == 0:
                big = json.loads(child.stdout.strip().splitlines()[-1])
                rows.append(
                    f"| synthetic {args.big} volume, 3D model (overlap {args.big_overlap}) | "
                    f"peak RSS {big['peak_gb']:.2f} GB, {big['seconds']:.0f} s | - | - | "
                    f"< 4 GB: {'met' if big['peak_gb'] < 4 else 'NOT met'} |"
                )
            else:
                rows.append(f"| synthetic {args.big} | failed: {child.stderr[-300:]!r} | | | |")
    finally:
        _background("CONT")
    text = "\n".join(
        [
            "# Segmentation inference benchmark",
            "",
            f"`python benchmarks/segmentation.py` ({time.strftime('%Y-%m-%d %H:%M UTC')}),"
            f" CPU only, torch threads {args.threads}, background training paused (SIGSTOP);"
            f" load average before pausing {load:.1f}, after {idle_load:.1f} (other engineers'"
            " jobs may still run: the machine was not idle).",
            "",
            "| task | medlens | MONAI loop (same network) | MONAI / medlens time | target |",
            "| --- | --- | --- | --- | --- |",
            *rows,
            "",
            "medlens: `predict_paths` (= `medlens predict`: sha256-verified model load, reader,"
            " sliding window with Gaussian blending, bf16 autocast on CPUs with AVX512-BF16,"
            " largest-component post-processing, writer). MONAI loop: nibabel/OpenCV I/O,"
            " `sliding_window_inference(mode='gaussian', overlap=0.5)` in float32, argmax."
            " nnU-Net v2's predictor was not compared (not installed; it needs its own trained"
            " model folder).",
            "",
        ]
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
