#!/bin/bash
# One lease of the GPU machine: CUDA tests, GPU throughput benchmarks and GPU training of the
# shipped 2D models, in one command (the machine is lent for minutes and keeps nothing).
#
#   bash benchmarks/gpu_session.sh seg      # CUDA tests, benchmarks/training.py on CUDA,
#                                           # two polyp fine-tuning runs side by side
#   bash benchmarks/gpu_session.sh hippo    # three 3D hippocampus runs side by side
#   bash benchmarks/gpu_session.sh detect   # benchmarks/detection.py on CUDA, two
#                                           # kidney-stone fine-tuning runs side by side
#   bash benchmarks/gpu_session.sh polyp-lite  # three polyp runs from ImageNet side by side:
#                                           # Lite1UNet, Lite1UNet + camera augmentation,
#                                           # Lite0UNet + camera augmentation
#   bash benchmarks/gpu_session.sh polyp-size  # polyp from ImageNet at 320x320 (card split)
#                                           # and 256 vs 320 on fold 1; torchrun on CUDA
#   bash benchmarks/gpu_session.sh polyp-stage2  # eight 320x320 stage-2 fine-tunes of the
#                                           # CPU polyp recipe side by side (see the mode)
#   bash benchmarks/gpu_session.sh hippo-seeds   # the 2-hour CPU hippocampus recipe replayed
#                                           # with four seeds on the card's split
#   bash benchmarks/gpu_session.sh polyp-cv  # 5-fold cross-validation of a polyp recipe
#                                           # (RECIPE=cpu or shipped), folds side by side; call
#                                           # it again on the warm machine to wait for the rest
#
# Expects the data under ../shared/data (or work_data/, linked there) and writes what comes
# back under $OUT (default runs/gpu). Training runs stop by their --minutes budget; the new
# models go to $OUT, never over models/. On the H100 (2026-11-25) `seg` with MINUTES=5.5 took
# 7 minutes and `detect` with MINUTES=6 outran the 10-minute call (benchmarks/detection.py
# took over 3 minutes): use MINUTES=4 there.
# `polyp-lite` on the H200 (2026-11-26) with MINUTES=7.0 SKIP_BENCH=1 took 8.3 minutes; it
# carried work_data/kvasir-seg, work_data/lite_weights (stand-ins for the encoder-weight wheels)
# and .whl without pyjpegls, with all shipped weights out of the index (58 MB in all).
# `hippo` on the H200 (2026-11-26) with MINUTES=4.3 took 5.2 minutes. Its call carries
# work_data/hippocampus and .whl; to stay under the 64 MiB transfer, the polyp and kidney-stones
# weights and models/hippocampus/resume.pt were left out of the index for the call
# (`git rm --cached` plus .git/info/exclude, undone right after).
# `polyp-stage2` on the H200 (2026-11-27) took 8 minutes of wall time (72 s of it CUDA tests,
# which the mode now skips); it carried work_data/kvasir-seg, work_data/polyp-inits (fp16
# copies of the three inits) and .whl with monai, pydicom, highdicom, nibabel and isal (58 MiB).
# `hippo-seeds` on the H200 (2026-11-28) with MINUTES=7.0 SKIP_BENCH=1 took 7.5 minutes of
# wall time (four arms of 6976 iterations in about 400 s each, SM utilisation about 90%). It
# carried work_data/hippocampus and .whl (monai, nibabel, pydicom, highdicom, isal), about
# 26 MiB in all, with the shipped weights and resume.pt out of the index as for `hippo`.
#
# The lent machine's image has torch but not SimpleITK. Its 50 MB wheel does not fit the
# transfer beside the data, and no path run here calls it, so a stub that raises on any use
# stands in for it where SimpleITK is missing.
set -uo pipefail
MODE=${1:?seg, hippo, hippo-seeds, detect, polyp-lite, polyp-size, polyp-stage2 or polyp-cv}
OUT=${OUT:-runs/gpu}
MINUTES=${MINUTES:-6}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu MINUTES=0.3 SKIP_WHEELS=1 FORCE_SITK_STUB=1: a local dry run
mkdir -p "$OUT" runs  # runs/ is git-ignored: absent on a fresh machine
export PYTHONUNBUFFERED=1
if [ -d .whl ] && [ "${SKIP_WHEELS:-0}" != 1 ]; then
  if [ ! -d /tmp/site/monai ]; then  # a warm machine keeps /tmp/site from the call before
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
  fi
  export PYTHONPATH=/tmp/site
fi
if [ "${FORCE_SITK_STUB:-0}" = 1 ] || ! python3 -c "import SimpleITK" 2>/dev/null; then
  mkdir -p /tmp/stubs/SimpleITK
  cat > /tmp/stubs/SimpleITK/__init__.py <<'EOF'
def __getattr__(name):
    raise ImportError(f"SimpleITK is not installed here (SimpleITK.{name} was used)")
EOF
  export PYTHONPATH=/tmp/stubs:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
# the ImageNet encoder weights without their wheels (work_data/lite_weights holds stand-in
# packages with the encoder tensors alone: the wheels do not fit the transfer beside the data)
[ -d work_data/lite_weights ] && export PYTHONPATH=$PWD/work_data/lite_weights:$PYTHONPATH
if [ -d work_data ] && [ ! -e ../shared/data ]; then
  mkdir -p ../shared && ln -sfn "$PWD/work_data" ../shared/data
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__, 'cuda', torch.cuda.is_available())"

# the CUDA tests (test_preprocess.py needs the real SimpleITK and is skipped with the stub)
CUDA_TESTS="python3 -m pytest -q tests -m cuda -p no:cacheprovider --continue-on-collection-errors"
if [ "$MODE" = polyp-size ]; then
  :  # runs its own CUDA tests beside the training runs
elif [ "$MODE" = polyp-stage2 ] || [ "$MODE" = hippo-seeds ] || [ "$MODE" = polyp-cv ]; then
  :  # training replays only: their arms keep the machine's cores
elif [ "${SKIP_BENCH:-0}" != 1 ] && { [ "$MODE" = hippo ] || [ "$MODE" = polyp-lite ]; }; then
  $CUDA_TESTS > runs/cuda-tests.log 2>&1 &  # beside the training runs
  TESTS_PID=$!
elif [ "${SKIP_BENCH:-0}" != 1 ]; then
  $CUDA_TESTS 2>&1 | tail -4
fi
# wait for the training runs in $pids, sampling GPU utilisation into the file $1 meanwhile
wait_for_runs() {
  nvidia-smi dmon -s u -d 5 -c "$(python3 -c "print(int($MINUTES * 12 + 12))")" > "$1" 2>&1 &
  local monitor=$!
  wait "${pids[@]}"
  kill "$monitor" 2>/dev/null
}
VAL=cju0qkwl35piu0993l0dewei2,cju0qoxqj9q6s0835b43399p4,cju0roawvklrq0799vmjorwfv,cju0rx1idathl0835detmsp84
if [ "$MODE" = seg ]; then
  [ "${SKIP_BENCH:-0}" = 1 ] || python3 benchmarks/training.py --device $DEVICE --threads 8 --workers 4 --cases "${CASES:-60}" \
    --iterations "${BENCH_ITERATIONS:-100}" --warmup 10 --no-pause 2>&1 | tail -25
  [ "${SKIP_BENCH:-0}" = 1 ] || cp benchmarks/results/training.md "$OUT/training.md"
  # two fine-tuning recipes from the shipped model, side by side on the one GPU, each
  # validating and shipping a moving average of its weights (RECIPE=plain: no average)
  pids=()
  for arm in a b; do
    if [ $arm = a ]; then lr=3e-4; batch=16; ema=0.998; else lr=1e-3; batch=16; ema=0.999; fi
    if [ "${RECIPE:-ema}" = plain ]; then
      ema=; if [ $arm = a ]; then lr=5e-4; else lr=1e-3; batch=32; fi
    fi
    python3 -m medlens train seg ../shared/data/kvasir-seg --out runs/gpu-polyp-$arm \
      --iterations 200000 --minutes "$MINUTES" --lr $lr --batch-size $batch --val-every 200 \
      --val-cases $VAL --network Lite0UNet --init models/polyp --threads 4 --labels 1=polyp \
      --mirror-axes 0,1 --device $DEVICE --checkpoint-minutes 60 ${ema:+--ema-decay $ema} \
      > "$OUT/polyp-$arm.log" 2>&1 &
    pids+=($!)
  done
  wait_for_runs "$OUT/gpu-util.log"
  for arm in a b; do
    mkdir -p "$OUT/polyp-$arm"
    cp runs/gpu-polyp-$arm/model/model.safetensors runs/gpu-polyp-$arm/model/model.json \
      "$OUT/polyp-$arm/" 2>/dev/null
    tail -3 "$OUT/polyp-$arm.log"
  done
elif [ "$MODE" = hippo ]; then
  # three 3D hippocampus recipes side by side on the one GPU (the CPU model saw only 6400
  # batches of 4): from scratch at batch 16 and 32, and a second cycle from the shipped model.
  # Each arm's best model, its last moving-average weights and its logs come back as one tar.
  pids=()
  for arm in a b c; do
    case $arm in
      a) extra="--batch-size 16 --lr 3e-3" ;;
      b) extra="--batch-size 16 --lr 1e-3 --init models/hippocampus" ;;
      c) extra="--batch-size 32 --lr 4e-3" ;;
    esac
    python3 -m medlens train seg ../shared/data/hippocampus --out runs/gpu-hippo-$arm \
      --model-out runs/gpu-hippo-$arm/best --iterations 200000 --minutes "$MINUTES" \
      --val-every "${VAL_EVERY:-250}" --val-cases hippocampus_001,hippocampus_003,hippocampus_004,hippocampus_007 \
      --labels 1=anterior,2=posterior --ema-decay 0.999 --threads 4 --device $DEVICE \
      --checkpoint-minutes 60 --no-deep-supervision $extra > runs/gpu-hippo-$arm.log 2>&1 &
    pids+=($!)
  done
  wait_for_runs runs/gpu-util.log
  for arm in a b c; do
    run=runs/gpu-hippo-$arm
    cp runs/gpu-hippo-$arm.log runs/gpu-util.log $run/ 2>/dev/null
    tar -czf "$OUT/hippo-$arm.tar.gz" -C $run best/model.safetensors best/model.json \
      last/model.safetensors last/model.json log.csv training.png plan.json split.json \
      gpu-hippo-$arm.log gpu-util.log
    grep -E "^iteration" $run/gpu-hippo-$arm.log | tail -3
  done
  [ -n "${TESTS_PID:-}" ] && wait "$TESTS_PID"
  tail -4 runs/cuda-tests.log 2>/dev/null
elif [ "$MODE" = polyp-lite ]; then
  # from ImageNet, not from the shipped model: a larger encoder, and camera augmentation from
  # the first iteration (as a fine-tune it cost clean Dice, see polyp_robustness.md). Each
  # arm ships its last moving-average weights (not picked on validation), split in parts
  # under 16 MiB for the trip back, with its card and logs in one tar.
  pids=()
  for arm in a b c; do
    case $arm in
      a) extra="--network Lite1UNet" ;;
      b) extra="--network Lite1UNet --camera-augment" ;;
      c) extra="--network Lite0UNet --camera-augment" ;;
    esac
    python3 -m medlens train seg ../shared/data/kvasir-seg --out runs/gpu-lite-$arm \
      --iterations 200000 --minutes "$MINUTES" --lr "${LR:-1e-3}" --batch-size 16 \
      --val-every "${VAL_EVERY:-250}" --val-cases $VAL --labels 1=polyp --mirror-axes 0,1 \
      --ema-decay 0.999 --threads 4 --device $DEVICE --checkpoint-minutes 60 $extra \
      > runs/gpu-lite-$arm.log 2>&1 &
    pids+=($!)
  done
  wait_for_runs runs/gpu-util.log
  for arm in a b c; do
    run=runs/gpu-lite-$arm
    cp runs/gpu-lite-$arm.log runs/gpu-util.log $run/ 2>/dev/null
    mkdir -p "$OUT/lite-$arm"
    split -b 15000000 $run/last/model.safetensors "$OUT/lite-$arm/model.safetensors.part-"
    grep -E "^iteration" runs/gpu-lite-$arm.log | tail -2
  done
  tar -czf "$OUT/lite-logs.tar.gz" runs/gpu-lite-*/last/model.json runs/gpu-lite-*/model/model.json \
    runs/gpu-lite-*/log.csv runs/gpu-lite-*/training.png runs/gpu-lite-*.log runs/gpu-util.log \
    runs/cuda-tests.log 2>/dev/null
  [ -n "${TESTS_PID:-}" ] && wait "$TESTS_PID"
  tail -4 runs/cuda-tests.log 2>/dev/null
elif [ "$MODE" = polyp-size ]; then
  # Does a 320x320 network input beat 256x256 on frames the size was not picked on? (The CPU
  # fine-tune that chose 320 scored the card's val frames, which are fold 0 of 5 with seed 0.)
  # a: 320 on the card's split; b, c: 256 and 320 on fold 1. All from ImageNet with the
  # shipped recipe; each arm's last moving-average weights come back. Beside them, the CUDA
  # tests of test_segmentation.py (torchrun: two processes on the GPU).
  python3 -m pytest -q tests/test_segmentation.py -m cuda -p no:cacheprovider \
    > runs/cuda-tests.log 2>&1 &
  TESTS_PID=$!
  pids=()
  for arm in a b c; do
    case $arm in
      a) extra="--frame-size 320x320" ;;
      b) extra="--fold 1" ;;
      c) extra="--fold 1 --frame-size 320x320" ;;
    esac
    python3 -m medlens train seg ../shared/data/kvasir-seg --out runs/gpu-size-$arm \
      --iterations 200000 --minutes "$MINUTES" --lr 1e-3 --batch-size 16 --val-every 250 \
      --val-cases $VAL --labels 1=polyp --network Lite0UNet --mirror-axes 0,1 \
      --ema-decay 0.999 --camera-augment --threads 4 --device $DEVICE --checkpoint-minutes 60 \
      $extra > runs/gpu-size-$arm.log 2>&1 &
    pids+=($!)
  done
  wait_for_runs runs/gpu-util.log
  for arm in a b c; do
    mkdir -p "$OUT/size-$arm"
    cp runs/gpu-size-$arm/last/model.safetensors "$OUT/size-$arm/" 2>/dev/null
    grep -E "^iteration" runs/gpu-size-$arm.log | tail -2
  done
  [ -n "${TESTS_PID:-}" ] && wait "$TESTS_PID"
  tail -4 runs/cuda-tests.log 2>/dev/null
  tar -czf "$OUT/size-logs.tar.gz" runs/gpu-size-*/last/model.json runs/gpu-size-*/log.csv \
    runs/gpu-size-*/split.json runs/gpu-size-*/training.png runs/gpu-size-*.log \
    runs/gpu-util.log runs/cuda-tests.log 2>/dev/null
elif [ "$MODE" = polyp-stage2 ]; then
  # Stage 2 of the CPU polyp recipe (polyp_cpu_training.md section 6: 320x320, lr 3e-4, EMA
  # 0.998 from a 256x256 stage 1) replayed at the CPU's iteration counts, to learn which
  # stage-2 settings to spend CPU time on. Inits (fp16 copies, to fit the transfer) under
  # work_data/polyp-inits: card = CPU stage 1 on the card's split (runs/ts-s1/model), fold1 =
  # CPU stage 1 on fold 1 (runs/ts-f1-s1/model), gpu7 = the 7-minute H200 model that the
  # shipped polyp model was fine-tuned from (git 73f92ba); each a model folder whose float
  # tensors were cast to fp16 with safetensors. Arm = name:init:iterations:frozen blocks;
  # names starting fold1- validate on fold 1, the others on the card's split.
  INITS=${INITS:-work_data/polyp-inits}
  pids=()
  arms=${ARMS:-"card-A:card:684:3 card-B:card:1161:0 card-C:card:2300:0 card-D:card:1161:3
    card-E:gpu7:1161:0 fold1-A:fold1:684:3 fold1-B:fold1:1161:0 fold1-C:fold1:2300:0"}
  for spec in $arms; do
    IFS=: read -r arm init iterations freeze <<< "$spec"
    extra=""
    [ "$freeze" != 0 ] && extra="--freeze-early-blocks $freeze"
    [[ $arm == fold1-* ]] && extra+=" --fold 1"
    python3 -m medlens train seg ../shared/data/kvasir-seg --out runs/gpu-s2-$arm \
      --iterations "$iterations" --minutes 30 --lr 3e-4 --warmup 50 --batch-size 8 \
      --frame-size 320x320 --val-every 150 --val-cases $VAL --init "$INITS/$init" \
      --labels 1=polyp --network Lite0UNet --mirror-axes 0,1 --ema-decay 0.998 \
      --camera-augment --threads 2 --device $DEVICE --checkpoint-minutes 60 $extra \
      > runs/gpu-s2-$arm.log 2>&1 &
    pids+=($!)
  done
  wait_for_runs runs/gpu-util.log
  for spec in $arms; do
    arm=${spec%%:*}
    echo "$arm: $(grep -E "^iteration" runs/gpu-s2-$arm.log | tail -1)"
  done
  tar -czf "$OUT/stage2-logs.tar.gz" runs/gpu-s2-*/log.csv runs/gpu-s2-*/split.json \
    runs/gpu-s2-*/last/model.json runs/gpu-s2-*.log runs/gpu-util.log 2>/dev/null
elif [ "$MODE" = hippo-seeds ]; then
  # The 2-hour CPU hippocampus recipe (hippocampus_cpu_training.md, "Second run": batch 4,
  # lr 3e-3, EMA 0.999) replayed at the CPU run's 6976 iterations, once per seed, on the
  # card's split (--split): the spread over seeds is the error bar of the CPU run's 0.8907.
  # Without deep supervision, as those runs trained; DEEP_SUPERVISION=--deep-supervision for
  # the arm with it (train seg's default for 3D DynUNet plans since 2026-12-05).
  # MINUTES only caps a run that is slower than expected (the cosine then follows the time).
  # Each arm's last (moving-average) weights, card and log come back as one tar.
  pids=()
  for seed in ${SEEDS:-1 2 3 4}; do
    python3 -m medlens train seg ../shared/data/hippocampus --out runs/gpu-seed-$seed \
      --iterations "${ITERATIONS:-6976}" --minutes "$MINUTES" --batch-size 4 --val-every 500 \
      --split models/hippocampus/model.json --seed $seed --labels 1=anterior,2=posterior \
      --mirror-axes 0,1 --ema-decay 0.999 --threads "${THREADS:-3}" --device $DEVICE \
      --checkpoint-minutes 60 ${DEEP_SUPERVISION:---no-deep-supervision} \
      > runs/gpu-seed-$seed.log 2>&1 &
    pids+=($!)
  done
  wait_for_runs runs/gpu-util.log
  for seed in ${SEEDS:-1 2 3 4}; do
    run=runs/gpu-seed-$seed
    cp runs/gpu-seed-$seed.log runs/gpu-util.log $run/ 2>/dev/null
    tar -czf "$OUT/seed-$seed.tar.gz" -C $run last/model.safetensors last/model.json log.csv \
      split.json gpu-seed-$seed.log gpu-util.log
    echo "seed $seed: $(grep -E "^iteration" $run/gpu-seed-$seed.log | tail -1)"
  done
elif [ "$MODE" = polyp-cv ]; then
  # benchmarks/polyp_cross_validation.sh (RECIPE=cpu, the pinned CPU recipe, or RECIPE=shipped,
  # the shipped model's lineage) at its own iteration counts, fp16 AMP, one process per fold
  # side by side. Each starts in a session of its own, so that it outlives this call (10
  # minutes at most) and a second call on the warm machine can wait for the rest; WAIT_SECONDS
  # caps this call's wait. The folds done by then are scored on their own validation frames
  # (the last weights of both stages, CPU predictor in float32) and come back with their logs.
  # On the H200 (2026-12-04) RECIPE=cpu with five folds side by side ran 11.6 iterations/s
  # each at 256 (stage 1 in about 560 s) and stage 2 in about 110 s: about 12 minutes, so two
  # calls. The first carries work_data and .whl (timeout_s 570, WAIT_SECONDS=450); the second,
  # at once (the machine goes back after 30 idle seconds), carries nothing: a carried folder
  # is replaced there, and a stage starting meanwhile finds no frames. RECIPE=shipped (batches
  # of 16, nothing frozen, 1161 stage-2 iterations) with FOLDS="1 2 3" THREADS=5 (2026-12-04):
  # 9.9 iterations/s each at 256 (stage 1 in about 410 s, SM 63%), stage 2 in about 110 s;
  # the first call (WAIT_SECONDS=440) took 467 s, the second (WAIT_SECONDS=230) 184 s, with
  # scoring: 707 s of device time with the start. Five folds would not fit one lease.
  # STAGES=1 trains stage 1 alone (section 26: as good); TTA=1 also scores with `--tta`;
  # KEEP_WEIGHTS=1 brings each fold's last weights back ($OUT/gpu-cvF-sS/last, 15 MB each)
  # so that later sessions can score them again.
  folds=${FOLDS:-1 2 3 4 0}
  last_stage=s2
  [[ " ${STAGES:-1 2} " == *" 2 "* ]] || last_stage=s1
  for fold in $folds; do
    if [ ! -f runs/gpu-cv$fold.started ]; then
      touch runs/gpu-cv$fold.started
      FOLDS=$fold THREADS=${THREADS:-3} DEVICE=$DEVICE setsid nohup bash \
        benchmarks/polyp_cross_validation.sh ../shared/data/kvasir-seg runs/gpu-cv \
        > runs/gpu-cv$fold.log 2>&1 < /dev/null &
    fi
  done
  wait_seconds=${WAIT_SECONDS:-540}
  nvidia-smi dmon -s u -d 5 -c $((wait_seconds / 5)) >> runs/gpu-util.log 2>&1 &
  monitor=$!
  deadline=$((SECONDS + wait_seconds))
  while [ $SECONDS -lt $deadline ]; do
    left=0
    for fold in $folds; do [ -f runs/gpu-cv$fold-$last_stage/DONE ] || left=$((left + 1)); done
    [ $left = 0 ] && break
    sleep 10
  done
  kill "$monitor" 2>/dev/null
  stage1=() stage2=()
  for fold in $folds; do
    echo "fold $fold: $(tail -1 runs/gpu-cv$fold.log)"
    for stage in s1 s2; do
      echo "  $stage: $(awk -F, 'NR > 1 && $5 != "" {row = $1 " val " $5} END {print row}' \
        runs/gpu-cv$fold-$stage/log.csv 2>/dev/null)"
    done
    [ -f runs/gpu-cv$fold-s1/DONE ] && stage1+=(runs/gpu-cv$fold-s1/last)
    [ -f runs/gpu-cv$fold-s2/DONE ] && stage2+=(runs/gpu-cv$fold-s2/last)
  done
  # the two stages scored side by side, 8 threads each (a bare `wait` would also wait for the
  # training processes, which are this shell's children too)
  scoring=()
  variants=("")
  [ "${TTA:-0}" = 1 ] && variants+=(-tta)
  for stage in s1 s2; do
    [ "$stage" = s1 ] && models=("${stage1[@]}") || models=("${stage2[@]}")
    [ ${#models[@]} -gt 0 ] || continue
    for variant in "${variants[@]}"; do
      python3 benchmarks/cross_validation_dice.py ../shared/data/kvasir-seg "${models[@]}" \
        --threads 8 ${variant:+--tta} --per-frame-csv "$OUT/cv-frames-$stage$variant.csv" \
        > "$OUT/cv-dice-$stage$variant.md" 2>&1 &
      scoring+=($!)
    done
  done
  [ ${#scoring[@]} -gt 0 ] && wait "${scoring[@]}"
  cat "$OUT"/cv-dice-s*.md 2>/dev/null
  if [ "${KEEP_WEIGHTS:-0}" = 1 ]; then
    for run in runs/gpu-cv*-s[12]; do
      [ -f "$run/DONE" ] || continue
      mkdir -p "$OUT/$(basename "$run")/last"
      cp "$run/split.json" "$OUT/$(basename "$run")/"
      cp "$run"/last/model.* "$OUT/$(basename "$run")/last/"
    done
  fi
  tar -czf "$OUT/cv-logs.tar.gz" runs/gpu-cv*/log.csv runs/gpu-cv*/split.json \
    runs/gpu-cv*/training.png runs/gpu-cv*-s2/last/model.json runs/gpu-cv*.log \
    runs/gpu-util.log 2>/dev/null
elif [ "$MODE" = detect ]; then
  python3 benchmarks/detection.py --devices $DEVICE --images "${DET_IMAGES:-512}" --out "$OUT/detection-gpu.md" 2>&1 | tail -8
  # two recipes from the shipped model side by side: crops as on the CPU, and whole slices
  pids=()
  for arm in a b; do
    if [ $arm = a ]; then lr=6e-4; crop=384; else lr=1e-3; crop=512; fi
    # the model goes straight to $OUT: it comes back even if the call outruns its limit
    python3 -m medlens train detect ../shared/data/kidney-stones --out runs/gpu-stones-$arm \
      --model-out "$OUT/stones-$arm" --name kidney-stones --names 0=stone \
      --epochs 400 --minutes "$MINUTES" --batch-size 16 --lr $lr --input-size 512 \
      --crop-size $crop --init models/kidney-stones --threads 6 --device $DEVICE \
      > "$OUT/stones-$arm.log" 2>&1 &
    pids+=($!)
  done
  wait_for_runs "$OUT/gpu-util.log"
  for arm in a b; do grep -E "^epoch [0-9]+:" "$OUT/stones-$arm.log" | tail -4; done
fi
ls -la "$OUT" "$OUT"/*/
