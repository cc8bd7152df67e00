"""Evaluation metrics agree with MONAI, pycocotools and hand-computed values."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from medlens.evaluate import (
    average_precision,
    average_precision_ci,
    binary_metrics,
    box_iou,
    detection_metrics,
    froc,
    paired_comparison,
    segmentation_metrics,
    summarize,
)

CASES = ("hippocampus_001", "hippocampus_004", "hippocampus_008")


def _label_map(shared_data: Path, case: str) -> np.ndarray:
    path = shared_data / "hippocampus" / "labelsTr" / f"{case}.nii.gz"
    return np.asarray(nib.load(path).dataobj).astype(np.uint8)


def _perturbed(reference: np.ndarray, kind: str) -> np.ndarray:
    """A realistic 'prediction': shifted, eroded, or dilated copy of a reference label map."""
    if kind == "shift":
        return np.roll(reference, (2, -1, 1), axis=(0, 1, 2))
    out = reference.copy()
    for label in (1, 2):
        mask = reference == label
        if kind == "erode":
            out[mask & ~ndimage.binary_erosion(mask)] = 0
        else:  # dilate label 2 into background only
            out[ndimage.binary_dilation(mask, iterations=2) & (reference == 0)] = label
    return out


def _monai(pred: np.ndarray, ref: np.ndarray, label: int, spacing, tolerance: float) -> dict:
    from monai.metrics import (
        DiceMetric,
        compute_average_surface_distance,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    y_pred = torch.from_numpy(pred == label)[None, None].float()
    y = torch.from_numpy(ref == label)[None, None].float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "dice": DiceMetric(include_background=True)(y_pred, y).item(),
            "hd95_mm": compute_hausdorff_distance(y_pred, y, percentile=95, spacing=spacing).item(),
            "assd_mm": compute_average_surface_distance(
                y_pred, y, symmetric=True, spacing=spacing
            ).item(),
            "nsd": compute_surface_dice(
                y_pred, y, class_thresholds=[tolerance], spacing=spacing
            ).item(),
        }


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.3, 2.5)], ids=["iso", "aniso"])
@pytest.mark.parametrize("kind", ["shift", "erode", "dilate"])
def test_segmentation_metrics_match_monai_on_hippocampus(shared_data, kind, spacing):
    for case in CASES:
        ref = _label_map(shared_data, case)
        pred = _perturbed(ref, kind)
        rows = segmentation_metrics(pred, ref, spacing_mm=spacing, nsd_tolerance_mm=1.5)
        assert [row["label"] for row in rows] == [1, 2]
        for row in rows:
            expected = _monai(pred, ref, row["label"], spacing, 1.5)
            for key, value in expected.items():
                assert row[key] == pytest.approx(value, abs=1e-4), (case, row["label"], key)
            assert row["flag"] == ""


@pytest.mark.parametrize("method", ["edt", "torch"])
def test_distance_back_ends_agree_with_kdtree(shared_data, method):
    ref = _label_map(shared_data, CASES[0])
    pred = _perturbed(ref, "shift")
    spacing = (0.7, 1.3, 2.5)
    expected = segmentation_metrics(pred, ref, spacing_mm=spacing, nsd_tolerance_mm=2.0)
    actual = segmentation_metrics(
        pred, ref, spacing_mm=spacing, nsd_tolerance_mm=2.0, method=method, device="cpu"
    )
    for want, got in zip(expected, actual, strict=True):
        for key in ("hd95_mm", "assd_mm", "nsd"):
            assert got[key] == pytest.approx(want[key], abs=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_path_matches_cpu(shared_data):
    ref = _label_map(shared_data, CASES[1])
    pred = _perturbed(ref, "dilate")
    cpu = segmentation_metrics(pred, ref, spacing_mm=(0.7, 1.3, 2.5))
    gpu = segmentation_metrics(pred, ref, spacing_mm=(0.7, 1.3, 2.5), method="torch", device="cuda")
    for want, got in zip(cpu, gpu, strict=True):
        for key in ("hd95_mm", "assd_mm", "nsd", "dice"):
            assert got[key] == pytest.approx(want[key], abs=1e-4)


def test_2d_masks_match_monai(shared_data):
    from medlens.io import read_image

    masks = sorted((shared_data / "kvasir-seg" / "masks").glob("*.jpg"))[:2]
    ref = (read_image(masks[0]).numpy()[0, :, :, 0] > 127).astype(np.uint8)
    pred = np.roll(ref, (7, -4), axis=(0, 1))
    row = segmentation_metrics(pred, ref, spacing_mm=(0.5, 0.8))[0]
    from monai.metrics import compute_hausdorff_distance

    y_pred = torch.from_numpy(pred == 1)[None, None].float()
    y = torch.from_numpy(ref == 1)[None, None].float()
    expected = compute_hausdorff_distance(y_pred, y, percentile=95, spacing=(0.5, 0.8)).item()
    assert row["hd95_mm"] == pytest.approx(expected, abs=1e-4)
    # medlens images carry a channel axis and K == 1 for 2D: the same numbers come out
    row_4d = segmentation_metrics(
        pred[None, :, :, None], ref[None, :, :, None], spacing_mm=(0.5, 0.8, 1)
    )
    assert row_4d[0]["hd95_mm"] == pytest.approx(expected, abs=1e-4)


def test_volumes_use_spacing():
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[2:7, 2:7, 2:7] = 1  # 125 voxels
    pred = ref.copy()
    pred[2:7, 2:7, 7] = 1  # 25 more
    row = segmentation_metrics(pred, ref, spacing_mm=(0.5, 0.5, 2.0))[0]
    assert row["volume_ref_ml"] == pytest.approx(125 * 0.5 / 1000)
    assert row["volume_pred_ml"] == pytest.approx(150 * 0.5 / 1000)
    assert row["volume_abs_diff_ml"] == pytest.approx(25 * 0.5 / 1000)
    assert row["volume_rel_diff"] == pytest.approx(0.2)
    assert row["precision"] == pytest.approx(125 / 150)
    assert row["recall"] == 1.0
    assert row["iou"] == pytest.approx(125 / 150)


def test_empty_masks_follow_metrics_reloaded_conventions():
    empty = np.zeros((6, 6, 6), bool)
    blob = empty.copy()
    blob[2:4, 2:4, 2:4] = True

    both = binary_metrics(empty, empty)
    assert (both["dice"], both["nsd"], both["hd95_mm"], both["flag"]) == (
        1.0,
        1.0,
        0.0,
        "both_empty",
    )

    missed = binary_metrics(empty, blob)  # prediction empty
    assert missed["dice"] == 0.0 and missed["nsd"] == 0.0 and missed["recall"] == 0.0
    assert math.isnan(missed["hd95_mm"]) and math.isnan(missed["precision"])
    assert missed["flag"] == "empty_prediction"

    false_alarm = binary_metrics(blob, empty)  # reference empty
    assert false_alarm["dice"] == 0.0 and false_alarm["precision"] == 0.0
    assert math.isnan(false_alarm["recall"]) and math.isnan(false_alarm["assd_mm"])
    assert false_alarm["flag"] == "empty_reference"

    # a label requested but absent on both sides is "both empty", not an error
    rows = segmentation_metrics(empty.astype(np.uint8), empty.astype(np.uint8), labels=[3])
    assert rows[0]["label"] == 3 and rows[0]["flag"] == "both_empty"


def test_summaries_exclude_and_count_undefined_values():
    summary = summarize([2.0, float("nan"), 4.0, float("inf")])
    assert summary["mean"] == 3.0 and summary["n"] == 2 and summary["n_undefined"] == 2
    assert summary["ci_low"] <= 3.0 <= summary["ci_high"]


def test_bootstrap_ci_covers_the_mean_and_narrows_with_more_cases():
    rng = np.random.default_rng(1)
    small = summarize(rng.normal(0.8, 0.05, 10))
    large = summarize(rng.normal(0.8, 0.05, 400))
    assert small["ci_low"] < small["mean"] < small["ci_high"]
    assert (large["ci_high"] - large["ci_low"]) < (small["ci_high"] - small["ci_low"])


def test_paired_wilcoxon_finds_the_better_model():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.6, 0.9, 30)
    better = paired_comparison(a, a + rng.uniform(0.01, 0.05, 30))
    assert better["better"] == "B" and better["p_value"] < 1e-4
    worse_hd = paired_comparison(a, a + 0.5, higher_is_better=False)  # e.g. HD95: larger worse
    assert worse_hd["better"] == "A"
    same = paired_comparison(a, a + rng.normal(0, 1e-3, 30))
    assert same["better"] == "no significant difference"
    with_undefined = paired_comparison([1.0, float("nan"), 2.0], [1.5, 1.0, 2.5])
    assert with_undefined["n_dropped"] == 1


# --------------------------------------------------------------------------- detection
def test_box_iou_2d_and_3d():
    assert box_iou([[0, 0, 2, 2]], [[1, 1, 3, 3]])[0, 0] == pytest.approx(1 / 7)
    cube = [[0, 0, 0, 2, 2, 2]]
    assert box_iou(cube, [[1, 0, 0, 3, 2, 2]])[0, 0] == pytest.approx(4 / 12)


def test_average_precision_hand_computed():
    # Two images, three lesions; four detections ranked by score:
    #   0.9 image a hit (TP), 0.8 image a false positive, 0.7 image b hit (TP), 0.6 FP.
    # precision/recall after each: (1, 1/3), (1/2, 1/3), (2/3, 2/3), (1/2, 2/3).
    # all-point AP = 1/3 * 1 + 1/3 * 2/3 = 5/9.
    # 101-point AP: recall 0..0.33 (34 points) -> 1, 0.34..0.66 (33 points) -> 2/3, rest 0.
    gt = [[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]]
    gt_ids = ["a", "a", "b"]
    pred = [[0, 0, 10, 10], [50, 50, 60, 60], [1, 1, 10, 10], [70, 70, 80, 80]]
    scores = [0.9, 0.8, 0.7, 0.6]
    ids = ["a", "a", "b", "b"]
    assert average_precision(pred, scores, ids, gt, gt_ids, interpolation="all") == pytest.approx(
        5 / 9
    )
    assert average_precision(pred, scores, ids, gt, gt_ids) == pytest.approx(
        (34 * 1 + 33 * 2 / 3) / 101
    )
    # at IoU 0.9 the shifted box (IoU 0.81) no longer counts
    assert average_precision(
        pred, scores, ids, gt, gt_ids, iou_threshold=0.9, interpolation="all"
    ) == pytest.approx(1 / 3)
    # no ground truth: undefined, not zero
    assert math.isnan(average_precision(pred, scores, ids, np.zeros((0, 4)), []))


def test_average_precision_3d_boxes():
    gt = [[0, 0, 0, 10, 10, 10], [20, 20, 20, 30, 30, 30]]
    pred = [[0, 0, 0, 10, 10, 10], [20, 20, 20, 30, 30, 31], [40, 40, 40, 45, 45, 45]]
    ap = average_precision(pred, [0.3, 0.2, 0.9], [0, 0, 0], gt, [0, 0], interpolation="all")
    # ranked: FP, TP, TP -> precision 0, 1/2, 2/3; recall 0, 1/2, 1 -> AP = 1/2*2/3 + 1/2*2/3
    assert ap == pytest.approx(2 / 3)


def test_froc_hand_computed():
    # 4 images, 2 lesions. Ranked detections: TP, FP, FP, TP, FP.
    gt = [[0, 0, 4, 4], [10, 10, 14, 14]]
    gt_ids = [0, 1]
    pred = [[0, 0, 4, 4], [30, 30, 34, 34], [40, 40, 44, 44], [10, 10, 14, 14], [50, 50, 54, 54]]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    ids = [0, 2, 3, 1, 1]
    result = froc(pred, scores, ids, gt, gt_ids, num_images=4)
    # FP/image after each detection: 0, .25, .5, .5, .75; sensitivity .5, .5, .5, 1, 1
    assert result["sensitivities"] == [0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert result["cpm"] == pytest.approx((0.5 + 0.5 + 5) / 7)


def _yolo_boxes(path: Path, size: int = 512) -> np.ndarray:
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return np.zeros((0, 4))
    values = np.asarray(rows, dtype=np.float64)[:, 1:5] * size
    cx, cy, w, h = values.T
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def _synthetic_detections(shared_data: Path):
    """Kidney-stone val labels plus noisy predictions: jittered hits, misses, false alarms."""
    rng = np.random.default_rng(42)
    gt_boxes, gt_ids, pred_boxes, pred_scores, pred_ids = [], [], [], [], []
    files = sorted((shared_data / "kidney-stones" / "labels" / "val").glob("*.txt"))
    for image_id, path in enumerate(files):
        boxes = _yolo_boxes(path)
        for box in boxes:
            gt_boxes.append(box)
            gt_ids.append(image_id)
            if rng.random() < 0.85:  # detected, with localisation noise
                size = box[2:] - box[:2]
                jitter = rng.normal(0, 0.15, 4) * np.concatenate([size, size])
                noisy = box + jitter
                noisy[2:] = np.maximum(noisy[2:], noisy[:2] + 1)
                pred_boxes.append(noisy)
                pred_scores.append(rng.uniform(0.3, 1.0))
                pred_ids.append(image_id)
        for _ in range(rng.poisson(0.7)):  # false alarms
            corner = rng.uniform(0, 480, 2)
            pred_boxes.append(np.concatenate([corner, corner + rng.uniform(5, 30, 2)]))
            pred_scores.append(rng.uniform(0.0, 0.8))
            pred_ids.append(image_id)
    return (
        np.asarray(pred_boxes),
        np.asarray(pred_scores),
        np.asarray(pred_ids),
        np.asarray(gt_boxes),
        np.asarray(gt_ids),
        len(files),
    )


def test_ap_matches_pycocotools_on_kidney_stone_labels(shared_data):
    pytest.importorskip("pycocotools", reason="pycocotools is in the dev extra")
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    pred, scores, pred_ids, gt, gt_ids, num_images = _synthetic_detections(shared_data)
    assert len(gt) == 152  # the val split's boxes (README)

    def xywh(box: np.ndarray) -> list[float]:
        return [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]

    dataset = {
        "images": [{"id": i, "width": 512, "height": 512} for i in range(num_images)],
        "categories": [{"id": 1, "name": "stone"}],
        "annotations": [
            {
                "id": n + 1,
                "image_id": int(i),
                "category_id": 1,
                "bbox": xywh(b),
                "area": float((b[2] - b[0]) * (b[3] - b[1])),
                "iscrowd": 0,
            }
            for n, (b, i) in enumerate(zip(gt, gt_ids, strict=True))
        ],
    }
    detections = [
        {"image_id": int(i), "category_id": 1, "bbox": xywh(b), "score": float(s)}
        for b, s, i in zip(pred, scores, pred_ids, strict=True)
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(detections)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        thresholds = np.array([0.1, 0.25, *np.linspace(0.5, 0.95, 10)])
        evaluator.params.iouThrs = thresholds
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, 0, 0, -1]  # T x R, class 1, area all, 100 dets
    coco_ap = [float(p[p > -1].mean()) for p in precision]

    row = detection_metrics(pred, scores, pred_ids, gt, gt_ids, num_images=num_images)[0]
    assert row["ap10"] == pytest.approx(coco_ap[0], abs=1e-6)
    assert row["ap25"] == pytest.approx(coco_ap[1], abs=1e-6)
    assert row["ap50"] == pytest.approx(coco_ap[2], abs=1e-6)
    assert row["ap75"] == pytest.approx(coco_ap[2 + 5], abs=1e-6)  # .5 .55 .6 .65 .7 .75
    assert row["map50_95"] == pytest.approx(np.mean(coco_ap[2:]), abs=1e-6)
    assert 0.3 < row["ap50"] < 0.95  # a realistic, non-trivial operating point
    assert 0 < row["cpm"] <= 1 and row["n_gt"] == 152


def test_average_precision_ci_brackets_the_ap_of_all_images_and_narrows_with_more_images(
    shared_data,
):
    """The point estimate is exactly the AP of all images; resampling images gives an
    interval around it that shrinks when the same kind of data has four times the images."""
    pred, scores, pred_ids, gt, gt_ids, num_images = _synthetic_detections(shared_data)
    images = list(range(num_images))
    ap, low, high = average_precision_ci(
        pred, scores, pred_ids, gt, gt_ids, image_ids=images, num_resamples=300
    )
    assert ap == pytest.approx(average_precision(pred, scores, pred_ids, gt, gt_ids))
    assert low < ap < high and high - low > 0.02  # 152 boxes: AP is uncertain by points
    repeated = [np.concatenate([np.asarray(a)] * 4) for a in (pred, scores, gt)]
    ids = [
        np.concatenate([np.asarray(i) + k * num_images for k in range(4)])
        for i in (pred_ids, gt_ids)
    ]
    four_ap, four_low, four_high = average_precision_ci(
        repeated[0],
        repeated[1],
        ids[0],
        repeated[2],
        ids[1],
        image_ids=range(4 * num_images),
        num_resamples=300,
    )
    assert four_ap == pytest.approx(ap)
    assert four_high - four_low < 0.7 * (high - low)


def test_average_precision_ci_of_several_classes_is_around_their_mean_ap(shared_data):
    """With labels, boxes match within their class and the estimate is the mean of the
    per-class APs that ``detection_metrics`` reports."""
    pred, scores, pred_ids, gt, gt_ids, num_images = _synthetic_detections(shared_data)
    rng = np.random.default_rng(3)
    gt_labels = rng.integers(0, 2, len(gt))
    # each detection takes the class of the box it overlaps most, some of them the wrong one
    overlaps = box_iou(np.asarray(pred), np.asarray(gt))
    nearest = gt_labels[overlaps.argmax(1)]
    flipped = rng.random(len(pred)) < 0.2
    pred_labels = np.where(flipped, 1 - nearest, nearest)
    rows = detection_metrics(
        pred, scores, pred_ids, gt, gt_ids, pred_labels=pred_labels, gt_labels=gt_labels,
        num_images=num_images,
    )  # fmt: skip
    ap, low, high = average_precision_ci(
        pred, scores, pred_ids, gt, gt_ids, pred_labels=pred_labels, gt_labels=gt_labels,
        image_ids=range(num_images), num_resamples=200,
    )  # fmt: skip
    assert ap == pytest.approx(np.mean([row["ap50"] for row in rows]))
    single, _, _ = average_precision_ci(pred, scores, pred_ids, gt, gt_ids, num_resamples=10)
    assert ap < single  # wrong-class detections no longer count
    assert low < ap < high
