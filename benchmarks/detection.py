"""Detection speed, memory and accuracy of the shipped kidney-stone detector.

Speed: end-to-end images/s of ``medlens.detect.predict.Detector`` (letterbox, network,
heatmap decoding, NMS) on the real 512x512 validation slices of ../shared/data/kidney-stones,
with 1 and 2 torch threads, batch 1 and 8. As a peer, MONAI's RetinaNet (``monai.apps.detection``,
ResNet-18 + FPN, 3 anchors, 1 input channel; the feature extractor is rebuilt from MONAI's
resnet18 and FeaturePyramidNetwork because MONAI's helper needs torchvision) runs its
*network forward only* (no anchor
decoding, no NMS) on the same 512x512 inputs in the same subprocess setting, so the ratio is
a lower bound of our advantage. Each configuration runs in a fresh subprocess: peak memory is
that process's peak RSS (VmHWM) minus its RSS after loading the model.

Accuracy: the shipped model on all 100 validation images (conf 0.001) through
``medlens.evaluate.detection`` (COCO 101-point AP; FROC at IoU 0.1 as LUNA16 and at IoU 0.5).

GPU: measured only when CUDA is available (else reported as not measured).

Usage::

    python benchmarks/detection.py --pause-background      # writes benchmarks/results/detection.md
    python benchmarks/detection.py --images 20 --out /tmp/det.md   # quick check
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from background import paused_background

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "kidney-stones"


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def _val_images(count: int, *, only_512: bool) -> list:
    from medlens.detect.data import read_grey

    images = []
    for path in sorted((DATA / "images" / "val").glob("*.jpg")):
        pixels = read_grey(path)
        if only_512 and pixels.shape != (512, 512):
            continue
        images.append(pixels)
    reps = (count + len(images) - 1) // len(images)
    return (images * reps)[:count]


def child(kind: str, threads: int, batch: int, count: int, device: str, model: str) -> None:
    """One timing in this process; prints a JSON line."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    images = _val_images(count, only_512=True)
    if kind == "medlens":
        from medlens.detect.infer import load_detector

        detector, _ = load_detector(model, conf=0.25, device=device)
        after_load = _rss_kib("VmRSS:")

        def run(chunk: list) -> None:
            detector(chunk, batch_size=batch)
            if device == "cuda":
                torch.cuda.synchronize()

    else:
        from collections import OrderedDict

        from monai.apps.detection.networks.retinanet_network import RetinaNet
        from monai.networks.blocks.feature_pyramid_network import (
            FeaturePyramidNetwork,
            LastLevelMaxPool,
        )
        from monai.networks.nets import resnet

        class ResNetFPN(torch.nn.Module):
            """MONAI's resnet_fpn_feature_extractor(resnet18, returned_layers=[1, 2]) without
            its torchvision IntermediateLayerGetter (torchvision is not allowed here)."""

            out_channels = 256

            def __init__(self) -> None:
                super().__init__()
                self.body = resnet.resnet18(spatial_dims=2, n_input_channels=1, conv1_t_stride=2)
                self.fpn = FeaturePyramidNetwork(
                    spatial_dims=2,
                    in_channels_list=[64, 128],
                    out_channels=256,
                    extra_blocks=LastLevelMaxPool(2),
                )

            def forward(self, x: torch.Tensor) -> dict:
                b = self.body
                x = b.maxpool(b.act(b.bn1(b.conv1(x))))
                first = b.layer1(x)
                return self.fpn(OrderedDict([("1", first), ("2", b.layer2(first))]))

        network = (
            RetinaNet(
                spatial_dims=2,
                num_classes=1,
                num_anchors=3,
                feature_extractor=ResNetFPN(),
                size_divisible=32,
            )
            .to(device)
            .eval()
        )
        after_load = _rss_kib("VmRSS:")

        def run(chunk: list) -> None:
            batch_tensor = torch.from_numpy(np.stack(chunk)).float()[:, None].to(device) / 255
            with torch.no_grad():
                network(batch_tensor)
            if device == "cuda":
                torch.cuda.synchronize()

    run(images[:batch])  # warm-up (oneDNN kernels, allocator)
    run(images[:batch])
    start = time.perf_counter()
    for first in range(0, count, batch):
        run(images[first : first + batch])
    seconds = time.perf_counter() - start
    peak = (_rss_kib("VmHWM:") - after_load) / 1024
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    print(
        json.dumps(
            {
                "kind": kind,
                "threads": threads,
                "batch": batch,
                "images": count,
                "seconds": seconds,
                "images_per_s": count / seconds,
                "peak_mib_over_model": peak,
                "gpu_peak_mib": gpu_peak,
            }
        )
    )


def accuracy(model: str) -> dict:

    from medlens.detect.data import load_detection_data
    from medlens.detect.infer import load_detector
    from medlens.evaluate.detection import box_list_metrics

    detector, card = load_detector(model, conf=0.001)
    samples, _ = load_detection_data(DATA, "val", names=dict(card.labels))
    found = detector([s.pixels for s in samples])
    truth = [s.boxes for s in samples]
    result = {iou: box_list_metrics(found, truth, froc_iou_threshold=iou)[0] for iou in (0.1, 0.5)}
    return {
        "card": card,
        "metrics": result,
        "images": len(samples),
        "boxes": sum(len(t) for t in truth),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="kidney-stones")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument(
        "--peer-images", type=int, default=10, help="images for the (slow) RetinaNet peer"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "detection.md"
    )
    parser.add_argument("--pause-background", action="store_true")
    parser.add_argument(
        "--devices", default="auto", help="cpu,cuda (auto: cpu, and cuda if present)"
    )
    parser.add_argument("--child", nargs=5)
    args = parser.parse_args()
    if args.child:
        kind, threads, batch, device, count = args.child
        child(kind, int(threads), int(batch), int(count), device, args.model)
        return

    import torch

    if args.devices == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = args.devices.split(",")
    runs = []
    with paused_background(args.pause_background) as paused:
        load = os.getloadavg()
        for device in devices:
            for kind in ("medlens", "monai-retinanet"):
                settings = ((1, 1), (2, 1), (2, 8))
                if device == "cuda":  # the GPU host has more cores; larger batches fill the GPU
                    settings += ((8, 8), (8, 32))
                for threads, batch in settings:
                    if device == "cuda" and threads == 1:
                        continue
                    output = subprocess.run(
                        [
                            sys.executable,
                            __file__,
                            "--model",
                            args.model,
                            "--child",
                            kind,
                            str(threads),
                            str(batch),
                            device,
                            str(args.images if kind == "medlens" else args.peer_images),
                        ],
                        capture_output=True,
                        text=True,
                        check=True,
                        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                    )
                    row = json.loads(output.stdout.strip().splitlines()[-1])
                    row["device"] = device
                    runs.append(row)
                    print(row, flush=True)
        load_after = os.getloadavg()
    quality = accuracy(args.model)
    write_report(args, runs, quality, paused, load, load_after, devices)


def write_report(args, runs, quality, paused, load, load_after, devices) -> None:  # noqa: ANN001
    card = quality["card"]
    lines = [
        "# Detection benchmark: kidney-stones model",
        "",
        f"Run {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()} "
        f"({os.cpu_count()} CPU cores, {platform.processor() or 'CPU'}), torch "
        f"{__import__('torch').__version__}. Command: `python benchmarks/detection.py"
        f"{' --pause-background' if args.pause_background else ''}`.",
        "",
        f"Machine state: background training jobs paused while timing: "
        f"{'yes, PIDs ' + str(paused) if paused else 'none found / not paused'}; load average "
        f"(1 min) {load[0]:.2f} before and {load_after[0]:.2f} after the timings"
        + (
            " (idle before the timings; the load after is the benchmark's own)."
            if load[0] < 1.0
            else " (other jobs shared this 2-core machine, so it was **not idle**)."
        ),
        "",
        f"Model: `models/{card.name}` ({card.architecture['name']}, input long side "
        f"{card.input.get('long_side_px')} px, weights "
        f"{(ROOT / 'models' / card.name / 'model.safetensors').stat().st_size / 2**20:.1f} MB).",
        "",
        "## Speed (images/s at 512x512, real validation slices)",
        "",
        "medlens = end-to-end (letterbox + network + decode + NMS); MONAI RetinaNet = network "
        "forward only (ResNet-18 FPN, untrained: speed does not depend on weights). MONAI's "
        "RetinaNet helper `resnet_fpn_feature_extractor` imports torchvision, so MONAI detection "
        "cannot be trained here as shipped; this is why medlens has its own detector.",
        "",
        "| device | threads | batch | medlens img/s | MONAI RetinaNet img/s | ratio | "
        "medlens peak MiB over model | RetinaNet peak MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in runs:
        if row["kind"] != "medlens":
            continue
        peer = next(
            r
            for r in runs
            if r["kind"] != "medlens"
            and r["device"] == row["device"]
            and r["threads"] == row["threads"]
            and r["batch"] == row["batch"]
        )
        peak = row["gpu_peak_mib"] if row["device"] == "cuda" else row["peak_mib_over_model"]
        peer_peak = peer["gpu_peak_mib"] if row["device"] == "cuda" else peer["peak_mib_over_model"]
        lines.append(
            f"| {row['device']} | {row['threads']} | {row['batch']} | {row['images_per_s']:.1f} | "
            f"{peer['images_per_s']:.1f} | {row['images_per_s'] / peer['images_per_s']:.2f}x | "
            f"{peak:.0f} | {peer_peak:.0f} |"
        )
    if "cuda" not in devices:
        lines += ["", "GPU: **not measured** (no CUDA device on this machine)."]
    lines += [
        "",
        "Target: >= 10 images/s on 2 CPU cores at 512x512.",
        "",
        f"## Accuracy on the validation split ({quality['images']} images, {quality['boxes']} "
        "boxes; conf 0.001; `medlens.evaluate.detection`, COCO 101-point AP)",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    m5, m1 = quality["metrics"][0.5], quality["metrics"][0.1]
    for name, value in (
        ("AP@0.5", m5["ap50"]),
        ("AP@0.75", m5["ap75"]),
        ("mAP@[.5:.95]", m5["map50_95"]),
        ("FROC sensitivity @ 1 FP/image, IoU 0.5", m5["froc_1"]),
        ("FROC sensitivity @ 0.5 FP/image, IoU 0.5", m5["froc_0.5"]),
        ("FROC sensitivity @ 1 FP/image, IoU 0.1 (LUNA16-style)", m1["froc_1"]),
        ("CPM, IoU 0.1", m1["cpm"]),
    ):
        lines.append(f"| {name} | {value:.4f} |")
    lines += [
        "",
        "Targets: AP@0.5 >= 0.92 (YOLOv8m reported 0.922 mAP50 on this split), "
        "sensitivity >= 0.90 at 1 FP/image.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from medlens.io.atomic import atomic_output

    with atomic_output(args.out) as temporary:
        temporary.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
