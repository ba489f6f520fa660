"""`pixelcascade export` for adapters: a LoRA run's adapter shipped alone, or merged into its base (or adapter
files merged into a model file) as one full model that `generate --model` loads."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import RunConfig, SampleConfig, apply_overrides, from_dict, to_json
from ..lora import apply_adapters, merge_adapters, parse_lora_arg, read_adapter
from ..model_card import write_model_card
from ..models.unet import build_unet
from ..tensorfiles import read_tensors, write_safetensors
from .loop import read_init_weights


def run_adapter(run_dir: Path) -> Path | None:
    """A LoRA run folder's adapter file, or None for other runs and files."""
    path = Path(run_dir) / "lora.safetensors"
    return path if Path(run_dir).is_dir() and path.is_file() else None


def export_adapter(src: Path, dest: Path, dtype: torch.dtype) -> Path:
    """The adapter cast to ``dtype``, its metadata kept (fp16: half the size)."""
    tensors, meta = read_tensors(src)
    write_safetensors(dest, {k: v.to(dtype) for k, v in tensors.items()}, dict(meta, shipped_dtype=str(dtype)[6:]))
    write_model_card(Path(dest), meta, "adapter")
    return Path(dest)


def merge_run(src: Path, dest: Path, dtype: torch.dtype, sample_overrides: list[str] | None = None) -> Path:
    """A LoRA run's adapter merged into the base it was trained on (its train.init_from): a full model file."""
    model, meta = merged_run_model(src)
    return _write(model, meta, dest, dtype, sample_overrides)


def merged_run_model(src: Path) -> tuple[torch.nn.Module, dict]:
    """(the merged UNet, the metadata of a model file) from a LoRA run's adapter and its base."""
    tensors, spec, meta = read_adapter(src)
    cfg = from_dict(RunConfig, json.loads(meta["run_config"]))
    _, base, _ = read_init_weights(Path(cfg.train.init_from))
    model = build_unet(cfg.unet)
    model.load_state_dict({k: v.float() for k, v in base.items()}, strict=False)
    apply_adapters(model, [(tensors, spec, 1.0)])
    merge_adapters(model)
    keep = ("diffusion_config", "sample_config", "run_config", "step", "text_encoder", "text_max_length",
            "encoder_name", "command", "data_recipe", "world", "text_padding")
    out = {k: meta[k] for k in keep if k in meta}
    out.update(unet_config=to_json(cfg.unet), source=f"{src} merged into {cfg.train.init_from}")
    return model, out


def merge_files(model_file: Path, adapters: list[str], dest: Path, dtype: torch.dtype,
                sample_overrides: list[str] | None = None) -> Path:
    """Adapter files (``PATH[:SCALE]``) merged into a model .safetensors."""
    stage = merged_stage(model_file, adapters)
    return _write(stage.unet, stage.meta, dest, dtype, sample_overrides)


def merged_stage(model_file: Path, adapters: list[str]):
    """The stage of a model file with adapter files (``PATH[:SCALE]``) merged in."""
    from ..lora import LoraError, same_unet
    from ..weights import load_stage
    stage = load_stage(model_file)
    loaded = []
    for item in adapters:
        path, scale = parse_lora_arg(item)
        tensors, spec, meta = read_adapter(path)
        if not same_unet(meta, stage.cfg):
            raise LoraError(f"--merge-lora {path}: it adapts another UNet than {model_file}'s (it was trained on "
                            f"{meta.get('base') or 'another model'})")
        loaded.append((tensors, spec, scale))
    if loaded:
        apply_adapters(stage.unet, loaded)
        merge_adapters(stage.unet)
        stage.meta = dict(stage.meta, lora_merged=", ".join(adapters))
    return stage


def run_stage(run: Path, adapters: list[str] | None = None):
    """What `export --format diffusers` converts: a run's EMA (a LoRA run: merged into its base), or a model file
    with ``adapters`` merged in."""
    from ..weights import load_stage
    adapter = run_adapter(run)
    if adapter is None:
        src = run / "ema.safetensors" if run.is_dir() else run
        return merged_stage(src, adapters or []) if adapters else load_stage(src)
    model, meta = merged_run_model(adapter)
    from ..config import DiffusionConfig
    from ..pipeline import Stage
    return Stage(unet=model.eval(), diffusion=from_dict(DiffusionConfig, json.loads(meta["diffusion_config"])),
                 settings=from_dict(SampleConfig, json.loads(meta["sample_config"])), meta=meta)


def _write(model: torch.nn.Module, meta: dict, dest: Path, dtype: torch.dtype, sample_overrides) -> Path:
    if sample_overrides:
        from ..pipeline import check_steps
        sample = apply_overrides(from_dict(SampleConfig, json.loads(meta["sample_config"])), sample_overrides)
        check_steps(sample.num_steps)
        meta["sample_config"] = to_json(sample)
    meta["shipped_dtype"] = str(dtype).replace("torch.", "")
    write_safetensors(dest, {k: v.to(dtype) for k, v in model.state_dict().items()}, meta)
    write_model_card(Path(dest), meta)
    return Path(dest)
