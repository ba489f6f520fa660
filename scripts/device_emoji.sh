#!/usr/bin/env bash
# The emoji cascade in one GPU call (issue 5): on a machine with torch, a GPU and the bundle that
# scripts/emoji_device_bundle.py packs into .carry (the curated emoji set, a pruned MiniLM), run from the repo root:
#
#   bash scripts/device_emoji.sh MINUTES [DEVICE]
#
# 1. the emoji feature extractor (`pixelcascade data emoji-features`, on the same device, beside the stages),
# 2. both stages for MINUTES (scripts/train_emoji_cascade.sh: stage I 64 px, stage II 64 -> 128, side by side),
#    exported to fp16 with their recipes, 3. `pixelcascade eval emoji` with the extractor (held-out and training
#    names), 4. everything in one tar, split into 15 MB parts under $OUT (the device tool returns files of at most
#    16 MiB): put it back together with `cat emoji-run.tar.part* | tar x`.
# Batch sizes and learning rates for a GPU: STAGE1_OVERRIDES / STAGE2_OVERRIDES as in train_emoji_cascade.sh
# (defaults below). DEVICE defaults to cuda; cpu runs the same steps (a smoke test of this script).
set -euo pipefail
MINUTES=${1:?usage: device_emoji.sh MINUTES [DEVICE]} DEVICE=${2:-cuda}
CARRY=${CARRY:-.carry}
OUT=${OUT:-/tmp/emoji-out}
RUNS=${RUNS:-/tmp/emoji-runs}
PY=${PYTHON:-python3}
export PYTHON=$PY PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export PIXELCASCADE_CACHE=$PWD/$CARRY/cache PIXELCASCADE_MINILM=$PWD/$CARRY/minilm
if [ "$DEVICE" = cuda ]; then
  export STAGE1_OVERRIDES=${STAGE1_OVERRIDES:-"train.batch_size=256 train.lr=4e-4 train.warmup_steps=200 train.ckpt_every=500 train.val_every=250 train.max_steps=1000000"}
  export STAGE2_OVERRIDES=${STAGE2_OVERRIDES:-"train.batch_size=128 train.lr=3e-4 train.warmup_steps=200 train.ckpt_every=500 train.val_every=250 train.max_steps=1000000"}
fi
mkdir -p "$OUT" "$RUNS"
# what comes back, also when a step fails: the model, the extractor, the scores and contact sheets, the runs' logs
# (no checkpoints, no fp32 EMA)
pack() {
  tar cf "$RUNS.tar" -C "$(dirname "$RUNS")" --exclude=checkpoint.pt --exclude=ema.safetensors --exclude='*.tmp' \
    "$(basename "$RUNS")"
  split -b 15M -d "$RUNS.tar" "$OUT/emoji-run.tar.part"
  ls -la "$OUT"
}
trap pack EXIT
FEAT_STEPS=${FEAT_STEPS:-3000}
# the extractor gets the training's minutes plus 90 s; if it is not done by then, the scores are left to
# `pixelcascade eval emoji` on another machine, and the model still comes back
FEAT_LIMIT=$("$PY" -c "print(int(float('$MINUTES') * 60 + 90))")
timeout "$FEAT_LIMIT" "$PY" -m pixelcascade.cli data emoji-features -o "$RUNS/emoji_features.safetensors" --steps "$FEAT_STEPS" \
  --threads "${FEAT_THREADS:-8}" --device "$DEVICE" -q > "$RUNS/features.log" 2>&1 &
FEAT=$!
bash scripts/train_emoji_cascade.sh "$RUNS" "$MINUTES" "$DEVICE"
wait $FEAT || { echo "feature extractor failed: $RUNS/features.log" >&2; tail -5 "$RUNS/features.log" >&2; }
if [ -f "$RUNS/emoji_features.safetensors" ]; then
  "$PY" -m pixelcascade.cli eval emoji --model "$RUNS/model" --features "$RUNS/emoji_features.safetensors" \
    -o "$RUNS/eval" --device "$DEVICE" --per-split "${PER_SPLIT:-200}" -q | tee "$RUNS/eval.log"
fi
