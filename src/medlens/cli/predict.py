"""``medlens predict`` (segmentation), ``detect``, ``quantize`` and ``rescore``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medlens.cli.app import (
    EngineOption,
    SegmentationEngineOption,
    SeriesOption,
    _int_list,
    app,
    stderr,
    stdout,
)
from medlens.errors import MedlensError


# --------------------------------------------------------------------------- detect
@app.command()
def detect(
    model: Annotated[str, typer.Argument(help="Detection model name (kidney-stones) or folder.")],
    source: Annotated[Path, typer.Argument(help="Image, folder of images, or DICOM file/series.")],
    out: Annotated[Path, typer.Argument(help="Output folder.")],
    conf: Annotated[
        float,
        typer.Option(
            "--conf", help="Minimum box score 0..1 (the rescored score where the model rescores)."
        ),
    ] = 0.25,
    series: SeriesOption = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "cpu",
    engine: EngineOption = "auto",
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Replace the results of an earlier run in OUT for the same images (other "
            "images' results, and their rows of detections.csv, are kept either way)."
        ),
    ] = False,
) -> None:
    """Find objects (e.g. kidney stones): boxes per image as YOLO text, JSON and overlays.

    Writes NAME.txt (YOLO + conf), NAME.json (px and mm), NAME.png overlays, detections.csv
    (the rows of every image in OUT), and a DICOM SR measurement report for DICOM input.

    Example: ``medlens detect kidney-stones examples/kidney-stones/images out/``.
    """
    from rich.progress import Progress

    from medlens.detect.infer import run_detection

    if not 0.0 <= conf <= 1.0:
        raise MedlensError(f"--conf must be in [0, 1], got {conf}")
    with Progress(console=stderr, transient=True) as progress:
        task = progress.add_task("detecting", total=None)
        records = run_detection(
            model,
            source,
            out,
            conf=conf,
            series_uid=series,
            device=device,
            engine=engine,
            overwrite=overwrite,
            progress=lambda: progress.advance(task),
        )
    boxes = sum(len(r["boxes"]) for r in records)
    stdout.print(f"{len(records)} image(s), {boxes} box(es) -> {out}")


#: ``--data`` of the commands that add a stage to a trained model (calibration, rescoring)
TrainingDataOption = Annotated[
    Path | None,
    typer.Option(help="Dataset the model was trained on (default: the card's training.data)."),
]


@app.command("quantize")
def quantize(
    model: Annotated[str, typer.Argument(help="2D segmentation model name or folder.")],
    data: TrainingDataOption = None,
    frames: Annotated[int, typer.Option(help="Training frames to calibrate on.")] = 100,
    float_first: Annotated[int, typer.Option(help="First Conv nodes kept float.")] = 1,
    float_last: Annotated[int, typer.Option(help="Last Conv nodes kept float.")] = 6,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing int8 graph.")] = False,
) -> None:
    """Add a static int8 ONNX graph to a 2D segmentation model (faster CPU inference).

    Example: ``medlens quantize models/polyp``; then ``medlens predict`` runs it on the CPU
    (``--engine auto`` or ``onnx-int8``). Score it before shipping: int8 changes the masks.
    """
    from medlens.compress.quantize import quantize_segmenter

    path = quantize_segmenter(
        model, data=data, frames=frames, float_first=float_first, float_last=float_last,
        overwrite=overwrite,
    )  # fmt: skip
    stdout.print(f"wrote {path}")


@app.command("rescore")
def rescore(
    model: Annotated[str, typer.Argument(help="Detection model name or folder.")],
    data: TrainingDataOption = None,
) -> None:
    """Add a false-positive reduction stage to a detection model, if it raises val AP50.

    Fits a rescoring of each box by its network score and the brightest pixel inside it on the
    model's predictions for its training images, checks it on the val split, and writes it
    into the model card only if val AP50 does not fall (weights untouched). Example:
    ``medlens rescore runs/stones/model``. `train detect` does this at its end (--no-rescore).
    """
    from medlens.detect.rescore import rescore_model

    result = rescore_model(model, data=data, log=lambda text: stdout.print(text, highlight=False))
    stdout.print(
        ("added the rescoring to the card" if result.kept else "card unchanged")
        + f" (val AP50 {result.val_ap50_without:.4f} -> {result.val_ap50_with:.4f})"
    )


# --------------------------------------------------------------------------- predict (segmentation)
@app.command()
def predict(
    model: Annotated[
        str,
        typer.Argument(
            help="Model name (models/NAME) or model folder; several joined by commas are an "
            "ensemble (probabilities averaged), e.g. the five folds of a cross-validation."
        ),
    ],
    source: Annotated[
        Path, typer.Argument(help="Image file, folder of images, or DICOM series folder.")
    ],
    output: Annotated[
        Path,
        typer.Argument(help="Output file (.nii.gz, .nrrd, .png, .dcm = DICOM SEG) or folder."),
    ],
    tta: Annotated[
        bool | None,
        typer.Option(
            "--tta/--no-tta",
            help="Average over mirrored inputs (default: the model's plan; on for 3D models).",
        ),
    ] = None,
    tta_axes: Annotated[
        str | None,
        typer.Option(
            help="Spatial axes TTA mirrors, e.g. 0,1 (default: the plan's; hippocampus 0).",
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "cpu",
    engine: SegmentationEngineOption = "auto",
    series: SeriesOption = None,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Sliding-window patches per network batch.")
    ] = 8,
    postprocess: Annotated[
        bool, typer.Option(help="Largest connected component where the plan says so.")
    ] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    also: Annotated[
        list[Path] | None,
        typer.Option(help="Also write the same predictions here (other format or folder)."),
    ] = None,
    html: Annotated[
        Path | None, typer.Option(help="Write an HTML page with overlays and label sizes.")
    ] = None,
    stats: Annotated[
        Path | None,
        typer.Option(
            help="Write a CSV of each input's labels: voxels, size (mL; mm² or px in 2D) and "
            "mean intensity, as TotalSegmentator's --statistics."
        ),
    ] = None,
) -> None:
    """Segment images with a trained model; outputs lie on the input grid.

    Examples: ``medlens predict hippocampus examples/dicom/hippocampus-study1 seg.dcm
    --also seg.nii.gz --html seg.html``; ``medlens predict polyp frames/ masks/``;
    ``medlens predict runs/f0/model,runs/f1/model,runs/f2/model frames/ masks/`` (ensemble).
    In a folder, a file that cannot be segmented (corrupt, wrong channels) is named at the end,
    after the others are written, and the exit code is 2.
    """
    from medlens.infer.predict import predict_paths

    written = predict_paths(
        model,
        source,
        output,
        device=device,
        engine=engine,
        tta=tta,
        tta_axes=_int_list(tta_axes, "--tta-axes", "0,1"),
        overwrite=overwrite,
        series=series,
        batch_size=batch_size,
        postprocess=postprocess,
        also=also or (),
        html=html,
        stats=stats,
    )
    for path in written[:10]:
        stdout.print(f"wrote {path}")
    if len(written) > 10:
        stdout.print(f"... {len(written)} outputs in total")
