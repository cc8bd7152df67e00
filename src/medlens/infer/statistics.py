"""Per-label statistics of predictions (``medlens predict --stats FILE.csv``), as
TotalSegmentator's ``--statistics``: the size and mean intensity of each label, on the source
grid. Hippocampal volumetry, for one, is the anterior and posterior volumes in mL.

Sizes are in mL for volumes, mm² for 2D images with a known pixel spacing (DICOM) and pixels
for pictures (PNG, JPEG, ...), whose spacing is unknown.

Example:
    >>> import numpy as np
    >>> from medlens.image import Image
    >>> image = Image(np.full((1, 20, 24, 16), 7.0, np.float32), spacing_mm=(1, 1, 2))
    >>> mask = np.zeros((1, 20, 24, 16), np.uint8)
    >>> mask[0, 5:10, 6:12, 4:8] = 1
    >>> label = image.with_array(mask, labels={0: "background", 1: "anterior"})
    >>> row = label_statistics(label, image)[0]
    >>> row["label"], row["voxels"], row["size"], row["unit"], row["mean_intensity"]
    ('anterior', 120, 0.24, 'mL', 7.0)
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from medlens.image import Image
from medlens.io.atomic import atomic_output

#: formats whose pixel spacing is not known (pictures): sizes stay in pixels
PICTURE_FORMATS = ("png", "jpg", "jpeg", "tif", "tiff", "bmp")
COLUMNS = ("input", "label_value", "label", "voxels", "size", "unit", "mean_intensity")


def size_unit(label: Image, image: Image | None = None) -> str:
    """mL for volumes, mm² for 2D images with a known spacing, px for pictures (the format
    of ``image``, the source, where given)."""
    if label.numpy().shape[3] != 1:
        return "mL"
    source = image if image is not None else label
    return "px" if source.metadata.get("format") in PICTURE_FORMATS else "mm2"


def label_statistics(label: Image, image: Image | None = None) -> list[dict[str, object]]:
    """One row per foreground label: voxel count, size (:func:`size_unit`) and, with
    ``image``, the mean intensity inside it (over channels for RGB; empty where absent)."""
    values = label.numpy()[0]
    unit = size_unit(label, image)
    spacing = label.spacing_mm
    voxel = {"mL": np.prod(spacing) / 1000, "mm2": np.prod(spacing[:2]), "px": 1.0}[unit]
    intensity = None
    if image is not None:  # one channel as it is (no copy of a large volume); RGB: the mean
        array = image.numpy()
        intensity = array[0] if array.shape[0] == 1 else array.mean(axis=0, dtype=np.float32)
    rows = []
    for value, name in sorted(label.labels.items()):
        if value == 0:
            continue
        inside = values == value  # a boolean mask per label: 1 byte a voxel, not 8
        count = int(np.count_nonzero(inside))
        mean = None
        if intensity is not None and count:
            mean = round(float(intensity[inside].sum(dtype=np.float64) / count), 4)
        rows.append(
            {
                "label_value": value,
                "label": name,
                "voxels": count,
                "size": round(count * float(voxel), 4),
                "unit": unit,
                "mean_intensity": mean,
            }
        )
    return rows


def write_statistics(path: str | Path, rows: list[dict[str, object]]) -> Path:
    """The rows (each with its ``input``) as CSV, written atomically."""
    path = Path(path)
    with atomic_output(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if row.get(key) is None else row[key] for key in COLUMNS})
    return path
