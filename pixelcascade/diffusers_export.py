"""A stage as a diffusers pipeline folder: ``model_index.json``, ``unet/`` (UNet2DConditionModel config and
weights, converted to diffusers' names), ``scheduler/`` (DDPMScheduler with the stage's schedule, variance and
dynamic thresholding) and, for a super-resolution stage, ``image_noising_scheduler/``; the text encoder is copied
in (``text_encoder/`` + ``tokenizer/``) or left out, named in ``pixelcascade.json`` (pass ``prompt_embeds``, or
``text_encoder=`` and ``tokenizer=`` to ``from_pretrained``). diffusers' ``IFPipeline`` /
``IFSuperResolutionPipeline`` load the folder; nothing here imports diffusers.

Only IF's own layers convert: a model with layers IF does not have (the ``unet.text_*`` and attention-position
options) is refused, never exported without them.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from .config import DiffusionConfig, SampleConfig
from .convert import CheckpointError, diffusers_config, official_to_diffusers
from .model_card import write_model_card
from .pipeline import Stage
from .tensorfiles import write_safetensors
from .utils import atomic_write_text

DIFFUSERS_VERSION = "0.42.1"  # the diffusers release the folder layout and configs are checked against
_PREDICTION = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
_SCHEDULE = {"cosine": "squaredcos_cap_v2", "linear": "linear"}


def scheduler_config(diffusion: DiffusionConfig, settings: SampleConfig) -> dict:
    """The DDPMScheduler that samples as the stage does: IF's schedule, learned-range variance and dynamic
    thresholding (percentile ``dyn_thresh_p``, limit ``dyn_thresh_max``)."""
    return {"_class_name": "DDPMScheduler", "_diffusers_version": DIFFUSERS_VERSION,
            "num_train_timesteps": diffusion.num_timesteps, "beta_schedule": _SCHEDULE[diffusion.schedule],
            "variance_type": "learned_range" if diffusion.learned_variance else "fixed_small",
            "prediction_type": _PREDICTION[diffusion.prediction], "thresholding": True,
            "dynamic_thresholding_ratio": settings.dyn_thresh_p, "sample_max_value": settings.dyn_thresh_max,
            "clip_sample": True, "clip_sample_range": 1.0}


def export_diffusers(stage: Stage, out: str | Path, text_encoder: str | Path | None = None) -> Path:
    """Write ``stage`` as a diffusers pipeline folder at ``out``; ``text_encoder``: a local T5 folder (or a
    diffusers IF pipeline folder carrying one) copied in."""
    cfg = stage.cfg
    try:
        weights = official_to_diffusers({k: v.float() for k, v in stage.unet.state_dict().items()}, cfg)
        unet_conf = diffusers_config(cfg)
    except (CheckpointError, ValueError) as e:
        raise CheckpointError(f"cannot export as diffusers: {e}") from None
    out = Path(out)
    (out / "unet").mkdir(parents=True, exist_ok=True)
    _json(out / "unet" / "config.json", {"_class_name": "UNet2DConditionModel", "_diffusers_version":
                                         DIFFUSERS_VERSION, **unet_conf})
    write_safetensors(out / "unet" / "diffusion_pytorch_model.safetensors", weights, {"format": "pt"})
    _json(out / "scheduler" / "scheduler_config.json", scheduler_config(stage.diffusion, stage.settings))
    index = {"_class_name": "IFSuperResolutionPipeline" if cfg.super_res else "IFPipeline",
             "_diffusers_version": DIFFUSERS_VERSION, "unet": ["diffusers", "UNet2DConditionModel"],
             "scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": [None, None], "tokenizer": [None, None],
             "safety_checker": [None, None], "feature_extractor": [None, None], "watermarker": [None, None],
             "requires_safety_checker": False}
    if cfg.super_res:  # IF's stage II noises its low-res input with its own cosine schedule
        index["image_noising_scheduler"] = ["diffusers", "DDPMScheduler"]
        _json(out / "image_noising_scheduler" / "scheduler_config.json",
              {"_class_name": "DDPMScheduler", "_diffusers_version": DIFFUSERS_VERSION,
               "num_train_timesteps": stage.diffusion.num_timesteps, "beta_schedule": "squaredcos_cap_v2"})
    encoder_name = text_encoder or stage.meta.get("text_encoder")
    if text_encoder:
        index.update(text_encoder=["transformers", "T5EncoderModel"], tokenizer=["transformers", "T5Tokenizer"])
        _copy_text_encoder(Path(text_encoder).expanduser(), out)
    _json(out / "model_index.json", index)
    _json(out / "pixelcascade.json", {
        "text_encoder": str(encoder_name) if encoder_name else None,
        "text_encoder_included": bool(text_encoder),
        "sample_config": dataclasses.asdict(stage.settings), "source": stage.meta.get("source", ""),
        "note": "pass prompt_embeds (the named encoder's states), or text_encoder= and tokenizer= to "
                "from_pretrained, when the folder carries no text encoder"})
    from .config import to_json
    write_model_card(out, {**stage.meta, "unet_config": to_json(cfg), "sample_config": to_json(stage.settings),
                           "diffusion_config": to_json(stage.diffusion)})
    return out


def _copy_text_encoder(src: Path, out: Path) -> None:
    if (src / "text_encoder" / "config.json").is_file():  # a diffusers IF pipeline folder: its T5 and tokenizer
        enc, tok = src / "text_encoder", src / "tokenizer"
    else:
        enc, tok = src, src
    if not (enc / "config.json").is_file():
        raise CheckpointError(f"--text-encoder {src}: no config.json there; give a local T5 folder")
    shutil.copytree(enc, out / "text_encoder", dirs_exist_ok=True)
    shutil.copytree(tok, out / "tokenizer", dirs_exist_ok=True)


def _json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))
