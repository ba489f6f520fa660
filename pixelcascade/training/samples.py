"""The sample grid written at each checkpoint: the EMA model on the world's preview prompts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..images import contact_sheet
from ..pipeline import Stage


def sample_grid_fn(encoder, prompts: list[str]):
    """A ``Trainer.sample_fn``: 16 prompts sampled with the run's settings (steps and guidance: train.sample_steps,
    train.sample_guidance), saved as a captioned grid; a super-resolution stage's grid: :func:`sr_grid`."""
    def fn(trainer, path: Path) -> None:
        cfg = trainer.cfg
        if cfg.unet.super_res:
            return sr_grid(trainer, path)
        emb, _ = encoder(prompts)
        unc, _ = encoder.empty(len(prompts))
        imgs = _grid_stage(trainer).sample(emb, unc, list(range(len(prompts))))
        if path is not None:  # None: another process of a sharded run, which samples along but writes nothing
            contact_sheet(imgs, prompts, path, scale=3)
    return fn


def _grid_stage(trainer) -> Stage:
    """The EMA model with the run's sampling settings at the grid's own steps and guidance (train.sample_steps,
    train.sample_guidance)."""
    cfg = trainer.cfg
    settings = dataclasses.replace(cfg.sample, num_steps=cfg.train.sample_steps,
                                   guidance_scale=cfg.train.sample_guidance)
    return Stage(unet=trainer.ema.model, diffusion=cfg.diffusion, settings=settings)


def sr_grid(trainer, path: Path | None, n: int = 8) -> None:
    """A super-resolution stage's grid: the first ``n`` held-out images down-sampled as in training (its input,
    shown up-sampled) beside what the EMA model makes of them under their captions' states."""
    import torch
    import torch.nn.functional as F

    from .sr import degrade
    cfg, val = trainer.cfg, trainer.val
    if not hasattr(val, "batch") or not len(val):
        return
    idx = torch.arange(min(n, len(val)))
    x0, emb = val.batch(idx, torch.zeros(len(idx), dtype=torch.bool))
    unc = val.text_table[val.null_idx].float().expand(len(idx), -1, -1)
    low = degrade(x0, cfg.data.low_res_size)
    out = _grid_stage(trainer).sample(emb, unc, list(range(len(idx))), low_res=low, height=x0.shape[-2],
                                      width=x0.shape[-1])
    shown = F.interpolate(low, size=x0.shape[-2:], mode="nearest")
    caps = [val.captions[i] if val.captions else "" for i in idx.tolist()]  # one caption per example
    tiles = torch.stack([t for pair in zip(shown, out.to(shown.dtype)) for t in pair])
    if path is not None:
        contact_sheet(tiles, [c for cap in caps for c in (f"in: {cap}", "out")], path, scale=2, cols=4)


def grid_prompts(spec: str) -> list[str]:
    """train.validation_prompts: a text file (one prompt a line) or prompts separated by "|"; [] for ""."""
    if not spec.strip():
        return []
    from ..inputs import read_prompt_lines
    path = Path(spec).expanduser()
    if path.is_file():
        return read_prompt_lines(str(path))
    if path.suffix == ".txt":
        from ..config import ConfigError
        raise ConfigError(f"train.validation_prompts={spec}: no such file; give a text file with one prompt a line, "
                          "or prompts separated by |")
    return [p.strip() for p in spec.split("|") if p.strip()]
