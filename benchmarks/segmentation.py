"""Segmentation inference speed and memory: medlens predict vs MONAI's sliding window.

Measures, in one process on the same inputs and thread count:

1. hippocampus: ``medlens predict hippocampus`` on 39 cases of ../shared/data/hippocampus
   (model load, NIfTI read, predict, NIfTI write; target <= 15 s) against a plain MONAI
   loop (nibabel read, z-score, ``sliding_window_inference`` Gaussian, argmax, nibabel write)
   and nnU-Net v2's ``nnUNetPredictor.predict_from_files`` (its own reader, crop to nonzero,
   z-score, 1 mm resampling (a no-op here), Gaussian sliding window, export), all with the
   same network weights, plus the mean Dice agreement of their label maps with medlens's;
2. polyp: frames per second of ``medlens predict polyp`` on 100 Kvasir frames (target >= 20)
   against the same MONAI loop on OpenCV-read frames;
3. peak memory of predicting a synthetic 512x512x400 volume with the 3D model (child
   process, peak RSS; target < 4 GB).

Background training is paused (SIGSTOP ``medlens_train_bg``) while timing and always resumed.
Run: ``python benchmarks/segmentation.py`` (writes benchmarks/results/segmentation.md).
Smoke test that neither pauses training nor touches the results file:
``OMP_NUM_THREADS=1 python benchmarks/segmentation.py --cases 3 --frames 4 --skip-big
--threads 1 --no-pause --no-write``.

nnU-Net v2 is not a medlens dependency: its ``dynamic-network-architectures`` requires timm,
whose torchvision pins a newer torch, so a plain ``pip install nnunetv2`` replaces torch.
Without it the nnU-Net column reads "not installed". To add it next to an existing torch::

    pip install pandas scikit-learn seaborn graphviz imagecodecs yacs "blosc2>=3.3.2" \
        connected-components-3d future threadpoolctl
    pip install --no-deps nnunetv2==2.8.1 acvl-utils==0.2.6 \
        dynamic-network-architectures==0.4.4 batchgenerators==0.25.5 batchgeneratorsv2==0.3.6

(timm, torchvision and unittest2 are left out; the predictor path does not import them).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from medlens.models.segmentation import SegmentationPlan
    from medlens.models.zoo import ModelCard

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


def nnunet_available() -> bool:
    """True when nnU-Net v2 can be imported (it is an optional benchmark dependency)."""
    return importlib.util.find_spec("nnunetv2") is not None


def nnunet_plans(
    plan: SegmentationPlan, card: ModelCard, network: torch.nn.Module
) -> tuple[dict[str, Any], dict[str, Any]]:
    """nnU-Net v2 ``plans`` and ``dataset.json`` dicts that mirror a medlens 3D plan.

    One ``3d_fullres`` configuration: SimpleITK reader, ``transpose_forward`` (2, 1, 0) so the
    network sees medlens's (i, j, k) axis order (nnU-Net reads NIfTI as (k, j, i)), the plan's
    patch size (voxels), target spacing in mm (the plan's, else the model card's input spacing),
    ``ZScoreNormalization`` over the whole image (no mask) and nnU-Net's default resampling,
    which is a no-op when a case already has the target spacing. ``architecture`` only
    documents the network: it is handed to the predictor directly, not rebuilt from the plans.
    """
    spacing = plan.spacing_mm or card.input.get("spacing_mm") or [1.0] * plan.dims
    median = card.input.get("median_size") or list(plan.patch_size)
    resample = "resample_data_or_seg_to_shape"
    kwargs = {"order_z": 0, "force_separate_z": None}
    configuration = {
        "data_identifier": "medlens_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": plan.batch_size,
        "patch_size": [int(v) for v in plan.patch_size],
        "median_image_size_in_voxels": [int(v) for v in median],
        "spacing": [float(v) for v in spacing],
        "normalization_schemes": ["ZScoreNormalization"] * plan.in_channels,
        "use_mask_for_norm": [False] * plan.in_channels,
        "resampling_fn_data": resample,
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, **kwargs},
        "resampling_fn_seg": resample,
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, **kwargs},
        "resampling_fn_probabilities": resample,
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, **kwargs},
        "architecture": {
            "network_class_name": f"{type(network).__module__}.{type(network).__name__}",
            "arch_kwargs": card.architecture.get("params", {}),
            "_kw_requires_import": [],
        },
        "batch_dice": True,
    }
    plans = {
        "dataset_name": f"Dataset999_{card.name}",
        "plans_name": "medlensPlans",
        "original_median_spacing_after_transp": [float(v) for v in spacing],
        "original_median_shape_after_transp": [int(v) for v in median],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [2, 1, 0],
        "transpose_backward": [2, 1, 0],
        "configurations": {"3d_fullres": configuration},
        "experiment_planner_used": "none (written by benchmarks/segmentation.py)",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            str(c): {} for c in range(plan.in_channels)
        },
    }
    dataset = {
        "channel_names": {
            str(c): card.input.get("modality") or "image" for c in range(plan.in_channels)
        },
        "labels": {name: int(value) for value, name in sorted(plan.labels.items())},
        "numTraining": 0,
        "file_ending": ".nii.gz",
    }
    return plans, dataset


def nnunet_predictor_3d(
    model: str, files: list[Path], out: Path, *, sequential: bool = False
) -> float:
    """nnU-Net v2's ``nnUNetPredictor`` with the medlens network; wall seconds.

    Counts the model load, predictor set-up and ``predict_from_files`` over ``files``
    (``.nii.gz`` label maps written to ``out``) with one preprocessing and one export worker
    process (nnU-Net's minimum; both run beside the main process), or with
    ``predict_from_files_sequential`` (no worker processes) when ``sequential``; no
    mirroring, step 0.5, Gaussian weighting, float32 on CPU. ``nnUNet_def_n_proc`` (set by
    :func:`main`) caps nnU-Net's torch threads at the benchmark's thread count. nnU-Net's
    console chatter is swallowed.
    """
    import torch

    from medlens.infer.predict import load_segmenter

    with contextlib.redirect_stdout(io.StringIO()):
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        started = time.perf_counter()
        network, plan, card = load_segmenter(model)
        plans, dataset = nnunet_plans(plan, card, network)
        manager = PlansManager(plans)
        predictor = nnUNetPredictor(
            tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
            perform_everything_on_device=False, device=torch.device("cpu"),
            verbose=False, verbose_preprocessing=False, allow_tqdm=False,
        )  # fmt: skip
        predictor.manual_initialization(
            network, manager, manager.get_configuration("3d_fullres"),
            [network.state_dict()], dataset, "medlens", None,
        )  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        inputs = [[str(path)] for path in files]
        outputs = [str(out / path.name.removesuffix(".nii.gz")) for path in files]
        if sequential:
            predictor.predict_from_files_sequential(inputs, outputs, overwrite=True)
        else:
            predictor.predict_from_files(
                inputs, outputs, save_probabilities=False, overwrite=True,
                num_processes_preprocessing=1, num_processes_segmentation_export=1,
            )  # fmt: skip
        return time.perf_counter() - started


def mean_dice(first: Path, second: Path, names: list[str], labels: list[int]) -> float:
    """Mean over cases of the mean Dice over ``labels`` between two folders of label maps.

    A label absent from both maps of a case counts as Dice 1. Maps must share their shape.
    """
    import nibabel as nib

    per_case = []
    for name in names:
        a = np.asarray(nib.load(str(first / name)).dataobj)
        b = np.asarray(nib.load(str(second / name)).dataobj)
        if a.shape != b.shape:
            raise ValueError(f"{name}: shapes differ, {a.shape} vs {b.shape}")
        scores = []
        for label in labels:
            in_a, in_b = a == label, b == label
            total = int(in_a.sum()) + int(in_b.sum())
            scores.append(1.0 if total == 0 else 2.0 * int((in_a & in_b).sum()) / total)
        per_case.append(float(np.mean(scores)))
    return float(np.mean(per_case))


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
            tensor = torch.from_numpy(np.ascontiguousarray(array))[None]
            source_size = tensor.shape[2:]
            if plan.frame_size:  # a MONAI user resizes to the model's input (Resize) and back
                tensor = torch.nn.functional.interpolate(
                    tensor, size=plan.frame_size, mode="bicubic", align_corners=False
                )
            logits = sliding_window_inference(
                tensor, plan.patch_size, 4, network, overlap=0.5, mode="gaussian"
            )
            if plan.frame_size:
                logits = torch.nn.functional.interpolate(
                    logits, size=source_size, mode="bilinear", align_corners=False
                )
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
    parser.add_argument(
        "--no-pause", action="store_true",
        help="leave background training running (timings are then not comparable)",
    )  # fmt: skip
    parser.add_argument(
        "--no-write", action="store_true",
        help=f"print the table only; do not overwrite {RESULTS.relative_to(REPO)}",
    )  # fmt: skip
    args = parser.parse_args()
    # nnU-Net reads its thread cap at import and spawns worker processes: same count for all
    os.environ["nnUNet_def_n_proc"] = str(args.threads)  # noqa: SIM112 (nnU-Net's name)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    big_shape = tuple(int(v) for v in args.big.split("x"))
    if args.child_big:
        big_volume_child("hippocampus", big_shape, args.big_overlap)  # type: ignore[arg-type]
        return

    have_nnunet = nnunet_available()
    load = os.getloadavg()[0]
    if not args.no_pause:
        _background("STOP")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    rows: list[str] = []
    notes: list[str] = []
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
            names = [path.name for path in cases]
            if have_nnunet:
                nnunet = nnunet_predictor_3d("hippocampus", cases, tmp / "nnunet")
                serial = nnunet_predictor_3d("hippocampus", cases, tmp / "serial", sequential=True)
                nnunet_cells = (
                    f"{nnunet:.2f} s (`predict_from_files_sequential`: {serial:.2f} s)"
                    f" | {nnunet / ours:.2f}x"
                )
                agreement = {
                    "nnU-Net v2 vs medlens": mean_dice(tmp / "nnunet", tmp / "ours", names, [1, 2]),
                    "nnU-Net v2 vs MONAI loop": mean_dice(
                        tmp / "nnunet", tmp / "monai", names, [1, 2]
                    ),
                    "MONAI loop vs medlens": mean_dice(tmp / "monai", tmp / "ours", names, [1, 2]),
                }
                notes.append(
                    "Agreement of the hippocampus label maps (mean over cases of the mean Dice"
                    " of labels 1 and 2): "
                    + "; ".join(f"{key} {value:.4f}" for key, value in agreement.items())
                    + ". medlens runs bf16 autocast where the CPU has AVX512-BF16, one"
                    " whole-image window where an image barely exceeds the patch (8 of the 39"
                    " cases) and keeps the largest component per label; nnU-Net and the MONAI"
                    " loop tile those cases with two patches and run float32 without"
                    " post-processing."
                )
            else:
                nnunet_cells = "not installed | -"
                notes.append(
                    "nnU-Net v2 not installed: see the install commands in the docstring of"
                    " benchmarks/segmentation.py."
                )
            rows.append(
                f"| hippocampus, {len(cases)} cases (load+read+predict+write) | "
                f"{ours:.2f} s | {theirs:.2f} s | {theirs / ours:.2f}x | {nnunet_cells} | "
                f"<= 15 s: {'met' if ours_tta <= 15 else 'NOT met'} with the model's default"
                f" mirror TTA ({ours_tta:.2f} s; compared columns without TTA) |"
            )
            frames = sorted((DATA / "kvasir-seg" / "images").glob("*.jpg"))[: args.frames]
            folder = _link_cases(tmp / "polyp_in", frames)
            medlens_predict("polyp", _link_cases(tmp / "polyp_warm", frames[:4]), tmp / "pw")
            ours = medlens_predict("polyp", folder, tmp / "polyp_ours")
            theirs = monai_loop_2d("polyp", frames, tmp / "polyp_monai")
            rows.append(
                f"| polyp, {len(frames)} frames (load+read+predict+write) | "
                f"{len(frames) / ours:.1f} frames/s | {len(frames) / theirs:.1f} frames/s | "
                f"{theirs / ours:.2f}x | - | - | >= 20 frames/s: "
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
                    f"peak RSS {big['peak_gb']:.2f} GB, {big['seconds']:.0f} s | - | - | - | - | "
                    f"< 4 GB: {'met' if big['peak_gb'] < 4 else 'NOT met'} |"
                )
            else:
                rows.append(f"| synthetic {args.big} | failed: {child.stderr[-300:]!r} | | | | | |")
    finally:
        if not args.no_pause:
            _background("CONT")
    paused = (
        "background training left running (--no-pause)"
        if args.no_pause
        else "background training paused (SIGSTOP)"
    )
    text = "\n".join(
        [
            "# Segmentation inference benchmark",
            "",
            f"`python benchmarks/segmentation.py` ({time.strftime('%Y-%m-%d %H:%M UTC')}),"
            f" CPU only, torch threads {args.threads}, {paused};"
            f" load average before pausing {load:.1f}, after {idle_load:.1f}"
            + (
                " (idle machine)."
                if idle_load < 1.5
                else " (other jobs still ran: the machine was not idle)."
            ),
            *(
                ["", "Dry run: background training kept running; timings are not comparable."]
                if args.no_pause
                else []
            ),
            "",
            "| task | medlens | MONAI loop (same network) | MONAI / medlens time"
            " | nnU-Net v2 predictor (same network) | nnU-Net / medlens time | target |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
            "medlens: `predict_paths` (= `medlens predict`: sha256-verified model load, reader,"
            " sliding window with Gaussian blending (one whole-image window where an image barely"
            " exceeds the patch), bf16 autocast on CPUs with AVX512-BF16, else ONNX Runtime,"
            " largest-component post-processing, writer). MONAI loop: nibabel/OpenCV I/O,"
            " `sliding_window_inference(mode='gaussian', overlap=0.5)` in float32, argmax."
            " nnU-Net v2: `nnUNetPredictor(tile_step_size=0.5, use_gaussian=True,"
            " use_mirroring=False)` given the same DynUNet through `manual_initialization` with"
            " hand-written plans (SimpleITK reader, crop to nonzero, z-score, 1 mm target"
            " spacing: resampling is a no-op on these cases), `predict_from_files` writing"
            " .nii.gz; `num_processes_preprocessing=1`, `num_processes_segmentation_export=1`"
            " (nnU-Net's minimum: one preprocessing and one export process run beside the main"
            f" one), torch threads capped at {args.threads} (`nnUNet_def_n_proc`), float32"
            " (nnU-Net autocasts on CUDA only). Times include the model load; nnU-Net's include"
            " starting its worker processes (its Manager, preprocessing and export processes"
            " each import torch and nnunetv2 again), which `predict_from_files_sequential`"
            " (same pipeline in the main process) does not pay.",
            "",
            *[note + "\n" for note in notes],
        ]
    )
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
