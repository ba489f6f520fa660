"""The Python API, in diffusers' habits: load a cascade (a shipped model by name, our files, released IF
folders), then call it.

    import pixelcascade
    pipe = pixelcascade.Cascade.from_pretrained("shapes")   # = pixelcascade.load(); or paths, "stage1,stage2"
    out = pipe("three red circles to the left of a blue square", seed=0, num_inference_steps=27)
    out.images[0].save("out.png"); out.settings[0]          # the image and how it was made (the CLI's sidecar)

    pipe = pixelcascade.load("/models/IF-I-XL-v1.0,/models/IF-II-L-v1.0", device="cuda", dtype="fp16",
                             text_encoder="/models/t5-v1_1-xxl", offload=True)

``pipe(...)`` returns a :class:`~pixelcascade.pipeline.CascadeOutput`; ``pipe.generate(...)`` the last stage's PIL
images with the CLI's names; ``pipe.run(prompts, seeds, ...)`` (the engine) every stage's tensors in [-1, 1].
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import SampleConfig
from .inputs import DEFAULT_MAX_PIXELS
from .pipeline import Cascade as _EngineCascade
from .pipeline import (
    CascadeOutput,
    PipelineError,
    from_uint8,
    prompt_list,
    stage_settings,
    to_uint8,
    whole_number,
    with_overrides,
)
from .shipped import DEFAULT_MODEL, EMOJI_FEATURES, WEIGHTS_DIR, ModelError, shipped_models, stage_paths  # noqa: F401

DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16", "half": "float16",
          "bf16": "bfloat16", "bfloat16": "bfloat16"}


def torch_dtype(dtype, device: str = "cpu"):
    """A torch dtype from a torch dtype or its name ("fp16", "bf16", "fp32", "float16", ...); None: float32;
    "auto": :func:`auto_dtype` on ``device``."""
    import torch
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str) and dtype.lower() == "auto":
        return auto_dtype(device)
    if isinstance(dtype, torch.dtype) and dtype in (torch.float32, torch.float16, torch.bfloat16):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return getattr(torch, DTYPES[dtype.lower()])
    raise ModelError(f"dtype={dtype!r}: use torch.float32, torch.float16, torch.bfloat16 or 'fp32', 'fp16', 'bf16', "
                     "'auto'")


def auto_dtype(device: str = "cpu"):
    """bf16 where ``device`` multiplies it natively, else fp32: a CPU with AVX512-BF16 or AMX (sampling the shipped
    model there is 1.7x as fast in bf16, at the same benchmark accuracy: docs/performance.md), a CUDA GPU with
    bf16. On other CPUs bf16 is emulated and slower than fp32."""
    import torch
    if str(device).startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return torch.bfloat16 if native else torch.float32


def _device(device) -> str:
    """A device the models can move to: "cpu", "cuda", "cuda:N" (or a torch.device); anything else one error."""
    import re

    import torch
    name = str(device) if isinstance(device, (str, torch.device)) else None
    if name is None or not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise ModelError(f"device={device!r}: use 'cpu', 'cuda' or 'cuda:N'")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device={device!r}: no CUDA device here; use 'cpu'")
    return name


def load(model: str | Path = "shapes", *, device: str = "cpu", dtype=None, text_encoder: str | None = None,
         max_stages: int | None = None, allow_sr_first: bool = False, offload: bool | str = False,
         stage3: str | None = None, lora: list | None = None, text_encoder_dtype: str | None = None,
         prompt_states: str | Path | None = None):
    """A :class:`~pixelcascade.pipeline.Cascade` from ``model``: a shipped model's name, one of our .safetensors
    files, a folder of stage*.safetensors, an IF folder (official or diffusers layout), or several of those
    comma-separated, stage I first. ``dtype``: the UNets' (None: fp32; "auto": bf16 where ``device`` multiplies
    it natively, as the command line does). ``text_encoder``: a local folder (default: the one the model names; a
    diffusers IF-I folder's own T5; MiniLM for 384-d models). ``text_encoder_dtype``: its weights, fp32, bf16,
    int8 or nf4 (``text.quantize``; default: the encoder's own, bf16 for T5). ``prompt_states``: a file from
    ``pixelcascade encode`` used instead of a text encoder, which is then never loaded. ``max_stages``: run only
    the first N. ``offload``: "model" (or True) keeps every model on the CPU and moves each to ``device`` only
    while it runs; "sequential" streams the UNets' weights block by block (``offload.py``). ``stage3``: a
    stable-diffusion-x4-upscaler folder (IF's stage III) or another super-resolution stage, appended. ``lora``:
    LoRA adapter files, ``"PATH"`` or ``"PATH:SCALE"`` (or (path, scale) pairs), each merged into the stage it
    was trained on at its scale."""

    from .pipeline import PipelineError
    from .stage3 import SDx4Stage, is_sdx4_folder
    from .tensorfiles import CheckpointError
    from .weights import load_stage, load_stage_offloaded
    device = _device(device)
    dtype = torch_dtype(dtype, device)
    offload = _offload_mode(offload)
    paths = stage_paths(model)
    if stage3:
        p3 = Path(stage3).expanduser()
        if not p3.exists():
            raise ModelError(f"--stage3 {p3}: no such file or folder")
        paths.append(p3)
    if max_stages:
        if max_stages > len(paths):
            raise ModelError(f"--stages {max_stages}: {model} has {len(paths)} stage{'s' * (len(paths) > 1)}; "
                             f"give at most {len(paths)} (or leave it out to run them all)")
        paths = paths[:max_stages]
    home = "cpu" if offload else device
    if lora and _streams(offload, device):
        raise ModelError(f"--lora with --offload {offload}{' on a CPU' * (offload == 'model')}: the weights are read "
                         "from the model's file as they run, without the adapter; merge it into a copy of the model "
                         "first (pixelcascade.load(MODEL, lora=[...]).save_pretrained(FOLDER)) and load that")

    def one(p: Path):
        if is_sdx4_folder(p):
            return SDx4Stage(p, home, dtype)
        if _streams(offload, device) and (offload == "sequential" or p.suffix == ".safetensors"):
            return load_stage_offloaded(p, device, dtype, unit="block" if offload == "sequential" else "model")
        return load_stage(p, device=home, dtype=dtype)
    try:
        stages = [one(p) for p in paths]
    except (CheckpointError, PipelineError) as e:
        raise ModelError(str(e)) from None
    if lora:
        _merge_loras(stages, lora)
    if not allow_sr_first and stages[0].is_super_res:
        raise ModelError(f"{paths[0]}: the first stage is a super-resolution model; stage I (text -> image) must "
                         "run first: list the stage I model before the stage II one")
    spec = text_encoder or encoder_spec(paths[0], stages[0].meta, stages[0].cfg.encoder_dim)
    encoder = _stage_encoder(stages[0], paths[0], spec, home, text_encoder_dtype, prompt_states)
    try:
        return Cascade(stages, encoder, offload=device if offload and device != "cpu" else None,
                       offload_mode=offload or None,
                       starts_from_image=allow_sr_first, source=str(model), loras=tuple(str(x) for x in lora or ()),
                       text_encoder=str(spec))
    except ValueError as e:
        raise ModelError(str(e)) from None


def _streams(offload: str, device: str) -> bool:
    """Whether the UNets' weights stream to where they run (offload.WeightStreamer): block by block, or on a CPU a
    whole model read from its file while it runs (a GPU's model offload moves whole models instead)."""
    return offload == "sequential" or (offload == "model" and device == "cpu")


def _offload_mode(offload) -> str:
    """"" (none), "model" or "sequential" from the API's ``offload`` (True: "model")."""
    if offload in (False, None, "", "none"):
        return ""
    if offload is True or offload == "model":
        return "model"
    if offload == "sequential":
        return "sequential"
    raise ModelError(f"offload={offload!r}: use 'model' (one model on the device at a time) or 'sequential' "
                     "(the UNets' weights streamed block by block)")


def encoder_spec(path: Path, meta: dict, encoder_dim: int) -> str:
    """The text encoder a model reads: the one its file names, a diffusers IF-I folder's own T5, MiniLM for
    384-d models; else one error asking for --text-encoder."""
    from .text.encoder import carries_text_encoder
    spec = meta.get("text_encoder")
    if spec is not None:
        return spec
    if carries_text_encoder(path):
        return str(path)  # a diffusers IF pipeline folder carries its T5
    if encoder_dim == 384:
        return "minilm"
    raise ModelError(f"{path} expects {encoder_dim}-d text states and names no text encoder: pass --text-encoder "
                     "/path/to/t5-v1_1-xxl (a local folder) for IF weights")


def _stage_encoder(stage, path: Path, spec: str, device: str, text_encoder_dtype: str | None,
                   prompt_states: str | Path | None):
    """The first stage's text encoder, loaded and checked against it; or a states file standing in for it."""
    from .tensorfiles import CheckpointError
    from .text.encoder import TextEncoderError, load_encoder
    from .text.quantize import QuantizationError
    try:
        if prompt_states is not None:
            from .prompt_states import StatesEncoder
            encoder = StatesEncoder(prompt_states)
            if not getattr(stage, "uses_prompts", False):
                encoder.check_fits(stage.meta, stage.cfg.encoder_dim, str(path))
            return encoder
        encoder = load_encoder(spec, int(stage.meta.get("text_max_length", 77)), device=device,
                               text_dtype=text_encoder_dtype)
    except (TextEncoderError, QuantizationError, CheckpointError) as e:
        raise ModelError(str(e)) from None
    if getattr(encoder, "dim", None) and not getattr(stage, "uses_prompts", False) \
            and encoder.dim != stage.cfg.encoder_dim:
        raise ModelError(f"the text encoder gives {encoder.dim}-d states but {path} expects "
                         f"{stage.cfg.encoder_dim}-d: pass the encoder the model was trained with "
                         "(--text-encoder)")
    return encoder


def load_text_encoder(model: str | Path = "shapes", *, text_encoder: str | None = None, device: str = "cpu",
                      text_encoder_dtype: str | None = None):
    """The text encoder ``model`` reads (or ``text_encoder``), at the window it was trained with, without loading
    any UNet: what ``pixelcascade encode`` runs."""
    from .tensorfiles import CheckpointError, read_metadata
    from .text.encoder import TextEncoderError, load_encoder
    from .text.quantize import QuantizationError
    first = stage_paths(model)[0]
    meta = read_metadata(first) if first.is_file() else {}
    dim = json.loads(meta["unet_config"]).get("encoder_dim", 0) if "unet_config" in meta else 0
    spec = text_encoder or encoder_spec(first, meta, dim)
    try:
        return load_encoder(spec, int(meta.get("text_max_length", 77)), device=_device(device),
                            text_dtype=text_encoder_dtype)
    except (TextEncoderError, QuantizationError, CheckpointError) as e:
        raise ModelError(str(e)) from None


def load_upscaler(model: str | Path, *, device: str = "cpu", dtype=None, text_encoder: str | None = None,
                  lora: list | None = None, **options) -> Cascade:
    """A cascade of one super-resolution stage that starts from the user's image: ``model``'s stage II (a cascade
    folder's or name's second stage, or a stage II file), as ``pixelcascade upscale`` runs it (``options``:
    :func:`load`'s ``text_encoder_dtype``, ``offload``)."""
    paths = stage_paths(model)
    sr_path = next((p for p in paths if "stage1" not in p.name), None) if len(paths) > 1 else paths[0]
    cascade = load(sr_path, device=device, dtype=dtype, text_encoder=text_encoder, allow_sr_first=True, lora=lora,
                   **options)
    if not cascade.stages[0].is_super_res:
        raise ModelError(f"{sr_path} is a text-to-image model, not a super-resolution stage: pass a stage II model")
    return cascade


def _merge_loras(stages, loras: list) -> None:
    """Each adapter into the stage whose UNet it was trained on (at its scale), merged into the weights: sampling
    costs what the base model costs. The stages' metadata lists them (sidecars record it)."""
    from .lora import LoraError, apply_adapters, merge_adapters, parse_lora_arg, read_adapter, same_unet
    per_stage: dict[int, list] = {}
    for item in loras:
        path, scale = parse_lora_arg(item) if isinstance(item, str) else item
        try:
            tensors, spec, meta = read_adapter(path)
        except LoraError as e:
            raise ModelError(str(e)) from None
        hits = [i for i, st in enumerate(stages) if not st.uses_prompts and same_unet(meta, st.cfg)]
        if not hits:
            raise ModelError(f"--lora {path}: it adapts a UNet that no stage of this model has (it was trained on "
                             f"{meta.get('base') or 'another model'}): load it with that model")
        per_stage.setdefault(hits[0], []).append((tensors, spec, scale, f"{Path(path).name}:{scale:g}"))
    for i, adapters in per_stage.items():
        unet = stages[i].unet
        try:
            apply_adapters(unet, [a[:3] for a in adapters])
        except LoraError as e:
            raise ModelError(str(e)) from None
        merge_adapters(unet)
        stages[i].meta = dict(stages[i].meta, lora=", ".join(a[3] for a in adapters))


# --------------------------------------------------------------------------------------------------
# the public cascade: diffusers' habits


_SETTING_OF = {"num_inference_steps": "num_steps", "guidance_scale": "guidance_scale", "sampler": "sampler",
               "dyn_thresh_max": "dyn_thresh_max", "aug_level": "aug_level", "layout_guidance": "layout_guidance"}


class Cascade(_EngineCascade):
    """A loaded cascade, called as a diffusers pipeline is::

        pipe = pixelcascade.Cascade.from_pretrained("shapes")          # or pixelcascade.load(...)
        out = pipe("two red circles", num_inference_steps=27, guidance_scale=5.0, seed=0)
        out.images[0].save("out.png"); out.settings[0]                 # the PNG and how it was made

    Per-stage settings: a number sets stage I's (``aug_level``: every super-resolution stage's), a list one value
    per stage (``num_inference_steps=[27, 50]``). The engine's ``run`` gives every stage's raw tensors.
    """

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path = "shapes", *, torch_dtype=None, device: str = "cpu",
                        **kwargs) -> Cascade:
        """:func:`load` under diffusers' name: a shipped model's name, our files, IF folders."""
        return load(name_or_path, dtype=torch_dtype, device=device, **kwargs)

    def __call__(self, prompt: str | list[str] | None = None, *, negative_prompt: str | list[str] | None = None,
                 num_inference_steps=None, guidance_scale=None, sampler=None, dyn_thresh_max=None, aug_level=None,
                 layout_guidance=None, seed: int | list[int] | None = None, generator=None,
                 num_images_per_prompt: int = 1, prompt_embeds=None, negative_prompt_embeds=None,
                 height: int | None = None, width: int | None = None, image=None, strength: float = 1.0,
                 mask_image=None, num_stages: int | None = None, output_type: str = "pil",
                 return_stages: bool = False, callback_on_step_end=None, callback_on_stage_end=None,
                 batch_size: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, settings: list | None = None, progress: bool = True,
                 **unknown) -> CascadeOutput:
        """Text to image (``image``: image to image; with ``mask_image``, white = repaint: inpainting; a cascade
        that starts from an image: its input). Returns a :class:`CascadeOutput`. Image i is seeded ``seed + i``
        (or ``seed[i]``; a ``generator`` draws the seeds), so it never depends on its batch. ``prompt_embeds``:
        text states [B, L, D] given instead of prompts. ``callback_on_step_end(pipe, step, timestep, kwargs)``
        runs after every step of every stage (``kwargs``: ``stage``, ``images`` in [-1, 1], ``stage_step`` and
        ``stage_steps``: the step within the stage and how many it runs); ``callback_on_stage_end(pipe, stage,
        images)`` after each stage with its images in [-1, 1] (one call per ``batch_size`` chunk). ``settings``: each
        stage's :class:`~pixelcascade.config.SampleConfig` to start from (default: the stages' own)."""
        if unknown:
            raise PipelineError(f"unknown argument(s) {', '.join(sorted(unknown))}; accepted: "
                                f"{', '.join(_accepted(self.__call__))}")
        if output_type not in ("pil", "pt", "np"):
            raise PipelineError(f"output_type={output_type!r}: choose 'pil', 'pt' or 'np'")
        n_stages = len(self.stages) if num_stages is None else whole_number("num_stages", num_stages, 1,
                                                                             len(self.stages))
        prompts, states = self._prompts(prompt, prompt_embeds)
        per = whole_number("num_images_per_prompt", num_images_per_prompt, 1, 10_000)
        every = [p for p in prompts for _ in range(per)]
        seeds = self._seeds(seed, generator, len(every))
        settings = self.stage_settings(settings, num_inference_steps=num_inference_steps,
                                       guidance_scale=guidance_scale, sampler=sampler, dyn_thresh_max=dyn_thresh_max,
                                       aug_level=aug_level, layout_guidance=layout_guidance)[:n_stages]
        init, mask, low = self._images(image, mask_image, max_pixels)
        size = None if height is None and width is None else \
            [(whole_number("height", height or self.stages[0].cfg.image_size, 1, 1 << 20),
              whole_number("width", width or self.stages[0].cfg.image_size, 1, 1 << 20))]
        if init is not None:
            _check_shape(init, self.planned_sizes(size, n_stages)[-1])
        step = [0]

        def on_step(stage, k, steps, x):
            step[0] += 1
            if callback_on_step_end is not None:
                callback_on_step_end(self, step[0], (stage, k), {"stage": stage, "images": x, "stage_step": k + 1,
                                                                 "stage_steps": steps})

        def on_stage(stage, x):
            if callback_on_stage_end is not None:
                callback_on_stage_end(self, stage, x)
        chunk = whole_number("batch_size", batch_size or len(every), 1, 1 << 20)
        outs = []
        for start in range(0, len(every), chunk):
            part = slice(start, start + chunk)
            nb = len(every[part])
            kw = dict(init_image=None if init is None else init.expand(nb, -1, -1, -1), strength=strength,
                      mask=None if mask is None else mask.expand(nb, -1, -1, -1),
                      low_res=None if low is None else low.expand(nb, -1, -1, -1))
            outs.append(self.run(every[part], seeds[part], settings=settings, sizes=size, num_stages=n_stages,
                                 progress=progress, negative_prompts=negative_prompt, max_pixels=max_pixels,
                                 text_states=None if states is None else _rows(states, part, per),
                                 negative_states_=None if negative_prompt_embeds is None else
                                 _rows((negative_prompt_embeds, None), part, per),
                                 step_callback=on_step, stage_callback=on_stage, **kw))
        stages = [torch.cat([o[i] for o in outs]) for i in range(n_stages)]
        records = [self.record(p, sd, settings, tuple(stages[-1].shape[-2:]), negative_prompt=negative_prompt,
                               **({"strength": strength} if init is not None else {}))
                   for p, sd in zip(every, seeds)]
        return CascadeOutput(images=_as_output(stages[-1], output_type), seeds=seeds, settings=records,
                             stage_images=[_as_output(x, output_type) for x in stages] if return_stages else None)

    def generate(self, prompts: str | list[str], *, seed: int = 0, num_images: int = 1, steps=None,
                 guidance: float | None = None, sampler: str | None = None, negative_prompt: str | None = None,
                 num_stages: int | None = None, progress: bool = True, **options) -> list:
        """Text to image, the short way: the last stage's PIL images, with the CLI's names (``steps_ii``,
        ``guidance_ii``, ``sampler_ii``, ``aug_level``, ``dyn_thresh_max(_ii)``, ``layout_guidance``)."""
        names = set(_accepted(stage_settings)) - {"stages"}
        if set(options) - names:
            raise PipelineError(f"unknown argument(s) {', '.join(sorted(set(options) - names))}; accepted: seed, "
                                f"num_images, steps, guidance, sampler, negative_prompt, num_stages, progress, "
                                f"{', '.join(sorted(names - {'steps', 'guidance', 'sampler'}))}")
        settings = stage_settings(self.stages, sampler=sampler, steps=None if steps is None else str(steps),
                                  guidance=guidance, **options)
        return self(prompts, seed=seed, num_images_per_prompt=num_images, settings=settings,
                    negative_prompt=negative_prompt, num_stages=num_stages, progress=progress).images

    def stage_settings(self, base: list | None = None, **given) -> list:
        """Each stage's sampling settings: ``base`` (default: its shipped defaults) with the arguments given (a
        value: stage I's, or every super-resolution stage's for ``aug_level``; a list: one per stage)."""
        if base is not None and (not isinstance(base, (list, tuple)) or len(base) > len(self.stages) or
                                 not all(isinstance(b, SampleConfig) or b is None for b in base)):
            raise PipelineError("settings: expected a list of SampleConfig, at most one per stage")
        base = list(base or []) + [None] * len(self.stages)
        out = []
        for i, st in enumerate(self.stages):
            changes = {}
            for name, value in given.items():
                if isinstance(value, (list, tuple)):
                    if len(value) > len(self.stages):
                        raise PipelineError(f"{name}: {len(value)} values for {len(self.stages)} stages")
                    value = value[i] if i < len(value) else None
                elif name == "aug_level":
                    value = value if st.is_super_res else None
                elif i > 0:
                    value = None
                if value is not None:
                    changes[_SETTING_OF[name]] = str(value) if name == "num_inference_steps" else value
            out.append(with_overrides(base[i] or st.settings, **changes))
        return out

    def edit_inputs(self, image, mask=None, num_stages: int | None = None):
        """An edit's inputs as the CLI prepares them: the square image (uint8 [H, W, 3]) in [-1, 1] and the mask
        (uint8 [H, W], white = repaint; must match the image) as {0, 1}, both resized to the last stage's size
        (the call resizes them again to each stage's)."""
        from .pipeline import resize
        img = from_uint8(image)
        h, w = img.shape[-2:]
        if h != w:  # resizing to the model's square would stretch it: say so rather than squash it silently
            raise PipelineError(f"the image is {w}x{h}, but edits make square images: crop it to a square first "
                                f"(e.g. its centre {min(h, w)}x{min(h, w)})")
        if mask is not None and tuple(mask.shape[:2]) != tuple(img.shape[-2:]):
            raise PipelineError(f"the mask is {mask.shape[1]}x{mask.shape[0]} but the image is {img.shape[3]}x"
                                f"{img.shape[2]}: the mask must have the image's size (white = repaint)")
        size = self.stages[(num_stages or len(self.stages)) - 1].cfg.image_size
        init = resize(img, (size, size))
        if mask is None:
            return init, None
        m = torch.from_numpy((mask > 127).astype("float32"))[None, None]
        return init, (resize(m, (size, size), "nearest") > 0.5).float()

    def upscaled_size(self, name: str, h: int, w: int, scale: float, max_pixels: int) -> tuple[int, int]:
        """The output size of a cascade that starts from an image of h x w (``name``: how the user knows it),
        ``scale`` times larger: within ``max_pixels`` and a multiple of what the first stage's UNet halves to,
        else one error said in terms of the input."""
        oh, ow = round(h * scale), round(w * scale)
        if oh * ow > max_pixels:
            raise PipelineError(f"image {name} is {w}x{h}: upscaled x{scale:g} it would be {ow}x{oh} "
                                f"({oh * ow / 1e6:.1f} MP), over the limit of {max_pixels / 1e6:.1f} MP: lower --scale "
                                "(or raise --max-pixels)")
        div = self.stages[0].cfg.min_divisor
        if oh < div or ow < div or oh % div or ow % div:
            def fit(n: int) -> int:  # the nearest input side at or above n whose output is a whole multiple of div
                return round(max(div, -(-n * scale // div) * div) / scale)
            raise PipelineError(f"image {name} is {w}x{h}: upscaled x{scale:g} it would be {ow}x{oh}, but this stage "
                                f"makes sides that are multiples of {div}; resize the input so its sides times "
                                f"{scale:g} are (e.g. {fit(w)}x{fit(h)}), or change --scale")
        return oh, ow

    def to(self, device=None, dtype=None) -> Cascade:
        """Move every stage and the text encoder (diffusers' ``pipe.to``); ``dtype`` casts the UNets."""
        if device is not None:
            device = _device(device)
            for part in (*self.stages, self.encoder):
                part.to(device)
        if dtype is not None:
            dtype = torch_dtype(dtype)
            if any(getattr(st, "streamer", None) is not None for st in self.stages):
                raise ModelError("this cascade streams its weights (offload): they are cast as they load, so load it "
                                 "again with the dtype wanted (pixelcascade.load(..., dtype=...))")
            for st in self.stages:
                if hasattr(st, "unet"):
                    st.unet.to(dtype)
        return self

    def enable_model_cpu_offload(self, device: str = "cuda") -> Cascade:
        """Keep every model on the CPU and move each to ``device`` only while it runs (diffusers' name)."""
        self.to("cpu")
        self.offload = _device(device)
        return self

    def enable_sequential_cpu_offload(self, device: str = "cuda") -> Cascade:
        """Stream every UNet's weights to ``device`` block by block from CPU memory (pinned for a GPU; the next
        block copied while one runs), the text encoder moved there whole while it runs (diffusers' name; the
        ``--offload sequential`` of a loaded cascade)."""
        from .offload import MemorySource, WeightStreamer, place_buffers
        device = _device(device)
        self.to("cpu")
        for st in self.stages:
            if getattr(st, "unet", None) is None or st.streamer is not None:
                continue
            weights = {k: v.detach() for k, v in st.unet.named_parameters()}
            dtype = next(iter(weights.values())).dtype
            st.streamer = WeightStreamer(st.unet, MemorySource(weights, pin=device.startswith("cuda")), device, dtype)
            place_buffers(st.unet, dict(st.unet.named_buffers()).__getitem__, device, dtype)
        self.offload = device if device != "cpu" else None
        self.offload_mode = "sequential"
        return self

    def save_pretrained(self, folder: str | Path) -> Path:
        """Each stage as ``stageN.safetensors`` with its model card, loadable by :func:`load` (``folder``)."""
        from .weights import save_stage
        folder = Path(folder)
        for i, st in enumerate(self.stages, start=1):
            if not hasattr(st, "unet"):
                raise PipelineError(f"stage {i} is an external pipeline ({st.meta.get('path')}): only our stages "
                                    "can be saved; keep that folder beside the saved ones")
            save_stage(st, folder / f"stage{i}.safetensors", encoder_name=self.text_encoder)
        return folder

    def _prompts(self, prompt, prompt_embeds):
        if prompt_embeds is None:
            return prompt_list(prompt), None
        if prompt is not None:
            raise PipelineError("give prompt or prompt_embeds, not both")
        if not isinstance(prompt_embeds, torch.Tensor) or prompt_embeds.ndim != 3:
            raise PipelineError("prompt_embeds: expected a tensor [batch, tokens, width] of text states")
        return [""] * prompt_embeds.shape[0], (prompt_embeds, None)

    @staticmethod
    def _seeds(seed, generator, n: int) -> list[int]:
        if generator is not None:
            if isinstance(generator, (list, tuple)):
                if len(generator) != n:
                    raise PipelineError(f"{len(generator)} generators for {n} images: give one, or one per image")
                return [int(g.initial_seed()) for g in generator]
            if not isinstance(generator, torch.Generator):
                raise PipelineError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
            return torch.randint(0, 2 ** 62, (n,), generator=generator).tolist()
        if isinstance(seed, (list, tuple)):
            if len(seed) != n:
                raise PipelineError(f"{len(seed)} seeds for {n} images: give one (image i gets seed + i), or one "
                                    "per image")
            return [whole_number("seed", s, 0, 2 ** 63 - 1) for s in seed]
        first = whole_number("seed", 0 if seed is None else seed, 0, 2 ** 63 - 1 - n)
        return [first + i for i in range(n)]

    def _images(self, image, mask_image, max_pixels):
        """(init image, mask, low-res input) in [-1, 1] / {0, 1} tensors, from PIL images, uint8 arrays or
        tensors; ``image`` is the low-res input of a cascade that starts from an image."""
        if image is None:
            if mask_image is not None:
                raise PipelineError("mask_image needs image: the picture whose white-masked part is repainted")
            return None, None, None
        img = _image_tensor(image, "image", max_pixels)
        if self.starts_from_image:
            return None, None, img
        mask = None
        if mask_image is not None:
            mask = _mask_tensor(mask_image, max_pixels)
            if tuple(mask.shape[-2:]) != tuple(img.shape[-2:]):
                raise PipelineError(f"mask_image is {mask.shape[-1]}x{mask.shape[-2]} but image is "
                                    f"{img.shape[-1]}x{img.shape[-2]}: the mask must have the image's size")
        return img, mask, None


def _check_shape(image: torch.Tensor, size: tuple[int, int]) -> None:
    """An edit's image must have the output's proportions: resizing it to another shape would stretch it."""
    (h, w), (oh, ow) = image.shape[-2:], size
    if abs(h * ow - w * oh) > 0.01 * w * oh:
        raise PipelineError(f"the image is {w}x{h} but the images made are {ow}x{oh}: resizing would stretch it; "
                            "crop it to that shape, or pass height and width in its proportions")


def _accepted(fn) -> list[str]:
    import inspect
    return [n for n, p in inspect.signature(fn).parameters.items() if p.kind is not p.VAR_KEYWORD]


def _rows(states: tuple, part: slice, per: int) -> tuple:
    """Given states (one row per prompt), the rows of this chunk of images (num_images_per_prompt each)."""
    emb, mask = states
    idx = torch.arange(emb.shape[0]).repeat_interleave(per)[part]
    return emb[idx], None if mask is None else mask[idx]


def _as_output(x: torch.Tensor, output_type: str):
    """[-1, 1] images as diffusers returns them: PIL, or [0, 1] tensors / arrays."""
    if output_type == "pil":
        from PIL import Image
        return [Image.fromarray(a) for a in to_uint8(x)]
    y = ((x.float() + 1) / 2).clamp(0, 1).cpu()
    return y if output_type == "pt" else y.permute(0, 2, 3, 1).numpy()


def _image_tensor(image, what: str, max_pixels) -> torch.Tensor:
    """[1 or B, 3, H, W] in [-1, 1] from a PIL image, a uint8 array [H, W, 3] or a tensor already in [-1, 1]."""
    import numpy as np
    if isinstance(image, torch.Tensor):
        x = image if image.ndim == 4 else image[None]
        if x.ndim != 4 or x.shape[1] != 3 or not torch.isfinite(x).all():
            raise PipelineError(f"{what}: a tensor must be [B, 3, H, W], finite, in [-1, 1]")
        return x.float()
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        if image.mode != "RGB":
            raise PipelineError(f"{what} is {image.mode}, not RGB: pass image.convert('RGB')")
        image = np.asarray(image)
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise PipelineError(f"{what}: expected a PIL image, a uint8 array [H, W, 3] or a tensor [B, 3, H, W]")
    if max_pixels is not None and image.shape[0] * image.shape[1] > max_pixels:
        raise PipelineError(f"{what} is {image.shape[1]}x{image.shape[0]}: over the limit of {max_pixels} pixels")
    return from_uint8(image)


def _mask_tensor(mask, max_pixels) -> torch.Tensor:
    """[1, 1, H, W] in {0, 1} (1 = repaint) from a PIL image, a uint8 array [H, W] or a tensor."""
    import numpy as np
    if isinstance(mask, torch.Tensor):
        m = mask.float()
        while m.ndim < 4:
            m = m[None]
        return (m > 0.5).float()
    if hasattr(mask, "convert"):
        mask = np.asarray(mask.convert("L"))
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        raise PipelineError("mask_image: expected a PIL image, a uint8 array [H, W] or a tensor")
    if max_pixels is not None and mask.size > max_pixels:
        raise PipelineError(f"mask_image is {mask.shape[1]}x{mask.shape[0]}: over the limit of {max_pixels} pixels")
    return torch.from_numpy((mask > 127).astype("float32"))[None, None]
