"""Model files: a stage loaded from our .safetensors (weights, diffusion and sampling settings in its metadata),
and a run's EMA exported as a shipped file."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import DiffusionConfig, SampleConfig, apply_overrides, from_dict, to_json
from .model_card import write_model_card
from .model_files import load_unet, meta_config, meta_int
from .pipeline import Stage, check_steps
from .presets import default_sampling
from .tensorfiles import read_tensors, write_safetensors


def load_stage(path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Stage:
    """A stage from a pixelcascade .safetensors file (UNet, diffusion and sampling settings in the metadata)."""
    unet, meta = load_unet(path, dtype=dtype, device=device)
    diffusion = meta_config(meta, "diffusion_config", DiffusionConfig, Path(path), DiffusionConfig())
    default = default_sampling(unet.cfg.super_res)
    sample = meta_config(meta, "sample_config", SampleConfig, Path(path), default)
    meta_int(meta, "text_max_length", 77, Path(path))
    return Stage(unet=unet, diffusion=diffusion, settings=sample, meta=meta)


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


def save_stage(stage: Stage, dest: str | Path, encoder_name: str = "", dtype: torch.dtype | None = None) -> Path:
    """One stage as our .safetensors (UNet weights; UNet, diffusion and sampling configs and the text encoder in
    the metadata, so :func:`load_stage` rebuilds it as it is) with its model card."""
    meta = {k: str(v) for k, v in stage.meta.items()}
    meta.update(unet_config=to_json(stage.cfg), diffusion_config=to_json(stage.diffusion),
                sample_config=to_json(stage.settings))
    if encoder_name:
        meta.setdefault("text_encoder", encoder_name)
    weights = {k: (v if dtype is None else v.to(dtype)).detach().cpu().contiguous()
               for k, v in stage.unet.state_dict().items()}
    write_safetensors(dest, weights, meta)
    write_model_card(Path(dest), meta)
    return Path(dest)
