#!/bin/bash
# 5-fold cross-validation of a two-stage polyp recipe from ImageNet (Lite0UNet, camera
# augmentation, mirror axes 0,1), each fold's validation frames plus the card's 4 bundled demo
# frames (validation in every fold). RECIPE (environment) picks it:
#   cpu (default): the pinned CPU recipe of benchmarks/results/polyp_cpu_training.md section 14:
#     6428 iterations of 8 at 256x256 with the first 3 encoder blocks frozen, then 684 at
#     320x320 from stage 1's best weights. About 90 minutes per fold on 2 cores.
#   shipped: the shipped polyp model's lineage at its iteration counts (section 13): 4013
#     iterations of 16 at 256x256, nothing frozen, then 1161 of 8 at 320x320 from stage 1's
#     last weights.
# Run it alone on the machine:
#   setsid nohup bash benchmarks/polyp_cross_validation.sh [DATA] [OUT_PREFIX] > runs/cv.log 2>&1 &
# FOLDS (default "1 2 3 4 0") picks the folds, in order; STAGES (default "1 2") the stages
# ("1": stage 1 alone, which section 26 found as good); DEVICE and THREADS (default cpu and 2)
# replay it elsewhere, as `benchmarks/gpu_session.sh polyp-cv` does. Rerun the same command to
# continue after a stop: each stage resumes from its checkpoint (written every 5 minutes), and
# finished stages (a DONE file in the run folder) are skipped. Then score every fold's last
# weights on its own frames:
#   python benchmarks/cross_validation_dice.py DATA OUT_PREFIX{1,2,3,4,0}-s2/last
set -euo pipefail
DATA=${1:-../shared/data/kvasir-seg}
OUT=${2:-runs/cv}
# the shipped polyp card's bundled demo frames, validation in every fold (stage 2 takes
# stage 1's split.json, which holds them)
VAL=cju0qkwl35piu0993l0dewei2,cju0qoxqj9q6s0835b43399p4,cju0roawvklrq0799vmjorwfv,cju0rx1idathl0835detmsp84
COMMON=(--device "${DEVICE:-cpu}" --threads "${THREADS:-2}" --checkpoint-minutes 5
  --labels 1=polyp --network Lite0UNet --mirror-axes 0,1 --camera-augment)
case ${RECIPE:-cpu} in
  cpu)
    STAGE1=(--iterations 6428 --batch-size 8 --val-every 500 --freeze-early-blocks 3)
    STAGE2=(--iterations 684 --val-every 200 --freeze-early-blocks 3)
    INIT=model ;;
  shipped)
    STAGE1=(--iterations 4013 --batch-size 16 --val-every 500)
    STAGE2=(--iterations 1161 --val-every 300)
    INIT=last ;;
  *) echo "RECIPE must be cpu or shipped, not $RECIPE" >&2; exit 2 ;;
esac
for FOLD in ${FOLDS:-1 2 3 4 0}; do
  S1=$OUT$FOLD-s1
  S2=$OUT$FOLD-s2
  if [[ " ${STAGES:-1 2} " == *" 1 "* && ! -f $S1/DONE ]]; then
    RESUME=()
    if [[ -f $S1/checkpoint.pt ]]; then RESUME=(--resume); fi
    date -u +"fold $FOLD stage 1 start %FT%TZ"
    python3 -m medlens train seg "$DATA" --out "$S1" --fold "$FOLD" --lr 0.001 \
      --frame-size 256x256 --ema-decay 0.999 --val-cases "$VAL" "${STAGE1[@]}" "${COMMON[@]}" \
      "${RESUME[@]}"
    touch "$S1/DONE"
  fi
  if [[ " ${STAGES:-1 2} " == *" 2 "* && ! -f $S2/DONE ]]; then
    RESUME=()
    if [[ -f $S2/checkpoint.pt ]]; then RESUME=(--resume); fi
    date -u +"fold $FOLD stage 2 start %FT%TZ"
    python3 -m medlens train seg "$DATA" --out "$S2" --split "$S1/split.json" --lr 0.0003 \
      --warmup 50 --batch-size 8 --frame-size 320x320 --init "$S1/$INIT" --ema-decay 0.998 \
      "${STAGE2[@]}" "${COMMON[@]}" "${RESUME[@]}"
    touch "$S2/DONE"
  fi
done
date -u +"done %FT%TZ"
