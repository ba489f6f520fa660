"""Model files in, for inference and training alike: a UNet's weights, config and metadata from our .safetensors,
an official IF folder (config.yml + pytorch_model.bin) or a diffusers folder, checked strictly before a model is
built. Reads safetensors, or ``.bin`` files with ``torch.load(weights_only=True)``: never code from a file. The
key maps between layouts are ``convert.py``'s.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .config import ConfigError, UNetConfig, from_dict, to_json
from .convert import config_from_diffusers, config_from_official_yaml, diffusers_to_official, infer_unet_config
from .models.unet import UNet, build_unet
from .tensorfiles import CheckpointError, read_tensors

# --------------------------------------------------------------------------------------------------
# strict loading with a clear message


def check_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor], limit: int = 5) -> None:
    """Raise ``CheckpointError`` naming the first missing / unexpected keys and shape mismatches."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        return
    lines = ["the checkpoint does not match the model's config:"]
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            lines.append(f"  {len(items)} {label}: {', '.join(items[:limit])}{more}")
    lines.append("fix: build the model from the config saved with the weights (or convert a diffusers "
                 "checkpoint with pixelcascade.convert.diffusers_to_official)")
    raise CheckpointError("\n".join(lines))


def load_state_dict_checked(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    check_state_dict(model, sd)
    model.load_state_dict(sd, strict=True)
    return model


# files and folders

WEIGHT_NAMES = ("model.safetensors", "diffusion_pytorch_model.safetensors", "pytorch_model.safetensors",
                "pytorch_model.bin", "diffusion_pytorch_model.bin")


def _find_weights(folder: Path) -> Path | None:
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    shards = sorted(folder.glob("*.safetensors"))
    return shards[0] if len(shards) == 1 else None


def read_unet(path: str | Path) -> tuple[dict[str, torch.Tensor], UNetConfig, dict]:
    """A UNet's weights (official key names), config and metadata, without building it, from: our .safetensors
    (config in the metadata); an official IF folder (config.yml + pytorch_model.bin); a diffusers folder
    (config.json + diffusion_pytorch_model.*) or its parent with unet/."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"model path {path} does not exist: pass a .safetensors file or a model folder")
    meta: dict = {}
    if path.is_file():
        sd, meta = read_tensors(path)
        if "unet_config" not in meta:
            raise CheckpointError(f"{path} has no 'unet_config' in its metadata: it is not a pixelcascade model "
                                  "file; pass the folder it came with (config.yml / config.json)")
        cfg = meta_config(meta, "unet_config", UNetConfig, path)
    else:
        path = _unet_folder(path)
        weights = _find_weights(path)
        if weights is None:
            raise CheckpointError(f"no weights in {path}: expected one of {', '.join(WEIGHT_NAMES)}")
        sd, meta = read_tensors(weights)
        cfg = _folder_config(path)
        if cfg is None:
            cfg = infer_unet_config(sd)
        elif not (path / "config.yml").is_file():  # a diffusers folder: its key names
            sd = diffusers_to_official(sd, cfg)
    meta = dict(meta)
    meta.setdefault("unet_config", to_json(cfg))
    return sd, cfg, meta


def meta_config(meta: dict, key: str, cls, path: Path, default=None):
    """A config stored as JSON in a model file's metadata (``unet_config``, ``sample_config``, ...); ``default``
    when the file has none. Anything else there is one clear error."""
    if key not in meta:
        return default
    try:
        return from_dict(cls, json.loads(meta[key]))
    except (json.JSONDecodeError, ConfigError) as e:
        what = cls.__name__.replace("Config", " config")  # UNetConfig -> "UNet config"
        raise CheckpointError(f"{path}: its '{key}' metadata is not a {what} ({e}); the file was not written by "
                              "pixelcascade, or was edited: export the model again") from None


def meta_int(meta: dict, key: str, default: int, path: Path, lo: int = 1, hi: int = 1 << 20) -> int:
    """A whole number stored in a model file's metadata (``text_max_length``), checked."""
    try:
        value = int(meta.get(key, default))
    except (TypeError, ValueError):
        value = None
    if value is None or not lo <= value <= hi:
        raise CheckpointError(f"{path}: its '{key}' metadata is {meta.get(key)!r}, not a whole number in {lo}..{hi}; "
                              "the file was edited or damaged: export the model again")
    return value


def _unet_folder(path: Path) -> Path:
    """A diffusers pipeline folder's unet/, else the folder itself."""
    return path / "unet" if (path / "unet" / "config.json").is_file() else path


def _folder_config(folder: Path) -> UNetConfig | None:
    """The config a model folder states: official config.yml, else diffusers config.json; None without either."""
    try:
        if (folder / "config.yml").is_file():
            return config_from_official_yaml(_read_yaml_params(folder / "config.yml"))
        if (folder / "config.json").is_file():
            return config_from_diffusers(json.loads((folder / "config.json").read_text()))
    except KeyError as e:
        raise CheckpointError(f"{folder}: its config lacks the field {e}; it is not a complete IF config (copy the "
                              "model's config.yml / config.json again)") from None
    except (ValueError, TypeError) as e:  # JSON that does not parse, values of the wrong kind
        raise CheckpointError(f"{folder}: its config cannot be read ({e}); copy it again") from None
    return None


def unet_config_of(path: str | Path) -> UNetConfig:
    """The UNet config of a model folder (its config.yml or config.json, read without the weights) or of our
    .safetensors file."""
    path = Path(path).expanduser()
    cfg = _folder_config(_unet_folder(path)) if path.is_dir() else None
    return cfg if cfg is not None else read_unet(path)[1]


def load_unet(path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> tuple[UNet, dict]:
    """:func:`read_unet`, built and loaded strictly. Returns (model in eval mode, metadata dict). Our .safetensors
    files are read one tensor at a time into the model (the peak is the model plus one tensor, not twice it)."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix == ".safetensors":
        from .tensorfiles import FileSource, read_metadata
        meta = read_metadata(path)
        if "unet_config" in meta:
            return _load_by_tensor(path, FileSource(path), meta, dtype, device), meta
    sd, cfg, meta = read_unet(path)
    with torch.device("meta"):  # names and shapes checked on a model that holds no memory, before the real one
        model = build_unet(cfg)
    check_state_dict(model, sd)
    _materialize(model, dtype)  # the file fills every weight: no random initialisation to throw away
    load_state_dict_checked(model, sd)
    return model.to(device=device, dtype=dtype).eval(), meta


def _load_by_tensor(path: Path, source, meta: dict, dtype: torch.dtype, device: str) -> UNet:
    cfg = meta_config(meta, "unet_config", UNetConfig, path)
    with torch.device("meta"):
        model = build_unet(cfg)
    own = model.state_dict()
    # names and sizes checked before anything is read (IF keeps some linear weights as [C_out, C_in, 1] convs:
    # the same size in another shape, reshaped as they load)
    stored = {}
    for name in source.entries:
        shape = torch.Size(source.shape(name))
        same_size = name in own and shape.numel() == own[name].numel()
        stored[name] = torch.empty(own[name].shape if same_size else shape, device="meta")
    check_state_dict(model, stored)
    _materialize(model, dtype)
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            t.copy_(source.get(name).reshape(t.shape))
    return model.to(device=device).eval()


def _materialize(model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> None:
    """Uninitialised CPU storage for every parameter and buffer of a model built on the meta device, floating
    ones in ``dtype`` (what ``.to(dtype)`` would make of them, without a second copy).

    What ``Module.to_empty`` does, without its ``empty_like`` on meta tensors: that runs torch's Python
    reference kernels, whose first use imports sympy and the meta registrations (0.5 s of a 1-image command).
    """
    made: dict[int, torch.Tensor] = {}  # by the meta tensor's id: tied weights stay one object

    def real(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in made:
            data = torch.empty(tuple(t.shape), dtype=dtype if t.is_floating_point() else t.dtype)
            made[id(t)] = torch.nn.Parameter(data, t.requires_grad) if isinstance(t, torch.nn.Parameter) else data
        return made[id(t)]
    for m in model.modules():
        for group in (m._parameters, m._buffers):
            for name, t in group.items():
                if t is not None:
                    group[name] = real(t)


def _read_yaml_params(path: Path) -> dict:
    """The ``params:`` mapping of IF's config.yml (flat scalars / strings; no YAML dependency)."""
    params, inside = {}, False
    for line in path.read_text().splitlines():
        if re.match(r"^params:\s*$", line):
            inside = True
            continue
        if inside:
            if line and not line.startswith((" ", "\t")):
                break
            m = re.match(r"^\s+(\w+):\s*(.*?)\s*$", line)
            if m:
                key, val = m.groups()
                val = val.strip("\"'")
                if val.lower() in ("true", "false"):
                    params[key] = val.lower() == "true"
                elif re.fullmatch(r"-?\d+", val):
                    params[key] = int(val)
                elif re.fullmatch(r"\[.*\]", val):
                    params[key] = [int(v) for v in val.strip("[]").split(",") if v.strip()]
                else:
                    params[key] = val
    if not params:
        raise CheckpointError(f"{path} has no 'params:' section: is it an IF config.yml?")
    return params


