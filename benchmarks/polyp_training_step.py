"""CPU cost of one polyp training iteration: precision, memory format, frozen early blocks.

Most sessions have no GPU, so how many iterations two CPU hours buy decides how far the
polyp recipe gets. This times the step of ``medlens train seg`` on real Kvasir-SEG frames
(Lite0UNet from ImageNet, 256x256, batch 8, ``sample_batch`` + ``augment_batch`` + camera
augmentation, Dice+CE, AdamW, clip, EMA update, ``loss.item()``), in six arms of one
process with the same initial weights and batches:

1. row-major tensors in bf16 autocast (the trainer before 2026-11-27: this CPU reports
   AVX512-BF16, and the trainer took that to mean bf16 pays);
2. row-major in float32;
3. channels-last network and batches in float32;
4. row-major float32 with the stem and first 3 encoder blocks frozen
   (``--freeze-early-blocks 3``);
5. channels-last, frozen, bf16 (the 110-minute CPU run of session 12);
6. channels-last, frozen, float32 (what ``train seg`` now does for 2D Lite U-Nets).

Background training (``medlens_train_bg``) is paused with SIGSTOP while timing.

Run: ``python benchmarks/polyp_training_step.py`` (about 4 minutes on 2 cores; writes
benchmarks/results/polyp_training_step.md). ``--frames 16 --iterations 2 --no-write`` is a
smoke test. ``--networks Lite0UNet,Lite2UNet`` times arm 6 (what ``train seg`` runs) for each
network instead, to compare encoders on one machine; it prints and writes nothing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from background import paused_background

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "kvasir-seg"
RESULTS = REPO / "benchmarks" / "results" / "polyp_training_step.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=200, help="Kvasir frames to sample from")
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations per arm")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-pause", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--networks", default="", help="comma-separated: time arm 6 for each")
    parser.add_argument(
        "--frozen",
        default="3",
        help="with --networks: comma-separated --freeze-early-blocks values to time, e.g. 3,5",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from monai.losses import DiceCELoss

    from medlens.augment.segmentation_batch import augment_batch, camera_augment
    from medlens.data.patches import load_cases, sample_batch
    from medlens.data.segmentation import (
        compute_fingerprint,
        find_cases,
        read_case_image,
        read_case_label,
    )
    from medlens.infer.segmentation import cpu_bf16_supported
    from medlens.models.segmentation import SegmentationPlan, make_plan
    from medlens.train.averaging import moving_average

    cases = find_cases(DATA)[: args.frames]
    fingerprint = compute_fingerprint(
        [read_case_image(c.image) for c in cases], [read_case_label(c.label) for c in cases]
    )

    def plan_for(network: str) -> SegmentationPlan:
        plan = make_plan(fingerprint, labels={0: "background", 1: "polyp"}, batch_size=8,
                         network=network, frame_size=[256, 256])  # fmt: skip
        plan.mirror_axes = [0, 1]
        return plan

    plan = plan_for("Lite0UNet")
    loaded = load_cases(cases, plan)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    camera = camera_augment(plan)

    def run_arm(
        channels_last: bool, frozen_blocks: int, bf16: bool, plan: SegmentationPlan = plan
    ) -> float:
        torch.manual_seed(0)  # the same decoder initialisation in every arm
        network = plan.build_network(pretrained=True)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        network = network.to(memory_format=memory_format).train()
        for parameter in network.early_parameters(frozen_blocks) if frozen_blocks else []:
            parameter.requires_grad_(False)
        optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3, weight_decay=3e-5)
        ema = moving_average(network, decay=0.999)
        rng = np.random.default_rng(0)
        generator = torch.Generator().manual_seed(0)
        indices = list(range(len(loaded)))
        seconds = []
        for step in range(args.warmup + args.iterations):
            began = time.perf_counter()
            images, labels = sample_batch(loaded, indices, plan.patch_size, 8, rng, 0.33)
            images, labels = augment_batch(images, labels, generator, plan.mirror_axes)
            images = camera(images, generator).contiguous(memory_format=memory_format)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = network(images)
            loss = loss_function(logits.float(), labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
            optimizer.step()
            ema.update_parameters(network)
            loss.item()
            if step >= args.warmup:
                seconds.append(time.perf_counter() - began)
        return float(np.median(seconds))

    arms = [
        ("row-major, bf16 (before)", False, 0, True),
        ("row-major, fp32", False, 0, False),
        ("channels-last, fp32", True, 0, False),
        ("row-major, fp32, --freeze-early-blocks 3", False, 3, False),
        ("channels-last, bf16, --freeze-early-blocks 3", True, 3, True),
        ("channels-last, fp32, --freeze-early-blocks 3 (train seg now)", True, 3, False),
    ]
    load_before = Path("/proc/loadavg").read_text().split()[0]
    if args.networks:
        with paused_background(not args.no_pause):
            time.sleep(0 if args.no_pause else 5)
            for name in args.networks.split(","):
                for frozen in map(int, args.frozen.split(",")):
                    seconds = run_arm(True, frozen, False, plan=plan_for(name))
                    print(
                        f"{name}, --freeze-early-blocks {frozen}: {seconds:.3f} s per iteration "
                        f"(load before {load_before})"
                    )
        return
    with paused_background(not args.no_pause):
        time.sleep(0 if args.no_pause else 5)  # let the paused threads leave the cores
        results = [(name, run_arm(cl, frozen, bf16)) for name, cl, frozen, bf16 in arms]
    base = results[0][1]
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# Polyp training step on the CPU: precision, memory format and frozen early blocks",
        "",
        f"`python benchmarks/polyp_training_step.py` ({stamp})",
        "",
        f"- torch {torch.__version__}, {args.threads} threads; 1-minute load average before "
        f"{load_before}; background training paused: {not args.no_pause}; "
        f"CPU bf16 reported: {cpu_bf16_supported()}",
        f"- Lite0UNet from ImageNet, 256x256 RGB, batch 8, {len(loaded)} Kvasir-SEG frames; "
        "sample + augment + camera augment + forward + Dice/CE + backward + clip + AdamW + EMA",
        f"- {args.warmup} warm-up and {args.iterations} timed iterations per arm (median)",
        "",
        "| arm | seconds per iteration | iterations per hour | speed-up |",
        "| --- | --- | --- | --- |",
    ]
    for name, seconds in results:
        lines.append(f"| {name} | {seconds:.3f} | {3600 / seconds:.0f} | {base / seconds:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
