"""What the command handlers share: the one-line error, devices and dtypes from flags, loading a cascade, and
output paths checked before any work."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import PixelcascadeError
from ..shipped import ModelError


class UserError(PixelcascadeError):
    """Bad input from the command line: printed as one line, exit status 2."""


def device_arg(name: str) -> str:
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise UserError(f"--device {name}: not a device pixelcascade runs on; use cpu, cuda, cuda:N or auto")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device here; use --device cpu")
    from ..utils import resolve_device
    return str(resolve_device(name))  # under torchrun, plain cuda is each process's own GPU


def dtype_arg(name: str, device: str = "cpu"):
    """--dtype: fp32, bf16, fp16, or auto (bf16 where ``device`` multiplies it natively, else fp32)."""
    import torch

    from ..api import auto_dtype
    if name == "auto":
        return auto_dtype(device)
    try:
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    except KeyError:
        raise UserError(f"--dtype {name}: choose fp32, bf16, fp16 or auto") from None


def device_and_dtype(a) -> tuple:
    """--device and --dtype, resolved: --dtype auto depends on the device."""
    device = device_arg(a.device)
    return device, dtype_arg(a.dtype, device)


def load_cascade(model: str | Path, device: str = "cpu", dtype=None, text_encoder: str | None = None,
                 max_stages: int | None = None, allow_sr_first: bool = False, offload: bool | str = False,
                 stage3: str | None = None, lora: list[str] | None = None, text_encoder_dtype: str | None = None,
                 prompt_states: str | None = None):
    """:func:`pixelcascade.api.load`, its errors as one line for the command line."""
    from ..api import load
    try:
        return load(model, device=device, dtype=dtype, text_encoder=text_encoder, max_stages=max_stages,
                    allow_sr_first=allow_sr_first, offload=offload or False, stage3=stage3, lora=lora,
                    text_encoder_dtype=text_encoder_dtype, prompt_states=prompt_states)
    except ModelError as e:
        raise UserError(str(e)) from None


def slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:n] or "image"


def out_of_memory(e: RuntimeError) -> bool:
    import torch
    return isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e)


def check_writable(path: Path) -> None:
    """Fail before any work if the output cannot be written (tries to create a file there)."""
    import tempfile
    folder = path.parent if path.suffix else path
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".pixelcascade-write-test-"):
            pass
    except OSError as e:
        raise UserError(f"-o {path}: cannot write to {folder} ({e.strerror}); choose an output path you can "
                        "write to") from None


def version_string() -> str:
    from ..version import __version__
    return __version__
