"""Stage III: Stable Diffusion's x4 upscaler (what IF itself uses for 256 -> 1024) from a local folder.

IF's README runs ``stabilityai/stable-diffusion-x4-upscaler`` after stage II with ``noise_level=100`` (75 DDIM
steps, guidance 9). It is a latent model with its own CLIP text encoder, so it takes the prompts rather than the
T5 states; this wrapper gives it the interface of a cascade stage. diffusers must be installed; the folder is a
``save_pretrained`` copy of that repository (model_index.json, unet/, vae/, text_encoder/, tokenizer/, ...).

Our own third pixel stage is an ordinary :class:`pixelcascade.models.unet.SuperResUNet` stage (the IF-III-like
presets); :class:`pixelcascade.pipeline.Cascade` runs any number of those.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import SampleConfig
from .pipeline import PipelineError

SDX4_DEFAULT = SampleConfig(sampler="ddim", num_steps="75", guidance_scale=9.0, aug_level=0.1)  # noise_level 100


def is_sdx4_folder(path: str | Path) -> bool:
    p = Path(path)
    if not (p / "model_index.json").is_file():
        return False
    return "StableDiffusionUpscalePipeline" in (p / "model_index.json").read_text()


class SDx4Stage:
    """A cascade stage that runs diffusers' StableDiffusionUpscalePipeline on the previous stage's images."""

    is_super_res = True
    uses_prompts = True
    scale = 4

    def __init__(self, path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 settings: SampleConfig = SDX4_DEFAULT):
        try:
            from diffusers import StableDiffusionUpscalePipeline
        except ImportError:
            raise PipelineError("the SD x4 upscaler stage needs diffusers: pip install diffusers") from None
        p = Path(path).expanduser()
        if not is_sdx4_folder(p):
            raise PipelineError(f"{p} is not a stable-diffusion-x4-upscaler folder (no model_index.json naming "
                                "StableDiffusionUpscalePipeline): save it with save_pretrained where there is "
                                "internet and pass that folder")
        self.pipe = StableDiffusionUpscalePipeline.from_pretrained(str(p), dtype=dtype, local_files_only=True)
        self.pipe.set_progress_bar_config(disable=True)
        self.pipe.to(device)
        self.device, self.settings, self.path = device, settings, p
        self.meta = {"stage": "sd-x4-upscaler", "path": str(p)}

    def num_steps(self, settings: SampleConfig | None = None) -> int:
        return int((settings or self.settings).num_steps)

    def to(self, device) -> SDx4Stage:
        self.pipe.to(device)
        self.device = str(device)
        return self

    def run_stage(self, inp) -> torch.Tensor:
        """One cascade stage (pipeline.StageInputs): the prompts and the previous stage's images; the states our
        stages read are not used (this model has its own text encoder)."""
        return self.sample_prompts(inp.prompts, inp.seeds, low_res=inp.low_res, size=inp.size, settings=inp.settings,
                                   callback=inp.callback)

    @torch.no_grad()
    def sample_prompts(self, prompts: list[str], seeds: list[int], *, low_res: torch.Tensor,
                       size: tuple[int | None, int | None] = (None, None), settings: SampleConfig | None = None,
                       callback=None) -> torch.Tensor:
        """[B, 3, h, w] in [-1, 1] -> [B, 3, 4h, 4w] in [-1, 1]; one generator per image (seeds)."""
        s = settings or self.settings
        if low_res is None:
            raise PipelineError("the SD x4 upscaler is a later stage: it needs the previous stage's images")
        if s.sampler not in ("ddim", "ddpm"):
            raise PipelineError(f"the SD x4 upscaler stage runs its own DDIM sampler, not {s.sampler}")
        gens = [torch.Generator().manual_seed(int(sd)) for sd in seeds]
        steps = self.num_steps(s)
        cb = None if callback is None else (lambda i, t, latents: callback(i, steps, None, None))
        out = self.pipe(prompt=list(prompts), image=((low_res.float().clamp(-1, 1) + 1) / 2).to(self.device),
                        num_inference_steps=steps, guidance_scale=s.guidance_scale,
                        noise_level=int(round(s.aug_level * 1000)), generator=gens, output_type="pt",
                        callback=cb).images
        img = torch.as_tensor(out).float() * 2 - 1
        if size[0] is not None and tuple(img.shape[-2:]) != tuple(size):
            from .pipeline import resize
            img = resize(img, size)
        return img.clamp(-1, 1)
