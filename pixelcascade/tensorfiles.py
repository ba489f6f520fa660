"""Tensor files: safetensors (and weights-only .bin) read and written, with no code run on load."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

from .errors import PixelcascadeError
from .utils import atomic_path


class CheckpointError(PixelcascadeError, ValueError):
    """A checkpoint that does not fit the model, or a path that holds no checkpoint."""


def unreadable(path: Path, e: Exception) -> str:
    """Why a weights or checkpoint file could not be read: refused because loading it could run code (a pickle
    with more than tensors in it), or corrupt / truncated. Never torch's advice to retry with weights_only=False."""
    text = str(e)
    if "unsupported global" in text.lower():  # the pickle names a function or class to call: never loaded here
        return (f"{path} was refused: it is a pickle that names code to run when loaded (not only tensors). "
                "Load it only if you trust it, with your own code, and save the tensors as .safetensors")
    if "Weights only load failed" in text:
        return (f"cannot read {path} ({_unpickler_detail(text)}): not a PyTorch weights file, or a corrupt or "
                "truncated one; download or copy it again")
    return (f"cannot read {path} ({type(e).__name__}: {text.splitlines()[0][:200] if text else ''}): the file is "
            "corrupt or truncated; download or copy it again")


def folder_unreadable(path: Path, e: Exception, what: str) -> str:
    """Why a Hugging Face model folder (config.json, tokenizer, weights) could not be loaded as ``what``."""
    text = str(e)
    if "unsupported global" in text.lower() or "Weights only load failed" in text:
        weights = next((path / n for n in ("pytorch_model.bin", "model.bin") if (path / n).is_file()), path)
        return unreadable(weights, e)
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)[:200]
    return (f"cannot load {path} as {what} ({first}): it must be a Hugging Face model folder as save_pretrained "
            "writes it (config.json, tokenizer files, weights); copy it again")


def _unpickler_detail(text: str) -> str:
    """The reason inside torch's weights-only message (whose other paragraphs advise weights_only=False)."""
    paragraphs = [p.replace("\n", " ").strip() for p in text.split("\n\n")]
    useful = [p for p in paragraphs if p and not p.startswith(("Weights only load failed", "Check the documentation",
                                                               "Please file an issue"))]
    detail = useful[0] if useful else "not a tensor pickle"
    return detail.replace("WeightsUnpickler error:", "").strip()[:200] or "not a tensor pickle"


def torch_load_tensors(path: Path, mmap: bool = False):
    """torch.load with weights_only (no code runs); its warnings about pickle protocols stay quiet. ``mmap``: the
    tensors stay on disk until read."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def read_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) from a .safetensors file or a .bin loaded with weights_only (no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}: pass a .safetensors/.bin file or a model folder")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            tensors, meta = {}, {}
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                for k in f.keys():
                    tensors[k] = f.get_tensor(k)
            return tensors, meta
        sd = torch_load_tensors(path)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(unreadable(path, e)) from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return dict(sd), {}


def read_metadata(path: str | Path) -> dict[str, str]:
    """A .safetensors file's metadata alone (no tensor is read)."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as e:
        raise CheckpointError(f"cannot read {path} ({type(e).__name__}: {e}): not a .safetensors file, or a corrupt "
                              "or truncated one; copy it again") from None


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write atomically: a temporary file in the same folder, then a rename."""
    from safetensors.torch import save_file
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                       "I64": torch.int64, "I32": torch.int32, "I8": torch.int8, "U8": torch.uint8,
                       "BOOL": torch.bool}


class FileSource:
    """Tensors read one at a time from a .safetensors file with ``os.pread``, each into its own memory: no memory
    map, so nothing of the file stays resident beside what is kept (safetensors' own reader maps the file, and a
    tensor taken from it without a copy keeps the whole file's pages resident). Streamed UNets, our model files
    and quantized T5 load through it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            header.pop("__metadata__", None)
            assert all({"dtype", "shape", "data_offsets"} <= set(e) for e in header.values())
        except (OSError, struct.error, ValueError, AssertionError, AttributeError) as e:
            raise CheckpointError(f"cannot read {self.path} as safetensors ({type(e).__name__}): the file is "
                                  "corrupt or truncated; copy it again") from None
        self.start = 8 + n
        self.entries = header
        self._fd = os.open(self.path, os.O_RDONLY)

    def __iter__(self):  # the tensors' names, as a dict's keys (``source[name]`` reads one)
        return iter(self.entries)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.get(name)

    def shape(self, name: str) -> tuple[int, ...] | None:
        e = self.entries.get(name)
        return None if e is None else tuple(e["shape"])

    def get(self, name: str) -> torch.Tensor:
        e = self.entries[name]
        lo, hi = e["data_offsets"]
        buf = bytearray(os.pread(self._fd, hi - lo, self.start + lo))
        dtype = _SAFETENSORS_DTYPES[e["dtype"]]
        if not buf:
            return torch.empty(e["shape"], dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).reshape(e["shape"])

    def __del__(self):
        try:
            os.close(self._fd)
        except (AttributeError, OSError):
            pass
