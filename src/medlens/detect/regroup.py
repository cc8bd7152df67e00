"""Re-split a YOLO-layout dataset so that near-duplicate slices (one scan) stay together.

``medlens regroup-split DATA OUT`` pools ``images/{train,val}``, groups slices by thumbnail
similarity (:mod:`medlens.data.near_duplicates`), draws whole groups for validation and
writes a new YOLO-layout folder (copies of images and labels) with ``split.json`` recording
the groups, so the split can be checked and repeated.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medlens.data.near_duplicates import (
    SAME_SCAN_SIMILARITY,
    grouped_validation,
    similarity_groups,
    thumbnail_signature,
)
from medlens.detect.data import read_grey, yolo_split_files
from medlens.errors import MedlensError

SPLITS = ("train", "val")


@dataclass(frozen=True)
class RegroupResult:
    out: Path
    groups: int
    train_images: int
    val_images: int
    val_groups: int


def regroup_yolo_split(
    source: str | Path,
    out: str | Path,
    *,
    val_fraction: float | None = None,
    seed: int = 0,
    threshold: float = SAME_SCAN_SIMILARITY,
    overwrite: bool = False,
) -> RegroupResult:
    """Write ``out`` with whole similarity groups in ``val``.

    ``val_fraction``: share of the images for validation (default: the source's own share).
    Nothing is left half-written: the folder is built beside ``out`` and renamed at the end.
    """
    source, out = Path(source), Path(out)
    if out.exists() and not overwrite:
        raise MedlensError("output exists", path=out, hint="pass --overwrite to replace it")
    if out.resolve() == source.resolve():
        raise MedlensError("OUT must differ from DATA", path=out, hint="choose a new folder")
    pairs = [
        (split, image, label)
        for split in SPLITS
        for image, label in yolo_split_files(source, split)
    ]
    names = [image.name for _, image, _ in pairs]
    if len(set(names)) != len(names):
        raise MedlensError(
            "the same image name is in train and val", path=source, hint="rename one of them"
        )
    signatures = np.stack([thumbnail_signature(read_grey(image)) for _, image, _ in pairs])
    groups = similarity_groups(signatures, threshold=threshold)
    if val_fraction is None:
        val_fraction = sum(split == "val" for split, _, _ in pairs) / len(pairs)
    try:
        is_val = grouped_validation(groups, val_fraction=val_fraction, seed=seed)
    except ValueError as error:
        raise MedlensError(str(error), path=source, hint="lower --threshold") from None

    out.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        record = []
        for (old_split, image, label), group, val in zip(pairs, groups, is_val, strict=True):
            split = "val" if val else "train"
            for kind, path in (("images", image), ("labels", label)):
                target = building / kind / split / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
            record.append(
                {"image": image.name, "split": split, "was": old_split, "group": int(group)}
            )
        for extra in ("classes.txt", "data.yaml", "dataset.yaml"):
            if (source / extra).is_file():
                shutil.copy2(source / extra, building / extra)
        split_info = {
            "source": str(source.resolve()),
            "similarity": "correlation of 64x64 grey thumbnails (medlens.data.near_duplicates)",
            "threshold": threshold,
            "val_fraction": val_fraction,
            "seed": seed,
            "groups": int(groups.max()) + 1,
            "val_groups": sorted({int(g) for g in groups[is_val]}),
            "images": record,
        }
        (building / "split.json").write_text(json.dumps(split_info, indent=1))
        if out.exists():
            shutil.rmtree(out)
        building.rename(out)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return RegroupResult(
        out=out,
        groups=int(groups.max()) + 1,
        train_images=int((~is_val).sum()),
        val_images=int(is_val.sum()),
        val_groups=len(split_info["val_groups"]),
    )
