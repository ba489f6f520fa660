"""Model cards: a Markdown page beside every exported model (``stage1.safetensors`` -> ``stage1.md``, a diffusers
folder's ``README.md``, an adapter's ``.md``), written from the file's own metadata: what the model is, how it
was trained and on what, how to sample it, its limits and its licence. Nothing in a card is typed by hand, so an
export cannot carry a card that disagrees with its weights."""

from __future__ import annotations

import json
from pathlib import Path

from .utils import atomic_write_text

IF_LICENCE = ("These weights derive from DeepFloyd IF, released under the DeepFloyd IF License Agreement "
              "(non-commercial research use); that licence applies to them.")
OWN_LICENCE = ("Trained with pixelcascade from no third-party weights; the code is MIT-licensed, and so are these "
               "weights.")


def _json(meta: dict, key: str) -> dict:
    try:
        value = json.loads(meta.get(key, "{}"))
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}  # a card describes what it can; damaged entries stay out


def model_card(meta: dict, name: str, kind: str = "model") -> str:
    """The card's Markdown for a model (or, ``kind="adapter"``, a LoRA adapter) with metadata ``meta``."""
    unet, run = _json(meta, "unet_config"), _json(meta, "run_config")
    sample, diffusion = _json(meta, "sample_config"), _json(meta, "diffusion_config")
    train = run.get("train", {})
    base = meta.get("base") or train.get("init_from", "")
    from_if = any(s in str(base) + meta.get("source", "") for s in ("IF-I", "IF-II", "deepfloyd"))
    stage = "super-resolution stage (II/III)" if unet.get("super_res") else "text-to-image stage I"
    variance = ", learned-range variance (hybrid loss)" if diffusion.get("learned_variance", True) else ""
    lines = [f"# {name}", ""]
    if kind == "adapter":
        lora = _json(meta, "lora_config")
        lines += [f"A LoRA adapter (rank {lora.get('rank')}, alpha {lora.get('alpha')}, {len(lora.get('modules', []))} "
                  f"layers) for a {unet.get('image_size')} px {stage}, trained on top of `{base}`.", "",
                  f"Use: `pixelcascade generate PROMPT --model {base} --lora {name}.safetensors[:SCALE]`, or merge "
                  "it: `pixelcascade export MODEL --merge-lora ADAPTER -o merged.safetensors`.", ""]
    else:
        lines += [f"A pixelcascade {stage} at {unet.get('image_size')} px: {unet.get('model_channels')} base "
                  f"channels, multipliers {unet.get('channel_mult')}, attention at {unet.get('attention_resolutions')},"
                  f" {unet.get('encoder_dim')}-d text states.", "",
                  f"Use: `pixelcascade generate PROMPT --model {name}.safetensors` (or a folder of stage files).", ""]
    lines += ["## Training", "",
              f"- text encoder: `{meta.get('text_encoder', run.get('text_encoder', '?'))}` "
              f"({meta.get('text_max_length', '?')} tokens)",
              f"- data: {meta.get('data_recipe', 'not recorded')}",
              f"- diffusion: {diffusion.get('schedule', 'cosine')} schedule, {diffusion.get('prediction', 'eps')} "
              f"prediction{variance}",
              f"- steps: {meta.get('step', '?')}; batch {train.get('batch_size', '?')}, lr {train.get('lr', '?')}, "
              f"seed {train.get('seed', '?')}" + (f"; fine-tuned from `{base}`" if base else ""),
              f"- command: `{meta.get('command') or 'not recorded'}`", "",
              "## Sampling defaults", "",
              f"{sample.get('sampler', 'ddpm')}, {sample.get('num_steps', '?')} steps, guidance "
              f"{sample.get('guidance_scale', '?')}, dynamic thresholding p {sample.get('dyn_thresh_p', '?')} / max "
              f"{sample.get('dyn_thresh_max', '?')}" + (f", aug_level {sample.get('aug_level')}"
                                                      if unet.get("super_res") else ""), "",
              "## Limits", "",
              "Scores, if measured, are in the project's docs for the shipped models; an export of your own run has "
              "only the validation curves of its run folder (`val_loss.csv`). It draws what its training data "
              "showed and nothing else; evaluate it on your prompts before use (`pixelcascade eval`).", "",
              "## Licence", "", IF_LICENCE if from_if else OWN_LICENCE, ""]
    return "\n".join(lines)


def write_model_card(weights: Path, meta: dict, kind: str = "model") -> Path:
    """The card beside ``weights`` (a file: same name, .md; a folder: its README.md)."""
    weights = Path(weights)
    path = weights / "README.md" if weights.is_dir() else weights.with_suffix(".md")
    atomic_write_text(path, model_card(meta, weights.stem if weights.is_file() else weights.name, kind))
    return path
