"""Model files: a stage loaded from our .safetensors (weights, diffusion and sampling settings in its metadata),
and a run's EMA exported as a shipped file."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import DiffusionConfig, SampleConfig, UNetConfig, apply_overrides, from_dict, to_json
from .model_card import write_model_card
from .model_files import load_unet, meta_config, meta_int
from .pipeline import Stage, check_steps
from .presets import default_sampling
from .tensorfiles import CheckpointError, read_tensors, write_safetensors


def load_stage(path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Stage:
    """A stage from a pixelcascade .safetensors file (UNet, diffusion and sampling settings in the metadata)."""
    unet, meta = load_unet(path, dtype=dtype, device=device)
    return _stage(unet, meta, Path(path))


def _stage(unet: torch.nn.Module, meta: dict, path: Path, streamer=None) -> Stage:
    """A stage around a loaded UNet: diffusion and sampling settings from the file's metadata (else defaults)."""
    diffusion = meta_config(meta, "diffusion_config", DiffusionConfig, path, DiffusionConfig())
    sample = meta_config(meta, "sample_config", SampleConfig, path, default_sampling(unet.cfg.super_res))
    meta_int(meta, "text_max_length", 77, path)
    return Stage(unet=unet, diffusion=diffusion, settings=sample, meta=meta, streamer=streamer)


def load_stage_offloaded(path: str | Path, device: str, dtype: torch.dtype, unit: str = "block") -> Stage:
    """A stage whose UNet weights come to ``device`` only while they run (``offload.WeightStreamer``): block by
    block (``unit="block"``) or the whole UNet at a time (``"model"``). On a CPU our .safetensors files stay the
    weights' home (read per block: the resident weights are one block); otherwise a copy in CPU memory (pinned for
    a GPU)."""
    from .model_files import check_state_dict, read_unet
    from .models.unet import build_unet
    from .offload import MemorySource, WeightStreamer, place_buffers
    from .tensorfiles import FileSource, read_metadata
    path = Path(path).expanduser()
    meta = read_metadata(path) if path.is_file() and path.suffix == ".safetensors" else {}
    if "unet_config" in meta and str(device) == "cpu":
        cfg = meta_config(meta, "unet_config", UNetConfig, path)
        source = FileSource(path)
        with torch.device("meta"):
            unet = build_unet(cfg)
        if any(source.shape(n) is None for n, _ in unet.named_buffers()):
            raise CheckpointError(f"{path} lacks the UNet's buffers (text whitening): export the model again")
        place_buffers(unet, source.get, device, dtype)
    else:
        sd, cfg, meta = read_unet(path)
        with torch.device("meta"):
            unet = build_unet(cfg)
        check_state_dict(unet, sd)
        source = MemorySource({k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()},
                              pin=str(device).startswith("cuda"))
        place_buffers(unet, sd.__getitem__, device, dtype)
    streamer = WeightStreamer(unet, source, device, dtype, units=[("", unet)] if unit == "model" else None)
    return _stage(unet.eval(), meta, path, streamer)


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
