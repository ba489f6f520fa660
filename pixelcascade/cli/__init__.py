"""The command line: parse -> call the API -> write. argparse lives only in this package; each module holds a
group of commands (its parsers and thin handlers).

    pixelcascade generate "three red circles left of a blue square" -o out.png
    pixelcascade train shapes32 -o runs/shapes32 train.lr=2e-4
    pixelcascade eval shapes -o eval/shapes
"""

from __future__ import annotations

import argparse
import sys

from ..errors import PixelcascadeError
from ..shipped import DEFAULT_MODEL, EMOJI_FEATURES, WEIGHTS_DIR, ModelError, shipped_models, stage_paths  # noqa: F401
from ..version import __version__
from . import data, evaluate, images, memory, train, web
from .common import UserError, load_cascade  # noqa: F401  (used by scripts and tests)
from .flags import Parser
from .images import load_image  # noqa: F401


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(
        prog="pixelcascade",
        description="Cascaded pixel-space text-to-image diffusion (DeepFloyd IF design): generate, train, evaluate.",
        epilog="Run `pixelcascade COMMAND --help` for each command's options and examples.")
    ap.add_argument("--version", action="version", version=f"pixelcascade {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    for group in (images, train, data, evaluate, memory, web):
        group.add_commands(sub)
    return ap


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    # dotted overrides may also come after the options: train shapes32 -o runs/x train.lr=1e-4
    if extra and getattr(args, "command", None) == "train" and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.fn(args)
    except PixelcascadeError as e:  # every error a user can fix (UserError and each loader's own): one line
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
