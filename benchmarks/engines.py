"""PyTorch vs ONNX Runtime engine of the shipped models, end to end, on this CPU.

``python benchmarks/engines.py`` times ``medlens detect``'s detector on 100 kidney-stone val
slices (512 px, batch 1), ``medlens predict polyp`` on 100 Kvasir frames (model load, read,
predict, write; beside the plain MONAI loop of benchmarks/segmentation.py) and ``medlens
predict hippocampus`` on 39 cases (the plan's mirror TTA), each with ``--engine torch`` and
``--engine onnx`` (and the polyp model's int8 graph, ``--engine onnx-int8``, which ``auto``
picks on the CPU), repeats interleaved, 2 threads. Writes benchmarks/results/engines.md with
the CPU model: the speed targets of issues #5 and #7 depend on it (AVX512 or not).
"""

from __future__ import annotations

import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT.parent / "shared" / "data").resolve()
sys.path.insert(0, str(ROOT / "benchmarks"))


def cpu_description() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), ""
    )
    flags = next(
        (ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []
    )
    vector = "AVX512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    bf16 = ", AVX512-BF16" if "avx512_bf16" in flags else ""
    return f"{model or 'unknown CPU'} ({os.cpu_count()} cores, {vector}{bf16})"


def main() -> None:
    import torch
    from segmentation import _link_cases as _link
    from segmentation import monai_loop_2d

    from medlens.detect.data import load_detection_data
    from medlens.detect.infer import load_detector
    from medlens.infer.predict import predict_paths

    torch.set_num_threads(2)
    repeats = 3
    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {}

    def timed(key: str, work) -> None:  # noqa: ANN001
        started = time.perf_counter()
        work()
        times.setdefault(key, []).append(time.perf_counter() - started)
        print(key, f"{times[key][-1]:.2f} s", flush=True)

    slices = [s.pixels for s in load_detection_data(DATA / "kidney-stones", "val")[0]][:100]
    detectors = {e: load_detector("kidney-stones", engine=e)[0] for e in ("torch", "onnx")}
    frames = sorted((DATA / "kvasir-seg" / "images").glob("*.jpg"))[:100]
    cases = sorted((DATA / "hippocampus" / "imagesTr").glob("*.nii.gz"))[:39]
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        frames_in, cases_in = _link(tmp / "frames", frames), _link(tmp / "cases", cases)
        for engine, detector in detectors.items():  # warm-up (and the one-off ONNX export)
            detector(slices[:3])
            predict_paths("polyp", _link(tmp / f"w{engine}", frames[:2]), tmp / f"wo{engine}",
                          engine=engine, progress=False)  # fmt: skip
        predict_paths("polyp", _link(tmp / "wi", frames[:2]), tmp / "woi", engine="onnx-int8",
                      progress=False)  # fmt: skip
        for repeat in range(repeats):
            for engine, detector in detectors.items():
                timed(f"detect {engine}", lambda d=detector: d(slices))
                timed(
                    f"polyp {engine}",
                    lambda e=engine, r=repeat: predict_paths(
                        "polyp", frames_in, tmp / f"p{e}{r}", engine=e, progress=False
                    ),
                )
                if engine == "onnx":
                    timed(
                        "polyp onnx-int8",
                        lambda r=repeat: predict_paths(
                            "polyp", frames_in, tmp / f"pi{r}", engine="onnx-int8", progress=False
                        ),
                    )
                timed(
                    f"hippocampus {engine}",
                    lambda e=engine, r=repeat: predict_paths(
                        "hippocampus", cases_in, tmp / f"h{e}{r}", engine=e, progress=False
                    ),
                )
            timed("polyp monai", lambda r=repeat: monai_loop_2d("polyp", frames, tmp / f"m{r}"))
    median = {key: statistics.median(values) for key, values in times.items()}
    rate = {
        "detect": lambda e: len(slices) / median[f"detect {e}"],
        "polyp": lambda e: len(frames) / median[f"polyp {e}"],
        "polyp-int8": lambda e: len(frames) / median["polyp onnx-int8"],
    }
    lines = [
        "# Inference engines: PyTorch vs ONNX Runtime (CPU)",
        "",
        f"Run {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {cpu_description()}, "
        f"torch {torch.__version__}, 2 threads; load average before {load_before:.2f}. "
        f"Command: `python benchmarks/engines.py`. Median of {repeats} interleaved repeats.",
        "",
        "| task | PyTorch engine | ONNX Runtime engine | ONNX / PyTorch | MONAI loop | target |",
        "|---|---|---|---|---|---|",
        f"| kidney-stones detector, {len(slices)} val slices at 512 px (end to end) | "
        f"{rate['detect']('torch'):.1f} img/s | {rate['detect']('onnx'):.1f} img/s | "
        f"{rate['detect']('onnx') / rate['detect']('torch'):.2f}x | - | >= 10 img/s: "
        f"{'met' if rate['detect']('onnx') >= 10 else 'NOT met'} |",
        f"| polyp, {len(frames)} frames (load+read+predict+write) | "
        f"{rate['polyp']('torch'):.1f} frames/s | {rate['polyp']('onnx'):.1f} frames/s | "
        f"{rate['polyp']('onnx') / rate['polyp']('torch'):.2f}x | - | >= 20 frames/s: "
        f"{'met' if rate['polyp']('onnx') >= 20 else 'NOT met'} (float) |",
        # the MONAI loop runs the network `auto` loads: the int8 graph
        f"| polyp, int8 graph (`--engine onnx-int8`, what `auto` runs on the CPU) | - | "
        f"{rate['polyp-int8']('onnx'):.1f} frames/s | "
        f"{rate['polyp-int8']('onnx') / rate['polyp']('torch'):.2f}x | "
        f"{len(frames) / median['polyp monai']:.1f} frames/s | >= 20 frames/s: "
        f"{'met' if rate['polyp-int8']('onnx') >= 20 else 'NOT met'} |",
        f"| hippocampus, {len(cases)} cases (load+read+predict with the plan's mirror TTA+write) | "
        f"{median['hippocampus torch']:.1f} s | {median['hippocampus onnx']:.1f} s | "
        f"{median['hippocampus torch'] / median['hippocampus onnx']:.2f}x | - | <= 15 s: "
        f"{'met' if median['hippocampus onnx'] <= 15 else 'NOT met'} |",
        "",
        "All timings: "
        + "; ".join(f"{k} " + ", ".join(f"{v:.2f}" for v in vs) + " s" for k, vs in times.items())
        + ".",  # fmt: skip
        "",
    ]
    out = ROOT / "benchmarks" / "results" / "engines.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
