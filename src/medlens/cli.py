"""The ``medlens`` command: ``medlens TASK ...`` with sane defaults.

User errors (:class:`~medlens.errors.MedlensError`) print one line and exit with code 2;
``--debug`` shows the traceback instead. Each task lives in its module; this file only
parses arguments and prints.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from medlens.errors import MedlensError, MedlensWarning

app = typer.Typer(
    name="medlens",
    help="Medical-imaging AI from raw scans to results: read, convert, preprocess, segment, "
    "detect, evaluate, de-identify.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

stdout = Console()
stderr = Console(stderr=True)

train_app = typer.Typer(
    help="Train a model: `medlens train seg DATA --out RUN`, `medlens train detect DATA`.",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train")

SeriesOption = Annotated[
    str | None, typer.Option("--series", help="SeriesInstanceUID to pick from a DICOM folder.")
]


def _version_callback(value: bool) -> None:
    if value:
        from medlens import __version__

        stdout.print(f"medlens {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Show version."),
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """medlens: medical-imaging AI from raw scans to trusted, fast results."""


# --------------------------------------------------------------------------- info
def _format_vector(values: Any) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in values) + ")"


@app.command()
def info(
    path: Annotated[Path, typer.Argument(help="Image file or DICOM folder.")],
    series: SeriesOption = None,
    phi: Annotated[
        bool, typer.Option("--phi", help="Also print patient identity (name, ID, birth date).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show format, shape, spacing, origin, direction, intensity range, dtype and modality.

    For a DICOM folder, lists its series first. Patient identity is shown only with --phi.
    """
    from medlens.io import image_format, list_series, read_image

    kind = image_format(path)
    report: dict[str, Any] = {"path": str(path), "format": kind}
    if kind == "dicom" and path.is_dir():
        all_series = list_series(path)
        report["series"] = [
            {
                "series_instance_uid": s.series_instance_uid,
                "modality": s.modality,
                "description": s.description,
                "files": s.num_files,
            }
            for s in all_series
        ]
        if len(all_series) > 1 and series is None:
            _print_info(report, as_json=as_json)
            if not as_json:
                stdout.print("[yellow]several series: pass --series UID for details[/]")
            return
    image = read_image(path, series_uid=series)
    report.update(image.summary())
    report["format"] = image.metadata.get("format", kind)
    for key in (
        "study_instance_uid",
        "series_instance_uid",
        "series_description",
        "transfer_syntax",
    ):
        if image.metadata.get(key):
            report[key] = image.metadata[key]
    if phi and "patient" in image.metadata:
        report["patient"] = image.metadata["patient"]
    _print_info(report, as_json=as_json)


def _print_info(report: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        stdout.print_json(json.dumps(report, default=str))
        return
    if "series" in report:
        series_table = Table(title=f"DICOM series in {report['path']}")
        series_table.add_column("SeriesInstanceUID", no_wrap=True, overflow="fold")
        for column in ("modality", "files", "description"):
            series_table.add_column(column)
        for item in report["series"]:
            series_table.add_row(
                item["series_instance_uid"],
                item["modality"],
                str(item["files"]),
                item["description"],
            )
        stdout.print(series_table)
    if "shape" not in report:
        return
    table = Table(show_header=False, title=str(report["path"]))
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("format", report["format"]),
        ("shape (C, I, J, K)", str(tuple(report["shape"]))),
        ("dtype", report["dtype"]),
        ("spacing (mm)", _format_vector(report["spacing_mm"])),
        ("origin (mm, LPS)", _format_vector(report["origin_mm"])),
        ("direction", " ".join(_format_vector(row) for row in np.array(report["direction"]).T)),
        ("orientation", report["orientation"]),
        ("intensity range", f"{report['min']} .. {report['max']}"),
        ("modality", report["modality"] or "-"),
    ]
    if report.get("nan_count"):
        rows.append(("NaN voxels", str(report["nan_count"])))
    for key in ("series_instance_uid", "series_description", "transfer_syntax"):
        if key in report:
            rows.append((key, str(report[key])))
    if "patient" in report:
        rows.extend((f"patient {key}", value) for key, value in report["patient"].items())
    for field, value in rows:
        table.add_row(field, str(value))
    stdout.print(table)


# --------------------------------------------------------------------------- convert
def parse_label_names(text: str | None) -> dict[int, str] | None:
    """``"1=anterior,2=posterior"`` -> ``{1: "anterior", 2: "posterior"}``."""
    if not text:
        return None
    names: dict[int, str] = {}
    for item in text.split(","):
        value, sep, name = item.partition("=")
        if not sep or not value.strip().isdigit() or not name.strip():
            raise MedlensError(f"bad label name '{item}'", hint="use --labels '1=liver,2=tumour'")
        names[int(value)] = name.strip()
    return names


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="Input image file or DICOM folder.")],
    output: Annotated[
        Path, typer.Argument(help="Output file: .nii.gz, .nii, .nrrd, .mha, .mhd, .png, .dcm.")
    ],
    series: SeriesOption = None,
    reference: Annotated[
        Path | None,
        typer.Option(help="Source DICOM series of a mask, for DICOM SEG output (.dcm)."),
    ] = None,
    labels: Annotated[
        str | None,
        typer.Option(help="Segment names for SEG output, e.g. '1=anterior,2=posterior'."),
    ] = None,
    channel: Annotated[
        int | None, typer.Option(help="Keep only this channel (0-based) of a multi-channel image.")
    ] = None,
    resample_nonuniform: Annotated[
        bool, typer.Option(help="Resample DICOM series with non-uniform slice spacing.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace OUTPUT if it exists.")] = False,
) -> None:
    """Convert between DICOM, NIfTI, NRRD, MHA/MHD, PNG/JPEG/TIFF and DICOM SEG.

    Examples: ``medlens convert study/ ct.nii.gz``; ``medlens convert mask.nii.gz seg.dcm
    --reference study/``.
    """
    from medlens.io import read_image, write_image
    from medlens.io.atomic import prepare_output

    prepare_output(output, overwrite=overwrite)  # fail before the (slow) read
    image = read_image(source, series_uid=series, resample_nonuniform=resample_nonuniform)
    if channel is not None:
        if not 0 <= channel < image.num_channels:
            raise MedlensError(
                f"--channel {channel} out of range, the image has {image.num_channels} channels",
                path=source,
            )
        image = image.with_array(image.numpy()[channel : channel + 1])
    reference_image = read_image(reference, series_uid=None) if reference is not None else None
    names = parse_label_names(labels)
    if names is not None:
        image = image.with_array(image.array, labels=names)
    write_image(image, output, overwrite=overwrite, reference=reference_image)
    stdout.print(f"wrote {output}  shape {tuple(image.array.shape)}  {image.dtype}")


# --------------------------------------------------------------------------- entry point
def _show_warning(message: Any, category: type, *args: Any, **kwargs: Any) -> None:
    if issubclass(category, MedlensWarning):
        stderr.print(f"[yellow]warning:[/] {message}", markup=True, highlight=False)
    else:
        stderr.print(f"[dim]{category.__name__}: {message}[/]", highlight=False)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors exit with code 2 and one line on stderr."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # scoped by catch_warnings
        try:
            app(args=args, prog_name="medlens", standalone_mode=True)
        except MedlensError as error:
            if debug:
                raise
            stderr.print(f"[red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise SystemExit(error.exit_code) from None
        except KeyboardInterrupt:
            stderr.print("[red]interrupted[/]")
            raise SystemExit(130) from None


if __name__ == "__main__":
    main()
