#!/bin/bash
# 5-fold cross-validation of the pinned CPU polyp recipe of
# benchmarks/results/polyp_cpu_training.md section 14: 6428 iterations at 256x256 from ImageNet,
# then 684 at 320x320 from stage 1's best weights, with the validation frames of one fold
# (plus the card's 4 bundled demo frames, validation in every fold). Run it alone on the machine:
#   setsid nohup bash benchmarks/polyp_cpu_cross_validation.sh [DATA] [OUT_PREFIX] > runs/cv.log 2>&1 &
# FOLDS (environment, default "1 2 3 4 0") picks the folds, in order. Rerun the same command to
# continue after a stop: each stage resumes from its checkpoint (written every 5 minutes), and
# finished stages (a DONE file in the run folder) are skipped. About 90 minutes per fold on
# 2 cores. Then score every fold's last weights on its own frames:
#   python benchmarks/cross_validation_dice.py DATA OUT_PREFIX{1,2,3,4,0}-s2/last
set -euo pipefail
DATA=${1:-../shared/data/kvasir-seg}
OUT=${2:-runs/cv}
# the shipped polyp card's bundled demo frames, validation in every fold (stage 2 takes
# stage 1's split.json, which holds them)
VAL=cju0qkwl35piu0993l0dewei2,cju0qoxqj9q6s0835b43399p4,cju0roawvklrq0799vmjorwfv,cju0rx1idathl0835detmsp84
COMMON=(--batch-size 8 --freeze-early-blocks 3 --device cpu --threads 2
  --checkpoint-minutes 5 --labels 1=polyp --network Lite0UNet --mirror-axes 0,1 --camera-augment)
for FOLD in ${FOLDS:-1 2 3 4 0}; do
  S1=$OUT$FOLD-s1
  S2=$OUT$FOLD-s2
  if [[ ! -f $S1/DONE ]]; then
    RESUME=()
    if [[ -f $S1/checkpoint.pt ]]; then RESUME=(--resume); fi
    date -u +"fold $FOLD stage 1 start %FT%TZ"
    python3 -m medlens train seg "$DATA" --out "$S1" --fold "$FOLD" --iterations 6428 --lr 0.001 \
      --frame-size 256x256 --val-every 500 --ema-decay 0.999 --val-cases "$VAL" "${COMMON[@]}" "${RESUME[@]}"
    touch "$S1/DONE"
  fi
  if [[ ! -f $S2/DONE ]]; then
    RESUME=()
    if [[ -f $S2/checkpoint.pt ]]; then RESUME=(--resume); fi
    date -u +"fold $FOLD stage 2 start %FT%TZ"
    python3 -m medlens train seg "$DATA" --out "$S2" --split "$S1/split.json" --iterations 684 \
      --lr 0.0003 --warmup 50 --frame-size 320x320 --val-every 200 --init "$S1/model" \
      --ema-decay 0.998 "${COMMON[@]}" "${RESUME[@]}"
    touch "$S2/DONE"
  fi
done
date -u +"done %FT%TZ"
