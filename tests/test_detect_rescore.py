"""The detector's false-positive reduction stage: rescoring each box by its score and content."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_cli

from medlens.detect.boxes import Boxes
from medlens.detect.rescore import BoxRescoring, fit_rescoring, peak_inside, rescore_model
from medlens.errors import MedlensError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "kidney-stones"


def slice_with_stones(rng: np.random.Generator, stones: list[tuple[int, int]]) -> np.ndarray:
    """A dim 64x64 'slice' (grey 40-120) with a bright 3x3 'stone' at each (row, column)."""
    pixels = rng.integers(40, 120, (64, 64)).astype(np.uint8)
    for row, column in stones:
        pixels[row - 1 : row + 2, column - 1 : column + 2] = 250
    return pixels


def test_peak_inside_reads_the_brightest_pixel_of_each_box_even_a_sub_pixel_one() -> None:
    pixels = np.zeros((10, 10), np.uint8)
    pixels[4, 7] = 255
    pixels[0, 0] = 102
    boxes = np.array([[6.0, 3.0, 9.0, 6.0], [0.0, 0.0, 5.0, 5.0], [7.2, 4.1, 7.4, 4.3]])
    assert peak_inside(pixels, boxes).tolist() == [1.0, 0.4, 1.0]


def test_rescoring_raises_boxes_with_a_bright_pixel_and_leaves_weak_boxes_alone() -> None:
    pixels = np.zeros((20, 20), np.uint8)
    pixels[5, 5] = 255
    rescoring = BoxRescoring(score_weight=1.0, peak_weight=3.0, bias=-1.5, min_score=0.05)
    boxes = Boxes(
        np.array([[0.0, 0, 10, 10], [10, 10, 20, 20], [0, 0, 10, 10]]),
        np.array([0.5, 0.5, 0.01]),
        np.array([0, 0, 0]),
    )
    scores = rescoring(boxes, pixels).scores
    assert scores[0] > 0.5 > scores[1]  # the same network score, different content
    assert scores[2] == pytest.approx(0.01)  # under min_score: untouched
    assert BoxRescoring.from_card(rescoring.to_card()) == rescoring


def test_fit_learns_that_true_boxes_hold_a_bright_pixel() -> None:
    """Synthetic detections: every true box has a stone in it, the false ones are dim tissue
    with the same spread of network scores; the fit must weight the peak positively and
    rank the stones first."""
    rng = np.random.default_rng(0)
    found, truth, images = [], [], []
    for _ in range(30):
        centre = (int(rng.integers(10, 30)), int(rng.integers(10, 30)))
        images.append(slice_with_stones(rng, [centre]))
        gt = np.array([[centre[1] - 4.0, centre[0] - 4, centre[1] + 4, centre[0] + 4]])
        truth.append(Boxes(gt, labels=np.array([0])))
        # one detection on the stone, one on dim tissue far from it, scores drawn alike
        false = np.array([[44.0, 44, 56, 56]])
        found.append(
            Boxes(np.vstack([gt + rng.normal(0, 0.5, 4), false]), rng.uniform(0.2, 0.8, 2), [0, 0])
        )
    rescoring = fit_rescoring(found, truth, images)
    assert rescoring.peak_weight > 1.0
    rescored = [rescoring(boxes, image) for boxes, image in zip(found, images, strict=True)]
    assert all(boxes.scores[0] > boxes.scores[1] for boxes in rescored)


def test_fit_needs_both_true_and_false_positives() -> None:
    pixels = np.zeros((16, 16), np.uint8)
    box = Boxes(np.array([[2.0, 2, 8, 8]]), np.array([0.9]), np.array([0]))
    with pytest.raises(MedlensError, match="both true and false positives"):
        fit_rescoring([box], [Boxes(box.xyxy, labels=np.array([0]))], [pixels])


def test_rescore_model_writes_the_stage_into_the_card_only_if_val_ap50_holds(
    shared_data: Path, tmp_path: Path
) -> None:
    """On a copy of the shipped model and 40 + 20 real slices: the card then carries the fitted
    stage with both AP50 figures, and the detector loaded from it applies the stage."""
    from medlens.detect.data import load_detection_data
    from medlens.detect.infer import load_detector

    model = tmp_path / "model"
    shutil.copytree(SHIPPED, model)
    card = json.loads((model / "model.json").read_text())
    card["preprocessing"].pop("rescoring", None)
    (model / "model.json").write_text(json.dumps(card))
    data = shared_data / "kidney-stones"
    train, names = load_detection_data(data, "train", limit=40)
    val, _ = load_detection_data(data, "val", names=names, limit=20)
    result = rescore_model(model, samples=(train, val), log=lambda text: None)
    card = json.loads((model / "model.json").read_text())
    entry = card["preprocessing"].get("rescoring")
    detector, _ = load_detector(model, engine="torch")
    if result.kept:
        assert result.val_ap50_with >= result.val_ap50_without
        assert entry["val_ap50_with"] == round(result.val_ap50_with, 4)
        assert card["metrics"]["val_ap50"] == pytest.approx(result.val_ap50_with)
        assert detector.rescoring == result.rescoring
    else:
        assert entry is None and detector.rescoring is None


def test_a_stage_that_no_longer_holds_is_dropped_from_the_card(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-fitting a model whose card already has a stage: if the new fit lowers val AP50, the
    card must not keep the old stage, and its val figures become the network's own. (The val
    scoring is replaced by fixed numbers here, so the branch is taken; the fit is real.)"""
    import medlens.detect.train
    from medlens.detect.data import load_detection_data

    def scored(detector: object, samples: object) -> dict[str, float]:
        ap50 = 0.5 if detector.rescoring is not None else 0.6  # type: ignore[attr-defined]
        keys = ("ap75", "map50_95", "froc_sens_at_1fp", "froc_sens_at_0.5fp")
        keys += ("froc_sens_at_2fp", "froc01_sens_at_1fp")
        return {"ap50": ap50, **dict.fromkeys(keys, 0.25)}

    monkeypatch.setattr(medlens.detect.train, "evaluate_detector", scored)
    model = tmp_path / "model"
    shutil.copytree(SHIPPED, model)
    assert "rescoring" in json.loads((model / "model.json").read_text())["preprocessing"]
    train, names = load_detection_data(shared_data / "kidney-stones", "train", limit=20)
    result = rescore_model(model, samples=(train, train[:2]), log=lambda text: None)
    card = json.loads((model / "model.json").read_text())
    assert not result.kept and "rescoring" not in card["preprocessing"]
    assert card["metrics"]["val_ap50"] == 0.6 and "without_rescoring" not in card["metrics"]


def test_shipped_detector_carries_its_rescoring_and_it_lifts_val_ap50() -> None:
    card = json.loads((SHIPPED / "model.json").read_text())
    entry = card["preprocessing"]["rescoring"]
    assert entry["peak_weight"] > 0 and entry["val_ap50_with"] > entry["val_ap50_without"]
    assert card["metrics"]["without_rescoring"]["ap50"] == pytest.approx(
        entry["val_ap50_without"], abs=1e-4
    )


def test_rescore_cli_refuses_a_segmentation_model_and_a_missing_dataset(tmp_path: Path) -> None:
    assert run_cli(["rescore", "polyp"]) == 2
    model = tmp_path / "model"
    shutil.copytree(SHIPPED, model)
    card = json.loads((model / "model.json").read_text())
    before = (model / "model.json").read_text()
    assert run_cli(["rescore", str(model), "--data", str(tmp_path / "nowhere")]) == 2
    assert (model / "model.json").read_text() == before  # nothing half-written
    assert card["task"] == "detection"
