"""`medlens evaluate` and `medlens bench` on real data: files written, failures reported."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medlens.cli import main

HIPPOCAMPUS_CASES = 5


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return int(exit_info.value.code or 0)


@pytest.fixture()
def seg_folders(shared_data: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Five hippocampus references; predictions shifted, one missing, one with label 3."""
    gt = tmp_path / "gt"
    pred = tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    files = sorted((shared_data / "hippocampus" / "labelsTr").glob("*.nii.gz"))
    for index, path in enumerate(files[:HIPPOCAMPUS_CASES]):
        shutil.copy(path, gt / path.name)
        if index == 4:
            continue  # missing prediction
        image = nib.load(path)
        labels = np.asarray(image.dataobj).astype(np.uint8)
        labels = np.roll(labels, index % 3, axis=0)
        if index == 2:
            labels[0, 0, 0] = 3  # a label the reference does not have
        nib.save(nib.Nifti1Image(labels, image.affine), pred / path.name)
    (gt / "dataset.json").write_text("{}")  # MSD-style side files are not cases
    (pred / "README.md").write_text("predictions of model A\n")
    return pred, gt


def test_evaluate_segmentation_writes_csv_summary_and_report(seg_folders, tmp_path, capsys):
    pred, gt = seg_folders
    out = tmp_path / "eval"
    assert _run(["evaluate", str(pred), str(gt), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "hippocampus_" in captured.err and "without prediction" in captured.err

    with open(out / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    required = (
        "case,label,dice,iou,precision,recall,hd95_mm,assd_mm,nsd,volume_pred_ml,volume_ref_ml"
    )
    assert ",".join(list(rows[0])[:11]) == required
    cases = {r["case"] for r in rows}
    assert len(cases) == HIPPOCAMPUS_CASES  # the missing case is a row, not skipped
    missing = [r for r in rows if r["flag"] == "missing_prediction"]
    assert {r["label"] for r in missing} == {"1", "2"} and all(r["dice"] == "0" for r in missing)
    unshifted = [r for r in rows if r["case"] == sorted(cases)[0] and r["label"] in ("1", "2")]
    assert all(float(r["dice"]) == 1.0 and float(r["hd95_mm"]) == 0.0 for r in unshifted)
    false_alarm = [r for r in rows if r["label"] == "3"]
    assert len(false_alarm) == 1 and false_alarm[0]["flag"] == "empty_reference"

    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_failures"] == 1 and len(summary["missing_prediction"]) == 1
    assert summary["labels_not_in_reference"] == [3]
    dice = summary["labels"]["1"]["dice"]
    assert dice["n"] == HIPPOCAMPUS_CASES and dice["ci_low"] <= dice["mean"] <= dice["ci_high"]
    assert summary["labels"]["1"]["hd95_mm"]["n_undefined"] == 1  # the missing case

    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 1 + 4  # box plots + worst-case overlays
    assert "http://" not in page and "https://" not in page and "<script src" not in page
    assert 'class="sortable"' in page and "addEventListener('click'" in page


def test_mismatched_geometry_is_a_clear_error_and_resample_fixes_it(seg_folders, tmp_path, capsys):
    import SimpleITK as sitk

    pred, gt = seg_folders
    name = sorted(p.name for p in pred.glob("*.nii.gz"))[0]
    image = sitk.ReadImage(str(pred / name))
    finer = sitk.Resample(
        image,
        [2 * s for s in image.GetSize()],
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        image.GetOrigin(),
        [s / 2 for s in image.GetSpacing()],
        image.GetDirection(),
    )
    sitk.WriteImage(finer, str(pred / name))
    out = tmp_path / "eval"
    assert _run(["evaluate", str(pred), str(gt), "--out", str(out)]) == 2
    error = capsys.readouterr().err.replace("\n", "")
    assert name in error and "shape" in error and "spacing" in error and "--resample" in error
    assert not (out / "metrics.csv").exists()  # nothing half-written

    assert _run(["evaluate", str(pred), str(gt), "--out", str(out), "--resample"]) == 0
    with open(out / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["case"] == name.removesuffix(".nii.gz")]
    # the finer copy of an unshifted prediction lands exactly back on the reference
    assert [float(r["dice"]) for r in rows] == [1.0, 1.0]
    assert json.loads((out / "summary.json").read_text())["resampled_cases"] == [rows[0]["case"]]


@pytest.mark.parametrize(
    "option",
    [["--nsd-tolerance-mm", "-1"], ["--froc-iou", "2"], ["--worst", "-1"], ["--labels", "a"]],
)
def test_options_out_of_range_are_refused_before_scoring(seg_folders, tmp_path, capsys, option):
    pred, gt = seg_folders
    out = tmp_path / "eval"
    assert _run(["evaluate", str(pred), str(gt), "--out", str(out), *option]) == 2
    assert option[0] in capsys.readouterr().err
    assert not out.exists()


def test_predictions_of_other_cases_are_refused_not_scored_as_failures(
    seg_folders, shared_data, tmp_path, capsys
):
    pred, gt = seg_folders
    other = tmp_path / "other-cases"
    other.mkdir()
    for index, path in enumerate(sorted(pred.iterdir())):
        shutil.copy(path, other / f"case_{index}.nii.gz")
    out = tmp_path / "eval"
    assert _run(["evaluate", str(other), str(gt), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert (
        f"none of the {len(list(pred.iterdir()))} predictions has the name of one of the 5" in err
    )
    assert "case_0" in err and "hippocampus_" in err
    assert not out.exists()

    # detection: YOLO predictions named after other images
    (tmp_path / "kidney").mkdir()
    yolo_pred, yolo_gt = _kidney_predictions(shared_data, tmp_path / "kidney")
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for path in sorted(yolo_pred.glob("*.txt"))[:3]:
        shutil.copy(path, renamed / f"other_{path.name}")
    assert _run(["evaluate", str(renamed), str(yolo_gt), "--out", str(out)]) == 2
    assert "none of the 3 predictions" in capsys.readouterr().err
    assert not out.exists()


def test_evaluate_2d_jpeg_masks(shared_data, tmp_path):
    masks = sorted((shared_data / "kvasir-seg" / "masks").glob("*.jpg"))[:3]
    gt = tmp_path / "gt"
    gt.mkdir()
    for path in masks:
        shutil.copy(path, gt / path.name)
    out = tmp_path / "eval"
    assert _run(["evaluate", str(gt), str(gt), "--out", str(out)]) == 0
    with open(out / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and {r["label"] for r in rows} == {"1"}  # JPEG thresholded at 127
    assert all(float(r["dice"]) == 1.0 for r in rows)


def _kidney_predictions(shared_data: Path, tmp_path: Path) -> tuple[Path, Path]:
    gt = shared_data / "kidney-stones" / "labels" / "val"
    pred = tmp_path / "pred"
    pred.mkdir()
    rng = np.random.default_rng(3)
    files = sorted(gt.glob("*.txt"))
    for path in files[1:]:  # the first image has no prediction file
        lines = []
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            cls, cx, cy, w, h = line.split()
            if rng.random() < 0.8:
                jitter = rng.normal(0, 0.004, 2)
                x, y = float(cx) + jitter[0], float(cy) + jitter[1]
                lines.append(f"{cls} {x:.6f} {y:.6f} {w} {h} {rng.uniform(0.3, 1):.3f}")
        if rng.random() < 0.3:
            lines.append(f"0 {rng.uniform(0.1, 0.9):.4f} 0.5 0.03 0.03 {rng.uniform(0, 0.6):.3f}")
        (pred / path.name).write_text("\n".join(lines) + ("\n" if lines else ""))
    return pred, gt


def test_evaluate_detection_yolo(shared_data, tmp_path):
    pred, gt = _kidney_predictions(shared_data, tmp_path)
    out = tmp_path / "eval"
    assert _run(["evaluate", str(pred), str(gt), "--out", str(out)]) == 0
    with open(out / "detection.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and rows[0]["class"] == "0" and rows[0]["n_gt"] == "152"
    assert 0.5 < float(rows[0]["ap10"]) <= 1 and float(rows[0]["ap75"]) <= float(rows[0]["ap50"])
    assert 0 < float(rows[0]["cpm"]) <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_images"] == 100 and len(summary["missing_prediction"]) == 1
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 2  # FROC + PR


def test_evaluate_detection_coco_json(tmp_path):
    gt = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        "categories": [{"id": 1, "name": "stone"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10]},
        ],
    }
    pred = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
        {"image_id": 2, "category_id": 1, "bbox": [50, 50, 10, 10], "score": 0.8},
    ]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(pred))
    out = tmp_path / "eval"
    assert (
        _run(
            ["evaluate", str(tmp_path / "pred.json"), str(tmp_path / "gt.json"), "--out", str(out)]
        )
        == 0
    )
    row = json.loads((out / "summary.json").read_text())["classes"]["1"]
    assert row["ap50"] == pytest.approx(51 / 101)  # precision 1 at recall 0, .01, ..., .5


@pytest.mark.parametrize(
    ("prediction", "message"),
    [
        ({"image_id": 1, "category_id": 1, "score": 0.9}, "annotation (no id): no 'bbox'"),
        ({"image_id": 1, "bbox": [0, 0, 10], "score": 0.9}, "is not four numbers"),
        ({"image_id": "a", "bbox": [0, 0, 10, 10], "score": 0.9}, "must be numbers"),
        ("not a box", "an annotation is not an object"),
    ],
)
def test_a_malformed_coco_result_is_named_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], prediction: object, message: str
) -> None:
    gt = {
        "images": [{"id": 1, "file_name": "a.png"}],
        "categories": [{"id": 1, "name": "stone"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]}],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps([prediction]))
    out = tmp_path / "eval"
    argv = ["evaluate", str(tmp_path / "pred.json"), str(tmp_path / "gt.json"), "--out", str(out)]
    assert _run(argv) == 2
    error = capsys.readouterr().err.replace("\n", " ")
    assert "pred.json" in error and message in error and "Traceback" not in error
    assert not out.exists()


def test_bad_yolo_line_names_the_file(shared_data, tmp_path, capsys):
    pred, gt = _kidney_predictions(shared_data, tmp_path)
    bad = sorted(pred.glob("*.txt"))[0]
    bad.write_text("0 0.5 0.5\n")
    assert _run(["evaluate", str(pred), str(gt), "--out", str(tmp_path / "eval")]) == 2
    assert bad.name in capsys.readouterr().err.replace("\n", "")


@pytest.fixture()
def tiny_model(tmp_path: Path) -> Path:
    from monai.networks.nets import DynUNet

    from medlens.models.zoo import ModelCard, save_model

    params = {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 3,
        "kernel_size": [3, 3, 3],
        "strides": [1, 2, 2],
        "upsample_kernel_size": [2, 2],
        "filters": [4, 8, 16],
    }
    folder = tmp_path / "tiny"
    card = ModelCard(
        name="tiny",
        task="segmentation",
        architecture={"name": "DynUNet", "params": params},
        labels={1: "anterior", 2: "posterior"},
        input={"dims": 3, "channels": 1, "patch_size": [40, 56, 40]},
    )
    save_model(DynUNet(**params), folder, card)
    return folder


def test_bench_writes_latency_memory_json_and_the_report_shows_it(
    shared_data, tiny_model, seg_folders, tmp_path
):
    images = shared_data / "hippocampus" / "imagesTr"
    out = tmp_path / "eval"
    bench_json = out / "bench.json"
    argv = ["bench", str(tiny_model), str(images), "--out", str(bench_json), "--cases", "3"]
    assert _run([*argv, "--repeats", "2", "--warmup", "1"]) == 0
    result = json.loads(bench_json.read_text())
    assert result["num_cases"] == 3 and result["input_shape"] == [1, 1, 40, 56, 40]
    assert 0 < result["latency_ms_p50"] <= result["latency_ms_p95"]
    assert result["throughput_per_s"] > 0 and result["peak_ram_mb"] > 50
    assert result["peak_gpu_mb"] is None and result["device"] == "cpu"

    pred, gt = seg_folders
    assert _run(["evaluate", str(pred), str(gt), "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["speed"]["num_cases"] == 3
    page = (out / "report.html").read_text()
    assert "latency_ms_p50" in page and "peak_ram_mb" in page


def test_bench_refuses_cuda_without_a_gpu(tiny_model, shared_data, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    images = shared_data / "hippocampus" / "imagesTr"
    assert _run(["bench", str(tiny_model), str(images), "--device", "cuda"]) == 2
    assert "CUDA" in capsys.readouterr().err


def test_report_renders_plots_in_headless_chromium(seg_folders, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian package chromium is not installed (apt-get install -y chromium)")
    pred, gt = seg_folders
    out = tmp_path / "eval"
    assert _run(["evaluate", str(pred), str(gt), "--out", str(out)]) == 0
    screenshot = tmp_path / "page.png"
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={screenshot}",
        "--window-size=1200,2000",
        (out / "report.html").resolve().as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    import cv2

    pixels = cv2.imread(str(screenshot))[:, :, ::-1].astype(int)  # RGB
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels.std() > 20  # not a blank page
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    saturation = pixels.max(axis=2) - pixels.min(axis=2)
    box_blue = (blue > 150) & (red < 120) & (saturation > 60)  # tab10 blue boxes
    box_orange = (red > 200) & (green > 100) & (green < 190) & (blue < 100)  # orange boxes
    overlay_yellow = (red > 200) & (green > 180) & (blue < 60)  # agreement in overlays
    assert box_blue.sum() > 500 and box_orange.sum() > 500 and overlay_yellow.sum() > 500


def test_baseline_comparison_and_image_backgrounds(seg_folders, shared_data, tmp_path, capsys):
    pred, gt = seg_folders
    first = tmp_path / "model_a"
    assert _run(["evaluate", str(pred), str(gt), "--out", str(first)]) == 0
    # model B: the references themselves (perfect) for every case
    better = tmp_path / "model_b"
    shutil.copytree(gt, better)
    images = shared_data / "hippocampus" / "imagesTr"
    out = tmp_path / "compare"
    argv = ["evaluate", str(better), str(gt), "--out", str(out), "--baseline", str(first)]
    assert _run([*argv, "--images", str(images)]) == 0
    assert "Wilcoxon" in capsys.readouterr().out
    comparison = json.loads((out / "summary.json").read_text())["comparison"]
    dice = comparison["labels"]["1"]["dice"]
    assert dice["n"] == HIPPOCAMPUS_CASES and dice["mean_difference"] > 0
    hd95 = comparison["labels"]["1"]["hd95_mm"]
    assert hd95["n_dropped"] == 1  # undefined HD95 of the missing case in A
    page = (out / "report.html").read_text()
    assert "Model comparison" in page and "Wilcoxon p" in page


def test_cli_uses_anisotropic_spacing_from_the_files(shared_data, tmp_path):
    import torch
    from monai.metrics import compute_hausdorff_distance

    source = sorted((shared_data / "hippocampus" / "labelsTr").glob("*.nii.gz"))[0]
    ref = np.asarray(nib.load(source).dataobj).astype(np.uint8)
    pred = np.roll(ref, 1, axis=2)
    spacing = (0.6, 0.9, 2.2)
    affine = np.diag([*spacing, 1.0])
    for folder, labels in (("gt", ref), ("pred", pred)):
        (tmp_path / folder).mkdir()
        nib.save(nib.Nifti1Image(labels, affine), tmp_path / folder / "case.nii.gz")
    out = tmp_path / "eval"
    assert _run(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--out", str(out)]) == 0
    with open(out / "metrics.csv") as handle:
        row = next(r for r in csv.DictReader(handle) if r["label"] == "1")
    expected = compute_hausdorff_distance(
        torch.from_numpy(pred == 1)[None, None].float(),
        torch.from_numpy(ref == 1)[None, None].float(),
        percentile=95,
        spacing=spacing,
    ).item()
    assert float(row["hd95_mm"]) == pytest.approx(expected, abs=1e-4)
    assert expected >= 2.2  # a one-slice shift costs at least the 2.2 mm slice spacing
    voxel_ml = 0.6 * 0.9 * 2.2 / 1000
    assert float(row["volume_ref_ml"]) == pytest.approx((ref == 1).sum() * voxel_ml, rel=1e-5)


def test_png_label_maps_with_several_classes_are_scored_per_class(tmp_path):
    import cv2

    reference = np.zeros((64, 64), np.uint8)
    reference[5:25, 5:25], reference[35:60, 35:60] = 1, 2
    prediction = reference.copy()
    prediction[35:60, 35:45] = 0  # part of class 2 missed
    for folder, mask in (("ref", reference), ("pred", prediction)):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "frame.png"), mask)
    out = tmp_path / "eval"
    assert _run(["evaluate", str(tmp_path / "pred"), str(tmp_path / "ref"), "--out", str(out)]) == 0
    with open(out / "metrics.csv") as handle:
        dice = {row["label"]: float(row["dice"]) for row in csv.DictReader(handle)}
    assert dice["1"] == 1.0
    assert dice["2"] == pytest.approx(2 * 375 / (375 + 625))


def test_crowd_regions_in_a_coco_reference_are_flagged(tmp_path: Path) -> None:
    from medlens.errors import MedlensWarning
    from medlens.evaluate.detection_folders import read_coco

    gt = {
        "images": [{"id": 1, "file_name": "a.png"}],
        "annotations": [{"id": 1, "image_id": 1, "iscrowd": 1, "bbox": [0, 0, 10, 10]}],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    with pytest.warns(MedlensWarning, match="1 crowd region"):
        boxes = read_coco(tmp_path / "gt.json", with_scores=False)
    assert len(boxes.boxes) == 1
