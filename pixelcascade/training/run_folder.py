"""A run folder kept consistent across kills and resumes: one training process at a time (an advisory lock), no
half-written files left from a killed write, and logs that hold each step once."""

from __future__ import annotations

import contextlib
import csv
import os
from pathlib import Path

from ..errors import PixelcascadeError
from ..utils import atomic_path


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
