"""``medlens info``, ``convert``, ``preprocess`` and ``regroup-split``: look at, convert,
clean and split data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from medlens.cli.app import (
    SeriesOption,
    _format_vector,
    app,
    parse_label_names,
    stderr,
    stdout,
)
from medlens.errors import MedlensError


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
        # One plain line per series: a table squeezes the other columns to "..." beside a
        # 64-character UID in an 80-column terminal, and UIDs must stay copyable whole.
        stdout.print(
            f"DICOM series in {report['path']}: {len(report['series'])}",
            markup=False,
            highlight=False,
        )
        for item in report["series"]:
            stdout.print(
                f"  {item['series_instance_uid']}  {item['modality'] or '?'}  "
                f"{item['files']} files  {item['description'] or '(no description)'}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
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
    from medlens.io.atomic import prepare_output, refuse_replacing_inputs

    refuse_replacing_inputs([source], [output])
    prepare_output(output, overwrite=overwrite, create_folder=False)  # fail before the read
    image = read_image(source, series_uid=series, resample_nonuniform=resample_nonuniform)
    if channel is not None:
        if not 0 <= channel < image.num_channels:
            raise MedlensError(
                f"--channel {channel} out of range, the image has {image.num_channels} channels",
                path=source,
            )
        image = image.with_array(image.numpy()[channel : channel + 1])
    if output.name.lower().endswith(".dcm") and reference is not None:
        # a SEG holds one label map: say so about the input before reading the reference
        image.require_3d_single_channel(source="DICOM SEG output needs a label map", path=source)
    reference_image = read_image(reference, series_uid=None) if reference is not None else None
    names = parse_label_names(labels)
    if names is not None:
        image = image.with_array(image.array, labels=names)
    write_image(image, output, overwrite=overwrite, reference=reference_image)
    stdout.print(
        f"wrote {output}  shape {tuple(image.array.shape)}  {image.dtype}",
        markup=False,
        highlight=False,
    )


@app.command("regroup-split")
def regroup_split(
    data: Annotated[Path, typer.Argument(help="YOLO-layout dataset (images/, labels/).")],
    out: Annotated[Path, typer.Argument(help="New dataset folder (copies, plus split.json).")],
    val_fraction: Annotated[
        float | None,
        typer.Option(
            help="Share of images for validation (default: DATA's own share).", min=0.01, max=0.99
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Which groups are drawn for validation.")] = 0,
    threshold: Annotated[
        float,
        typer.Option(
            help="Thumbnail correlation that makes two slices one scan.", min=0.0, max=1.0
        ),
    ] = 0.96,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Re-split a slice dataset so neighbouring slices of one scan are all in train or all in val.

    Example: ``medlens regroup-split ../shared/data/kidney-stones data/stones-by-scan``.
    """
    from medlens.detect.regroup import regroup_yolo_split

    result = regroup_yolo_split(
        data, out, val_fraction=val_fraction, seed=seed, threshold=threshold, overwrite=overwrite
    )
    stdout.print(
        f"{result.groups} groups of similar slices; val: {result.val_images} images from "
        f"{result.val_groups} groups, train: {result.train_images} images -> {out}"
    )


# --------------------------------------------------------------------------- preprocess
@app.command()
def preprocess(
    source: Annotated[Path, typer.Argument(help="Image file, DICOM folder or folder of images.")],
    output: Annotated[Path, typer.Argument(help="Output file, or folder for a folder input.")],
    pipeline: Annotated[
        str,
        typer.Option("--pipeline", "-p", help="Pipeline YAML file or preset: ct, mri, endoscopy."),
    ],
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
) -> None:
    """Apply a preprocessing pipeline (YAML or preset) to a file or a folder of images.

    Writes the processed images (same names under OUTPUT for a folder) and a
    provenance.json saying what was done to each. Example: ``medlens preprocess
    imagesTr/ out/ --pipeline mri``.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from medlens.preprocess import Pipeline
    from medlens.preprocess.run import preprocess_path

    chain = Pipeline.load(pipeline)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=True,
    ) as progress:
        task = progress.add_task(f"preprocess ({chain.name})", total=None)
        written = preprocess_path(
            source,
            output,
            chain,
            overwrite=overwrite,
            on_progress=lambda done, total, _path: progress.update(
                task, completed=done, total=total
            ),
        )
    stdout.print(f"wrote {len(written)} image(s) to {output} with pipeline '{chain.name}'")
