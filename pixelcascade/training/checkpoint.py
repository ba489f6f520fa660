"""Checkpoints written atomically and read back without executing code (torch.load weights_only)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import PixelcascadeError
from ..tensorfiles import torch_load_tensors, unreadable
from ..utils import atomic_path


class ResumeError(PixelcascadeError, RuntimeError):
    pass


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` to ``path`` via a temporary file and a rename: a crash never leaves half a file."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict:
    """A checkpoint's state; ``mmap``: its tensors stay on disk until read (the step and config read cheaply)."""
    path = Path(path)
    try:
        return torch_load_tensors(path, mmap=mmap)
    except Exception as e:
        raise ResumeError(f"{unreadable(path, e)}. A run's own checkpoint: delete it to start over, or restore a "
                          "copy") from None
