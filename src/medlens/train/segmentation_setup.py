"""The stages of ``medlens train seg`` before its loop: the device (and torchrun's process
group), the checkpoint to resume, fingerprint -> plan -> split, the options that override the
plan, and DP-SGD."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from medlens.augment.segmentation_batch import (
    multi_scale_sizes,
)
from medlens.data.patches import (
    LoadedCase,
    PatchDataset,
)
from medlens.data.segmentation import (
    CasePaths,
    check_label_classes,
    compute_fingerprint,
    dataset_label_names,
    read_case_pair,
    read_dataset_json,
)
from medlens.data.splits import make_split, similar_frame_groups
from medlens.devices import torch_device
from medlens.errors import MedlensError
from medlens.models.segmentation import SegmentationPlan, make_plan, read_plan_file
from medlens.models.zoo import LITE_UNETS
from medlens.train.segmentation_config import TrainConfig


def training_device(config: TrainConfig, distributed: bool) -> tuple[torch.device, str]:
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


def read_resume_state(config: TrainConfig, checkpoint_path: Path) -> dict[str, Any]:
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
    explicit = config.deep_supervision is not None
    if explicit and ("deep_supervision" in state) != config.deep_supervision:
        raise MedlensError(
            "the checkpoint was trained "
            + ("with" if "deep_supervision" in state else "without")
            + " --deep-supervision",
            path=source,
            hint="resume with the options the run started with",
        )
    return state


def uses_deep_supervision(
    config: TrainConfig, plan: SegmentationPlan, resume_state: dict[str, Any] | None
) -> bool:
    """Whether the run trains with deep supervision: as its checkpoint did when resumed, else
    as ``--deep-supervision`` / ``--no-deep-supervision`` says, else nnU-Net's choice for 3D
    U-Nets trained from scratch: on for 3D DynUNet plans without DP-SGD.

    On the hippocampus recipe it gained +0.001 to +0.004 mean Dice with TTA in three paired
    runs (pooled +0.003; ``benchmarks/results/hippocampus_cpu_training.md``); on the
    pretrained 2D Lite U-Net of the polyp recipe nothing (``polyp_cpu_training.md``, 29).
    """
    if resume_state is not None:
        return "deep_supervision" in resume_state
    if config.deep_supervision is not None:
        return config.deep_supervision
    return plan.dims == 3 and plan.network == "DynUNet" and config.dp_epsilon is None


def resumed_plan_and_split(
    config: TrainConfig, state: dict[str, Any], by_id: dict[str, CasePaths]
) -> tuple[SegmentationPlan, list[str], list[str], int | None, dict[str, Any], None]:
    """The plan, split and fingerprint a checkpoint was trained with, as
    :func:`plan_and_split` returns them; refused where DATA lacks the run's cases."""
    train_ids, val_ids = state["split"]["train"], state["split"]["val"]
    missing = [case for case in [*train_ids, *val_ids] if case not in by_id]
    if missing:
        raise MedlensError(
            f"the run was trained on {len(missing)} case(s) that {config.data} lacks "
            f"(e.g. {missing[0]})",
            path=config.out,
            hint="resume with the DATA (and --max-cases) the run started with",
        )
    plan = SegmentationPlan.from_dict(state["plan"])
    fold = state["split"].get("fold", config.fold)
    return plan, train_ids, val_ids, fold, state.get("fingerprint", {}), None


def plan_and_split(
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
    given_plan = read_plan_file(config.plan_file) if config.plan_file is not None else None
    names = config.label_names or dataset_label_names(config.data)
    if given_plan is not None:
        names = given_plan.labels
    if names is not None and 0 not in names:
        names = {0: "background", **names}
    fingerprint = compute_fingerprint(images, labels, modality=modality)
    if given_plan is not None:
        _check_plan_fits(given_plan, fingerprint, config.plan_file)
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
    plan = given_plan or make_plan(
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


def _check_plan_fits(plan: SegmentationPlan, fingerprint: Any, path: Path | None) -> None:
    """A given plan must take the data's dimensionality and channels (its labels are
    checked against every label file with the other label checks)."""
    if plan.dims != fingerprint.dims or plan.in_channels != fingerprint.num_channels:
        raise MedlensError(
            f"the plan is for {plan.dims}D images with {plan.in_channels} channel(s), the data "
            f"is {fingerprint.dims}D with {fingerprint.num_channels}",
            path=path,
            hint="plan this data with --plan-only, or leave out --plan",
        )


def apply_options_to_plan(config: TrainConfig, plan: SegmentationPlan) -> list[list[int]] | None:
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


def private_training(
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
