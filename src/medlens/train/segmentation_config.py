"""Options of ``medlens train seg``: :class:`TrainConfig`, checked before any work, and the
command line that reproduces a run (for the model card)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from medlens.augment.segmentation_batch import (
    DEFAULT_ROTATION_DEGREES,
)
from medlens.errors import MedlensError, require_at_least_one
from medlens.train.losses import LOSS_DESCRIPTIONS


@dataclasses.dataclass
class TrainConfig:
    """Options of a segmentation training run (iterations, learning rate, ...)."""

    data: Path
    out: Path
    iterations: int = 4000
    minutes: float | None = None
    learning_rate: float = 3e-3
    weight_decay: float = 3e-5
    warmup: int = 100
    batch_size: int | None = None
    base_filters: int | None = None
    patch_size: list[int] | None = None
    #: 2D: "auto" (resize frames to the median training frame), None (own size) or [rows, cols]
    frame_size: list[int] | str | None = "auto"
    val_fraction: float = 0.2
    val_cases: list[str] = dataclasses.field(default_factory=list)
    fold: int | None = None
    folds: int = 5
    seed: int = 0
    val_every: int = 200
    checkpoint_minutes: float = 5.0
    max_cases: int | None = None
    model_out: Path | None = None
    model_name: str = ""
    init: str | None = None
    freeze_encoder_epochs: int = 0
    #: EfficientNet-Lite U-Nets: keep the stem and the first N encoder blocks at their
    #: ImageNet (or --init) weights for the whole run; 3 freezes stride 2-4 and makes a CPU
    #: iteration about 1.3x faster (no backward at the highest resolutions)
    freeze_early_blocks: int = 0
    #: the encoder's learning rate as a fraction of ``learning_rate`` (discriminative fine-
    #: tuning, as in ULMFiT): below 1 an ImageNet or --init encoder moves less than the new
    #: decoder and head
    encoder_lr_scale: float = 1.0
    #: Lite U-Nets: stochastic depth in the encoder, rising linearly over its blocks to this
    #: rate (EfficientNet trained with 0.2); a regulariser, training only
    drop_path_rate: float = 0.0
    resume: bool = False
    device: str = "auto"
    amp: bool = True
    foreground_fraction: float = 0.33
    command: str = ""
    label_names: dict[int, str] | None = None
    threads: int | None = None
    progress: bool = True
    network: str = "auto"
    pretrained: bool = True
    augment: str = "builtin"
    mirror_axes: list[int] | None = None
    dp_epsilon: float | None = None
    dp_delta: float | None = None
    dp_max_grad_norm: float = 1.0
    ema_decay: float | None = None  # validate and ship an exponential moving average of weights
    #: RGB frames: also white balance, saturation, defocus and low resolution (other cameras);
    #: off by default: a fine-tune with it traded 0.01 clean Dice for blur/JPEG robustness
    camera_augment: bool = False
    #: 2D: train each batch at a size drawn from this range of the frame size (e.g. (0.75,
    #: 1.25), PraNet's multi-scale training); sizes are multiples of the network's stride
    multi_scale: tuple[float, float] | None = None
    #: the built-in augmentation's rotation range, +- degrees in each plane (p=0.3); nnU-Net
    #: rotates square 2D patches by up to +-180 and volumes by +-30
    rotation_degrees: float = DEFAULT_ROTATION_DEGREES
    #: 2D: keep near-duplicate frames (thumbnail correlation >= 0.96, e.g. neighbouring
    #: slices of one scan) on one side of the split, so validation measures unseen scans
    group_similar: bool = False
    #: torchrun: "auto" (NCCL on CUDA, gloo on the CPU), "nccl" or "gloo"; gloo on CUDA lets
    #: several processes share one GPU (NCCL needs one GPU per process)
    dist_backend: str = "auto"
    #: a fixed split (JSON with "train" and "val" case ids: a run's split.json or a model's
    #: model.json), as nnU-Net's splits_final.json; ``seed`` then only draws patches and order
    split_file: Path | None = None
    #: "dice-ce" (MONAI DiceCELoss with batch Dice, nnU-Net's) or "structure" (PraNet's
    #: boundary-weighted cross-entropy + per-image weighted IoU, common for polyps)
    loss: str = "dice-ce"
    #: nnU-Net's deep supervision: extra 1x1 heads on the decoder's coarser stages add their
    #: loss (weights halving per stage); the heads are not part of the shipped model. None:
    #: on for 3D DynUNet plans (nnU-Net's default; +0.003 Dice with TTA on the hippocampus
    #: recipe, three pairs), off for 2D ones (no gain on the polyp recipe) and DP-SGD; a resumed run
    #: follows its checkpoint
    deep_supervision: bool | None = None
    #: nnU-Net's plan_and_preprocess stage alone: write fingerprint.json, plan.json and
    #: split.json into RUN, print the plan and stop (to inspect before hours of training)
    plan_only: bool = False
    #: train on this plan (a run's plan.json, perhaps edited, or a model.json) instead of
    #: planning from the fingerprint, as nnU-Net trains on a custom plans file
    plan_file: Path | None = None

    def check(self, *, distributed: bool = False) -> None:
        """Refuse options out of range or that cannot work together, before any work
        (``distributed``: started by torchrun)."""
        require_at_least_one(
            {
                "iterations": self.iterations,
                "val-every": self.val_every,
                "batch-size": self.batch_size,
                "filters": self.base_filters,
                "threads": self.threads,
                "max-cases": self.max_cases,
            }
        )
        if self.fold is not None and self.folds < 2:
            raise MedlensError(f"--folds must be at least 2, got {self.folds}")
        if self.warmup < 0:
            raise MedlensError(f"--warmup must be >= 0, got {self.warmup}")
        if self.learning_rate <= 0:
            raise MedlensError(f"--lr must be > 0, got {self.learning_rate:g}")
        if self.checkpoint_minutes < 0:  # 0: a checkpoint at every validation
            raise MedlensError(
                f"--checkpoint-minutes must be >= 0, got {self.checkpoint_minutes:g}"
            )
        if self.minutes is not None and self.minutes <= 0:
            raise MedlensError(f"--minutes must be > 0, got {self.minutes:g}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise MedlensError(f"--ema-decay must be in (0, 1), got {self.ema_decay:g}")
        if not 0 < self.val_fraction < 1:
            raise MedlensError(f"--val-fraction must be in (0, 1), got {self.val_fraction:g}")
        if self.dist_backend not in ("auto", "nccl", "gloo"):
            raise MedlensError(f"--dist-backend {self.dist_backend}: use auto, nccl or gloo")
        if self.loss not in LOSS_DESCRIPTIONS:
            raise MedlensError(f"--loss {self.loss}: use {' or '.join(LOSS_DESCRIPTIONS)}")
        if not 0 <= self.weight_decay < 1:
            raise MedlensError(
                f"--weight-decay must be in [0, 1), got {self.weight_decay:g}",
                hint="e.g. 3e-5 (nnU-Net, the default) or 0.05",
            )
        if not 0 <= self.drop_path_rate < 1:
            raise MedlensError(
                f"--drop-path must be in [0, 1), got {self.drop_path_rate:g}",
                hint="e.g. 0.2 (EfficientNet's rate)",
            )
        if not 0 <= self.rotation_degrees <= 180:
            raise MedlensError(
                f"--rotation-degrees must be 0-180, got {self.rotation_degrees:g}",
                hint="e.g. 180 for endoscopy frames, 15 (the default) for volumes",
            )
        if self.augment == "medlens" and self.rotation_degrees != DEFAULT_ROTATION_DEGREES:
            raise MedlensError(
                "--rotation-degrees sets the builtin augmentation's range, and --augment medlens "
                "has its own",
                hint="leave out one of the two",
            )
        if self.split_file is not None and (
            self.fold is not None or self.val_cases or self.group_similar
        ):
            raise MedlensError(
                "--split fixes the training and validation cases",
                hint="leave out --fold, --val-cases and --group-similar, or leave out --split",
            )
        if self.augment not in ("builtin", "medlens"):
            raise MedlensError(f"unknown --augment '{self.augment}'", hint="builtin or medlens")
        if self.dp_epsilon is not None and self.ema_decay:
            raise MedlensError("--ema-decay cannot be combined with --dp-epsilon")
        if self.dp_epsilon is not None and self.deep_supervision:
            raise MedlensError("--deep-supervision cannot be combined with --dp-epsilon")
        if self.plan_file is not None:
            planning = {
                "--patch": self.patch_size is not None,
                "--filters": self.base_filters is not None,
                "--network": self.network != "auto",
                "--frame-size": self.frame_size != "auto",
                "--labels": self.label_names is not None,
                "--resume": self.resume,
            }
            given = [option for option, set_ in planning.items() if set_]
            if given:
                raise MedlensError(
                    f"--plan fixes what {', '.join(given)} would set",
                    hint="edit the plan file instead, or leave out --plan",
                )
        if self.plan_only and self.resume:
            raise MedlensError("--plan-only plans a new run; a resumed run keeps its plan")
        if self.dp_epsilon is not None and (self.resume or distributed):
            raise MedlensError(
                "differential privacy cannot be combined with --resume or torchrun",
                hint="train a DP model in one run on one device",
            )


def command_line(context: Any) -> str:
    """The ``medlens train seg ...`` command of a click context (options left at their
    defaults omitted, ``--tag`` dropped), for the model card."""
    import shlex

    parts = ["medlens", "train", "seg"]
    for parameter in context.command.params:
        value = context.params.get(parameter.name)
        if parameter.param_type_name == "argument":
            parts.append(str(value))
            continue
        if value is None or value == parameter.default or parameter.name == "tag":
            continue
        option = "--" + parameter.name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(option if value else "--no-" + parameter.name.replace("_", "-"))
        else:
            parts += [option, str(value)]
    return " ".join(shlex.quote(p) for p in parts)
