"""Stages and pipelines: text -> image with any sampler, per-image seeds, guidance and thresholding.

A ``Stage`` is one UNet plus its diffusion settings. ``Stage.sample`` runs one sampler over a batch;
every image has its own seed and its own noise stream, so an image does not depend on its batch-mates.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .config import DiffusionConfig, SampleConfig, UNetConfig
from .diffusion.denoiser import Denoiser
from .diffusion.guidance import aug_level_to_t, noise_augment
from .diffusion.schedule import make_schedule
from .samplers import get_sampler

DEFAULT_SAMPLE_I = SampleConfig(sampler="ddpm", num_steps="smart100", guidance_scale=7.0, dyn_thresh_max=1.5)
DEFAULT_SAMPLE_II = SampleConfig(sampler="ddpm", num_steps="smart50", guidance_scale=4.0, dyn_thresh_max=1.0,
                                 aug_level=0.25)


class PipelineError(ValueError):
    """Bad input to a pipeline, with the fix in the message."""


@dataclass
class Stage:
    unet: torch.nn.Module
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    settings: SampleConfig = field(default_factory=SampleConfig)
    meta: dict = field(default_factory=dict)  # text encoder name, max_length, training recipe ...

    @property
    def cfg(self) -> UNetConfig:
        return self.unet.cfg

    @property
    def is_super_res(self) -> bool:
        return self.cfg.super_res

    def denoiser(self) -> Denoiser:
        return Denoiser(self.unet, self.diffusion)

    @torch.no_grad()
    def sample(self, text_emb: torch.Tensor, uncond_emb: torch.Tensor | None, seeds: list[int], *,
               height: int | None = None, width: int | None = None, settings: SampleConfig | None = None,
               low_res: torch.Tensor | None = None, callback=None) -> torch.Tensor:
        """Images in [-1, 1], [B, 3, H, W]. ``low_res`` ([B, 3, h, w] in [-1, 1]) for super-resolution stages."""
        s = settings or self.settings
        h = height or self.cfg.image_size
        w = width or self.cfg.image_size
        div = self.cfg.min_divisor
        if h % div or w % div:
            raise PipelineError(f"image size {h}x{w} is not a multiple of {div}, which this model needs")
        b = text_emb.shape[0]
        if len(seeds) != b:
            raise PipelineError(f"{len(seeds)} seeds for {b} prompts: give one seed per image")
        device = next(self.unet.parameters()).device
        gens = [torch.Generator(device="cpu").manual_seed(int(sd)) for sd in seeds]

        def noise(_k, shape):  # one stream per image: batch-invariant results
            return torch.stack([torch.randn(shape[1:], generator=g) for g in gens]).to(device)

        x = noise(-1, (b, 3, h, w))
        model_kwargs = {}
        if self.is_super_res:
            if low_res is None:
                raise PipelineError("this is a super-resolution stage: it needs a low-res image from an earlier "
                                    "stage (or use `pixelcascade upscale IMAGE`)")
            aug_t = aug_level_to_t(s.aug_level, b, device=device)
            aug_noise = noise(-2, (b, 3, h, w))
            model_kwargs = dict(low_res=noise_augment(low_res.to(device).float(), (h, w), aug_t,
                                                      make_schedule(self.diffusion.schedule), aug_noise),
                                aug_t=aug_t)
        elif low_res is not None:
            raise PipelineError("this stage generates from text: it takes no low-res image (stage order?)")
        den = self.denoiser()
        cond = den.condition(text_emb.to(device), None if uncond_emb is None else uncond_emb.to(device),
                             guidance_scale=s.guidance_scale, dyn_thresh_p=s.dyn_thresh_p,
                             dyn_thresh_max=s.dyn_thresh_max, **model_kwargs)
        steps = den.schedule.respace(s.num_steps)
        sampler = get_sampler(s.sampler)
        return sampler(den, x, steps, cond=cond, noise=noise, callback=callback).clamp(-1, 1)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] [B, 3, H, W] -> uint8 [B, H, W, 3] as IF: ((x + 1) * 127.5).round().clamp(0, 255)."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(img: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] (or [H, W, 3]) -> [-1, 1] float [B, 3, H, W]."""
    t = torch.from_numpy(np.asarray(img)).float()
    if t.ndim == 3:
        t = t[None]
    return t.permute(0, 3, 1, 2) / 127.5 - 1


def with_overrides(s: SampleConfig, **kw) -> SampleConfig:
    return replace(s, **{k: v for k, v in kw.items() if v is not None})
