"""Tensor files: safetensors (and weights-only .bin) read and written, with no code run on load."""

from __future__ import annotations

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
        raise CheckpointError(f"cannot read {path}: {type(e).__name__}: {e}; is it a .safetensors file?") from None


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write atomically: a temporary file in the same folder, then a rename."""
    from safetensors.torch import save_file
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
