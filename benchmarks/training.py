"""Segmentation training throughput: medlens's training step vs MONAI's own training loop.

Measures, in one process on the same data, network, batch, patch, loss, optimizer, precision
and torch thread count, iterations per second of two training loops over the first
``--cases`` cases of ../shared/data/hippocampus (MSD Task04, 221 labelled cases):

1. medlens: the batch pipeline of ``medlens train seg`` (``medlens.train.segmentation``):
   ``load_cases`` (every case z-scored and padded to the patch, in memory, float16), then per
   iteration ``sample_batch`` (random patches, 33% centred on a foreground voxel) and
   ``augment_batch`` (batched torch mirroring, rotation/scale, brightness, contrast, gamma,
   noise) on the training device, in the main process;
2. MONAI: the tutorial pipeline with CPU transforms: ``LoadImaged``, ``EnsureChannelFirstd``,
   ``NormalizeIntensityd``, ``SpatialPadd`` and ``FgBgToIndicesd`` cached by ``CacheDataset``
   (cache_rate 1), then per sample ``RandCropByPosNegLabeld`` (pos 1, neg 2: the same 1/3
   foreground share), ``RandAffined`` (p 0.3, +-15 degrees, scale +-15%), ``RandFlipd`` on the
   same axes, ``RandScaleIntensityd``, ``RandShiftIntensityd``, ``RandAdjustContrastd`` (gamma,
   p 0.3), ``RandGaussianNoised`` (p 0.15) in ``DataLoader`` worker processes.

Both arms then run the same step (one function): MONAI ``DynUNet`` built from the medlens plan
(``make_plan`` on ``compute_fingerprint`` of the cases, patch 40x56x40, the shipped
hippocampus model's architecture), same initial weights, ``DiceCELoss(to_onehot_y=True,
softmax=True, batch=True)``, AdamW (medlens's default learning rate and weight decay),
gradient clipping at norm 12, and medlens's precision policy: bfloat16 autocast on CPUs with
native bf16 (``cpu_bf16_supported``), else float32; float16 AMP with a gradient scaler on
CUDA. Each arm runs ``--warmup`` untimed iterations, then ``--iterations`` timed ones
(batch sampling, augmentation, host-to-device copy, forward, backward, optimizer step and
``loss.item()``).

Reported per arm: iterations/s, samples/s, the share of wall time spent waiting for the next
batch, set-up seconds (loading / caching the cases), peak RSS of the main process (VmHWM,
reset between arms; ``getrusage`` where it cannot be reset) and of the DataLoader workers,
and on CUDA the mean GPU utilisation (``torch.cuda.utilization()`` through pynvml, else
``nvidia-smi``, sampled every 0.2 s while timing) and the peak GPU memory
(``torch.cuda.max_memory_allocated``). GPU numbers are only produced on a CUDA machine.

Run (writes benchmarks/results/training.md)::

    python benchmarks/training.py                      # CPU, or CUDA when present
    python benchmarks/training.py --device cuda --threads 8 --workers 4

Background training (``medlens_train_bg``) is paused with SIGSTOP while timing and always
resumed. Dry run that pauses nobody and leaves the results file alone::

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/training.py --cases 8 --iterations 3 \
        --warmup 1 --threads 1 --no-pause --no-write
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from background import paused_background

if TYPE_CHECKING:
    import torch

    from medlens.models.segmentation import SegmentationPlan

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "hippocampus"
RESULTS = REPO / "benchmarks" / "results" / "training.md"
PATCH = [40, 56, 40]  # the shipped hippocampus model's patch (voxels along i, j, k)
LABELS = {0: "background", 1: "anterior", 2: "posterior"}


# --------------------------------------------------------------------------- machine state
def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux ``clear_refs`` 5); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (VmHWM, else ``getrusage``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class GpuSampler:
    """Mean GPU utilisation (%) over a timed window, polled every ``interval`` seconds.

    Uses ``torch.cuda.utilization()`` (needs pynvml) and falls back to ``nvidia-smi``;
    ``method`` is ``None`` when neither works.
    """

    def __init__(self, device: torch.device, interval: float = 0.2) -> None:
        self.index = device.index if device.index is not None else 0
        self.interval = interval
        self.samples: list[float] = []
        self.method: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        for method in ("torch.cuda.utilization", "nvidia-smi"):
            self.method = method
            if self._read() is not None:
                return
        self.method = None

    def _read(self) -> float | None:
        import torch

        if self.method == "torch.cuda.utilization":
            try:
                return float(torch.cuda.utilization(self.index))
            except Exception:  # pynvml missing or NVML error
                return None
        if self.method == "nvidia-smi" and shutil.which("nvidia-smi"):
            query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
            result = subprocess.run(
                [*query, "-i", str(self.index)], capture_output=True, text=True, check=False
            )
            try:
                return float(result.stdout.strip().splitlines()[0])
            except (IndexError, ValueError):
                return None
        return None

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            value = self._read()
            if value is not None:
                self.samples.append(value)

    def __enter__(self) -> GpuSampler:
        if self.method is not None:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


# --------------------------------------------------------------------------- shared parts
def make_benchmark_plan(
    cases: list[Any], batch_size: int, mirror_axes: list[int]
) -> SegmentationPlan:
    """The medlens plan of ``cases`` (fingerprint + ``make_plan``) at the shipped patch size."""
    from medlens.data.segmentation import compute_fingerprint, read_case_image, read_case_label
    from medlens.models.segmentation import make_plan

    images = [read_case_image(case.image) for case in cases]
    labels = [read_case_label(case.label) for case in cases]
    fingerprint = compute_fingerprint(images, labels)
    plan = make_plan(fingerprint, labels=LABELS, batch_size=batch_size, patch_size=list(PATCH))
    plan.mirror_axes = list(mirror_axes)
    return plan


def train_step(
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    amp: bool,
) -> float:
    """One optimisation step as ``train_segmentation`` does it; returns the loss value."""
    import torch

    from medlens.infer.segmentation import _autocast

    optimizer.zero_grad(set_to_none=True)
    with _autocast(device, amp):
        logits = network(images)
    loss = loss_function(logits.float(), labels)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
    scaler.step(optimizer)
    scaler.update()
    return float(loss.item())


def time_loop(
    next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    step: Callable[[torch.Tensor, torch.Tensor], float],
    *,
    warmup: int,
    iterations: int,
    device: torch.device,
) -> dict[str, Any]:
    """Run ``warmup`` then ``iterations`` timed iterations; seconds, data-wait seconds, GPU."""
    import torch

    for _ in range(warmup):
        step(*next_batch())
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    sampler = GpuSampler(device) if cuda else None
    waiting = 0.0
    losses = []
    with sampler if sampler is not None else contextlib.nullcontext():
        started = time.perf_counter()
        for _ in range(iterations):
            before = time.perf_counter()
            images, labels = next_batch()
            waiting += time.perf_counter() - before
            losses.append(step(images, labels))
        if cuda:
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
    result: dict[str, Any] = {
        "seconds": seconds,
        "waiting": waiting,
        "final_loss": losses[-1] if losses else float("nan"),
    }
    if cuda:
        result["gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["gpu_util"] = sampler.mean if sampler is not None else None
        result["gpu_util_method"] = sampler.method if sampler is not None else None
    return result


def _fresh_training(
    plan: SegmentationPlan, weights: dict[str, torch.Tensor], device: torch.device, amp: bool
) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.amp.GradScaler, Any]:
    """Network with ``weights``, AdamW, gradient scaler and Dice+CE loss as medlens sets up."""
    import torch
    from monai.losses import DiceCELoss

    from medlens.train.segmentation_config import TrainConfig

    network = plan.build_network().to(device)
    network.load_state_dict(weights)
    network.train()
    optimizer = torch.optim.AdamW(
        network.parameters(), lr=TrainConfig.learning_rate, weight_decay=TrainConfig.weight_decay
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    return network, optimizer, scaler, loss_function


# --------------------------------------------------------------------------- the two arms
def run_medlens(
    cases: list[Any],
    plan: SegmentationPlan,
    weights: dict[str, torch.Tensor],
    device: torch.device,
    amp: bool,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """medlens: ``load_cases`` once, then ``sample_batch`` + ``augment_batch`` per step."""
    import numpy as np
    import torch

    from medlens.augment.segmentation_batch import augment_batch
    from medlens.data.patches import load_cases, sample_batch
    from medlens.train.segmentation_config import TrainConfig

    _reset_peak_rss()
    started = time.perf_counter()
    loaded = load_cases(cases, plan)
    setup = time.perf_counter() - started
    network, optimizer, scaler, loss_function = _fresh_training(plan, weights, device, amp)
    indices = list(range(len(loaded)))
    rng = np.random.default_rng(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = sample_batch(
            loaded, indices, plan.patch_size, plan.batch_size, rng, TrainConfig.foreground_fraction
        )
        return augment_batch(images.to(device), labels.to(device), generator, plan.mirror_axes)

    def step(images: torch.Tensor, labels: torch.Tensor) -> float:
        return train_step(network, optimizer, scaler, loss_function, images, labels, device, amp)

    result = time_loop(
        next_batch, step, warmup=args.warmup, iterations=args.iterations, device=device
    )
    result.update(setup=setup, rss_mb=_peak_rss_mb(), worker_rss_mb=None)
    return result


def monai_transforms(plan: SegmentationPlan) -> Any:
    """The MONAI tutorial-style transform chain (deterministic part cached by CacheDataset)."""
    from monai import transforms as mt

    keys = ["image", "label"]
    patch = list(plan.patch_size)
    angle = math.radians(15)
    return mt.Compose(
        [
            mt.LoadImaged(keys=keys, image_only=True),
            mt.EnsureChannelFirstd(keys=keys),
            mt.NormalizeIntensityd(keys="image", nonzero=False, channel_wise=True),
            mt.SpatialPadd(keys=keys, spatial_size=patch),
            mt.FgBgToIndicesd(keys="label"),
            # ----- random from here on: run per sample in the DataLoader workers
            mt.RandCropByPosNegLabeld(
                keys=keys,
                label_key="label",
                spatial_size=patch,
                pos=1,
                neg=2,
                num_samples=1,
                fg_indices_key="label_fg_indices",
                bg_indices_key="label_bg_indices",
            ),  # fmt: skip
            mt.RandAffined(
                keys=keys,
                prob=0.3,
                rotate_range=[angle] * plan.dims,
                scale_range=[0.15] * plan.dims,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
                spatial_size=patch,
                cache_grid=True,
            ),  # fmt: skip
            *[
                mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=axis)
                for axis in (plan.mirror_axes if plan.mirror_axes is not None else range(plan.dims))
            ],
            mt.RandScaleIntensityd(keys="image", factors=0.15, prob=1.0),
            mt.RandShiftIntensityd(keys="image", offsets=0.1, prob=1.0),
            mt.RandAdjustContrastd(keys="image", gamma=(0.7, 1.5), prob=0.3),
            mt.RandGaussianNoised(keys="image", prob=0.15, std=0.1),
            mt.EnsureTyped(keys=keys, track_meta=False),
        ]
    )


def _forever(loader: Any) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of ``loader`` epoch after epoch."""
    while True:
        yield from loader


def _monai_timed(
    dataset: Any,
    plan: SegmentationPlan,
    weights: dict[str, torch.Tensor],
    device: torch.device,
    amp: bool,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The timed MONAI loop; its DataLoader (and persistent workers) end when it returns."""
    from monai.data import DataLoader

    loader = DataLoader(
        dataset, batch_size=plan.batch_size, shuffle=True, drop_last=True,
        num_workers=args.workers, persistent_workers=args.workers > 0,
        pin_memory=device.type == "cuda",
    )  # fmt: skip
    network, optimizer, scaler, loss_function = _fresh_training(plan, weights, device, amp)
    batches = _forever(loader)

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        batch = next(batches)
        return (
            batch["image"].to(device, non_blocking=True),
            batch["label"].to(device, non_blocking=True),
        )

    def step(images: torch.Tensor, labels: torch.Tensor) -> float:
        return train_step(network, optimizer, scaler, loss_function, images, labels, device, amp)

    try:
        result = time_loop(
            next_batch, step, warmup=args.warmup, iterations=args.iterations, device=device
        )
        result["rss_mb"] = _peak_rss_mb()
    finally:
        batches.close()
    return result


def run_monai(
    cases: list[Any],
    plan: SegmentationPlan,
    weights: dict[str, torch.Tensor],
    device: torch.device,
    amp: bool,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """MONAI: CacheDataset (cache_rate 1) + DataLoader with CPU transforms in workers."""
    import gc

    from monai.data import CacheDataset

    _reset_peak_rss()
    files = [{"image": str(case.image), "label": str(case.label)} for case in cases]
    transform = monai_transforms(plan)
    transform.set_random_state(seed=args.seed)
    started = time.perf_counter()
    dataset = CacheDataset(
        files, transform=transform, cache_rate=1.0, num_workers=max(1, args.workers),
        progress=False,
    )  # fmt: skip
    setup = time.perf_counter() - started
    result = _monai_timed(dataset, plan, weights, device, amp, args)
    gc.collect()  # the loader is gone: its workers have exited and been reaped
    result["setup"] = setup
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result["worker_rss_mb"] = children if args.workers > 0 else None
    return result


# --------------------------------------------------------------------------- report
def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def report(
    ours: dict[str, Any],
    theirs: dict[str, Any],
    context: dict[str, Any],
    args: argparse.Namespace,
) -> str:
    """Markdown text of the benchmark (table + set-up notes)."""
    batch = context["batch_size"]
    rows = []

    def row(name: str, first: str, second: str) -> None:
        rows.append(f"| {name} | {first} | {second} |")

    ips = [args.iterations / r["seconds"] for r in (ours, theirs)]
    row("iterations/s", f"{ips[0]:.3f}", f"{ips[1]:.3f}")
    row("samples/s", f"{ips[0] * batch:.2f}", f"{ips[1] * batch:.2f}")
    row(
        f"seconds for {args.iterations} iterations",
        f"{ours['seconds']:.2f}",
        f"{theirs['seconds']:.2f}",
    )
    row(
        "share of time waiting for the batch",
        f"{ours['waiting'] / ours['seconds']:.0%} (sampling + augmentation, main process)",
        f"{theirs['waiting'] / theirs['seconds']:.0%} (DataLoader, {args.workers} worker(s))",
    )
    row(
        f"set-up: load {context['cases']} cases (s)",
        f"{ours['setup']:.2f} (`load_cases`)",
        f"{theirs['setup']:.2f} (`CacheDataset`)",
    )
    row("peak RSS, main process (MiB)", f"{ours['rss_mb']:.0f}", f"{theirs['rss_mb']:.0f}")
    row(
        "peak RSS, largest DataLoader worker (MiB, counts pages shared with the parent)",
        "- (no workers)",
        _cell(theirs["worker_rss_mb"], ".0f"),
    )
    if context["cuda"]:
        row(
            "mean GPU utilisation (%)",
            _cell(ours.get("gpu_util"), ".0f"),
            _cell(theirs.get("gpu_util"), ".0f"),
        )
        row(
            "peak GPU memory allocated (MiB)",
            f"{ours['gpu_memory_mb']:.0f}",
            f"{theirs['gpu_memory_mb']:.0f}",
        )
    row(
        "loss after the last timed step", f"{ours['final_loss']:.3f}", f"{theirs['final_loss']:.3f}"
    )
    ratio = ips[0] / ips[1]
    paused = (
        "background training left running (--no-pause)"
        if args.no_pause
        else "background training paused (SIGSTOP)"
    )
    gpu_note = (
        f" GPU utilisation sampled every 0.2 s with {ours.get('gpu_util_method') or 'nothing'}"
        " (torch.cuda.utilization needs pynvml; else nvidia-smi) during the timed iterations."
        if context["cuda"]
        else " CPU run: GPU utilisation and memory are only measured with --device cuda."
    )
    lines = [
        "# Segmentation training throughput: medlens vs MONAI's training loop",
        "",
        f"`{context['command']}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"- device: {context['device_name']} (`{context['device']}`); torch"
        f" {context['torch']}, MONAI {context['monai']}, Python {platform.python_version()}",
        f"- torch threads {args.threads}; MONAI DataLoader workers {args.workers}"
        f" ({os.cpu_count()} CPU cores); {paused}; 1-minute load average before"
        f" {context['load_before']:.1f}, at start {context['load_start']:.1f}",
        f"- data: first {context['cases']} cases of {DATA.name} (MSD Task04); batch {batch},"
        f" patch {'x'.join(map(str, context['patch']))}, precision {context['precision']},"
        f" {args.warmup} warm-up + {args.iterations} timed iterations per arm",
        f"- network: MONAI DynUNet, filters {context['filters']}, {context['parameters']:,}"
        " parameters, same initial weights; DiceCELoss(batch=True); AdamW; clip norm 12",
        "",
        "| | medlens (`sample_batch` + `augment_batch`) | MONAI (CacheDataset + DataLoader,"
        " CPU transforms) |",
        "| --- | --- | --- |",
        *rows,
        "",
        f"**medlens / MONAI iterations per second: {ratio:.2f}x**",
        "",
        "Both arms call the same step function (zero_grad, autocast forward, Dice+CE on float32"
        " logits, scaled backward, unscale, clip, step, `loss.item()`); they differ only in how"
        " the batch is made. medlens samples and augments in the main process with batched"
        " torch ops on the training device; MONAI runs its per-sample CPU transforms in"
        f" {args.workers} DataLoader worker process(es) beside the main process"
        + (
            ", which on this machine compete with the torch threads for the same cores"
            if args.threads + args.workers > (os.cpu_count() or 1)
            else ""
        )
        + ". Peak RSS per arm is VmHWM reset between arms (it includes what the process"
        " held before the arm: imports, the other arm's freed memory)." + gpu_note,
    ]
    if args.no_pause:
        lines += ["", "Dry run: background training kept running; timings are not comparable."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main
def main() -> None:
    default_workers = 1 if (os.cpu_count() or 1) <= 2 else 2
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (both arms)")
    parser.add_argument(
        "--workers", type=int, default=default_workers,
        help="MONAI DataLoader / CacheDataset workers (default 2; 1 on machines with <= 2 cores)",
    )  # fmt: skip
    parser.add_argument("--cases", type=int, default=None, help="first K cases (default all)")
    parser.add_argument("--iterations", type=int, default=50, help="timed iterations per arm")
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations per arm")
    parser.add_argument("--batch-size", type=int, default=4, help="as the shipped model (4)")
    parser.add_argument("--mirror-axes", default="0,1", help="as the shipped model (0,1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--amp", action=argparse.BooleanOptionalAction, default=True,
        help="medlens's policy: fp16 AMP on CUDA, bf16 autocast on CPUs with native bf16",
    )  # fmt: skip
    parser.add_argument(
        "--no-pause", action="store_true",
        help="leave background training running (timings are then not comparable)",
    )  # fmt: skip
    parser.add_argument(
        "--no-write", action="store_true",
        help=f"print the table only; do not overwrite {RESULTS.relative_to(REPO)}",
    )  # fmt: skip
    args = parser.parse_args()
    if args.iterations < 1 or args.warmup < 0 or args.workers < 0 or args.threads < 1:
        parser.error("need --iterations >= 1, --warmup >= 0, --workers >= 0, --threads >= 1")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import monai
    import torch

    from medlens.data.segmentation import find_cases
    from medlens.infer.segmentation import cpu_bf16_supported
    from medlens.io.atomic import atomic_output

    torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")
    cuda = device.type == "cuda"
    amp = args.amp and (cuda or cpu_bf16_supported())
    precision = ("fp16 AMP" if cuda else "bf16 autocast") if amp else "float32"
    cases = find_cases(DATA)[: args.cases]
    mirror_axes = [int(v) for v in args.mirror_axes.split(",") if v.strip()]

    load_before = os.getloadavg()[0]
    with paused_background(not args.no_pause):
        if not args.no_pause:
            time.sleep(2)
        load_start = os.getloadavg()[0]
        plan = make_benchmark_plan(cases, args.batch_size, mirror_axes)
        torch.manual_seed(args.seed)
        template = plan.build_network()
        weights = copy.deepcopy(template.state_dict())
        parameters = sum(p.numel() for p in template.parameters())
        del template
        ours = run_medlens(cases, plan, weights, device, amp, args)
        theirs = run_monai(cases, plan, weights, device, amp, args)
    context = {
        "command": "python benchmarks/training.py " + " ".join(sys.argv[1:]),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else _cpu_name(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "cuda": cuda,
        "precision": precision,
        "cases": len(cases),
        "batch_size": plan.batch_size,
        "patch": plan.patch_size,
        "filters": plan.filters,
        "parameters": parameters,
        "load_before": load_before,
        "load_start": load_start,
    }
    text = report(ours, theirs, context, args)
    if not args.no_write:
        with atomic_output(RESULTS) as temporary:
            temporary.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
