"""``medlens evaluate`` on label maps: per case and label metrics, summary, HTML report.

See :mod:`medlens.evaluate.runner` for how cases are matched and what is written.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medlens.data.segmentation import RASTER_FORMATS, raster_mask_labels
from medlens.errors import MedlensError
from medlens.evaluate.folders import (
    EvaluateOptions,
    case_name,
    failures_html,
    list_cases,
    load_speed,
    require_matching_cases,
    speed_html,
    write_csv,
    write_json,
)
from medlens.evaluate.report import (
    box_plots,
    image_tag,
    overlay_png,
    table_html,
    write_report,
)
from medlens.evaluate.segmentation import METRIC_COLUMNS, segmentation_metrics
from medlens.evaluate.stats import summarize
from medlens.io.atomic import full_suffix

#: The CSV columns the issue fixes (case, label, metrics), then the extra ones.
CSV_COLUMNS = ("case", *METRIC_COLUMNS)
SUMMARY_METRICS = ("dice", "iou", "precision", "recall", "hd95_mm", "assd_mm", "nsd")
HIGHER_IS_BETTER = {"dice", "iou", "precision", "recall", "nsd"}
CONVENTIONS = (
    "Metrics Reloaded conventions: both masks empty -> Dice/IoU/NSD/precision/recall 1, "
    "HD95/ASSD 0 mm; one mask empty -> Dice/IoU/NSD 0, HD95/ASSD undefined (left out of "
    "means, counted in n_undefined); precision undefined for an empty prediction, recall "
    "undefined for an empty reference. Surface distances as MONAI (6-connected surface "
    "voxels, linear-interpolated 95th percentile, symmetric ASSD)."
)


def _read_label_map(path: Path) -> Any:
    from medlens.io import read_image

    image = read_image(path, warn_nan=False)
    array = image.numpy()
    image_format = image.metadata.get("format") or full_suffix(path).lstrip(".")
    if image_format in RASTER_FORMATS:  # as training reads masks: one rule for both
        lossy = image_format in ("jpg", "jpeg")
        array = raster_mask_labels(array, lossy=lossy, path=path)[None]
    elif array.shape[0] > 1:
        array = array[:1]
    if array.dtype.kind == "f":
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
    require_matching_cases(list(pred_cases), list(gt_cases), prediction_path=pred_path)
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
    write_csv(out_dir / "metrics.csv", rows, CSV_COLUMNS)
    write_json(out_dir / "summary.json", summary)
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

    matches = [p for p in folder.iterdir() if case_name(p) in (case, f"{case}_0000")]
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
        ("Failures and warnings", failures_html(summary)),
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
