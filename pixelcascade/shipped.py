"""Where models live and how a model argument names files: the shipped models' folder, their names, and the
stage files a ``--model`` / ``load(model)`` value means. Light (no torch), so the command line starts fast."""

from __future__ import annotations

from pathlib import Path

from .errors import PixelcascadeError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL = WEIGHTS_DIR / "shapes"  # stage files: stage1.safetensors (32 px), stage2.safetensors (64 px)
# where the emoji cascade ships (weights/emoji/stage1, stage2: 64 px, 64 -> 128) with the feature extractor that
# `eval emoji` uses by default; not trained yet (it needs a GPU: docs/emoji.md)
EMOJI_FEATURES = WEIGHTS_DIR / "emoji" / "emoji_features.safetensors"


class ModelError(PixelcascadeError, ValueError):
    """A model that cannot be loaded as asked: a missing path, stages in the wrong order, no text encoder."""


def shipped_models() -> list[str]:
    """Names of the models shipped in the package (``load(NAME)``, ``--model NAME``): folders of weights/ with
    stage files."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.name for p in WEIGHTS_DIR.iterdir() if p.is_dir() and any(p.glob("stage*.safetensors")))


def stage_paths(model: str | Path) -> list[Path]:
    """A .safetensors file (one stage), or a folder of stage1/stage2/... files, or comma-separated files."""
    if not isinstance(model, (str, Path)) or not str(model).strip():
        raise ModelError(f"model={model!r}: give a shipped model's name ({', '.join(shipped_models())}), a "
                         ".safetensors file or a model folder")
    if isinstance(model, str) and "," in model:
        paths = [Path(p).expanduser() for p in model.split(",") if p]
        for p in paths:
            if not p.exists():
                raise ModelError(f"--model: stage {p} (of {model}): no such file or folder; list each stage's "
                                 "file or folder, stage I first, separated by commas")
        return paths
    p = Path(model).expanduser()
    if not p.exists() and isinstance(model, str) and model in shipped_models():
        p = WEIGHTS_DIR / model  # a shipped model by name: shapes, emoji
    if p.is_dir():
        files = sorted(p.glob("stage*.safetensors"))
        if files:
            return files
        return [p]  # an official or diffusers folder: one stage
    if not p.exists():
        hint = " (the shipped model is missing: reinstall pixelcascade)" if p == DEFAULT_MODEL else ""
        raise ModelError(f"--model {p}: no such file or folder{hint}; pass a shipped model's name "
                         f"({', '.join(shipped_models())}), a .safetensors file, a folder with stage1.safetensors..., "
                         "or an IF/diffusers model folder")
    return [p]
