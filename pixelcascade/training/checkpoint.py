"""Checkpoints written atomically and read back without executing code (torch.load weights_only)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..utils import atomic_path


class ResumeError(RuntimeError):
    pass


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` to ``path`` via a temporary file and a rename: a crash never leaves half a file."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        from ..tensorfiles import unreadable
        raise ResumeError(f"{unreadable(path, e)}. A run's own checkpoint: delete it to start over, or restore a "
                          "copy") from None
