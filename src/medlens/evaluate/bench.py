"""``medlens bench MODEL DATA``: latency, throughput and memory of a model on a device.

The model loads through :func:`medlens.models.zoo.load_model` (name or folder). Inputs are
built from real cases in DATA (an image file or a folder of images) following the model
card's ``input``: ``dims`` (2 or 3), ``channels``, and the size from ``patch_size`` (centre
crop/pad) or ``long_side_px`` (square), else the case's own size padded to a multiple of 32.
Intensities are z-scored per case. Only the forward pass is timed (``torch.inference_mode``,
CUDA synchronised); reading files is not.

Peak RAM is the highest resident set size of this process sampled with psutil every 2 ms
during the timed passes; peak GPU memory is ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens.devices import torch_device
from medlens.errors import MedlensError
from medlens.io.atomic import atomic_output


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    """Options of ``medlens bench``.

    Attributes:
        device: torch device, e.g. ``"cpu"`` or ``"cuda"``.
        num_cases: at most this many cases from DATA.
        warmup: untimed passes before timing (kernel selection, allocator warm-up).
        repeats: timed passes per case.
        batch_size: cases per forward pass (the same input repeated).
        input_size: override the spatial input size (voxels), e.g. ``(64, 64, 64)``.
    """

    device: str = "cpu"
    num_cases: int = 10
    warmup: int = 2
    repeats: int = 3
    batch_size: int = 1
    input_size: tuple[int, ...] | None = None


class _PeakRss:
    """Samples this process's resident memory in a thread; ``peak`` in bytes."""

    def __init__(self, interval_s: float = 0.002) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def _fit(array: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Centre crop or zero-pad the trailing spatial axes of ``(C, *spatial)`` to ``size``."""
    out = array
    for axis, target in enumerate(size, start=1):
        current = out.shape[axis]
        if current > target:
            start = (current - target) // 2
            out = np.take(out, np.arange(start, start + target), axis=axis)
        elif current < target:
            before = (target - current) // 2
            pad = [(0, 0)] * out.ndim
            pad[axis] = (before, target - current - before)
            out = np.pad(out, pad)
    return out


def _input_spec(card: Any, image: Any, options: BenchOptions) -> tuple[int, int, tuple | None]:
    params = card.architecture.get("params", {})
    spec = card.input or {}
    dims = int(spec.get("dims") or params.get("spatial_dims") or (2 if image.is_2d else 3))
    channels = int(spec.get("channels") or params.get("in_channels") or 1)
    size: tuple | None = None
    if options.input_size:
        size = tuple(int(v) for v in options.input_size)
    elif spec.get("patch_size"):
        size = tuple(int(v) for v in spec["patch_size"])
    elif spec.get("long_side_px"):
        size = (int(spec["long_side_px"]),) * dims
    if size is not None and len(size) != dims:
        raise MedlensError(f"input size {size} does not have {dims} dimensions")
    return dims, channels, size


def case_tensor(image: Any, *, dims: int, channels: int, size: tuple | None) -> torch.Tensor:
    """A ``(1, C, *spatial)`` float32 network input from a medlens image."""
    array = image.numpy().astype(np.float32)
    if dims == 2:
        if not image.is_2d:
            k = array.shape[3] // 2  # the middle slice of a volume
            array = array[..., k : k + 1]
        array = array[..., 0]
    if array.shape[0] != channels:
        if channels == 1:
            array = array.mean(axis=0, keepdims=True)
        elif array.shape[0] == 1:
            array = np.repeat(array, channels, axis=0)
        else:
            raise MedlensError(
                f"model takes {channels} channels, the image has {array.shape[0]}",
                path=image.metadata.get("path"),
            )
    array = (array - array.mean()) / (array.std() + 1e-6)
    if size is None:
        size = tuple(int(np.ceil(s / 32) * 32) for s in array.shape[1:])
    return torch.from_numpy(np.ascontiguousarray(_fit(array, size)))[None]


def list_inputs(data: Path, limit: int) -> list[Path]:
    from medlens.io import IMAGE_SUFFIXES
    from medlens.io.atomic import full_suffix

    if not data.exists():
        raise MedlensError("no such file or folder", path=data, hint="check the path")
    if data.is_file():
        return [data]
    files = [
        p
        for p in sorted(data.iterdir())
        if not p.name.startswith(".") and (full_suffix(p) in IMAGE_SUFFIXES or p.is_dir())
    ]
    if not files:
        raise MedlensError("no images in folder", path=data)
    return files[:limit]


def benchmark_model(
    model: str | Path,
    data: str | Path,
    options: BenchOptions = BenchOptions(),
    *,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Latency p50/p95 (ms per forward pass), throughput (cases/s), peak RAM and GPU memory.

    Example (not run here: needs a saved model):
        ``benchmark_model("hippocampus", "../shared/data/hippocampus/imagesTr")``
    """
    from medlens.io import read_image
    from medlens.models.zoo import load_model

    device = torch_device(options.device)
    network, card = load_model(model, device=device)
    paths = list_inputs(Path(data), options.num_cases)
    inputs = []
    for path in paths:
        image = read_image(path, warn_nan=False)
        dims, channels, size = _input_spec(card, image, options)
        tensor = case_tensor(image, dims=dims, channels=channels, size=size)
        inputs.append(tensor.repeat(options.batch_size, *([1] * (tensor.ndim - 1))))
    cuda = device.type == "cuda"

    def forward(batch: torch.Tensor) -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            network(batch.to(device, non_blocking=True))
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    for index in range(options.warmup):
        forward(inputs[index % len(inputs)])
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    latencies = []
    with _PeakRss() as memory:
        total = len(inputs) * options.repeats
        for repeat in range(options.repeats):
            for index, batch in enumerate(inputs):
                latencies.append(forward(batch))
                if progress:
                    progress(repeat * len(inputs) + index + 1, total)
    latencies_ms = np.asarray(latencies) * 1000.0
    shapes = sorted({tuple(t.shape) for t in inputs})
    return {
        "model": str(model),
        "model_name": card.name,
        "task": card.task,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if cuda
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "data": str(data),
        "num_cases": len(inputs),
        "repeats": options.repeats,
        "warmup": options.warmup,
        "batch_size": options.batch_size,
        "input_shape": [list(s) for s in shapes] if len(shapes) > 1 else list(shapes[0]),
        "latency_ms_p50": float(np.percentile(latencies_ms, 50)),
        "latency_ms_p95": float(np.percentile(latencies_ms, 95)),
        "latency_ms_mean": float(latencies_ms.mean()),
        "throughput_per_s": float(
            options.batch_size * len(latencies) / (latencies_ms.sum() / 1000)
        ),
        "peak_ram_mb": memory.peak / 2**20,
        "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
        "timed": "forward pass only (inference_mode), files read beforehand",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_bench_json(result: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(result, indent=2) + "\n")
    return path
