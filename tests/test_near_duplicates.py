"""Near-duplicate slices across a split: found from the pixels, reported, and split by scan."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_cli

from medlens.data.near_duplicates import (
    grouped_validation,
    similarity_groups,
    thumbnail_signature,
    validation_leaks,
)
from medlens.detect.data import load_detection_data, read_grey


def signatures(folder: Path) -> tuple[list[str], np.ndarray]:
    paths = sorted(folder.glob("*.jpg"))
    return [p.name for p in paths], np.stack([thumbnail_signature(read_grey(p)) for p in paths])


def test_neighbouring_ct_slices_are_near_duplicates_and_other_scans_are_not(
    shared_data: Path,
) -> None:
    """STONE 1534 (train) and 1535 (val) are adjacent slices of one scan; Normal 1 is another."""
    images = shared_data / "kidney-stones" / "images"

    def slice_signature(split: str, prefix: str) -> np.ndarray:
        (path,) = (images / split).glob(f"{prefix}*.jpg")
        return thumbnail_signature(read_grey(path))

    train_slice = slice_signature("train", "STONE---1534-")
    next_slice = slice_signature("val", "STONE---1535-")
    other_scan = slice_signature("train", "Normal---1-")
    assert train_slice @ next_slice > 0.99
    assert train_slice @ other_scan < 0.9


def test_the_shipped_kidney_stone_split_leaks_scans_into_validation(shared_data: Path) -> None:
    """Every val slice of the Roboflow export has a neighbouring slice among the train ones."""
    root = shared_data / "kidney-stones" / "images"
    train_names, train = signatures(root / "train")
    val_names, val = signatures(root / "val")
    report = validation_leaks(train, val, train_names=train_names, val_names=val_names)
    assert report.total == 100 and report.leaked >= 95
    assert report.message("use a split by scan.").endswith("new patients; use a split by scan.")
    groups = similarity_groups(np.concatenate([train, val]))
    assert 30 <= groups.max() + 1 <= 80  # tens of scans, not 600 slices and not one blob


def test_grouped_validation_takes_whole_groups_until_the_share_is_reached() -> None:
    groups = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    is_val = grouped_validation(groups, val_fraction=0.3, seed=1)
    assert is_val.sum() >= 3
    for group in np.unique(groups):  # a group is never cut in two
        assert len(set(is_val[groups == group])) == 1
    with pytest.raises(ValueError, match="no group is left"):
        grouped_validation(np.zeros(5, int), val_fraction=0.5)


def test_regroup_split_cli_holds_out_whole_scans(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "kidney-stones"
    out = tmp_path / "by-scan"
    assert run_cli(["regroup-split", str(source), str(out)]) == 0
    train_names, train = signatures(out / "images" / "train")
    val_names, val = signatures(out / "images" / "val")
    assert len(train_names) + len(val_names) == 600 and 90 <= len(val_names) <= 160
    report = validation_leaks(train, val, train_names=train_names, val_names=val_names)
    assert report.leaked == 0
    split = json.loads((out / "split.json").read_text())
    assert {item["image"] for item in split["images"]} == set(train_names) | set(val_names)
    # labels travel with their images and still load
    samples, _ = load_detection_data(out, "val", names={0: "stone"})
    original = {
        s.path.name: s.boxes.xyxy
        for s in load_detection_data(source, "val", names={0: "stone"})[0]
        + load_detection_data(source, "train", names={0: "stone"})[0]
    }
    for sample in samples:
        assert np.array_equal(sample.boxes.xyxy, original[sample.path.name])
    # an existing OUT is refused (exit 2, nothing changed) unless --overwrite
    before = sorted(p.name for p in (out / "images" / "val").iterdir())
    assert run_cli(["regroup-split", str(source), str(out), "--seed", "3"]) == 2
    assert sorted(p.name for p in (out / "images" / "val").iterdir()) == before
    assert run_cli(["regroup-split", str(source), str(out), "--seed", "3", "--overwrite"]) == 0
    assert not list(tmp_path.glob(".by-scan.*"))  # no build folder left behind
