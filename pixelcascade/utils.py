"""Small shared helpers: atomic writes, seeding, devices."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; on success rename it over ``path`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool | None:
    """Whether this x86 CPU multiplies bf16 natively (AVX512-BF16 or AMX-BF16); None where that cannot be read
    (not Linux, not x86). Without it, bf16 autocast is emulated and runs about twice as slow as fp32."""
    try:
        flags = next((line for line in Path(cpuinfo).read_text().splitlines() if line.startswith("flags")), None)
    except OSError:
        return None
    if flags is None:
        return None
    words = set(flags.split(":", 1)[-1].split())
    return bool(words & {"avx512_bf16", "amx_bf16"})


def bf16_autocast_pays(device) -> bool:
    """Whether bf16 autocast runs natively on ``device`` (a torch.device): CUDA with bf16 support, or a CPU with
    AVX512-BF16 / AMX (or one whose flags cannot be read). On an x86 CPU without them bf16 is emulated: about 2x
    slower than fp32 on a 10M-parameter UNet and 4x on the tests' tiny ones, for no gain, so training (and the
    emoji extractor) keep fp32 there."""
    if device.type == "cuda":
        import torch
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_native_bf16() is not False
    return True


def default_cache_dir() -> Path:
    """Where pixelcascade keeps rendered data, text states and indexes ($PIXELCASCADE_CACHE overrides)."""
    return Path(os.environ.get("PIXELCASCADE_CACHE", Path.home() / ".cache" / "pixelcascade"))


def resolve_device(name: str, rank: int = 0):
    """cpu, cuda, cuda:N or auto; under torchrun, plain ``cuda`` means this process's GPU (LOCAL_RANK)."""
    import os

    import torch
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name}: no CUDA device here; use train.device=cpu")
    if name == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    return torch.device(name)


def sha256_file(path: str | Path) -> str:
    """The hex SHA-256 of a file's bytes (\"missing\" when it cannot be read)."""
    import hashlib
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return "missing"
    return h.hexdigest()


def dist_info() -> tuple[int, int]:
    """(rank, world size); joins the process group torchrun set up (WORLD_SIZE > 1), else (0, 1)."""
    import os

    import torch
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("PIXELCASCADE_BACKEND") != "gloo" \
            else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def barrier() -> None:
    """Wait for every process of a torchrun launch (nothing to wait for in a single process)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def import_transformers():
    """transformers, offline and quiet: no hub calls, no progress bars, and none of the log lines it (or a library
    it pulls in, such as torchao) prints on import, which a user need not read."""
    import logging
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for name in ("torch.utils._pytree", "torchao"):  # torchao (optional, imported by transformers when present)
        logging.getLogger(name).setLevel(logging.ERROR)  # logs GPU kernels it cannot load and a deprecation
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def release_heap() -> None:
    """Give the C heap's free memory back to the system (glibc's malloc_trim; elsewhere nothing): after a model is
    freed or quantized, glibc otherwise keeps its freed blocks under 32 MB, and the process's resident memory
    stays as high as before."""
    import ctypes
    import sys
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # musl and other C libraries: no malloc_trim
        pass
