"""The config a training command runs: a preset, the user's overrides, and, when fine-tuning from a released IF
folder (``train.init_from=``), that model's UNet, diffusion, size and text encoder adopted."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..config import ConfigError, DiffusionConfig, RunConfig, UNetConfig, apply_overrides, from_dict
from ..model_files import CheckpointError, unet_config_of
from ..presets import run_preset
from ..text.encoder import carries_text_encoder, is_t5


def run_config(name: str, overrides: list[str] | None = None) -> RunConfig:
    """A preset plus dotted overrides. With ``train.init_from=`` an IF model folder (the released weights, in the
    official or the diffusers layout), the run takes that UNet's config, IF's diffusion (eps with learned-range
    variance), the folder's size as ``data.image_size`` and the pipeline folder's own T5 when it carries one
    (``text_encoder/``, 77 tokens). A run from one of our model files (a shipped stage, an export, a run's
    ema.safetensors) takes that file's UNet, diffusion, size and text encoder likewise, whatever the preset's are.
    Overrides of those fields still win."""
    overrides = overrides or []
    cfg = run_preset(name, overrides)
    src = Path(cfg.train.init_from).expanduser() if cfg.train.init_from else None
    if src is not None and src.is_file() and src.suffix == ".safetensors":
        return _adopt_model_file(cfg, src, overrides)
    if src is None or not src.is_dir():
        return cfg
    try:
        unet = unet_config_of(src)
    except CheckpointError as e:
        raise ConfigError(f"train.init_from={src}: {e}") from None
    given = {o.split("=", 1)[0].strip() for o in overrides}
    adopted = dataclasses.replace(
        cfg, unet=unet, diffusion=dataclasses.replace(cfg.diffusion, prediction="eps", learned_variance=True),
        data=dataclasses.replace(cfg.data, image_size=unet.image_size))
    pipeline = src.parent if src.name == "unet" else src
    if "text_encoder" not in given and carries_text_encoder(pipeline):
        adopted = dataclasses.replace(adopted, text_encoder=str(pipeline))
    if is_t5(adopted.text_encoder):
        adopted = dataclasses.replace(adopted, data=dataclasses.replace(adopted.data, text_max_length=77))
    return _with_model_overrides(adopted, overrides)


def _adopt_model_file(cfg: RunConfig, src: Path, overrides: list[str]) -> RunConfig:
    """The run's UNet, diffusion, size and text encoder from one of our model files' metadata."""
    from ..tensorfiles import read_metadata
    meta = read_metadata(src)
    if "unet_config" not in meta:
        raise ConfigError(f"train.init_from={src}: no unet_config in its metadata; give a pixelcascade model file "
                          "(a shipped stage, `pixelcascade export`'s output or a run's ema.safetensors), a run's "
                          "checkpoint.pt, or an IF folder")
    unet = from_dict(UNetConfig, json.loads(meta["unet_config"]))
    diffusion = from_dict(DiffusionConfig, json.loads(meta["diffusion_config"])) if "diffusion_config" in meta \
        else cfg.diffusion
    data = dataclasses.replace(cfg.data, image_size=unet.image_size,
                               text_max_length=int(meta.get("text_max_length", cfg.data.text_max_length)))
    adopted = dataclasses.replace(cfg, unet=unet, diffusion=diffusion, data=data,
                                  text_encoder=meta.get("text_encoder", cfg.text_encoder))
    return _with_model_overrides(adopted, overrides)


def _with_model_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """The user's own unet.*, diffusion.*, data.* and text_encoder overrides, on top of an adopted config."""
    mine = [o for o in overrides if o.split("=", 1)[0].strip().split(".")[0] in ("unet", "diffusion", "data",
                                                                               "text_encoder")]
    return apply_overrides(cfg, mine)
