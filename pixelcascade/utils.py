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


def save_png(img, path: str | Path, sidecar: dict) -> None:
    """uint8 [H, W, 3] -> PNG + a JSON sidecar of the same name (prompt, seed, every setting); both atomic."""
    import json

    from PIL import Image
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")
    atomic_write_text(path.with_suffix(".json"), json.dumps(sidecar, indent=2, default=str))


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


def center_crop_resize(img, size: int):
    """Centre-crop the long edge, then resize to size x size (PIL bicubic, antialiased): uint8 [H, W, 3] ->
    [size, size, 3]. Reference images for FID, and images of a dataset trained on (data.world=files)."""
    import numpy as np
    from PIL import Image
    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = Image.fromarray(np.ascontiguousarray(img[top:top + s, left:left + s]))
    return np.asarray(crop.resize((size, size), Image.BICUBIC))
