"""``medlens evaluate PRED GT --out DIR``: match cases by name, compute metrics, write results.

Segmentation (masks in any format :func:`medlens.io.read_image` reads) writes
``DIR/metrics.csv`` (one row per case and label), ``DIR/summary.json`` and
``DIR/report.html``. Detection (YOLO ``.txt`` folders with an optional 6th confidence column,
or COCO json) writes ``DIR/detection.csv`` (one row per class), ``DIR/summary.json`` and
``DIR/report.html``. Every file is written atomically.

Cases match by file name without the image suffix (``case_001.nii.gz`` matches
``case_001.nrrd``). A case present on one side only is listed in the summary and counted as
a failure: a missing prediction is scored as an empty prediction (Dice 0 for every reference
label, flag ``missing_prediction``); a prediction without reference cannot be scored and is
listed under ``missing_reference``. Labels found in a prediction but never in the reference
are listed under ``labels_not_in_reference`` (and scored: they are pure false positives).

Raster masks (PNG/JPEG) with values above 1 are thresholded at 127 (JPEG-compressed binary
masks such as Kvasir-SEG's); colour masks use their first channel.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import MedlensError
from medlens.evaluate.detection import detection_metrics, froc, match_detections
from medlens.evaluate.report import (
    box_plots,
    image_tag,
    line_plot,
    overlay_png,
    table_html,
    write_report,
)
from medlens.evaluate.segmentation import METRIC_COLUMNS, segmentation_metrics
from medlens.evaluate.stats import summarize
from medlens.io.atomic import atomic_output, full_suffix

#: The CSV columns the issue fixes (case, label, metrics), then the extra ones.
CSV_COLUMNS = ("case", *METRIC_COLUMNS)
SUMMARY_METRICS = ("dice", "iou", "precision", "recall", "hd95_mm", "assd_mm", "nsd")
HIGHER_IS_BETTER = {"dice", "iou", "precision", "recall", "nsd"}
DETECTION_COLUMNS = (
    "class",
    "n_gt",
    "n_pred",
    "ap10",
    "ap25",
    "ap50",
    "ap75",
    "map50_95",
    "froc_0.125",
    "froc_0.25",
    "froc_0.5",
    "froc_1",
    "froc_2",
    "froc_4",
    "froc_8",
    "cpm",
)
CONVENTIONS = (
    "Metrics Reloaded conventions: both masks empty -> Dice/IoU/NSD/precision/recall 1, "
    "HD95/ASSD 0 mm; one mask empty -> Dice/IoU/NSD 0, HD95/ASSD undefined (left out of "
    "means, counted in n_undefined); precision undefined for an empty prediction, recall "
    "undefined for an empty reference. Surface distances as MONAI (6-connected surface "
    "voxels, linear-interpolated 95th percentile, symmetric ASSD)."
)


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


# --------------------------------------------------------------------------- files
def _case_name(path: Path) -> str:
    suffix = full_suffix(path)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


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
        return {_case_name(folder): folder}
    cases: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            if not folders:
                continue
        elif suffixes is not None and full_suffix(path) not in suffixes:
            continue
        name = _case_name(path)
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


def is_detection_input(gt: Path) -> bool:
    """A COCO json file, or a folder of YOLO txt files, means detection."""
    if gt.is_file():
        return gt.suffix.lower() in (".json", ".txt")
    return gt.is_dir() and any(p.suffix.lower() == ".txt" for p in gt.iterdir())


def _write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    with atomic_output(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k, "")) for k in columns})


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return value


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; undefined values are counted next to them
    if isinstance(value, Path):
        return str(value)
    return value


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(_json_safe(data), indent=2) + "\n")


def load_speed(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise MedlensError(f"cannot read speed JSON ({error})", path=path) from None


# --------------------------------------------------------------------------- segmentation
def _read_label_map(path: Path) -> Any:
    from medlens.io import read_image

    image = read_image(path, warn_nan=False)
    array = image.numpy()
    if array.shape[0] > 1:
        array = array[:1]
    if image.metadata.get("format") in ("png", "jpg", "jpeg", "tif", "tiff", "bmp") or (
        full_suffix(path) in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
    ):
        if array.max() > 1:
            array = (array > 127).astype(np.uint8)
    elif array.dtype.kind == "f":
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            raise MedlensError(
                "mask has non-integer values (probabilities?)",
                path=path,
                hint="write label maps (argmax / threshold) before evaluating",
            )
        array = rounded.astype(np.int32)
    return image.with_array(array)


def _geometry_difference(pred: Any, ref: Any) -> str:
    differences = []
    if pred.spatial_shape != ref.spatial_shape:
        differences.append(f"shape {pred.spatial_shape} vs {ref.spatial_shape}")
    if not np.allclose(pred.spacing_mm, ref.spacing_mm, atol=1e-4):
        differences.append(
            f"spacing {np.round(pred.spacing_mm, 4).tolist()} vs "
            f"{np.round(ref.spacing_mm, 4).tolist()} mm"
        )
    if not np.allclose(pred.origin_mm, ref.origin_mm, atol=1e-3):
        differences.append(
            f"origin {np.round(pred.origin_mm, 3).tolist()} vs "
            f"{np.round(ref.origin_mm, 3).tolist()} mm"
        )
    if not np.allclose(pred.direction, ref.direction, atol=1e-4):
        differences.append("direction differs")
    return ", ".join(differences) or "voxel positions differ"


def resample_to(pred: Any, ref: Any) -> Any:
    """Nearest-neighbour resampling of a label map onto another image's grid (SimpleITK)."""
    import SimpleITK as sitk

    from medlens.io.itk import image_from_sitk, image_to_sitk

    moving = image_to_sitk(pred.with_array(pred.numpy().astype(np.int32)))
    fixed = image_to_sitk(ref.with_array(np.zeros(ref.array.shape, np.uint8)))
    resampled = sitk.Resample(
        moving, fixed, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkInt32
    )
    return ref.with_array(image_from_sitk(resampled).numpy())


def _spatial(image: Any) -> tuple[np.ndarray, np.ndarray]:
    """(label array without channel axis, 2D or 3D; spacing of the kept axes)."""
    array = image.numpy()[0]
    if image.is_2d:
        return array[:, :, 0], image.spacing_mm[:2]
    return array, image.spacing_mm


def evaluate_segmentation(
    pred_path: Path,
    gt_path: Path,
    out_dir: Path,
    options: EvaluateOptions = EvaluateOptions(),
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Score every case, write metrics.csv, summary.json and report.html; return the summary."""
    from medlens.io import DICOM_SUFFIXES, IMAGE_SUFFIXES

    # images and DICOM series folders only: dataset.json, README etc. are not cases
    suffixes = (*IMAGE_SUFFIXES, *DICOM_SUFFIXES)
    pred_cases = list_cases(pred_path, suffixes=suffixes, folders=True)
    gt_cases = list_cases(gt_path, suffixes=suffixes, folders=True)
    missing_prediction = sorted(set(gt_cases) - set(pred_cases))
    missing_reference = sorted(set(pred_cases) - set(gt_cases))
    rows: list[dict[str, Any]] = []
    extra_labels: dict[str, list[int]] = {}
    reference_labels: set[int] = set()
    resampled: list[str] = []
    started = time.perf_counter()
    for case in sorted(gt_cases):
        if progress:
            progress(case)
        ref = _read_label_map(gt_cases[case])
        ref_array, spacing = _spatial(ref)
        present_ref = {int(v) for v in np.unique(ref_array) if v != 0}
        reference_labels |= present_ref | set((ref.labels or {}).keys()) - {0}
        if case in pred_cases:
            pred = _read_label_map(pred_cases[case])
            if not pred.same_grid(ref):
                if not options.resample:
                    raise MedlensError(
                        f"prediction {pred_cases[case]} and reference {gt_cases[case]} have "
                        f"different geometry: {_geometry_difference(pred, ref)}",
                        hint="pass --resample to put predictions on the reference grid "
                        "(nearest neighbour)",
                    )
                pred = resample_to(pred, ref)
                resampled.append(case)
            pred_array, _ = _spatial(pred)
            flag_override = ""
        else:
            pred_array = np.zeros_like(ref_array)
            flag_override = "missing_prediction"
        present_pred = {int(v) for v in np.unique(pred_array) if v != 0}
        labels = options.labels or tuple(sorted(present_ref | present_pred))
        for row in segmentation_metrics(
            pred_array,
            ref_array,
            spacing_mm=spacing,
            labels=labels,
            nsd_tolerance_mm=options.nsd_tolerance_mm,
        ):
            if flag_override:
                row["flag"] = flag_override
            rows.append({"case": case, **row})
        outside = sorted(present_pred - present_ref - set((ref.labels or {}).keys()))
        if outside:
            extra_labels[case] = outside
    seconds = time.perf_counter() - started
    # A label seen in any reference but absent from both maps of a case is "both empty" there.
    # Labels only ever in predictions are not filled in: their rows are the false alarms.
    expected_labels = sorted(set(options.labels or ()) | reference_labels)
    seen = {(r["case"], r["label"]) for r in rows}
    for case in sorted(gt_cases):
        for label in expected_labels:
            if (case, label) not in seen:
                empty = np.zeros((1, 1), np.uint8)
                row = segmentation_metrics(empty, empty, labels=[label])[0]
                rows.append({"case": case, **row})
    rows.sort(key=lambda r: (r["case"], r["label"]))
    all_labels = sorted({r["label"] for r in rows})
    labels_not_in_reference = sorted(
        {label for values in extra_labels.values() for label in values} - reference_labels
    )
    summary = {
        "task": "segmentation",
        "prediction": str(pred_path),
        "reference": str(gt_path),
        "num_reference_cases": len(gt_cases),
        "num_scored_cases": len(gt_cases) - len(missing_prediction),
        "num_failures": len(missing_prediction) + len(missing_reference),
        "missing_prediction": missing_prediction,
        "missing_reference": missing_reference,
        "labels_not_in_reference": labels_not_in_reference,
        "labels_only_in_prediction_by_case": extra_labels,
        "resampled_cases": resampled,
        "nsd_tolerance_mm": options.nsd_tolerance_mm,
        "conventions": CONVENTIONS,
        "seconds": seconds,
        "labels": {},
    }
    for label in all_labels:
        label_rows = [r for r in rows if r["label"] == label]
        summary["labels"][str(label)] = {
            "flags": {
                flag: sum(r["flag"] == flag for r in label_rows)
                for flag in sorted({r["flag"] for r in label_rows} - {""})
            },
            **{metric: summarize([r[metric] for r in label_rows]) for metric in SUMMARY_METRICS},
            "volume_abs_diff_ml": summarize([r["volume_abs_diff_ml"] for r in label_rows]),
        }
    speed = load_speed(options.speed_json)
    if speed is not None:
        summary["speed"] = speed
    if options.baseline is not None:
        summary["comparison"] = compare_with_baseline(rows, options.baseline)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(out_dir / "metrics.csv", rows, CSV_COLUMNS)
    _write_json(out_dir / "summary.json", summary)
    overlays = _worst_overlays(rows, pred_cases, gt_cases, options)
    _segmentation_report(out_dir / "report.html", rows, summary, overlays, speed)
    return summary


def _worst_overlays(
    rows: list[dict[str, Any]],
    pred_cases: dict[str, Path],
    gt_cases: dict[str, Path],
    options: EvaluateOptions,
) -> list[tuple[str, str]]:
    by_case: dict[str, list[float]] = {}
    for row in rows:
        by_case.setdefault(row["case"], []).append(row["dice"])
    ranked = sorted(by_case, key=lambda c: float(np.mean(by_case[c])))
    overlays = []
    for case in ranked[: options.worst_cases]:
        ref = _read_label_map(gt_cases[case])
        ref_array, _ = _spatial(ref)
        if case in pred_cases:
            pred = _read_label_map(pred_cases[case])
            if not pred.same_grid(ref):
                pred = resample_to(pred, ref)
            pred_array, _ = _spatial(pred)
        else:
            pred_array = np.zeros_like(ref_array)
        title = f"{case}: mean Dice {np.mean(by_case[case]):.3f}"
        background = _background_image(options.images, case, ref)
        overlays.append((case, overlay_png(pred_array, ref_array, image=background, title=title)))
    return overlays


def _background_image(folder: Path | None, case: str, ref: Any) -> np.ndarray | None:
    """The case's intensity image on the reference grid (first channel), if there is one."""
    if folder is None:
        return None
    from medlens.io import read_image

    matches = [p for p in folder.iterdir() if _case_name(p) in (case, f"{case}_0000")]
    if not matches:
        return None
    image = read_image(matches[0], warn_nan=False)
    if not image.same_grid(ref):
        return None
    array = image.numpy()[0].astype(np.float32)
    return array[:, :, 0] if image.is_2d else array


def read_metrics_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a metrics.csv written by ``medlens evaluate`` (numbers as floats)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.csv"
    if not path.is_file():
        raise MedlensError("no metrics.csv here", path=path, hint="pass an evaluation folder")
    rows = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            parsed: dict[str, Any] = {"case": row["case"], "label": int(row["label"])}
            for key in SUMMARY_METRICS:
                parsed[key] = float(row[key]) if row.get(key) not in (None, "") else float("nan")
            rows.append(parsed)
    return rows


def compare_with_baseline(rows: list[dict[str, Any]], baseline: Path) -> dict[str, Any]:
    """Per label and metric: paired Wilcoxon test of this run (B) against a baseline (A)."""
    from medlens.evaluate.stats import paired_comparison

    before = {(r["case"], r["label"]): r for r in read_metrics_csv(baseline)}
    result: dict[str, Any] = {"baseline": str(baseline), "labels": {}}
    for label in sorted({r["label"] for r in rows}):
        pairs = [
            (before[(r["case"], label)], r)
            for r in rows
            if r["label"] == label and (r["case"], label) in before
        ]
        if not pairs:
            continue
        result["labels"][str(label)] = {
            metric: paired_comparison(
                [a[metric] for a, _ in pairs],
                [b[metric] for _, b in pairs],
                higher_is_better=metric in HIGHER_IS_BETTER,
            )
            for metric in SUMMARY_METRICS
        }
    return result


def _comparison_html(summary: dict[str, Any]) -> str:
    table = []
    for label, metrics in summary["comparison"]["labels"].items():
        for metric, c in metrics.items():
            table.append(
                {
                    "label": label,
                    "metric": metric,
                    "n pairs": c["n"],
                    "mean B-A": c.get("mean_difference", float("nan")),
                    "95% CI": f"{c['ci_low']:.4g} .. {c['ci_high']:.4g}" if "ci_low" in c else "-",
                    "Wilcoxon p": c["p_value"],
                    "better": c["better"],
                }
            )
    columns = ("label", "metric", "n pairs", "mean B-A", "95% CI", "Wilcoxon p", "better")
    return (
        f"<p class='note'>A = {summary['comparison']['baseline']}; paired by case; two-sided "
        "Wilcoxon signed-rank test, 'better' at p &lt; 0.05.</p>" + table_html(table, columns)
    )


def _summary_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    table = []
    for label, metrics in summary["labels"].items():
        for metric in SUMMARY_METRICS:
            s = metrics[metric]
            table.append(
                {
                    "label": label,
                    "metric": metric,
                    "mean": s["mean"],
                    "95% CI": f"{s['ci_low']:.4g} .. {s['ci_high']:.4g}" if s["n"] else "-",
                    "median": s["median"],
                    "std": s["std"],
                    "n": s["n"],
                    "undefined": s["n_undefined"],
                }
            )
    return table


def _failures_html(summary: dict[str, Any]) -> str:
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


def _segmentation_report(
    path: Path,
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    overlays: list[tuple[str, str]],
    speed: dict[str, Any] | None,
) -> None:
    scored = [r for r in rows if r["case"] not in set(summary["missing_prediction"])]
    plot = box_plots(rows, ("dice", "nsd", "hd95_mm", "assd_mm")) if rows else ""
    sections = [
        (
            "Summary (mean, 95% bootstrap CI)",
            table_html(
                _summary_rows(summary),
                ("label", "metric", "mean", "95% CI", "median", "std", "n", "undefined"),
            )
            + f"<p class='note'>{summary['conventions']}</p>",
        ),
        ("Per-label distributions", f"<div class='figs'>{image_tag(plot, 'box plots')}</div>"),
        ("Failures and warnings", _failures_html(summary)),
        (
            "Worst cases (yellow: agreement, green: missed reference, red: extra prediction)",
            "<div class='cases'>"
            + "".join(f"<figure>{image_tag(uri, case)}</figure>" for case, uri in overlays)
            + "</div>",
        ),
        *(
            [("Model comparison: baseline A vs this prediction B", _comparison_html(summary))]
            if "comparison" in summary
            else []
        ),
        ("Speed", speed_html(speed)),
        (
            f"Per case ({len({r['case'] for r in rows})} cases, {len(scored)} scored rows; "
            "click a header to sort)",
            table_html(rows, CSV_COLUMNS),
        ),
    ]
    write_report(
        path,
        title="medlens segmentation evaluation",
        subtitle=f"prediction {summary['prediction']} vs reference {summary['reference']}; "
        f"NSD tolerance {summary['nsd_tolerance_mm']} mm",
        sections=sections,
    )


# --------------------------------------------------------------------------- detection
@dataclasses.dataclass
class BoxSet:
    """Boxes of many images: corners (N, 4|6), scores, image ids, class labels."""

    boxes: np.ndarray
    scores: np.ndarray
    image_ids: np.ndarray
    labels: np.ndarray
    images: list[str]


def read_yolo_folder(folder: Path, *, with_scores: bool) -> BoxSet:
    """YOLO txt files ``class cx cy w h [confidence]`` (normalised) -> corner boxes.

    IoU does not change when both axes are scaled, so normalised coordinates are compared
    directly. A prediction line without a 6th column gets confidence 1.
    """
    files = list_cases(folder, suffixes=(".txt",))
    boxes, scores, ids, labels = [], [], [], []
    for name, path in files.items():
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) not in (5, 6) or (len(fields) == 6 and not with_scores):
                expected = "5 or 6" if with_scores else "5"
                raise MedlensError(
                    f"line {number}: expected {expected} values 'class cx cy w h"
                    f"{' [confidence]' if with_scores else ''}', got {len(fields)}",
                    path=path,
                )
            try:
                values = [float(v) for v in fields]
            except ValueError:
                raise MedlensError(f"line {number}: non-numeric value", path=path) from None
            cx, cy, w, h = values[1:5]
            boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
            scores.append(values[5] if len(values) == 6 else 1.0)
            ids.append(name)
            labels.append(int(values[0]))
    return BoxSet(
        np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        np.asarray(scores),
        np.asarray(ids, dtype=object),
        np.asarray(labels, dtype=int),
        list(files),
    )


def _coco_image_names(data: dict[str, Any]) -> dict[int, str]:
    return {int(i["id"]): Path(i.get("file_name", str(i["id"]))).stem for i in data["images"]}


def read_coco(path: Path, *, with_scores: bool, images: dict[int, str] | None = None) -> BoxSet:
    """COCO dataset json (``images``, ``annotations``) or results list -> corner boxes."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise MedlensError(f"cannot read COCO json ({error})", path=path) from None
    if isinstance(data, dict):
        images = _coco_image_names(data)
        annotations = data.get("annotations", [])
    else:
        annotations = data
    images = images or {}
    boxes, scores, ids, labels = [], [], [], []
    for annotation in annotations:
        x, y, w, h = (float(v) for v in annotation["bbox"])
        boxes.append([x, y, x + w, y + h])
        if with_scores and "score" not in annotation:
            raise MedlensError("prediction has an annotation without 'score'", path=path)
        scores.append(float(annotation.get("score", 1.0)))
        image_id = int(annotation["image_id"])
        ids.append(images.get(image_id, str(image_id)))
        labels.append(int(annotation.get("category_id", 0)))
    names = list(images.values()) or sorted(set(ids))
    return BoxSet(
        np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        np.asarray(scores),
        np.asarray(ids, dtype=object),
        np.asarray(labels, dtype=int),
        names,
    )


def evaluate_detection(
    pred_path: Path,
    gt_path: Path,
    out_dir: Path,
    options: EvaluateOptions = EvaluateOptions(),
) -> dict[str, Any]:
    """AP/FROC per class; write detection.csv, summary.json, report.html; return the summary."""
    if gt_path.is_file() and gt_path.suffix.lower() == ".json":
        gt = read_coco(gt_path, with_scores=False)
        id_to_name = _coco_image_names(json.loads(gt_path.read_text()))
        if not (pred_path.is_file() and pred_path.suffix.lower() == ".json"):
            raise MedlensError(
                "reference is COCO json, so the prediction must be a COCO results json",
                path=pred_path,
            )
        pred = read_coco(pred_path, with_scores=True, images=id_to_name)
        pred_images = set(pred.image_ids.tolist())
    else:
        gt = read_yolo_folder(gt_path, with_scores=False)
        pred = read_yolo_folder(pred_path, with_scores=True)
        pred_images = set(pred.images)
    gt_images = set(gt.images)
    missing_prediction = sorted(gt_images - pred_images) if not gt_path.is_file() else []
    missing_reference = sorted(pred_images - gt_images)
    # predictions on images without a reference cannot be scored: drop them (listed above)
    keep = np.isin(pred.image_ids, list(gt_images))
    rows = detection_metrics(
        pred.boxes[keep],
        pred.scores[keep],
        pred.image_ids[keep],
        gt.boxes,
        gt.image_ids,
        pred_labels=pred.labels[keep],
        gt_labels=gt.labels,
        num_images=len(gt_images),
        froc_iou_threshold=options.froc_iou_threshold,
    )
    curves = []
    pr_curves = []
    for row in rows:
        p = (pred.labels[keep]) == row["class"]
        g = gt.labels == row["class"]
        args = (pred.boxes[keep][p], pred.scores[keep][p], pred.image_ids[keep][p])
        result = froc(
            *args,
            gt.boxes[g],
            gt.image_ids[g],
            num_images=max(len(gt_images), 1),
            iou_threshold=options.froc_iou_threshold,
        )
        curves.append(
            (f"class {row['class']}", result["curve_fp_per_image"], result["curve_sensitivity"])
        )
        scores, hits, num_gt = match_detections(*args, gt.boxes[g], gt.image_ids[g])
        if num_gt and len(scores):
            order = np.argsort(-scores, kind="mergesort")
            tp = np.cumsum(hits[order])
            precision = tp / np.arange(1, len(tp) + 1)
            pr_curves.append((f"class {row['class']} @IoU .5", tp / num_gt, precision))
    summary = {
        "task": "detection",
        "prediction": str(pred_path),
        "reference": str(gt_path),
        "num_images": len(gt_images),
        "num_failures": len(missing_prediction) + len(missing_reference),
        "missing_prediction": missing_prediction,
        "missing_reference": missing_reference,
        "labels_not_in_reference": sorted(set(pred.labels.tolist()) - set(gt.labels.tolist())),
        "interpolation": "COCO 101-point (pycocotools)",
        "froc_iou_threshold": options.froc_iou_threshold,
        "classes": {str(r["class"]): r for r in rows},
    }
    speed = load_speed(options.speed_json)
    if speed is not None:
        summary["speed"] = speed
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(out_dir / "detection.csv", rows, DETECTION_COLUMNS)
    _write_json(out_dir / "summary.json", summary)
    figures = []
    if curves:
        figures.append(
            line_plot(
                [
                    # start left of 1/8 and carry the last sensitivity on to 8 FP/image
                    (n, np.append(np.maximum(x, 1 / 16), 10.0), np.append(y, y[-1]))
                    for n, x, y in curves
                    if len(x)
                ],
                xlabel="false positives per image",
                ylabel="sensitivity",
                title=f"FROC (hit: IoU >= {options.froc_iou_threshold:g})",
                logx=True,
                xticks=(0.125, 0.25, 0.5, 1, 2, 4, 8),
            )
        )
    if pr_curves:
        figures.append(
            line_plot(pr_curves, xlabel="recall", ylabel="precision", title="Precision-recall")
        )
    sections = [
        ("Per class", table_html(rows, DETECTION_COLUMNS)),
        (
            "Curves",
            "<div class='figs'>" + "".join(image_tag(f, "curve") for f in figures) + "</div>",
        ),
        ("Failures and warnings", _failures_html(summary)),
        ("Speed", speed_html(speed)),
    ]
    write_report(
        out_dir / "report.html",
        title="medlens detection evaluation",
        subtitle=f"prediction {pred_path} vs reference {gt_path}; {len(gt_images)} images",
        sections=sections,
    )
    return summary


def evaluate_folders(
    pred_path: str | Path,
    gt_path: str | Path,
    out_dir: str | Path,
    options: EvaluateOptions = EvaluateOptions(),
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Segmentation or detection evaluation, chosen from what ``gt_path`` holds."""
    pred_path, gt_path, out_dir = Path(pred_path), Path(gt_path), Path(out_dir)
    for path in (pred_path, gt_path):
        if not path.exists():
            raise MedlensError("no such file or folder", path=path, hint="check the path")
    if is_detection_input(gt_path):
        return evaluate_detection(pred_path, gt_path, out_dir, options)
    return evaluate_segmentation(pred_path, gt_path, out_dir, options, progress=progress)


__all__ = [
    "CSV_COLUMNS",
    "DETECTION_COLUMNS",
    "EvaluateOptions",
    "METRIC_COLUMNS",
    "evaluate_detection",
    "evaluate_folders",
    "evaluate_segmentation",
    "compare_with_baseline",
    "read_coco",
    "read_metrics_csv",
    "read_yolo_folder",
    "resample_to",
]
