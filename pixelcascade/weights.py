"""Model files: a stage loaded from our .safetensors (weights, diffusion and sampling settings in its metadata),
and a run's EMA exported as a shipped file."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import ConfigError, DiffusionConfig, SampleConfig, apply_overrides, from_dict, to_json
from .convert import load_unet
from .model_card import write_model_card
from .pipeline import DEFAULT_SAMPLE_I, DEFAULT_SAMPLE_II, Stage
from .tensorfiles import read_tensors, write_safetensors


def load_stage(path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Stage:
    """A stage from a pixelcascade .safetensors file (UNet, diffusion and sampling settings in the metadata)."""
    unet, meta = load_unet(path, dtype=dtype, device=device)
    diffusion = from_dict(DiffusionConfig, json.loads(meta["diffusion_config"])) if "diffusion_config" in meta \
        else DiffusionConfig()
    default = DEFAULT_SAMPLE_II if unet.cfg.super_res else DEFAULT_SAMPLE_I
    sample = from_dict(SampleConfig, json.loads(meta["sample_config"])) if "sample_config" in meta else default
    return Stage(unet=unet, diffusion=diffusion, settings=sample, meta=meta)


def check_steps(num_steps: str) -> None:
    """A sampling setting's step spec must respace IF's 1,000-step chain (checked at export, not at first use)."""
    from .diffusion.schedule import space_timesteps
    try:
        space_timesteps(1000, num_steps)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"num_steps: {e}") from None


def export_weights(run_dir: str | Path, dest: str | Path, dtype: torch.dtype = torch.float16,
                   sample_overrides: list[str] | None = None) -> Path:
    """Ship a run's final EMA: ``ema.safetensors`` cast to ``dtype`` (fp16 halves the size), metadata kept, and a
    model card beside it (``model_card``).

    Loading casts back to the requested dtype (fp32 by default), so shipping fp16 costs < 1e-3 in outputs.
    ``sample_overrides`` (``["guidance_scale=4", "num_steps=smart50"]``) set the default sampling settings.
    ``run_dir`` may also be an exported file: it is rewritten with the new settings (``dest`` may be itself).
    """
    src = Path(run_dir) if Path(run_dir).is_file() else Path(run_dir) / "ema.safetensors"
    tensors, meta = read_tensors(src)
    meta = dict(meta, shipped_dtype=str(dtype).replace("torch.", ""), source=meta.get("source", str(src.name)))
    if sample_overrides:
        sample = apply_overrides(from_dict(SampleConfig, json.loads(meta["sample_config"])), sample_overrides)
        check_steps(sample.num_steps)
        meta["sample_config"] = to_json(sample)
    write_safetensors(dest, {k: v.to(dtype) for k, v in tensors.items()}, meta)
    write_model_card(Path(dest), meta)
    return Path(dest)
