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
from rich.markup import escape
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
EngineOption = Annotated[
    str,
    typer.Option(
        help="auto (ONNX Runtime on the CPU when installed, else PyTorch), torch or onnx."
    ),
]
SegmentationEngineOption = Annotated[
    str,
    typer.Option(
        help="auto (on the CPU: the model's int8 graph if it has one, else ONNX Runtime when "
        "installed, else PyTorch), torch, onnx or onnx-int8."
    ),
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


# --------------------------------------------------------------------------- train detect
@train_app.command("detect")
def train_detect(
    data: Annotated[Path, typer.Argument(help="Dataset: YOLO layout (images/, labels/) or COCO.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder (checkpoint, metrics, model).")],
    model_out: Annotated[
        Path | None, typer.Option(help="Where the best model goes (default RUN/model).")
    ] = None,
    name: Annotated[str, typer.Option(help="Model name written in the model card.")] = "detector",
    names: Annotated[
        str | None,
        typer.Option(help="Class names, e.g. '0=stone' (default: data.yaml or 0=object)."),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Epochs (the cosine schedule spans them).")] = 30,
    batch_size: Annotated[int, typer.Option(help="Training crops per step.")] = 8,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = 2e-3,
    input_size: Annotated[int, typer.Option(help="Long side of the network input, px.")] = 384,
    crop_size: Annotated[int, typer.Option(help="Square training crop, px.")] = 256,
    encoder: Annotated[
        str, typer.Option(help="Encoder: EfficientNet-lite0, lite1 or lite2 (larger, slower).")
    ] = "lite0",
    pretrained: Annotated[
        bool, typer.Option(help="Start the encoder from its ImageNet EfficientNet-Lite weights.")
    ] = True,
    init: Annotated[
        Path | None, typer.Option(help="Start from a shipped detection model (name or folder).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from RUN/checkpoint.pt.")] = False,
    max_iterations: Annotated[int | None, typer.Option(help="Stop after N steps (tests).")] = None,
    minutes: Annotated[
        float | None,
        typer.Option(help="Time budget: the cosine schedule ends and training stops by then."),
    ] = None,
    ema_decay: Annotated[
        float | None,
        typer.Option(help="Validate and ship a moving average of the weights (e.g. 0.999)."),
    ] = None,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 1e-4,
    mosaic: Annotated[
        float,
        typer.Option(
            help="Share of training windows that are a mosaic of 4 images.", min=0.0, max=1.0
        ),
    ] = 0.0,
    close_mosaic: Annotated[
        int,
        typer.Option(
            help="Train the last N epochs without mosaic (estimated under --minutes).", min=0
        ),
    ] = 0,
    train_eval_images: Annotated[
        int, typer.Option(help="Training images scored each epoch beside val (0: none).")
    ] = 100,
    limit: Annotated[int | None, typer.Option(help="Use only N training images.")] = None,
    val_limit: Annotated[int | None, typer.Option(help="Use only N validation images.")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    rescore: Annotated[
        bool,
        typer.Option(
            help="At the end, fit the false-positive reduction stage (kept if val AP50 holds)."
        ),
    ] = True,
    tag: Annotated[
        str, typer.Option(help="Free text shown in the process list (e.g. medlens_train_bg).")
    ] = "",
) -> None:
    """Train the CenterNet detector (EfficientNet-Lite encoder, stride-4 head) with AP each epoch.

    Example: ``medlens train detect ../shared/data/kidney-stones --out runs/stones
    --names 0=stone``. Writes RUN/checkpoint.pt, RUN/metrics.csv/.png and the best model.
    """
    params = dict(locals())  # the parsed options, recorded as the exact command in the card
    from medlens.detect.model import LITE_SCALING
    from medlens.detect.train import DetectTrainConfig, command_line, train_detector

    encoders = {f"lite{variant}": variant for variant in LITE_SCALING}
    if encoder not in encoders:
        raise MedlensError(
            f"--encoder {encoder!r} is not one of {', '.join(encoders)}",
            hint="lite0 is the shipped detector's encoder",
        )
    config = DetectTrainConfig(
        data=data,
        out=out,
        model_out=model_out,
        model_name=name,
        names=parse_label_names(names),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        input_size=input_size,
        crop_size=crop_size,
        encoder_variant=encoders[encoder],
        pretrained=pretrained,
        init=init,
        resume=resume,
        max_iterations=max_iterations,
        minutes=minutes,
        ema_decay=ema_decay,
        weight_decay=weight_decay,
        mosaic=mosaic,
        close_mosaic=close_mosaic,
        train_eval_images=train_eval_images,
        limit=limit,
        val_limit=val_limit,
        threads=threads,
        device=device,
        rescore=rescore,
        command=command_line(params),
    )
    best = train_detector(config, log=lambda text: stdout.print(text, highlight=False))
    stdout.print(f"best validation AP50 {best['best_ap50']:.4f}")


# --------------------------------------------------------------------------- train seg
def _int_list(text: str | None, option: str) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise MedlensError(f"{option} takes integers like 40x56x40, got '{text}'") from None


def _frame_size(text: str) -> list[int] | str | None:
    """``--frame-size``: ``auto``, ``none`` or rows x columns."""
    word = text.strip().lower()
    if word in ("auto", "none"):
        return None if word == "none" else "auto"
    size = _int_list(text, "--frame-size")
    if not size or len(size) != 2 or min(size) < 1:
        raise MedlensError(
            f"--frame-size takes auto, none or rows x columns like 352x352, got '{text}'"
        )
    return size


def _scale_range(text: str | None) -> tuple[float, float] | None:
    """``--multi-scale``: LOW,HIGH factors of the frame size."""
    if not text:
        return None
    from medlens.augment.segmentation_batch import check_scale_range

    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise MedlensError(f"--multi-scale takes LOW,HIGH like 0.75,1.25, got '{text}'") from None
    return check_scale_range((low, high))  # here too, to refuse before the data is read


@train_app.command("seg")
def train_seg(
    ctx: typer.Context,
    data: Annotated[
        Path, typer.Argument(help="MSD folder (imagesTr/ + labelsTr/) or 2D images/ + masks/.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Run folder (plan, log, checkpoints).")],
    iterations: Annotated[int, typer.Option(help="Training iterations (batches).")] = 4000,
    minutes: Annotated[
        float | None,
        typer.Option(help="Wall-clock budget: the cosine schedule spans it, training stops then."),
    ] = None,
    lr: Annotated[float, typer.Option("--lr", help="Peak AdamW learning rate.")] = 3e-3,
    weight_decay: Annotated[
        float,
        typer.Option(
            help="AdamW (decoupled) weight decay; nnU-Net's 3e-5 by default, e.g. 0.05 to "
            "hold back over-fitting on small 2D sets."
        ),
    ] = 3e-5,
    warmup: Annotated[int, typer.Option(help="Linear warm-up iterations.")] = 100,
    batch_size: Annotated[int | None, typer.Option(help="Override the planned batch.")] = None,
    filters: Annotated[int | None, typer.Option(help="Base filters (planned: 16).")] = None,
    patch: Annotated[str | None, typer.Option(help="Override patch size, e.g. 40x56x40.")] = None,
    frame_size: Annotated[
        str,
        typer.Option(
            help="2D: resize frames to this size for the network, e.g. 352x352; auto (the "
            "median training frame) or none (frames at their own size, as nnU-Net)."
        ),
    ] = "auto",
    val_every: Annotated[int, typer.Option(help="Validate every N iterations.")] = 200,
    val_fraction: Annotated[float, typer.Option(help="Hold-out share (no --fold).")] = 0.2,
    val_cases: Annotated[
        str | None, typer.Option(help="Case ids always kept for validation, comma-separated.")
    ] = None,
    fold: Annotated[int | None, typer.Option(help="Cross-validation fold (0-based).")] = None,
    folds: Annotated[int, typer.Option(help="Number of cross-validation folds.")] = 5,
    seed: Annotated[
        int,
        typer.Option(
            help="Seed of the split, the new layers' initialisation, the patches and the "
            "augmentation (a 2D run on the CPU repeats exactly)."
        ),
    ] = 0,
    split: Annotated[
        Path | None,
        typer.Option(
            help="Fixed split: a run's split.json or a model.json (train/val case ids); "
            "--seed then varies only the training."
        ),
    ] = None,
    model_out: Annotated[
        Path | None,
        typer.Option(help="Model folder written at each validation improvement (else RUN/model)."),
    ] = None,
    init: Annotated[
        str | None, typer.Option(help="Start from a shipped model's weights (name or folder).")
    ] = None,
    freeze_encoder_epochs: Annotated[
        int, typer.Option(help="With --init: keep the encoder frozen for N epochs.")
    ] = 0,
    freeze_early_blocks: Annotated[
        int,
        typer.Option(
            help="Lite U-Nets: keep the stem and first N encoder blocks fixed (3: stride 2-4; "
            "about 1.3x faster per CPU iteration)."
        ),
    ] = 0,
    encoder_lr_scale: Annotated[
        float,
        typer.Option(
            help="The encoder's learning rate as a fraction of --lr (e.g. 0.3: a pretrained "
            "encoder moves less than the new decoder)."
        ),
    ] = 1.0,
    drop_path: Annotated[
        float,
        typer.Option(
            help="Lite U-Nets: stochastic depth in the encoder, rising over its blocks to this "
            "rate (e.g. 0.2, EfficientNet's); training only."
        ),
    ] = 0.0,
    resume: Annotated[bool, typer.Option(help="Continue from RUN/checkpoint.pt.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    amp: Annotated[
        bool,
        typer.Option(
            help="Mixed precision where it pays: fp16 on CUDA, bf16 on a bf16-capable CPU "
            "for DynUNets only (Lite U-Nets train in float32 on the CPU)."
        ),
    ] = True,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    max_cases: Annotated[int | None, typer.Option(help="Use only the first N cases.")] = None,
    checkpoint_minutes: Annotated[float, typer.Option(help="Checkpoint interval.")] = 5.0,
    labels: Annotated[
        str | None,
        typer.Option(help="Class names, e.g. '1=anterior,2=posterior' (default dataset.json)."),
    ] = None,
    network: Annotated[
        str,
        typer.Option(
            help="auto, DynUNet, or Lite0UNet, Lite1UNet, Lite2UNet (2D, EfficientNet-Lite "
            "ImageNet encoders; auto picks Lite0UNet for RGB frames)."
        ),
    ] = "auto",
    pretrained: Annotated[
        bool, typer.Option(help="Lite*UNet: start the encoder from ImageNet weights.")
    ] = True,
    augment: Annotated[
        str, typer.Option(help="builtin (flips, rotation, intensity) or medlens (medlens.augment).")
    ] = "builtin",
    mirror_axes: Annotated[
        str | None,
        typer.Option(help="Spatial axes to mirror in training and TTA, e.g. 0,1 (default all)."),
    ] = None,
    rotation_degrees: Annotated[
        float,
        typer.Option(
            help="builtin augmentation: rotate by up to +-this many degrees in each plane "
            "(p 0.3); nnU-Net uses 180 for square 2D patches."
        ),
    ] = 15.0,
    tag: Annotated[
        str | None, typer.Option(help="Free text marker in the command line (e.g. for pkill).")
    ] = None,
    dp_epsilon: Annotated[
        float | None,
        typer.Option(help="Differential privacy (Opacus DP-SGD): total epsilon budget."),
    ] = None,
    dp_delta: Annotated[
        float | None, typer.Option(help="DP delta (default 0.1 / number of training cases).")
    ] = None,
    dp_max_grad_norm: Annotated[
        float, typer.Option(help="DP per-sample gradient clipping norm.")
    ] = 1.0,
    ema_decay: Annotated[
        float | None,
        typer.Option(help="Validate and ship a moving average of the weights (e.g. 0.998)."),
    ] = None,
    camera_augment: Annotated[
        bool,
        typer.Option(
            help="RGB frames: also white balance, saturation, defocus and low resolution."
        ),
    ] = False,
    multi_scale: Annotated[
        str | None,
        typer.Option(
            help="2D: train each batch at a random size, LOW,HIGH times the frame (PraNet's "
            "multi-scale training), e.g. 0.75,1.25."
        ),
    ] = None,
    group_similar: Annotated[
        bool,
        typer.Option(
            help="2D: keep near-duplicate frames (e.g. neighbouring slices of one scan) on one "
            "side of the split."
        ),
    ] = False,
    loss: Annotated[
        str,
        typer.Option(
            help="dice-ce (MONAI DiceCELoss, batch Dice) or structure (PraNet: boundary-weighted "
            "cross-entropy + per-image weighted IoU)."
        ),
    ] = "dice-ce",
    dist_backend: Annotated[
        str,
        typer.Option(
            help="torchrun: auto (NCCL on CUDA, gloo on CPU), nccl or gloo (gloo lets "
            "processes share a GPU)."
        ),
    ] = "auto",
) -> None:
    """Plan from the data (2D/3D, spacing, normalisation, patch, network) and train a segmenter.

    Example: ``medlens train seg ../shared/data/hippocampus --out runs/hippo
    --model-out models/hippocampus``. Multi-GPU: ``torchrun --nproc_per_node 2 -m medlens
    train seg ...``.
    """
    from medlens.train.segmentation import TrainConfig, command_line, train_segmentation

    command = command_line(ctx)
    config = TrainConfig(
        data=data,
        out=out,
        iterations=iterations,
        minutes=minutes,
        learning_rate=lr,
        weight_decay=weight_decay,
        warmup=warmup,
        batch_size=batch_size,
        base_filters=filters,
        patch_size=_int_list(patch, "--patch"),
        frame_size=_frame_size(frame_size),
        val_every=val_every,
        val_fraction=val_fraction,
        val_cases=[c.strip() for c in (val_cases or "").split(",") if c.strip()],
        fold=fold,
        folds=folds,
        seed=seed,
        split_file=split,
        model_out=model_out,
        init=init,
        freeze_encoder_epochs=freeze_encoder_epochs,
        freeze_early_blocks=freeze_early_blocks,
        encoder_lr_scale=encoder_lr_scale,
        drop_path_rate=drop_path,
        resume=resume,
        device=device,
        amp=amp,
        threads=threads,
        max_cases=max_cases,
        checkpoint_minutes=checkpoint_minutes,
        command=command,
        label_names=parse_label_names(labels),
        network=network,
        pretrained=pretrained,
        augment=augment,
        mirror_axes=_int_list(mirror_axes, "--mirror-axes"),
        rotation_degrees=rotation_degrees,
        dp_epsilon=dp_epsilon,
        dp_delta=dp_delta,
        dp_max_grad_norm=dp_max_grad_norm,
        ema_decay=ema_decay,
        camera_augment=camera_augment,
        multi_scale=_scale_range(multi_scale),
        group_similar=group_similar,
        dist_backend=dist_backend,
        loss=loss,
    )
    best = train_segmentation(config)
    import os

    if os.environ.get("RANK", "0") == "0":  # torchrun: one report, from rank 0
        stdout.print(
            f"best validation mean Dice {best.get('mean_dice')} -> {model_out or out / 'model'}"
        )


# --------------------------------------------------------------------------- deid / sign / verify
@app.command()
def deid(
    source: Annotated[Path, typer.Argument(help="DICOM file or folder tree (NIfTI/NRRD too).")],
    output: Annotated[Path, typer.Argument(help="Output folder (outside the input).")],
    key_file: Annotated[
        Path, typer.Option("--key-file", help="Secret key (>= 32 bytes) for keyed pseudonyms.")
    ],
    profile: Annotated[
        str,
        typer.Option(
            help="PS3.15 Annex E profile: basic, research (= dates+descriptors), longitudinal, "
            "or options joined by '+': dates, patient, device, descriptors."
        ),
    ] = "research",
    workers: Annotated[
        int, typer.Option(help="Parallel processes (0 = one per CPU core).", min=0)
    ] = 1,
) -> None:
    """De-identify DICOM (PS3.15 Annex E + options), NIfTI and NRRD files with a secret key.

    Same key, same pseudonyms, UIDs and date shifts in every run. Writes
    OUT/<study>/<series>/<instance>.dcm and the audit log OUT/deid_audit.jsonl. Exit code 1
    when a file was corrupt or had burned-in text that could not be blanked (listed).
    Create a key with `head -c 64 /dev/urandom > deid.key`.
    """
    import os

    from rich.progress import Progress

    from medlens.privacy.deid import deidentify

    with Progress(console=stderr, transient=True) as bar:
        task = bar.add_task("de-identifying", total=None)
        report = deidentify(
            source,
            output,
            key_file=key_file,
            profile=profile,
            workers=workers or (os.cpu_count() or 1),
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    stdout.print(f"wrote {len(report.written)} files to {output}  (audit: {report.audit_log})")
    for name in report.non_dicom:
        stderr.print(f"[yellow]not DICOM, not copied:[/] {name}", highlight=False)
    for name, reason in report.corrupt:
        stderr.print(f"[red]corrupt, skipped:[/] {name} ({reason})", highlight=False)
    for name, reason in report.refused:
        stderr.print(f"[red]refused (burned-in text):[/] {name} ({reason})", highlight=False)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def sign(
    model: Annotated[str, typer.Argument(help="Model name or folder (model.json + weights).")],
    key: Annotated[Path, typer.Option("--key", help="Ed25519 private key (PEM).")],
) -> None:
    """Sign a model's card and weights with an Ed25519 key: writes MODEL/model.sig."""
    from medlens.models.zoo import find_model
    from medlens.privacy.signing import sign_model

    path = sign_model(find_model(model), key)
    stdout.print(f"signed: {path}")


@app.command()
def verify(
    model: Annotated[str, typer.Argument(help="Model name or folder.")],
    public_key: Annotated[Path, typer.Option("--public-key", help="Ed25519 public key (PEM).")],
) -> None:
    """Check that a model is unchanged and signed by the holder of PUBLIC_KEY (exit 2 if not)."""
    from medlens.models.zoo import find_model, load_card
    from medlens.privacy.signing import verify_model

    folder = find_model(model)
    verify_model(folder, public_key)
    load_card(folder)  # the card must also parse
    stdout.print(f"verified: {folder} (signature and weights sha256 match)")


@app.command()
def keygen(
    private_key: Annotated[Path, typer.Argument(help="Where to write the private key (PEM).")],
    public_key: Annotated[Path, typer.Argument(help="Where to write the public key (PEM).")],
) -> None:
    """Create an Ed25519 key pair for `medlens sign`.

    Equivalent: `openssl genpkey -algorithm ed25519 -out team.key` then
    `openssl pkey -in team.key -pubout -out team.pub`.
    """
    from medlens.privacy.signing import generate_keypair

    generate_keypair(private_key, public_key)
    stdout.print(f"wrote {private_key} (keep secret) and {public_key}")


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

    label_values = _int_list(labels, "--labels")
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
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    engine: EngineOption = "auto",
) -> None:
    """Find objects (e.g. kidney stones) and write NAME.txt (YOLO + conf), NAME.json (px and mm),
    NAME.png overlays, detections.csv, and a DICOM SR measurement report for DICOM input.

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
    from medlens.preprocess.run import plan_outputs, preprocess_path

    chain = Pipeline.load(pipeline)
    total = len(plan_outputs(source, output))
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=True,
    ) as progress:
        task = progress.add_task(f"preprocess ({chain.name})", total=total)
        written = preprocess_path(
            source,
            output,
            chain,
            overwrite=overwrite,
            on_progress=lambda done, _total, _path: progress.update(task, completed=done),
        )
    stdout.print(f"wrote {len(written)} image(s) to {output} with pipeline '{chain.name}'")


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
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    engine: SegmentationEngineOption = "auto",
    series: SeriesOption = None,
    batch_size: Annotated[int, typer.Option(help="Sliding-window patches per network batch.")] = 8,
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
) -> None:
    """Segment images with a trained model; outputs lie on the input grid.

    Examples: ``medlens predict hippocampus examples/dicom/hippocampus-study1 seg.dcm
    --also seg.nii.gz --html seg.html``; ``medlens predict polyp frames/ masks/``;
    ``medlens predict runs/f0/model,runs/f1/model,runs/f2/model frames/ masks/`` (ensemble).
    """
    from medlens.infer.predict import predict_paths

    written = predict_paths(
        model,
        source,
        output,
        device=device,
        engine=engine,
        tta=tta,
        tta_axes=_int_list(tta_axes, "--tta-axes"),
        overwrite=overwrite,
        series=series,
        batch_size=batch_size,
        postprocess=postprocess,
        also=also or (),
        html=html,
    )
    for path in written[:10]:
        stdout.print(f"wrote {path}")
    if len(written) > 10:
        stdout.print(f"... {len(written)} outputs in total")


# --------------------------------------------------------------------------- entry point
def _show_warning(message: Any, category: type, *args: Any, **kwargs: Any) -> None:
    if issubclass(category, MedlensWarning):
        stderr.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
    else:
        stderr.print(f"[dim]{category.__name__}: {message}[/]", highlight=False)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors exit with code 2 and one line on stderr."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # scoped by catch_warnings
        # every occurrence matters (e.g. NaN counts of each file in a batch), not just the first
        warnings.simplefilter("always", MedlensWarning)
        try:
            app(args=args, prog_name="medlens", standalone_mode=True)
        except MedlensError as error:
            if debug:
                raise
            stderr.print(f"[red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            raise SystemExit(error.exit_code) from None
        except KeyboardInterrupt:
            stderr.print("[red]interrupted[/]")
            raise SystemExit(130) from None


if __name__ == "__main__":
    main()
