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

The stages before the loop are in :mod:`medlens.train.segmentation_setup` (device, resume,
fingerprint -> plan -> split), the batches in :mod:`medlens.train.segmentation_batches`, what
the run writes in :mod:`medlens.train.run_record`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens.augment.segmentation_batch import (
    camera_augment,
)
from medlens.data.near_duplicates import leaks_between
from medlens.data.patches import (
    LoadedCase,
    frame_pixels,
    infinite_batches,
    load_cases,
)
from medlens.data.segmentation import (
    CasePaths,
    find_cases,
)
from medlens.data.splits import read_split_file
from medlens.errors import MedlensError
from medlens.infer.segmentation import (
    _autocast,
    uses_amp,
)
from medlens.models.segmentation import SegmentationPlan
from medlens.models.zoo import check_weights_size, weights_bytes
from medlens.train.deep_supervision import DeepSupervision, DeepSupervisionLoss
from medlens.train.losses import segmentation_loss
from medlens.train.run_folder import refuse_replacing_checkpoint
from medlens.train.run_record import (
    RunSaver,
    TrainingLog,
    training_record,
    write_json,
)
from medlens.train.schedules import warmup_cosine
from medlens.train.segmentation_batches import BatchSource
from medlens.train.segmentation_config import TrainConfig
from medlens.train.segmentation_setup import (
    apply_options_to_plan,
    plan_and_split,
    private_training,
    read_resume_state,
    resumed_plan_and_split,
    training_device,
    uses_deep_supervision,
)
from medlens.train.transfer import (
    EncoderFreeze,
    initialise_from,
    parameter_groups,
)
from medlens.train.validation import validate


def _learning_rate(step: int, config: TrainConfig, elapsed_s: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to 2% over iterations or the time budget."""
    time_progress = elapsed_s / (config.minutes * 60) if config.minutes else 0.0
    return config.learning_rate * warmup_cosine(
        step,
        warmup_steps=config.warmup,
        total_steps=config.iterations,
        time_progress=time_progress,
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
    device, backend = training_device(config, distributed)
    is_main = rank == 0
    out = Path(config.out)  # made once the data and plan pass their checks

    cases = _selected_cases(config)
    by_id = {c.case_id: c for c in cases}
    # read before any image is: a missing or foreign split file fails at once
    fixed_split = (
        read_split_file(config.split_file, list(by_id))
        if config.split_file is not None and not config.resume
        else None
    )
    refuse_replacing_checkpoint(out, resume=config.resume)
    resume_state = read_resume_state(config, out / "checkpoint.pt") if config.resume else None
    if resume_state is not None:
        plan, train_ids, val_ids, fold, fingerprint, groups = resumed_plan_and_split(
            config, resume_state, by_id
        )
    else:
        plan, train_ids, val_ids, fold, fingerprint, groups = plan_and_split(
            config, cases, fixed_split, verbose=is_main
        )
    # multi-scale training: the sizes a batch is drawn at
    batch_sizes_px = apply_options_to_plan(config, plan)
    config = dataclasses.replace(
        config, deep_supervision=uses_deep_supervision(config, plan, resume_state)
    )
    # refuse now, not at the first save minutes into training (the card's weights must ship)
    planned = plan.build_network()
    check_weights_size(
        weights_bytes(planned),
        what=f"the planned {plan.network}",
        hint="use a smaller --filters or --network",
    )
    if config.init and resume_state is None:
        initialise_from(planned, config.init)  # a model that does not fit: refused here too
    del planned
    out.mkdir(parents=True, exist_ok=True)
    split = {"train": train_ids, "val": val_ids, "seed": config.seed, "fold": fold}
    if is_main:
        write_json(out / "plan.json", plan.to_dict())
        write_json(out / "fingerprint.json", fingerprint)
        if resume_state is None or not (out / "split.json").is_file():
            groups_entry = {"similar_frame_groups": groups} if groups is not None else {}
            write_json(out / "split.json", split | groups_entry)
    if config.plan_only:
        if is_main:
            print(plan_summary(plan, train_ids, val_ids, deep_supervision=config.deep_supervision))
        return {"plan_only": True}

    train_cases = load_cases([by_id[c] for c in train_ids if c in by_id], plan)
    val_cases = load_cases([by_id[c] for c in val_ids if c in by_id], plan) if is_main else []
    leaks = _near_duplicates(plan, train_cases, val_cases)

    # 2D: channels-last makes a Lite U-Net training iteration about 1.4x faster on the
    # CPU (benchmarks/results/polyp_training_step.md) and suits cuDNN under AMP
    memory_format = (
        torch.channels_last
        if plan.dims == 2 and config.dp_epsilon is None
        else torch.contiguous_format
    )
    network, supervised = _build_network(
        config, plan, device, memory_format, fresh=resume_state is None, verbose=is_main
    )
    optimizer, loss_function = _optimizer_and_loss(config, network, supervised)
    # The predictor's rule: bf16 autocast on the CPU only for DynUNets; it makes a 2D Lite
    # U-Net's training step 1.5x slower (benchmarks/results/polyp_training_step.md).
    amp = config.amp and uses_amp(device, plan)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")
    start_step = 0
    best: dict[str, Any] = {"mean_dice": -1.0}
    rng = np.random.default_rng(config.seed + 1000 * rank)
    torch_generator = torch.Generator().manual_seed(config.seed + 1000 * rank)
    if resume_state is not None:
        start_step, best = _restore(resume_state, network, supervised, optimizer, rng)
        if is_main:
            print(f"resumed at iteration {start_step} (best mean Dice {best['mean_dice']})")
    ema = None
    if config.ema_decay:
        from medlens.train.averaging import moving_average

        ema = moving_average(network, decay=config.ema_decay, state=(resume_state or {}).get("ema"))
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
        dp = private_training(config, plan, network, optimizer, train_cases)
        training_network = dp.model
        optimizer = dp.optimizer
        dp_batches = infinite_batches(dp.data_loader)
        amp = False  # Opacus' per-sample gradients are computed in float32

    commands = [config.command]
    if resume_state is not None:
        commands = [*resume_state.get("commands", []), config.command]
    frame_augment = camera_augment(plan) if config.camera_augment else None
    saver = RunSaver(
        config=config,
        out=out,
        plan=plan,
        fingerprint=fingerprint,
        split=split,
        commands=commands,
        network=network,
        supervised=supervised,
        optimizer=optimizer,
        ema=ema,
        rng=rng,
        dp=dp,
        previous_seconds=float(resume_state.get("seconds", 0.0)) if resume_state else 0.0,
        best=best,
        record=training_record(
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
        ),
    )
    batches = BatchSource(
        config=config,
        plan=plan,
        device=device,
        train_cases=train_cases,
        train_indices=train_indices,
        rng=rng,
        generator=torch_generator,
        memory_format=memory_format,
        dp_batches=dp_batches,
        frame_augment=frame_augment,
        batch_sizes_px=batch_sizes_px,
    )
    log = TrainingLog(out / "log.csv", out / "training.png", dp=dp, enabled=is_main)
    if resume_state is None or not log.path.exists():
        log.start()
    # the weights that are validated and shipped: the moving average where there is one
    evaluated_network = ema.module if ema is not None else network
    freeze = EncoderFreeze(
        network,
        config,
        until=config.freeze_encoder_epochs * max(1, math.ceil(len(train_ids) / plan.batch_size)),
        start_step=start_step,
    )

    from rich.progress import Progress

    progress = Progress(disable=not (is_main and config.progress))
    task = progress.add_task("training", total=config.iterations, completed=start_step)
    network.train()
    last_checkpoint = time.time()
    running: list[float] = []
    with progress:
        for step in range(start_step, config.iterations):
            freeze.update(step)
            # one schedule value per step for every group (it reads the clock under --minutes)
            learning_rate = _learning_rate(step, config, saver.elapsed())
            for group in optimizer.param_groups:
                # a checkpoint from before encoder_lr_scale has one group without "lr_scale"
                group["lr"] = learning_rate * group.get("lr_scale", 1.0)
            images, labels = batches.next()
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
            out_of_time = bool(config.minutes) and saver.elapsed() >= config.minutes * 60
            if distributed:
                out_of_time = _any_process(out_of_time, device)
            last = done == config.iterations or out_of_time
            if not is_main:
                if last:
                    break
                continue
            if dp is not None and done % len(dp.data_loader) == 0:
                epoch = done // len(dp.data_loader)
                print(f"epoch {epoch}: DP epsilon spent {dp.epsilon_spent():.3f}", flush=True)
            metrics = None
            if (done % config.val_every == 0 or last) and val_cases:
                metrics = validate(evaluated_network, val_cases, plan, device, amp)
                saver.validated(evaluated_network, metrics, done, loss=float(np.mean(running)))
            if done % 10 == 0 or metrics is not None:
                log.row(
                    done,
                    saver.elapsed(),
                    optimizer.param_groups[0]["lr"],
                    float(np.mean(running)),
                    metrics,
                )
                running = []
            if time.time() - last_checkpoint > config.checkpoint_minutes * 60 or last:
                saver.save_checkpoint(done)
                last_checkpoint = time.time()
            if last:
                break
    log.plot()
    if distributed:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return saver.best


# --------------------------------------------------------------------------- its parts
def plan_summary(
    plan: SegmentationPlan,
    train_ids: list[str],
    val_ids: list[str],
    *,
    deep_supervision: bool | None,
) -> str:
    """A few lines on what the run would train (``--plan-only``), as nnU-Net prints its plan."""
    spacing = "as the images" if plan.spacing_mm is None else plan.spacing_mm
    size = f", frames resized to {plan.frame_size}" if plan.frame_size else ""
    return "\n".join(
        [
            f"plan: {plan.dims}D {plan.network}, {plan.in_channels} channel(s), "
            f"labels {plan.labels}",
            f"  spacing (mm): {spacing}{size}; normalisation: {plan.normalisation.get('scheme')}",
            f"  patch {plan.patch_size}, batch {plan.batch_size}, filters {plan.filters}, "
            f"strides {plan.strides}",
            f"  deep supervision: {'on' if deep_supervision else 'off'}; mirror axes "
            f"{plan.trained_mirror_axes()}; largest component proposed for "
            f"{plan.largest_component or 'no label'}",
            f"  split: {len(train_ids)} training, {len(val_ids)} validation cases",
        ]
    )


def _selected_cases(config: TrainConfig) -> list[CasePaths]:
    """The cases of DATA; with ``--max-cases`` the forced validation cases and the first
    others up to that count (a quick run)."""
    cases = find_cases(config.data)
    if not config.max_cases:
        return cases
    forced = [c for c in cases if c.case_id in config.val_cases]
    others = [c for c in cases if c.case_id not in config.val_cases]
    return sorted(
        forced + others[: max(0, config.max_cases - len(forced))], key=lambda c: c.case_id
    )


def _near_duplicates(
    plan: SegmentationPlan, train_cases: list[LoadedCase], val_cases: list[LoadedCase]
) -> Any:
    """2D: validation frames with a near-twin in training (warned about, and noted in the
    card); None for volumes or without validation cases."""
    if plan.dims != 2 or not val_cases:
        return None
    leaks = leaks_between(
        [frame_pixels(c) for c in train_cases],
        [frame_pixels(c) for c in val_cases],
        train_names=[c.case_id for c in train_cases],
        val_names=[c.case_id for c in val_cases],
    )
    if leaks.leaked:
        print(
            "warning: "
            + leaks.message("--group-similar keeps near-duplicate frames on one side of the split.")
        )
    return leaks


def _build_network(
    config: TrainConfig,
    plan: SegmentationPlan,
    device: torch.device,
    memory_format: torch.memory_format,
    *,
    fresh: bool,
    verbose: bool,
) -> tuple[torch.nn.Module, DeepSupervision | None]:
    """The planned network (ImageNet or ``--init`` weights on a fresh run) and, with
    ``--deep-supervision``, its extra heads."""
    # --seed fixes the new layers' initialisation too (every process alike, as DDP needs),
    # without touching the caller's global random state
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        network = plan.build_network(
            pretrained=config.pretrained and fresh and not config.init,
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
    if config.init and fresh:
        copied, total = initialise_from(network, config.init)
        if verbose:
            print(f"initialised {copied} of {total} tensors from model '{config.init}'")
    return network, supervised


def _optimizer_and_loss(
    config: TrainConfig, network: torch.nn.Module, supervised: DeepSupervision | None
) -> tuple[torch.optim.Optimizer, torch.nn.Module]:
    """AdamW over the network (encoder at its own learning rate) and the deep-supervision
    heads, and the loss (summed over the heads' outputs with deep supervision)."""
    groups = parameter_groups(network, config.encoder_lr_scale)
    loss_function = segmentation_loss(config.loss)
    if supervised is not None:
        groups.append({"params": list(supervised.heads.parameters()), "lr_scale": 1.0})
        loss_function = DeepSupervisionLoss(loss_function, supervised.weights)
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay)
    return optimizer, loss_function


def _restore(
    state: dict[str, Any],
    network: torch.nn.Module,
    supervised: DeepSupervision | None,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
) -> tuple[int, dict[str, Any]]:
    """Load a checkpoint into the run; returns its iteration and best validation."""
    network.load_state_dict(state["model"])
    if supervised is not None:
        supervised.heads.load_state_dict(state["deep_supervision"])
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    if "rng" in state:
        rng.bit_generator.state = state["rng"]
    return int(state["step"]), state.get("best", {"mean_dice": -1.0})


def _any_process(flag: bool, device: torch.device) -> bool:
    """True on every torchrun process if it is on one (so all stop at the same step)."""
    import torch.distributed as dist

    tensor = torch.tensor([float(flag)], device=device)
    dist.all_reduce(tensor)
    return bool(tensor.item() > 0)
