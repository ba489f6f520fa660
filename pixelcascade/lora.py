"""LoRA adapters on our UNets through peft: which layers they wrap, their small files, loading several at a scale
each, and merging them into the weights.

An adapter file is a safetensors file of peft's LoRA tensors (``<module>.lora_A.weight``, ``<module>.lora_B.weight``,
no adapter name) with metadata: ``format`` = "pixelcascade-lora", ``lora_config`` (rank, alpha, the wrapped modules)
and ``unet_config`` (the UNet it was trained on, so that it is applied to the right stage of a cascade). Every
projection of our UNet runs through its module's forward (``nn.TokenLinear`` for IF's kernel-1 convolutions), so
peft's wrappers sit on the computation path and a merged model keeps IF's key names and shapes.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import to_json
from .errors import PixelcascadeError
from .tensorfiles import read_tensors, write_safetensors

FORMAT = "pixelcascade-lora"
ATTENTION = ("*.qkv", "*.encoder_kv", "*.proj_out")
RESBLOCK = ("*.in_layers.2", "*.out_layers.3", "*.emb_layers.1", "*.skip_connection")
# train.lora.targets presets; anything else is read as comma-separated globs over module names
TARGET_PRESETS = {"attention": ATTENTION, "attention+resblocks": ATTENTION + RESBLOCK}


class LoraError(PixelcascadeError, ValueError):
    """An adapter that cannot be made or applied as asked; the message names the fix."""


def _peft():
    import logging
    # peft imports torchao when it is installed, whose loader logs every CUDA kernel library it cannot load on
    # this machine: not the user's concern when applying a LoRA
    logging.getLogger("torchao").setLevel(logging.ERROR)
    try:
        import peft
    except ImportError:
        raise LoraError("LoRA needs peft: pip install peft (or pip install 'pixelcascade[train]')") from None
    return peft


def target_modules(model: torch.nn.Module, targets: str) -> list[str]:
    """The names of the Linear and Conv2d modules that ``targets`` (a preset name or comma-separated globs) picks."""
    globs = TARGET_PRESETS.get(targets) or tuple(g.strip() for g in targets.split(",") if g.strip())
    layers = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    picked = [n for n in layers if any(fnmatch.fnmatchcase(n, g) for g in globs)]
    if not picked:
        raise LoraError(f"train.lora.targets={targets!r} picks no Linear or Conv2d layer of this UNet: use "
                        f"{' or '.join(TARGET_PRESETS)}, or globs over module names such as '*.qkv,*.proj_out'")
    return picked


@dataclass(frozen=True)
class AdapterSpec:
    """How an adapter is shaped: rank, alpha (scaling alpha / rank) and the wrapped modules' names."""

    rank: int
    alpha: float
    modules: tuple[str, ...]
    dropout: float = 0.0

    def to_meta(self) -> str:
        return json.dumps({"rank": self.rank, "alpha": self.alpha, "modules": list(self.modules),
                           "dropout": self.dropout})

    @classmethod
    def from_meta(cls, text: str) -> AdapterSpec:
        d = json.loads(text)
        return cls(int(d["rank"]), float(d["alpha"]), tuple(d["modules"]), float(d.get("dropout", 0.0)))


def add_adapter(model: torch.nn.Module, spec: AdapterSpec, name: str = "default") -> torch.nn.Module:
    """Wrap ``spec.modules`` of ``model`` in place with a LoRA named ``name`` (B = 0: the model computes as before)."""
    peft = _peft()
    config = peft.LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                             target_modules=list(spec.modules))
    return peft.inject_adapter_in_model(config, model, adapter_name=name)


def lora_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    peft = _peft()
    return [m for m in model.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]


def adapter_tensors(model: torch.nn.Module, name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's tensors under peft's names without the adapter name (``x.qkv.lora_A.weight``)."""
    return _peft().get_peft_model_state_dict(model, adapter_name=name)


def set_adapter_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor], name: str = "default") -> None:
    result = _peft().set_peft_model_state_dict(model, tensors, adapter_name=name)
    missing = [k for k in result.missing_keys if ".lora_" in k and f".{name}." in k]
    if result.unexpected_keys or missing:
        raise LoraError(f"the adapter's tensors do not fit the wrapped layers (unexpected "
                        f"{list(result.unexpected_keys)[:3]}, missing {missing[:3]})")


def save_adapter(path: str | Path, model: torch.nn.Module, spec: AdapterSpec, unet_cfg, name: str = "default",
                 meta: dict | None = None, dtype: torch.dtype = torch.float32) -> Path:
    tensors = {k: v.detach().to(dtype).cpu() for k, v in adapter_tensors(model, name).items()}
    info = {"format": FORMAT, "lora_config": spec.to_meta(), "unet_config": to_json(unet_cfg), **(meta or {})}
    write_safetensors(path, tensors, {k: str(v) for k, v in info.items()})
    return Path(path)


def read_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], AdapterSpec, dict]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise LoraError(f"--lora {path}: no such file; give an adapter .safetensors (a LoRA run's lora.safetensors "
                        "or what `pixelcascade export RUN` wrote from it)")
    tensors, meta = read_tensors(path)
    if meta.get("format") != FORMAT or "lora_config" not in meta:
        raise LoraError(f"--lora {path}: not a pixelcascade LoRA adapter (no lora_config in its metadata); a full "
                        "model goes to --model instead")
    return tensors, AdapterSpec.from_meta(meta["lora_config"]), meta


def parse_lora_arg(text: str) -> tuple[str, float]:
    """``PATH`` or ``PATH:SCALE`` (a scale is a number after the last colon)."""
    path, sep, scale = text.rpartition(":")
    if sep:
        try:
            return path, float(scale)
        except ValueError:
            pass
    return text, 1.0


def apply_adapters(model: torch.nn.Module, adapters: list[tuple[dict, AdapterSpec, float]]) -> None:
    """Load adapters (tensors, spec, scale) into ``model``, all active together, each at its scale."""
    names = []
    for i, (tensors, spec, scale) in enumerate(adapters):
        name = f"lora{i}"
        add_adapter(model, spec, name)
        set_adapter_tensors(model, {k: v.float() for k, v in tensors.items()}, name)
        for layer in lora_layers(model):
            layer.set_scale(name, scale)
        names.append(name)
    for layer in lora_layers(model):
        layer.set_adapter([n for n in names if n in layer.lora_A])
    model.requires_grad_(False)


def merge_adapters(model: torch.nn.Module) -> torch.nn.Module:
    """Fold every active adapter into the weights and put the plain layers back: the state dict is the base
    model's names and shapes again (IF's), with the adapters' changes in the weights."""
    peft = _peft()
    wrapped = [(n, m) for n, m in model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    for name, layer in wrapped:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    return model


def same_unet(meta: dict, unet_cfg) -> bool:
    return json.loads(meta.get("unet_config", "null")) == json.loads(to_json(unet_cfg))
