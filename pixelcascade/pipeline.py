"""Stages and pipelines: text -> image with any sampler, per-image seeds, guidance and thresholding.

A ``Stage`` is one UNet plus its diffusion settings. ``Stage.sample`` runs one sampler over a batch;
every image has its own seed and its own noise stream, so an image does not depend on its batch-mates.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from .config import ConfigError, DiffusionConfig, SampleConfig, UNetConfig, from_dict, to_dict
from .diffusion.denoiser import Denoiser
from .diffusion.guidance import aug_level_to_t, noise_augment
from .diffusion.layout import LayoutGuidance
from .diffusion.schedule import truncate
from .errors import PixelcascadeError
from .inputs import DEFAULT_MAX_PIXELS
from .samplers import get_sampler
from .text.relations import LayoutTarget, parse_relation, relation_target
from .utils import release_heap


class PipelineError(PixelcascadeError, ValueError):
    """Bad input to a pipeline, with the fix in the message."""


@dataclass
class StageInputs:
    """What a cascade hands each stage (k-diffusion's wrapper idea: every stage, ours or an external pipeline,
    takes the same inputs and uses what it needs). ``text`` / ``uncond``: (states, mask or None)."""

    prompts: list[str]
    seeds: list[int]
    text: tuple
    uncond: tuple
    size: tuple[int, int]
    settings: SampleConfig | None = None
    low_res: torch.Tensor | None = None
    init_image: torch.Tensor | None = None
    strength: float = 1.0
    mask: torch.Tensor | None = None
    callback: object = None
    layout: list | None = None


@dataclass
class Stage:
    unet: torch.nn.Module
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    settings: SampleConfig = field(default_factory=SampleConfig)
    meta: dict = field(default_factory=dict)  # text encoder name, max_length, training recipe ...
    streamer: object = None  # offload.WeightStreamer: the weights come to the device only while they run

    @property
    def cfg(self) -> UNetConfig:
        return self.unet.cfg

    @property
    def is_super_res(self) -> bool:
        return self.cfg.super_res

    uses_prompts = False  # our stages read the text states; external ones (stage3.SDx4Stage) the prompts
    scale = None  # output/input size ratio; None: from the native sizes of consecutive stages

    def denoiser(self) -> Denoiser:
        return Denoiser(self.unet, self.diffusion)

    def num_steps(self, settings: SampleConfig | None = None) -> int:
        return len(self.denoiser().schedule.respace((settings or self.settings).num_steps))

    def to(self, device) -> Stage:
        if self.streamer is None:  # a streamed UNet's weights already go where they run
            self.unet.to(device)
        return self

    def run_stage(self, inp: StageInputs) -> torch.Tensor:
        """One cascade stage: the input image and mask at this stage's size, the text states as this model was
        trained to read them (zeroed padding for models trained on stored states), then :meth:`sample`."""
        h, w = inp.size
        init = mask = None
        if inp.init_image is not None:
            init = resize(inp.init_image, (h, w))
            mask = None if inp.mask is None else (resize(inp.mask.float(), (h, w), "nearest") > 0.5).float()
        (emb, emb_mask), (unc, unc_mask) = inp.text, inp.uncond
        if self.meta.get("text_padding") == "zeros":
            emb, unc = zero_padding(emb, emb_mask), zero_padding(unc, unc_mask)
        return self.sample(emb, unc, inp.seeds, height=h, width=w, settings=inp.settings, low_res=inp.low_res,
                           init_image=init, strength=inp.strength, mask=mask, callback=inp.callback,
                           layout=inp.layout)

    @torch.no_grad()
    def sample(self, text_emb: torch.Tensor, uncond_emb: torch.Tensor | None, seeds: list[int], *,
               height: int | None = None, width: int | None = None, settings: SampleConfig | None = None,
               low_res: torch.Tensor | None = None, init_image: torch.Tensor | None = None,
               strength: float = 1.0, mask: torch.Tensor | None = None, callback=None,
               layout: list[LayoutTarget | None] | None = None) -> torch.Tensor:
        """Images in [-1, 1], [B, 3, H, W]. ``low_res`` ([B, 3, h, w] in [-1, 1]) for super-resolution stages.

        ``init_image`` (in [-1, 1], at the output size) with ``strength`` < 1: image-to-image as IF does it, the
        image noised to the start of the last ``int(strength * steps)`` steps of the respaced chain (diffusers'
        convention), then denoised under the prompt.
        ``mask`` ([B, 1, H, W], 1 = regenerate): inpainting; the other pixels stay the clean ``init_image`` at
        every step (IF's inpainting); DDPM only.
        ``layout`` (one per image, from :func:`layout_targets`): the relation each prompt states, for layout
        guidance when ``settings.layout_guidance`` > 0 (text-to-image stages; ``diffusion.layout``).
        """
        s = settings or self.settings
        if init_image is not None and height is None:
            height, width = init_image.shape[-2:]
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
        den = self.denoiser()
        model_kwargs = {}
        if self.is_super_res:
            if low_res is None:
                raise PipelineError("this is a super-resolution stage: it needs a low-res image from an earlier "
                                    "stage (or use `pixelcascade upscale IMAGE`)")
            aug_t = aug_level_to_t(s.aug_level, b, device=device)
            aug_noise = noise(-2, (b, 3, h, w))
            model_kwargs = dict(low_res=noise_augment(low_res.to(device).float(), (h, w), aug_t,
                                                      den.schedule, aug_noise),
                                aug_t=aug_t)
        elif low_res is not None:
            raise PipelineError("this stage generates from text: it takes no low-res image (stage order?)")
        cond = den.condition(text_emb.to(device), None if uncond_emb is None else uncond_emb.to(device),
                             guidance_scale=s.guidance_scale, dyn_thresh_p=s.dyn_thresh_p,
                             dyn_thresh_max=s.dyn_thresh_max, **model_kwargs)
        if s.layout_guidance > 0 and layout and any(layout) and not self.is_super_res:
            if len(layout) != b:
                raise PipelineError(f"{len(layout)} layout targets for {b} images: give one per image (or None)")
            den = LayoutGuidance(den, layout, s.layout_guidance, s.layout_steps)
        steps = den.schedule.respace(s.num_steps)
        sampler = get_sampler(s.sampler)
        extra = {}
        if init_image is not None:
            init = init_image.to(device).float()
            if init.shape != (b, 3, h, w):
                raise PipelineError(f"init image is {tuple(init.shape[1:])} but this stage makes {(3, h, w)}: "
                                    "resize the image (or pass matching --height/--width)")
            try:
                steps = truncate(steps, strength)
            except ValueError as e:
                raise PipelineError(str(e)) from None
            t0 = torch.full((b,), int(steps.timesteps[-1]), dtype=torch.long, device=device)
            noisy = den.schedule.q_sample(init, t0, x)  # x is this image's first noise draw
            if mask is not None:
                mask = mask.to(device).float()
                if mask.shape[0] != b or mask.shape[-2:] != (h, w):
                    raise PipelineError(f"mask is {tuple(mask.shape[-2:])} but the image is {(h, w)}: the mask "
                                        "must have the image's size")
                if s.sampler != "ddpm":
                    raise PipelineError("inpainting runs with the ddpm sampler (as IF's); use --sampler ddpm")
                x = mask * noisy + (1 - mask) * init  # known pixels start (and stay) clean
                extra["inpaint"] = mask
            else:
                x = noisy
        elif mask is not None:
            raise PipelineError("a mask needs the image to inpaint (init_image)")
        out = sampler(den, x, steps, cond=cond, noise=noise, callback=callback, **extra)
        if not torch.isfinite(out).all():  # clamp would turn NaN into a black image without a word
            raise PipelineError(f"the {self.cfg.image_size} px stage produced NaN or infinite pixels: its weights are "
                                "broken (NaN or inf in the file), or fp16 overflowed; check the model file, or use "
                                "--dtype bf16 / fp32")
        return out.clamp(-1, 1)


def resize(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize [B, C, H, W] images (antialiased bilinear) or masks (nearest) to ``size``."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return torch.nn.functional.interpolate(x, size=size, mode="nearest")
    return torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] [B, 3, H, W] -> uint8 [B, H, W, 3] as IF: ((x + 1) * 127.5).round().clamp(0, 255)."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(img: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] (or [H, W, 3]) -> [-1, 1] float [B, 3, H, W]."""
    t = torch.from_numpy(np.array(img)).float()
    if t.ndim == 3:
        t = t[None]
    return t.permute(0, 3, 1, 2) / 127.5 - 1


def prompt_list(prompts) -> list[str]:
    """One prompt (a string) or several (a list or tuple of strings) as a list; anything else one clear error."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, (list, tuple)) and prompts and all(isinstance(p, str) for p in prompts):
        return list(prompts)
    raise PipelineError(f"prompt: expected a string or a non-empty list of strings, got {prompts!r:.80}")


def whole_number(name: str, value, lo: int, hi: int) -> int:
    """An argument that must be a whole number in [lo, hi] (seeds, counts)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise PipelineError(f"{name}={value!r}: expected a whole number from {lo} to {hi}")
    return int(value)


def with_overrides(s: SampleConfig, **kw) -> SampleConfig:
    """``s`` with the settings given (None: keep), each checked as the config file's would be: a wrong type or
    value is one :class:`ConfigError` naming the setting."""
    changes = {k: v for k, v in kw.items() if v is not None}
    if not changes:
        return s
    out = from_dict(SampleConfig, {**to_dict(s), **changes})
    if "num_steps" in changes:
        check_steps(out.num_steps)
    return out


def check_steps(num_steps: str, num_timesteps: int = 1000) -> None:
    """A step spec must respace the chain (checked when it is set, not at first use)."""
    from .diffusion.schedule import space_timesteps
    try:
        space_timesteps(num_timesteps, num_steps)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"num_steps: {e}") from None


def stage_settings(stages, *, sampler: str | None = None, sampler_ii: str | None = None, steps: str | None = None,
                   steps_ii: str | None = None, guidance: float | None = None, guidance_ii: float | None = None,
                   aug_level: float | None = None, dyn_thresh_max: float | None = None,
                   dyn_thresh_max_ii: float | None = None, layout_guidance: float | None = None) -> list[SampleConfig]:
    """Each stage's settings: its shipped defaults, with the user's choices (``*_ii`` for the later stages;
    ``sampler`` alone sets every stage's; ``aug_level`` every super-resolution stage's)."""
    return [with_overrides(st.settings, sampler=sampler if i == 0 else (sampler_ii or sampler),
                           num_steps=steps if i == 0 else steps_ii,
                           guidance_scale=guidance if i == 0 else guidance_ii,
                           aug_level=aug_level if st.is_super_res else None,
                           dyn_thresh_max=dyn_thresh_max if i == 0 else dyn_thresh_max_ii,
                           layout_guidance=layout_guidance if i == 0 else None)
            for i, st in enumerate(stages)]


def trained_input_size(stage) -> int | None:
    """The low-res size a super-resolution stage of ours was trained on (its run config's data.low_res_size), or
    None where the file does not say (IF's folders, external stages)."""
    import json
    run = getattr(stage, "meta", {}).get("run_config")
    if not run or not stage.is_super_res:
        return None
    try:
        return int(json.loads(run)["data"]["low_res_size"])
    except (ValueError, KeyError, TypeError):
        return None


def layout_targets(encoder, prompts: list[str]) -> list[LayoutTarget | None]:
    """Per prompt, the spatial relation it states as token positions of the encoder's output (layout guidance),
    or None: no relation, or an encoder that cannot give token spans."""
    if not hasattr(encoder, "token_offsets"):
        return [None] * len(prompts)
    out = []
    for text in encoder.prepare(prompts):
        rel = parse_relation(text)
        out.append(None if rel is None else relation_target(rel, encoder.token_offsets(text)))
    return out


def negative_states(encoder, negative_prompts: str | list[str] | None, n: int,
                    with_mask: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The unconditional branch's text states for ``n`` images: the empty prompt's, or the negative prompts'
    where given (one for all, or one per image; "" keeps the empty prompt). Used by every stage of a cascade, and
    by a super-resolution stage run on its own (``pixelcascade upscale``). ``with_mask``: (states, token mask)."""
    uncond, mask = encoder.empty(n)
    if negative_prompts is not None:
        if not (isinstance(negative_prompts, str) or isinstance(negative_prompts, (list, tuple))
                and all(isinstance(t, str) for t in negative_prompts)):
            raise PipelineError(f"negative_prompt: expected a string or a list of strings, got "
                                f"{negative_prompts!r:.80}")
        negs = [negative_prompts] * n if isinstance(negative_prompts, str) else list(negative_prompts)
        if len(negs) != n:
            raise PipelineError(f"{len(negs)} negative prompts for {n} prompts: give one for all, or one per prompt")
        idx = [i for i, t in enumerate(negs) if t.strip()]
        if idx:
            neg, neg_mask = encoder([negs[i] for i in idx])
            uncond = uncond.clone()
            uncond[idx] = neg.to(uncond.dtype)
            if mask is not None and neg_mask is not None:
                mask = mask.clone()
                mask[idx] = neg_mask.to(mask.dtype)
    return (uncond, mask) if with_mask else uncond


def zero_padding(states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """States with the padding positions zeroed: the input of a model trained on stored text states, which keep
    only the real tokens (data.text_states; its metadata says ``text_padding=zeros``). No mask: unchanged."""
    return states if mask is None else states * mask.to(states.device, states.dtype)[..., None]


DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def settings_record(*, prompt: str, seed: int, settings: list[SampleConfig], size, model: str, device: str,
                    dtype: str, command: str = "generate", negative_prompt: str = "", lora=(), **extra) -> dict:
    """How one image was made: the JSON sidecar the CLI writes beside it, the record the API returns with it and
    eval keeps with its images. The same function for all three, so they always agree."""
    import dataclasses

    from .version import __version__
    record = {"prompt": prompt, "seed": int(seed), "command": command, "model": str(model), "stages": len(settings),
              "device": device, "dtype": dtype, "settings": [dataclasses.asdict(s) for s in settings],
              "size": [int(v) for v in size], "pixelcascade": __version__}
    if lora:
        record["lora"] = list(lora)
    if negative_prompt and negative_prompt.strip():
        record["negative_prompt"] = negative_prompt
    record.update(extra)
    return record


@dataclass
class CascadeOutput:
    """What a cascade call returns (diffusers' ``ImagePipelineOutput`` with the rest a user needs to reproduce it).

    ``images``: the last stage's images as ``output_type`` asked: PIL images ("pil"), a float tensor [B, 3, H, W]
    in [0, 1] ("pt") or a float32 array [B, H, W, 3] in [0, 1] ("np"). ``stage_images``: every stage's, in the
    same form, when asked for (``return_stages=True``). ``seeds``: each image's seed. ``settings``: each image's
    settings record (:func:`settings_record`), what the CLI writes as its sidecar.
    """

    images: object
    seeds: list[int]
    settings: list[dict]
    stage_images: list | None = None


@dataclass
class Cascade:
    """Stage I then any number of super-resolution stages, sharing one text encoding: the engine under the public
    :class:`pixelcascade.api.Cascade` (which adds diffusers' call, loading and saving)."""

    stages: list[Stage]
    encoder: object  # a text encoder: __call__(texts) -> (text_emb, text_mask), .empty(n)
    # run on this device one model at a time (text encoder, then each stage), the others parked on the CPU:
    # what lets IF-I-XL + T5-XXL run on a small GPU. None: every model stays where it was loaded.
    offload: str | None = None
    offload_mode: str | None = None  # "model" or "sequential" (api.load): how the stages were loaded
    # a cascade that starts from the user's image: its first stage is a super-resolution one (upscale)
    starts_from_image: bool = False
    source: str = ""  # the model it was loaded from, as given (recorded beside every image)
    loras: tuple = ()  # the LoRA adapters merged into it, as given
    text_encoder: str = ""  # the text encoder's spec ("minilm" or a folder), written into saved stages

    def __post_init__(self):
        if not self.stages:
            raise PipelineError("a cascade needs at least one stage")
        if self.stages[0].is_super_res and not self.starts_from_image:
            raise PipelineError("the first stage is a super-resolution model: stage I (text -> image) must run "
                                "first; pass the stage I model before the stage II one")
        for i, st in enumerate(self.stages[1:], start=2):
            if not st.is_super_res:
                raise PipelineError(f"stage {i} generates from text only: every stage after the first must be a "
                                    "super-resolution model")
            want, made = trained_input_size(st), getattr(self.stages[i - 2], "cfg", None)
            if want and made is not None and made.image_size != want:
                raise PipelineError(f"stage {i} was trained to upscale {want} px images to {st.cfg.image_size} px, "
                                    f"but stage {i - 1} makes {made.image_size} px: its output would be noise. Pair "
                                    f"it with a stage {i - 1} of {want} px, or a stage {i} trained from "
                                    f"{made.image_size} px (e.g. data.low_res_size={made.image_size})")

    @torch.no_grad()
    def run(self, prompts: list[str], seeds: list[int], *, settings: list[SampleConfig | None] | None = None,
            sizes: list[tuple[int, int] | None] | None = None, num_stages: int | None = None,
            progress: bool = False, init_image: torch.Tensor | None = None, strength: float = 1.0,
            mask: torch.Tensor | None = None, negative_prompts: str | list[str] | None = None,
            max_pixels: int | None = DEFAULT_MAX_PIXELS, low_res: torch.Tensor | None = None,
            text_states: tuple | None = None, negative_states_: tuple | None = None,
            step_callback=None, stage_callback=None) -> list[torch.Tensor]:
        """Run the first ``num_stages`` stages; returns every stage's images in [-1, 1].

        ``init_image`` ([B, 3, H, W] in [-1, 1]) and ``strength``: image-to-image in every stage, the image
        resized to each stage's size; with ``mask`` ([B, 1, H, W], 1 = regenerate): inpainting.
        ``negative_prompts`` (one for all, or one per prompt; "" = none): what guidance steers away from, in
        every stage of ours (an external stage with its own encoder, the SD x4 upscaler, keeps its own): the
        unconditional branch of classifier-free guidance gets their states instead of the empty prompt's
        (diffusers' ``negative_prompt``). ``low_res`` ([B, 3, h, w] in [-1, 1]): the input of a cascade that starts
        from an image. ``text_states`` / ``negative_states_``: (states [B, L, D], mask or None) given instead of
        encoding the prompts (diffusers' ``prompt_embeds``). ``step_callback(stage, k, n, x)`` after every step;
        ``stage_callback(stage, images)`` with each stage's images as it finishes (a page shows them as they land).
        """
        n = num_stages or len(self.stages)
        if not 1 <= n <= len(self.stages):
            raise PipelineError(f"--stages {n}: this cascade has {len(self.stages)} stage(s)")
        if self.starts_from_image and low_res is None:
            raise PipelineError("this cascade starts with a super-resolution stage: give the image to upscale")
        settings = list(settings or []) + [None] * n
        sizes = self.planned_sizes(sizes, n, low_res)
        if max_pixels is not None:
            for i, (h, w) in enumerate(sizes):
                if h * w > max_pixels:
                    raise PipelineError(f"stage {i + 1} would make {w}x{h} images ({h * w / 1e6:.1f} MP), over the "
                                        f"limit of {max_pixels / 1e6:.1f} MP: ask for a smaller --height/--width "
                                        "(or raise --max-pixels)")
        text_emb, text_mask, uncond, uncond_mask = self._states(prompts, negative_prompts, text_states,
                                                                negative_states_)
        layout = None  # the relation each prompt states, for stages that sample with layout guidance
        if prompts and any((s or st.settings).layout_guidance > 0 for s, st in zip(settings, self.stages[:n])):
            layout = layout_targets(self.encoder, prompts)
        bar = None
        if progress:
            from tqdm import tqdm
            total = sum(st.num_steps(settings[i]) for i, st in enumerate(self.stages[:n]))
            bar = tqdm(total=total, desc="sampling", unit="step", leave=False)
        outs, low = [], low_res
        for i, st in enumerate(self.stages[:n]):
            h, w = sizes[i]

            def cb(k, steps, x, _pred, i=i):
                if bar is not None:
                    bar.update(1)
                if step_callback is not None:
                    step_callback(i, k, steps, x)
            inputs = StageInputs(prompts=prompts, seeds=seeds, text=(text_emb, text_mask),
                                 uncond=(uncond, uncond_mask), size=(h, w), settings=settings[i], low_res=low,
                                 init_image=init_image, strength=strength, mask=mask, callback=cb, layout=layout)
            with self._on_device(st):
                img = st.run_stage(inputs)
            outs.append(img.cpu() if self.offload else img)
            low = img
            if stage_callback is not None:
                stage_callback(i, img)
        if bar is not None:
            bar.close()
        return outs

    def record(self, prompt: str, seed: int, settings: list, size, *, command: str = "generate",
               negative_prompt=None, **extra) -> dict:
        """The settings record of one image this cascade made (:func:`pixelcascade.pipeline.settings_record`)."""
        p = next(self.stages[0].unet.parameters()) if hasattr(self.stages[0], "unet") else None
        if getattr(self.encoder, "quantized", None):  # what changes the text states, beside each image
            extra.setdefault("text_encoder_dtype", self.encoder.quantized)
        from .prompt_states import StatesEncoder
        if isinstance(self.encoder, StatesEncoder):
            extra.setdefault("prompt_states", str(self.encoder.path))
        return settings_record(prompt=prompt, seed=seed, settings=settings, size=size, model=self.source,
                               device=self.offload or (str(p.device) if p is not None else "cpu"),
                               dtype=DTYPE_NAMES.get(p.dtype, str(p.dtype)) if p is not None else "fp32",
                               command=command, negative_prompt=negative_prompt
                               if isinstance(negative_prompt, str) else "", lora=self.loras, **extra)

    def _states(self, prompts, negative_prompts, text_states, negative_states_):
        """(text states, mask, unconditional states, mask): encoded here, or as given (one stay of the encoder on
        the device, or in memory when offloading on a CPU)."""
        given = text_states is not None and negative_states_ is not None
        with nullcontext() if given else self._on_device(self.encoder):  # nothing to encode: not moved
            if text_states is None:
                text_emb, text_mask = self.encoder(prompts)
            else:
                text_emb, text_mask = text_states
            if negative_states_ is not None:
                uncond, uncond_mask = negative_states_
            else:
                uncond, uncond_mask = negative_states(self.encoder, negative_prompts, text_emb.shape[0],
                                                      with_mask=True)
        return text_emb, text_mask, uncond, uncond_mask

    def planned_sizes(self, sizes: list | None, n: int, low_res: torch.Tensor | None = None) -> list[tuple[int, int]]:
        """Each of the first ``n`` stages' output (height, width): the size asked for it, else the previous stage's
        (or the input image's) scaled by this stage's native ratio (stage I: its native size)."""
        asked = list(sizes or []) + [None] * n
        out = []
        prev = None if low_res is None else tuple(low_res.shape[-2:])
        for i, st in enumerate(self.stages[:n]):
            size = asked[i]
            if size is None and prev is not None:
                ratio = st.scale if st.scale else (st.cfg.image_size / self.stages[i - 1].cfg.image_size if i
                                                   else 2.0)
                size = (round(prev[0] * ratio), round(prev[1] * ratio))
            size = tuple(size) if size is not None else (st.cfg.image_size, st.cfg.image_size)
            out.append(size)
            prev = size
        return out

    @contextmanager
    def _on_device(self, part):
        """With ``offload``: move one model to the device for the block, then back to the CPU. A streamed stage
        releases its weights after the block; with offloading on a CPU, the text encoder its weights (reloaded
        from its folder when next needed)."""
        streamer = getattr(part, "streamer", None)
        if streamer is not None or (self.offload_mode and not self.offload and hasattr(part, "release")):
            try:
                yield
            finally:
                streamer.release_all() if streamer is not None else part.release()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                release_heap()
            return
        if not self.offload or not hasattr(part, "to"):
            yield
            return
        part.to(self.offload)
        try:
            yield
        finally:
            part.to("cpu")
            if str(self.offload).startswith("cuda"):
                torch.cuda.empty_cache()
