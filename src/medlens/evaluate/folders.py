"""What the evaluations of prediction folders share: options, cases matched by file name,
atomic CSV and JSON output, and the report's failure and speed sections.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import MedlensError
from medlens.evaluate.report import (
    table_html,
)
from medlens.io.atomic import atomic_output, file_stem, full_suffix


@dataclasses.dataclass(frozen=True)
class EvaluateOptions:
    """Options of ``medlens evaluate``.

    Attributes:
        nsd_tolerance_mm: surface distance counted as correct for NSD, in mm.
        resample: put each prediction on its reference's grid (nearest neighbour) instead of
            refusing different geometry.
        labels: label values to score (default: all found in reference or prediction).
        speed_json: a ``medlens bench`` JSON to add to the report.
        worst_cases: how many worst cases to show as overlays.
        froc_iou_threshold: IoU that counts as a hit for FROC.
        baseline: an earlier evaluation folder (or its metrics.csv) of model A: the report
            then compares this prediction (B) with it, per label and metric, with the
            Wilcoxon signed-rank test on the cases both have.
        images: folder of the intensity images (matched by case name) shown under the
            worst-case overlays.
    """

    nsd_tolerance_mm: float = 1.0
    resample: bool = False
    labels: tuple[int, ...] | None = None
    speed_json: Path | None = None
    worst_cases: int = 6
    froc_iou_threshold: float = 0.1
    baseline: Path | None = None
    images: Path | None = None


def case_name(path: Path) -> str:
    """A file's name without its image suffix (``case_001.nii.gz`` -> ``case_001``)."""
    return file_stem(path)


def list_cases(
    folder: Path, *, suffixes: Sequence[str] | None = None, folders: bool = False
) -> dict[str, Path]:
    """Case name -> path for the files in ``folder`` (or one file).

    Args:
        suffixes: keep only files with these suffixes (default: all files).
        folders: also keep sub-folders (DICOM series) as cases.
    """
    if not folder.exists():
        raise MedlensError("no such file or folder", path=folder, hint="check the path")
    if folder.is_file():
        return {case_name(folder): folder}
    cases: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            if not folders:
                continue
        elif suffixes is not None and full_suffix(path) not in suffixes:
            continue
        name = case_name(path)
        if name in cases:
            raise MedlensError(
                f"two files for case '{name}': {cases[name].name} and {path.name}",
                path=folder,
                hint="keep one file per case",
            )
        cases[name] = path
    if not cases:
        raise MedlensError("folder holds no cases", path=folder)
    return cases


def require_matching_cases(
    predictions: Sequence[str], references: Sequence[str], *, prediction_path: Path
) -> None:
    """Refuse predictions of which none has a reference case's name: almost surely the wrong
    folder (every reference would be scored a failure). Cases match by file name without
    suffix."""
    if not predictions or set(predictions) & set(references):
        return
    example_prediction, example_reference = sorted(predictions)[0], sorted(references)[0]
    raise MedlensError(
        f"none of the {len(predictions)} predictions has the name of one of the "
        f"{len(references)} reference cases (e.g. prediction '{example_prediction}', "
        f"reference '{example_reference}')",
        path=prediction_path,
        hint="predictions are matched to references by file name without suffix; check that "
        "both paths hold the same cases",
    )


def is_detection_input(gt: Path) -> bool:
    """A COCO json file, or a folder of YOLO txt files, means detection."""
    if gt.is_file():
        return gt.suffix.lower() in (".json", ".txt")
    return gt.is_dir() and any(p.suffix.lower() == ".txt" for p in gt.iterdir())


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Write ``rows`` (missing keys empty, floats to 6 significant digits) atomically."""
    with atomic_output(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: csv_value(row.get(k, "")) for k in columns})


def csv_value(value: Any) -> Any:
    """A CSV cell: floats to 6 significant digits, NaN as ``nan``."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return value


def json_safe(value: Any) -> Any:
    """``value`` with numpy scalars, paths and non-finite floats (None) made JSON-ready."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; undefined values are counted next to them
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON atomically (see :func:`json_safe`)."""
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(json_safe(data), indent=2) + "\n")


def load_speed(path: Path | None) -> dict[str, Any] | None:
    """The ``medlens bench`` JSON for the report's speed section, or None."""
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise MedlensError(f"cannot read speed JSON ({error})", path=path) from None


def failures_html(summary: dict[str, Any]) -> str:
    """The report's list of unmatched cases, unexpected labels and resampled predictions."""
    items = []
    if summary.get("missing_prediction"):
        items.append(
            f"<li class='bad'>{len(summary['missing_prediction'])} reference case(s) without "
            f"prediction (scored as empty prediction): "
            f"{', '.join(summary['missing_prediction'])}</li>"
        )
    if summary.get("missing_reference"):
        items.append(
            f"<li class='bad'>{len(summary['missing_reference'])} prediction(s) without "
            f"reference (not scored): {', '.join(summary['missing_reference'])}</li>"
        )
    if summary.get("labels_not_in_reference"):
        items.append(
            "<li class='bad'>labels in predictions but never in the reference: "
            f"{summary['labels_not_in_reference']}</li>"
        )
    if summary.get("resampled_cases"):
        items.append(
            f"<li>{len(summary['resampled_cases'])} prediction(s) resampled onto the reference "
            "grid (nearest neighbour)</li>"
        )
    if not items:
        return "<p>None: every case has a prediction and a reference.</p>"
    return "<ul>" + "".join(items) + "</ul>"


def speed_html(speed: dict[str, Any] | None) -> str:
    """The report's speed table, or a note on how to get one."""
    if not speed:
        return "<p class='note'>No speed figures given (run <code>medlens bench</code>).</p>"
    keys = (
        "model",
        "device",
        "input_shape",
        "batch_size",
        "latency_ms_p50",
        "latency_ms_p95",
        "throughput_per_s",
        "peak_ram_mb",
        "peak_gpu_mb",
        "num_cases",
    )
    rows = [{"quantity": k, "value": speed[k]} for k in keys if k in speed]
    return table_html(rows, ("quantity", "value"), sortable=False)
