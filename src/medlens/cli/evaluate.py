"""``medlens evaluate`` and ``medlens bench``: accuracy and speed reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from medlens.cli.app import (
    _int_list,
    app,
    stderr,
    stdout,
)
from medlens.errors import MedlensError


# --------------------------------------------------------------------------- evaluate / bench
@app.command()
def evaluate(
    pred: Annotated[Path, typer.Argument(help="Predictions: folder of masks, YOLO txt, or json.")],
    gt: Annotated[Path, typer.Argument(help="References: folder (or file) matching PRED.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder for CSV, JSON, HTML.")],
    resample: Annotated[
        bool, typer.Option(help="Resample predictions onto the reference grid (nearest).")
    ] = False,
    nsd_tolerance_mm: Annotated[
        float, typer.Option("--nsd-tolerance-mm", help="NSD tolerance in mm.")
    ] = 1.0,
    labels: Annotated[
        str | None, typer.Option(help="Labels to score, e.g. '1,2' (default: all found).")
    ] = None,
    speed: Annotated[
        Path | None,
        typer.Option(help="`medlens bench` JSON for the report (default: OUT/bench.json)."),
    ] = None,
    worst: Annotated[int, typer.Option(help="Worst cases shown as overlays.")] = 6,
    froc_iou: Annotated[float, typer.Option(help="IoU counted as a FROC hit.")] = 0.1,
    baseline: Annotated[
        Path | None,
        typer.Option(help="Earlier evaluation folder (model A): paired Wilcoxon comparison."),
    ] = None,
    images: Annotated[
        Path | None, typer.Option(help="Folder of intensity images shown under the overlays.")
    ] = None,
) -> None:
    """Score predictions against references: metrics CSV, summary.json and report.html.

    Segmentation: masks in any format medlens reads, matched by file name; Dice, IoU,
    precision, recall, HD95/ASSD (mm), NSD, volumes (ml). Detection (YOLO txt with a 6th
    confidence column, or COCO json): AP@.1/.25/.5/.75, mAP@[.5:.95], FROC and CPM per class.
    Example: ``medlens evaluate preds/ labelsTr/ --out eval/``.
    """
    from medlens.evaluate.runner import EvaluateOptions, evaluate_folders

    if nsd_tolerance_mm <= 0 or worst < 0 or not 0 < froc_iou <= 1:
        raise MedlensError(
            "--nsd-tolerance-mm must be > 0, --worst >= 0 and --froc-iou in (0, 1]",
            hint="e.g. --nsd-tolerance-mm 1 (the default; MONAI's NSD needs a tolerance)",
        )
    label_values = _int_list(labels, "--labels", "1,2")
    if speed is None and (out / "bench.json").is_file():
        speed = out / "bench.json"
    options = EvaluateOptions(
        nsd_tolerance_mm=nsd_tolerance_mm,
        resample=resample,
        labels=tuple(label_values) if label_values else None,
        speed_json=speed,
        worst_cases=worst,
        froc_iou_threshold=froc_iou,
        baseline=baseline,
        images=images,
    )
    with stderr.status("evaluating ...") as status:
        summary = evaluate_folders(
            pred, gt, out, options, progress=lambda case: status.update(f"evaluating {case}")
        )
    _print_evaluation(summary, out)


def _print_evaluation(summary: dict[str, Any], out: Path) -> None:
    def number(value: Any) -> str:
        return "undefined" if value is None or value != value else f"{value:.4g}"

    if summary["task"] == "segmentation":
        table = Table(title=f"{summary['num_scored_cases']} cases (mean [95% CI])")
        table.add_column("label")
        for metric in ("dice", "nsd", "hd95_mm", "assd_mm"):
            table.add_column(metric, justify="right")
        for label, metrics in summary["labels"].items():
            cells = []
            for metric in ("dice", "nsd", "hd95_mm", "assd_mm"):
                s = metrics[metric]
                text = f"{number(s['mean'])} [{number(s['ci_low'])}, {number(s['ci_high'])}]"
                if s["n_undefined"]:
                    text += f" ({s['n_undefined']} undef.)"
                cells.append(text)
            table.add_row(label, *cells)
    else:
        table = Table(title=f"{summary['num_images']} images")
        for column in ("class", "ap50", "map50_95", "cpm"):
            table.add_column(column, justify="right")
        for name, row in summary["classes"].items():
            table.add_row(name, number(row["ap50"]), number(row["map50_95"]), number(row["cpm"]))
    stdout.print(table)
    for label, metrics in summary.get("comparison", {}).get("labels", {}).items():
        c = metrics["dice"]
        stdout.print(
            f"label {label}: Dice B-A {number(c.get('mean_difference'))}, "
            f"Wilcoxon p {number(c['p_value'])} -> better: {c['better']}"
        )
    for key, text in (
        ("missing_prediction", "reference cases without prediction (scored as failures)"),
        ("missing_reference", "predictions without reference (not scored)"),
        ("labels_not_in_reference", "labels in predictions but not in the reference"),
    ):
        if summary.get(key):
            items = ", ".join(str(v) for v in summary[key])
            stderr.print(f"[yellow]warning:[/] {len(summary[key])} {text}: {items}")
    stdout.print(f"wrote {out / 'report.html'}")


@app.command()
def bench(
    model: Annotated[str, typer.Argument(help="Model name in the zoo, or a model folder.")],
    data: Annotated[Path, typer.Argument(help="Image file or folder of real cases.")],
    out: Annotated[Path, typer.Option("--out", help="JSON file to write.")] = Path("bench.json"),
    device: Annotated[str, typer.Option(help="Torch device: cpu, cuda, cuda:1.")] = "cpu",
    cases: Annotated[int, typer.Option(help="At most this many cases from DATA.")] = 10,
    repeats: Annotated[int, typer.Option(help="Timed passes per case.")] = 3,
    warmup: Annotated[int, typer.Option(help="Untimed passes first.")] = 2,
    batch_size: Annotated[int, typer.Option(help="Cases per forward pass.")] = 1,
    input_size: Annotated[
        str | None, typer.Option(help="Override input size in voxels, e.g. '64,64,64'.")
    ] = None,
) -> None:
    """Latency p50/p95, throughput, peak RAM and GPU memory of a model, as JSON.

    Write it into an evaluation folder (``--out eval/bench.json``) and ``medlens evaluate``
    adds it to the report. Example: ``medlens bench hippocampus imagesTr/ --out bench.json``.
    """
    from rich.progress import Progress

    from medlens.evaluate.bench import BenchOptions, benchmark_model, write_bench_json

    size = _int_list(input_size, "--input-size")
    if cases < 1 or repeats < 1 or batch_size < 1 or warmup < 0:
        raise MedlensError("--cases, --repeats and --batch-size must be >= 1, --warmup >= 0")
    options = BenchOptions(
        device=device,
        num_cases=cases,
        warmup=warmup,
        repeats=repeats,
        batch_size=batch_size,
        input_size=tuple(size) if size else None,
    )
    with Progress(console=stderr, transient=True) as progress:
        task = progress.add_task("timing", total=None)
        result = benchmark_model(
            model,
            data,
            options,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    write_bench_json(result, out)
    stdout.print(
        f"{result['model_name']} on {result['device']}: p50 {result['latency_ms_p50']:.1f} ms, "
        f"p95 {result['latency_ms_p95']:.1f} ms, {result['throughput_per_s']:.2f} cases/s, "
        f"peak RAM {result['peak_ram_mb']:.0f} MB"
        + (
            f", peak GPU {result['peak_gpu_mb']:.0f} MB"
            if result["peak_gpu_mb"] is not None
            else ""
        )
    )
    stdout.print(f"wrote {out}")
