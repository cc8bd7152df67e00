"""Detection datasets: YOLO layout and COCO json, validated line by line.

YOLO layout: ``DATA/images/{train,val}/NAME.jpg`` and ``DATA/labels/{train,val}/NAME.txt``
with one ``class cx cy w h`` line per box (normalised to 0..1; an empty file means "no
object"). COCO: ``DATA/annotations/{train,val}.json`` (or ``instances_{split}.json``) with
images under ``DATA/images/{split}/`` or ``DATA/{split}/``; boxes ``[x, y, w, h]`` in pixels.

Images are read as one grey channel (CT slices exported as RGB JPEG carry the same value in
each channel); a colour image whose channels differ is converted with the usual luma weights.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np

from medlens.detect.boxes import Boxes
from medlens.errors import MedlensError
from medlens.io.raster import decode_raster

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclasses.dataclass
class DetectionSample:
    """One image: ``pixels`` (H, W) uint8 grey, ``boxes`` in pixel-edge ``xyxy``."""

    path: Path
    pixels: np.ndarray
    boxes: Boxes


def read_grey(path: str | Path) -> np.ndarray:
    """(H, W) uint8 grey pixels of a PNG/JPEG; corrupt files raise a MedlensError naming them."""
    pixels = decode_raster(path)
    if pixels.ndim == 3:
        if pixels.shape[2] == 4:
            pixels = pixels[..., :3]
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
    if pixels.dtype != np.uint8:  # 16-bit PNG: stretch to 8 bit like the training JPEGs
        low, high = float(pixels.min()), float(pixels.max())
        pixels = ((pixels - low) / max(high - low, 1e-6) * 255).astype(np.uint8)
    return np.ascontiguousarray(pixels)


def parse_yolo_labels(
    path: Path, *, width: int, height: int, num_classes: int | None = None
) -> Boxes:
    """Boxes of a YOLO label file; bad lines raise a MedlensError naming file and line."""
    rows: list[list[float]] = []
    labels: list[int] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise MedlensError(
                f"line {number}: expected 5 fields 'class cx cy w h', got {len(fields)}",
                path=path,
                hint="fix or delete the line",
            )
        try:
            label = int(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError:
            raise MedlensError(
                f"line {number}: not numbers: '{line.strip()}'", path=path, hint="fix the line"
            ) from None
        if not all(0.0 <= v <= 1.0 for v in (cx, cy, w, h)):
            raise MedlensError(
                f"line {number}: coordinates must be normalised to [0, 1], got '{line.strip()}'",
                path=path,
                hint="divide pixel coordinates by the image width/height",
            )
        if label < 0 or (num_classes is not None and label >= num_classes):
            raise MedlensError(
                f"line {number}: class {label} is not one of the dataset's "
                f"{num_classes} class(es) 0..{(num_classes or 1) - 1}",
                path=path,
                hint="fix the class id or pass --names with all class names",
            )
        x0, x1 = (cx - w / 2) * width, (cx + w / 2) * width
        y0, y1 = (cy - h / 2) * height, (cy + h / 2) * height
        rows.append([max(x0, 0.0), max(y0, 0.0), min(x1, width), min(y1, height)])
        labels.append(label)
    if not rows:
        return Boxes.empty()
    return Boxes(np.array(rows), labels=np.array(labels))


def yolo_split_files(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, label) pairs of a YOLO split; an image without a label file is an error."""
    image_dir = root / "images" / split
    label_dir = root / "labels" / split
    if not image_dir.is_dir():
        raise MedlensError(
            f"no images/{split}/ folder", path=root, hint="expected YOLO layout images/{train,val}"
        )
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise MedlensError("no images in the folder", path=image_dir)
    pairs = []
    for image in images:
        label = label_dir / f"{image.stem}.txt"
        if not label.is_file():
            raise MedlensError(
                f"image {image.name} has no label file labels/{split}/{image.stem}.txt",
                path=image,
                hint="add an empty label file if the image has no object",
            )
        pairs.append((image, label))
    return pairs


def read_names(root: Path) -> dict[int, str] | None:
    """Class names from ``data.yaml``/``classes.txt`` beside the data, if present."""
    classes = root / "classes.txt"
    if classes.is_file():
        return {i: n.strip() for i, n in enumerate(classes.read_text().splitlines()) if n.strip()}
    for name in ("data.yaml", "dataset.yaml"):
        yaml_path = root / name
        if yaml_path.is_file():
            for line in yaml_path.read_text().splitlines():
                key, _, value = line.partition(":")
                if key.strip() == "names" and value.strip().startswith("["):
                    items = [v.strip().strip("'\"") for v in value.strip()[1:-1].split(",")]
                    return dict(enumerate(items))
    return None


def load_yolo_split(
    root: str | Path, split: str, *, num_classes: int | None = None, limit: int | None = None
) -> list[DetectionSample]:
    root = Path(root)
    samples = []
    pairs = yolo_split_files(root, split)
    if limit is not None and limit < len(pairs):  # spread over the (sorted) split
        pairs = [pairs[i] for i in np.linspace(0, len(pairs) - 1, limit).round().astype(int)]
    for image_path, label_path in pairs:
        pixels = read_grey(image_path)
        height, width = pixels.shape
        boxes = parse_yolo_labels(label_path, width=width, height=height, num_classes=num_classes)
        samples.append(DetectionSample(image_path, pixels, boxes))
    return samples


def _coco_file(root: Path, split: str) -> Path | None:
    for name in (f"{split}.json", f"instances_{split}.json"):
        for folder in (root / "annotations", root):
            if (folder / name).is_file():
                return folder / name
    return None


def load_coco_split(
    root: str | Path, split: str, *, limit: int | None = None
) -> tuple[list[DetectionSample], dict[int, str]]:
    """Samples and names of a COCO split; categories are renumbered 0..N-1 in id order.

    Crowd regions (``iscrowd: 1``) are left out, as COCO's own evaluation does not count them
    as objects; a malformed annotation is an error naming the file and the annotation.
    """
    root = Path(root)
    path = _coco_file(root, split)
    if path is None:
        raise MedlensError(f"no COCO annotations for split '{split}'", path=root)
    try:
        coco = json.loads(path.read_text())
        categories = sorted(coco["categories"], key=lambda c: c["id"])
        images = coco["images"]
        annotations = coco.get("annotations", [])
        image_ids = {entry["id"] for entry in images}
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise MedlensError(f"not a COCO detection file ({error})", path=path) from None
    index_of = {c["id"]: i for i, c in enumerate(categories)}
    names = {i: str(c["name"]) for i, c in enumerate(categories)}
    per_image: dict[object, list[tuple[object, int, list[float]]]] = {}
    for annotation in annotations:
        name, box, category = coco_box(annotation, path)
        if annotation.get("iscrowd"):
            continue
        if annotation["image_id"] not in image_ids:
            raise MedlensError(
                f"{name}: image_id {annotation['image_id']} is not in the file's images",
                path=path,
                hint="check that the annotations belong to this split's json",
            )
        if category not in index_of:
            raise MedlensError(f"{name} has unknown category_id {category}", path=path)
        per_image.setdefault(annotation["image_id"], []).append((name, index_of[category], box))
    samples = []
    for entry in images[:limit]:
        candidates = [
            root / "images" / split / entry["file_name"],
            root / split / entry["file_name"],
            root / entry["file_name"],
            path.parent / entry["file_name"],
        ]
        image_path = next((c for c in candidates if c.is_file()), candidates[0])
        pixels = read_grey(image_path)
        rows, labels = [], []
        for name, label, (x, y, w, h) in per_image.get(entry["id"], []):
            if (
                w <= 0
                or h <= 0
                or x < 0
                or y < 0
                or x + w > pixels.shape[1] + 1
                or y + h > pixels.shape[0] + 1
            ):
                raise MedlensError(
                    f"{name}: bbox {[x, y, w, h]} is outside the "
                    f"{pixels.shape[1]}x{pixels.shape[0]} image {entry['file_name']}",
                    path=path,
                )
            rows.append([x, y, x + w, y + h])
            labels.append(label)
        boxes = Boxes(np.array(rows), labels=np.array(labels)) if rows else Boxes.empty()
        samples.append(DetectionSample(image_path, pixels, boxes))
    return samples, names


def coco_box(
    annotation: object, path: Path, *, needs_category: bool = True
) -> tuple[str, list[float], object]:
    """``("annotation ID", [x, y, w, h], category_id)`` of one COCO annotation; a MedlensError
    naming ``path`` says what is missing or not four numbers.

    Example:
        >>> coco_box({"id": 3, "image_id": 1, "category_id": 2, "bbox": [4, 5, 6, 7]}, Path("a"))
        ('annotation 3', [4.0, 5.0, 6.0, 7.0], 2)
    """
    if not isinstance(annotation, dict):
        raise MedlensError(f"an annotation is not an object: {annotation!r:.60}", path=path)
    name = f"annotation {annotation.get('id', '(no id)')}"
    for key in ("image_id", "category_id", "bbox") if needs_category else ("image_id", "bbox"):
        if key not in annotation:
            raise MedlensError(f"{name}: no '{key}'", path=path)
    bbox = annotation["bbox"]
    try:
        box = [float(v) for v in bbox]
    except (TypeError, ValueError):
        box = []
    if len(box) != 4:
        raise MedlensError(
            f"{name}: bbox {bbox!r} is not four numbers [x, y, width, height]", path=path
        )
    return name, box, annotation.get("category_id", 0)


def load_detection_data(
    root: str | Path,
    split: str,
    *,
    names: dict[int, str] | None = None,
    limit: int | None = None,
) -> tuple[list[DetectionSample], dict[int, str]]:
    """Load a YOLO or COCO split; returns samples and class names."""
    root = Path(root)
    if not root.is_dir():
        raise MedlensError("dataset folder not found", path=root)
    coco_path = _coco_file(root, split)
    if coco_path is not None and not (root / "labels").is_dir():
        samples, coco_names = load_coco_split(root, split, limit=limit)
        if names and len(names) != len(coco_names):
            raise MedlensError(
                f"the COCO file has {len(coco_names)} categories "
                f"({', '.join(coco_names.values())}) but --names gives {len(names)}",
                path=coco_path,
                hint="name every category in id order, or leave --names out to use the file's",
            )
        return samples, names or coco_names
    names = names or read_names(root) or {0: "object"}
    samples = load_yolo_split(root, split, num_classes=len(names), limit=limit)
    return samples, names
