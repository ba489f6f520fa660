"""The sample grid written at each checkpoint: the EMA model on the world's preview prompts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..images import contact_sheet
from ..pipeline import Stage


def sample_grid_fn(encoder, prompts: list[str]):
    """A ``Trainer.sample_fn``: 16 prompts sampled with the run's settings (steps and guidance: train.sample_steps,
    train.sample_guidance), saved as a captioned grid (stage I only: a super-resolution stage has no low-res input
    to show here)."""
    def fn(trainer, path: Path) -> None:
        cfg = trainer.cfg
        if cfg.unet.super_res:
            return
        emb, _ = encoder(prompts)
        unc, _ = encoder.empty(len(prompts))
        # the run's sampling settings, at the grid's own steps and guidance (train.sample_steps / sample_guidance)
        settings = dataclasses.replace(cfg.sample, num_steps=cfg.train.sample_steps,
                                       guidance_scale=cfg.train.sample_guidance)
        stage = Stage(unet=trainer.ema.model, diffusion=cfg.diffusion, settings=settings)
        imgs = stage.sample(emb, unc, list(range(len(prompts))))
        if path is not None:  # None: another process of a sharded run, which samples along but writes nothing
            contact_sheet(imgs, prompts, path, scale=3)
    return fn


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
