"""``medlens detect``: run a shipped detector on images, folders or DICOM, write the results.

For each 2D image (or each slice of a DICOM series) ``NAME`` it writes, atomically:

- ``OUT/NAME.txt``: YOLO lines ``class cx cy w h conf`` normalised to the image size;
- ``OUT/NAME.json``: boxes in pixels (pixel-edge ``xyxy``), in mm (LPS corners, width and
  height) and scores with class names;
- ``OUT/NAME.png``: the image with the boxes drawn;

plus ``OUT/detections.csv`` (one row per box, and one row per image without boxes) and, for
DICOM input, ``OUT/NAME_sr.dcm``: a TID 1500 measurement report (:mod:`medlens.detect.sr`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from medlens.detect.boxes import Boxes
from medlens.detect.data import IMAGE_SUFFIXES
from medlens.detect.predict import Detector
from medlens.detect.rescore import BoxRescoring
from medlens.detect.sr import write_sr
from medlens.devices import torch_device
from medlens.errors import MedlensError, failed_inputs_error, warn_unread_subfolders
from medlens.image import Image
from medlens.io.atomic import (
    atomic_output,
    file_stem,
    refuse_replacing_inputs,
    refuse_shared_outputs,
)

_RASTER_FORMATS = ("png", "jpg", "jpeg", "tif", "tiff", "bmp")


@dataclasses.dataclass
class Slice:
    """One 2D picture to run on: ``pixels`` (H, W) uint8 grey, from ``image`` slice ``k``."""

    name: str
    pixels: np.ndarray
    image: Image
    k: int
    source: Any = None  # the pydicom dataset this slice came from (DICOM input)


def load_detector(
    model: str | Path,
    *,
    conf: float = 0.25,
    device: str = "cpu",
    engine: str = "auto",
    cache_dir: str | Path | None = None,
) -> tuple[Detector, Any]:
    """Detector and card of a detection model; ``engine``: auto, torch or onnx (CPU)."""
    import medlens.detect  # noqa: F401  (registers the architecture)
    from medlens.compress.onnx import inference_engine
    from medlens.models.zoo import load_model

    device = str(torch_device(device))
    network, card = load_model(model, device=device)
    if card.task != "detection":
        raise MedlensError(
            f"model '{card.name}' is a {card.task} model, not a detection model",
            hint="pick a detection model, e.g. kidney-stones",
        )
    size = int(card.input.get("long_side_px", 384))
    nms = float(card.preprocessing.get("nms_iou", 0.5))
    network = inference_engine(
        network,
        torch.zeros(1, int(card.input.get("channels", 1)), size, size),
        engine=engine,
        device=device,
        weights_sha256=card.sha256,
        cache_dir=cache_dir,
    )
    rescoring = card.preprocessing.get("rescoring")
    detector = Detector(
        network,
        input_size=size,
        conf=conf,
        nms_iou=nms,
        device=device,
        rescoring=BoxRescoring.from_card(rescoring) if rescoring else None,
    )
    return detector, card


def _window(image: Image, source: Any) -> tuple[float, float]:
    """Display window (low, high) for non-8-bit input: the DICOM's own, else robust range."""
    if source is not None and "WindowCenter" in source and "WindowWidth" in source:
        center = float(np.ravel(np.asarray(source.WindowCenter, dtype=float))[0])
        width = float(np.ravel(np.asarray(source.WindowWidth, dtype=float))[0])
        return center - width / 2, center + width / 2
    values = image.numpy()
    finite = values[np.isfinite(values)]  # NaN voxels (warned about on reading) show black
    if not finite.size:
        return 0.0, 1.0
    low, high = np.percentile(finite, [0.5, 99.5])
    return float(low), float(max(high, low + 1e-6))


def _scaled_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``values`` windowed to (low, high) and scaled to 0..255; NaN to 0."""
    scaled = np.clip((values.astype(np.float32) - low) / (high - low), 0, 1) * 255
    return np.nan_to_num(scaled, nan=0.0).astype(np.uint8)


def to_grey_uint8(image: Image, k: int, *, source: Any = None) -> np.ndarray:
    """(H, W) uint8 of slice ``k``: RGB -> luma, other dtypes windowed to 0..255."""
    array = image.numpy()[..., k]  # (C, W, H)
    channels = array.shape[0]
    if channels in (3, 4):
        rgb = np.ascontiguousarray(array[:3].transpose(2, 1, 0))
        if rgb.dtype != np.uint8:
            low, high = _window(image, source)
            rgb = _scaled_uint8(rgb, low, high)
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    plane = array[0].T  # (H, W)
    if plane.dtype == np.uint8:
        return np.ascontiguousarray(plane)
    low, high = _window(image, source)
    return _scaled_uint8(plane, low, high)


def detection_inputs(source: Path) -> list[Path]:
    """The inputs of a run: the images of a folder, else ``source`` itself (an image, a DICOM
    file, or a DICOM series folder)."""
    if not source.exists():
        raise MedlensError("input not found", path=source, hint="check the path")
    if source.is_dir():
        images = sorted(
            p
            for p in source.iterdir()
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if images:
            warn_unread_subfolders(source)
            return images
    return [source]


def output_stem(path: Path) -> str:
    """Name of an input's outputs: the file name without its suffix, or the folder's name."""
    return path.name if path.is_dir() else file_stem(path)


def check_outputs(inputs: list[Path], out: Path, *, overwrite: bool) -> None:
    """Refuse, before any work, two inputs writing the same files or an earlier run's results."""
    stems = [output_stem(path) for path in inputs]
    refuse_shared_outputs(
        (path, out / f"{stem}.txt") for path, stem in zip(inputs, stems, strict=True)
    )
    if not out.is_dir():
        return
    names = [f"{stem}{suffix}" for stem in stems for suffix in (".txt", ".json", ".png", "_sr.dcm")]
    # detections.csv is not a conflict: it keeps the earlier images' rows (write_csv)
    refuse_replacing_inputs(inputs, [out / name for name in ["detections.csv", *names]])
    if overwrite:
        return
    existing = next((name for name in names if (out / name).exists()), None)
    summary = out / "detections.csv"
    if existing is None and summary.is_file() and _csv_header(summary) != CSV_COLUMNS:
        existing = "detections.csv, in another format"
    if existing is not None:
        raise MedlensError(
            f"holds the results of an earlier run ({existing})",
            path=out,
            hint="pass --overwrite to replace them, or choose another output folder",
        )


def read_slices(path: Path, *, series_uid: str | None = None) -> list[Slice]:
    """Slices of one input: an image file, a DICOM file or a DICOM series folder."""
    import pydicom

    from medlens.io import image_format, read_image

    kind = image_format(path)
    image = read_image(path, series_uid=series_uid)
    sources: list[Any] = []
    if kind == "dicom":
        sources = [
            pydicom.dcmread(f, stop_before_pixels=True) for f in image.metadata["source_files"]
        ]
    depth = image.spatial_shape[2]
    stem = output_stem(path)
    result = []
    for k in range(depth):
        source = sources[k] if len(sources) == depth else (sources[0] if sources else None)
        name = stem if depth == 1 else f"{stem}_{k:04d}"
        result.append(Slice(name, to_grey_uint8(image, k, source=source), image, k, source))
    return result


def slice_boxes_3d(boxes: Boxes, k: int) -> Boxes:
    """2D slice boxes as 3D boxes lying in slice ``k`` (z corners at the slice centre)."""
    xyxy = boxes.xyxy
    z = np.full((len(boxes), 1), k + 0.5)
    return Boxes(np.hstack([xyxy[:, :2], z, xyxy[:, 2:], z]), boxes.scores, boxes.labels)


def boxes_record(item: Slice, boxes: Boxes, names: dict[int, str]) -> dict[str, Any]:
    height, width = item.pixels.shape
    world = slice_boxes_3d(boxes, item.k).to_world(item.image)
    size_mm = boxes.size_mm(item.image)
    return {
        "image": item.name,
        "source": str(item.image.metadata.get("path", "")),
        "slice": item.k,
        "width_px": width,
        "height_px": height,
        "spacing_mm": [float(v) for v in item.image.spacing_mm[:2]],
        # PNG/JPEG carry no pixel size: their mm values assume 1 mm pixels
        "spacing_known": item.image.metadata.get("format") not in _RASTER_FORMATS,
        "boxes": [
            {
                "class_id": int(label),
                "class_name": names.get(int(label), str(label)),
                "score": round(float(score), 5),
                "xyxy_px": [round(float(v), 2) for v in xyxy],
                "corners_lps_mm": [[round(float(v), 3) for v in corner] for corner in corners],
                "size_mm": [round(float(v), 3) for v in size],
            }
            for xyxy, score, label, corners, size in zip(
                boxes.xyxy, boxes.scores, boxes.labels, world, size_mm, strict=True
            )
        ],
    }


def yolo_lines(boxes: Boxes, *, width: int, height: int) -> str:
    lines = []
    for (x0, y0, x1, y1), score, label in zip(boxes.xyxy, boxes.scores, boxes.labels, strict=True):
        cx, cy = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
        w, h = (x1 - x0) / width, (y1 - y0) / height
        lines.append(f"{int(label)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f} {score:.5f}")
    return "\n".join(lines) + ("\n" if lines else "")


def overlay(pixels: np.ndarray, boxes: Boxes, names: dict[int, str]) -> np.ndarray:
    canvas = cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    thickness = max(1, round(max(pixels.shape) / 400))
    for (x0, y0, x1, y1), score, label in zip(boxes.xyxy, boxes.scores, boxes.labels, strict=True):
        cv2.rectangle(
            canvas,
            (int(x0), int(y0)),
            (int(np.ceil(x1)) - 1, int(np.ceil(y1)) - 1),
            (0, 0, 255),
            thickness,
        )
        text = f"{names.get(int(label), label)} {score:.2f}"
        cv2.putText(
            canvas,
            text,
            (int(x0), max(10, int(y0) - 3)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.35 * thickness,
            (0, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return canvas


def run_detection(
    model: str | Path,
    source: str | Path,
    out: str | Path,
    *,
    conf: float = 0.25,
    series_uid: str | None = None,
    device: str = "cpu",
    engine: str = "auto",
    overwrite: bool = False,
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Detect on ``source`` and write all outputs into ``out``; returns the JSON records.

    Inputs are read one at a time, so a folder of any size runs in the memory of one image.
    In a folder, an input that cannot be read (corrupt, truncated) does not stop the others:
    they are written, with detections.csv, and then one error names every failed input.
    """
    source, out = Path(source), Path(out)
    device = str(torch_device(device))
    inputs = detection_inputs(source)
    check_outputs(inputs, out, overwrite=overwrite)
    detector, card = load_detector(model, conf=conf, device=device, engine=engine)
    names = dict(card.labels)
    records: list[dict[str, Any]] = []
    dicom_results: list[tuple[Slice, Boxes]] = []  # for the SR
    failed: list[MedlensError] = []
    for path in inputs:
        try:
            slices = read_slices(path, series_uid=series_uid)
        except MedlensError as error:
            if len(inputs) == 1:
                raise
            failed.append(error)
            continue
        out.mkdir(parents=True, exist_ok=True)
        for item in slices:
            boxes = detector([item.pixels])[0]
            records.append(write_slice_outputs(item, boxes, names, out))
            if item.source is not None:
                dicom_results.append((item, boxes))
            if progress is not None:
                progress()
    if records:
        write_csv(out / "detections.csv", records)
    if dicom_results:
        write_sr(out / f"{output_stem(source)}_sr.dcm", dicom_results, names, card)
    if failed:
        raise failed_inputs_error(failed, total=len(inputs), task="read")
    return records


def write_slice_outputs(
    item: Slice, boxes: Boxes, names: dict[int, str], out: Path
) -> dict[str, Any]:
    """NAME.txt, NAME.json and NAME.png of one slice; returns its JSON record."""
    height, width = item.pixels.shape
    record = boxes_record(item, boxes, names)
    with atomic_output(out / f"{item.name}.txt") as temporary:
        temporary.write_text(yolo_lines(boxes, width=width, height=height))
    with atomic_output(out / f"{item.name}.json") as temporary:
        temporary.write_text(json.dumps(record, indent=1) + "\n")
    with atomic_output(out / f"{item.name}.png") as temporary:
        if not cv2.imwrite(str(temporary), overlay(item.pixels, boxes, names)):
            raise MedlensError("OpenCV could not write the overlay", path=out / f"{item.name}.png")
    return record


CSV_COLUMNS = [
    "image", "slice", "class_name", "score", "x0_px", "y0_px", "x1_px", "y1_px",
    "width_mm", "height_mm",
]  # fmt: skip


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="") as handle:
        return next(csv.reader(handle), [])


def write_csv(path: Path, records: list[dict[str, Any]]) -> None:
    """detections.csv: one row per box, and one row per image without boxes.

    The summary of the whole folder: rows an earlier run wrote for other images are kept
    (their NAME.txt/.json/.png are still beside it); rows of this run's images are replaced.
    """
    rows: list[list[Any]] = []
    if path.is_file():
        with open(path, newline="") as handle:
            earlier = list(csv.reader(handle))
        if earlier and earlier[0] == CSV_COLUMNS:  # else only with --overwrite (check_outputs)
            this_run = {str(record["image"]) for record in records}
            rows = [row for row in earlier[1:] if row and row[0] not in this_run]
    for record in records:
        if not record["boxes"]:
            rows.append([record["image"], record["slice"], "", "", "", "", "", "", "", ""])
        for box in record["boxes"]:
            rows.append(
                [
                    record["image"],
                    record["slice"],
                    box["class_name"],
                    box["score"],
                    *box["xyxy_px"],
                    *box["size_mm"],
                ]
            )
    with (
        atomic_output(path) as temporary,
        open(temporary, "w", newline="") as handle,
    ):
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)
