"""``medlens train detect`` and ``medlens train seg``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medlens.cli.app import (
    _int_list,
    parse_label_names,
    stdout,
    train_app,
)
from medlens.errors import MedlensError


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
    iou_branch: Annotated[
        bool,
        typer.Option(
            help="Also predict each box's IoU and rank peaks by sqrt(heatmap x IoU) "
            "(IoU-aware RetinaNet)."
        ),
    ] = False,
    size_split_px: Annotated[
        list[float] | None,
        typer.Option(
            help="Box size sqrt(w h), network px, where boxes move to another size group with "
            "its own heatmap and box channels (repeat for more groups), e.g. 36."
        ),
    ] = None,
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
    seed: Annotated[
        int, typer.Option(help="Seed of the new layers' weights, the windows and augmentation.")
    ] = 0,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
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
        iou_branch=iou_branch,
        size_split_px=tuple(size_split_px or ()),
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
        seed=seed,
        threads=threads,
        device=device,
        rescore=rescore,
        command=command_line(params),
    )
    best = train_detector(config, log=lambda text: stdout.print(text, highlight=False))
    stdout.print(f"best validation AP50 {best['best_ap50']:.4f}")


# --------------------------------------------------------------------------- train seg
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
    deep_supervision: Annotated[
        bool | None,
        typer.Option(
            help="nnU-Net's deep supervision: 1x1 heads on the decoder's coarser stages add "
            "their loss (weights halving per stage); they are not part of the saved model. "
            "Default: on for 3D DynUNet plans, off for 2D ones and --dp-epsilon; --resume "
            "follows the checkpoint.",
            show_default=False,
        ),
    ] = None,
    plan: Annotated[
        Path | None,
        typer.Option(
            help="Train on this plan instead of planning: a run's plan.json (e.g. edited "
            "after --plan-only) or a segmentation model's model.json."
        ),
    ] = None,
    plan_only: Annotated[
        bool,
        typer.Option(
            help="Fingerprint, plan and split only (nnU-Net's plan_and_preprocess): write "
            "RUN/fingerprint.json, plan.json and split.json, print the plan, train nothing."
        ),
    ] = False,
    resume: Annotated[bool, typer.Option(help="Continue from RUN/checkpoint.pt.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
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
    from medlens.train.segmentation import train_segmentation
    from medlens.train.segmentation_config import TrainConfig, command_line

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
        deep_supervision=deep_supervision,
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
        mirror_axes=_int_list(mirror_axes, "--mirror-axes", "0,1"),
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
        plan_only=plan_only,
        plan_file=plan,
    )
    best = train_segmentation(config)
    import os

    if plan_only:
        stdout.print(f"wrote {out / 'plan.json'} (and fingerprint.json, split.json)")
        return
    if os.environ.get("RANK", "0") == "0":  # torchrun: one report, from rank 0
        stdout.print(
            f"best validation mean Dice {best.get('mean_dice')} -> {model_out or out / 'model'}"
        )
