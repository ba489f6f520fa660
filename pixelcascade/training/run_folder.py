"""A run folder kept consistent across kills and resumes: one training process at a time (an advisory lock), no
half-written files left from a killed write, and logs that hold each step once."""

from __future__ import annotations

import contextlib
import csv
import os
from pathlib import Path

from ..errors import PixelcascadeError
from ..tensorfiles import read_metadata, write_safetensors
from ..utils import atomic_path
from .checkpoint import load_checkpoint


class FolderBusy(PixelcascadeError, RuntimeError):
    """Another process is training in this run folder."""


_HELD: set[str] = set()  # folders this process holds: taking one again (train() around fit()) is a no-op


@contextlib.contextmanager
def exclusive(folder: Path):
    """Hold ``folder/.lock`` (flock, released when the process ends however it ends) for the with-block."""
    import fcntl
    key = str(Path(folder).resolve())
    if key in _HELD:
        yield
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise FolderBusy(f"{folder} is in use by a training process ({holder}); wait for it to finish, stop it, "
                             "or train into another -o folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def remove_leftovers(folder: Path) -> int:
    """Temporary files of writes a kill interrupted (``.NAME.xxxx.tmp``, see utils.atomic_path): never complete."""
    n = 0
    for p in Path(folder).rglob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            n += 1
    return n


def trim_log(path: Path, last_step: int) -> None:
    """Drop the rows of steps after ``last_step`` (a run killed after logging them resumes from its checkpoint at
    ``last_step`` and logs them again)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2 or rows[0][:1] != ["step"]:
        return
    keep = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) <= last_step]
    if len(keep) == len(rows):
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(keep)


def refresh_stale_ema(folder: Path) -> str | None:
    """Make ``ema.safetensors`` the checkpoint's EMA when it is older than the checkpoint, and say so.

    The trainer writes the EMA file before the checkpoint, so a stop between the two leaves the EMA ahead (it is
    the weights the resumed run makes again, exactly). An EMA behind the checkpoint comes from a folder written
    the other way round, or an EMA file restored by hand: exporting it would ship older weights without a word.
    """
    ema, ckpt = Path(folder) / "ema.safetensors", Path(folder) / "checkpoint.pt"
    if not (ema.is_file() and ckpt.is_file()):
        return None
    meta = read_metadata(ema)
    state = load_checkpoint(ckpt, mmap=True)
    ema_step, ckpt_step = int(meta.get("step", -1)), int(state["step"])
    if ema_step >= ckpt_step:
        return None
    write_safetensors(ema, {k: v.float() for k, v in state["ema"]["model"].items()}, {**meta, "step": str(ckpt_step)})
    return (f"{ema} was from step {ema_step} but checkpoint.pt from step {ckpt_step} (the run stopped between the "
            f"two writes): rewrote it from the checkpoint's EMA (step {ckpt_step})")
