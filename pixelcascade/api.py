"""The Python API: load a cascade (a shipped model by name, our files, released IF folders), then generate.

    import pixelcascade
    pipe = pixelcascade.load()            # the shipped shapes cascade; or a path, "stage1,stage2" paths
    images = pipe.generate("three red circles to the left of a blue square", seed=0)   # PIL images
    images[0].save("out.png")

    pipe = pixelcascade.load("/models/IF-I-XL-v1.0,/models/IF-II-L-v1.0", device="cuda", dtype=torch.float16,
                             text_encoder="/models/t5-v1_1-xxl", offload=True)

``pipe`` is a :class:`pixelcascade.pipeline.Cascade`: ``pipe.generate`` returns the last stage's images,
``pipe(prompts, seeds, ...)`` every stage's tensors (image-to-image, inpainting, per-stage settings).
"""

from __future__ import annotations

from pathlib import Path

from .errors import PixelcascadeError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL = WEIGHTS_DIR / "shapes"  # stage files: stage1.safetensors (32 px), stage2.safetensors (64 px)
# where the emoji cascade ships (weights/emoji/stage1, stage2: 64 px, 64 -> 128) with the feature extractor that
# `eval emoji` uses by default; not trained yet (it needs a GPU: docs/emoji.md)
EMOJI_FEATURES = WEIGHTS_DIR / "emoji" / "emoji_features.safetensors"


class ModelError(PixelcascadeError, ValueError):
    """A model that cannot be loaded as asked: a missing path, stages in the wrong order, no text encoder."""


def shipped_models() -> list[str]:
    """Names of the models shipped in the package (``load(NAME)``, ``--model NAME``): folders of weights/ with
    stage files."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.name for p in WEIGHTS_DIR.iterdir() if p.is_dir() and any(p.glob("stage*.safetensors")))


def stage_paths(model: str | Path) -> list[Path]:
    """A .safetensors file (one stage), or a folder of stage1/stage2/... files, or comma-separated files."""
    if not isinstance(model, (str, Path)) or not str(model).strip():
        raise ModelError(f"model={model!r}: give a shipped model's name ({', '.join(shipped_models())}), a "
                         ".safetensors file or a model folder")
    if isinstance(model, str) and "," in model:
        paths = [Path(p).expanduser() for p in model.split(",") if p]
        for p in paths:
            if not p.exists():
                raise ModelError(f"--model: stage {p} (of {model}): no such file or folder; list each stage's "
                                 "file or folder, stage I first, separated by commas")
        return paths
    p = Path(model).expanduser()
    if not p.exists() and isinstance(model, str) and model in shipped_models():
        p = WEIGHTS_DIR / model  # a shipped model by name: shapes, emoji
    if p.is_dir():
        files = sorted(p.glob("stage*.safetensors"))
        if files:
            return files
        return [p]  # an official or diffusers folder: one stage
    if not p.exists():
        hint = " (the shipped model is missing: reinstall pixelcascade)" if p == DEFAULT_MODEL else ""
        raise ModelError(f"--model {p}: no such file or folder{hint}; pass a shipped model's name "
                         f"({', '.join(shipped_models())}), a .safetensors file, a folder with stage1.safetensors..., "
                         "or an IF/diffusers model folder")
    return [p]


DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16", "half": "float16",
          "bf16": "bfloat16", "bfloat16": "bfloat16"}


def torch_dtype(dtype):
    """A torch dtype from a torch dtype or its name ("fp16", "bf16", "fp32", "float16", ...); None: float32."""
    import torch
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) and dtype in (torch.float32, torch.float16, torch.bfloat16):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return getattr(torch, DTYPES[dtype.lower()])
    raise ModelError(f"dtype={dtype!r}: use torch.float32, torch.float16, torch.bfloat16 or 'fp32', 'fp16', 'bf16'")


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


class Stages:
    """Stages and an encoder without the cascade's ordering checks (upscale runs a stage II on its own)."""

    def __init__(self, stages, encoder):
        self.stages, self.encoder = stages, encoder


def load(model: str | Path = "shapes", *, device: str = "cpu", dtype=None, text_encoder: str | None = None,
         max_stages: int | None = None, allow_sr_first: bool = False, offload: bool = False,
         stage3: str | None = None, lora: list | None = None):
    """A :class:`~pixelcascade.pipeline.Cascade` from ``model``: a shipped model's name, one of our .safetensors
    files, a folder of stage*.safetensors, an IF folder (official or diffusers layout), or several of those
    comma-separated, stage I first. ``text_encoder``: a local folder (default: the one the model names; a
    diffusers IF-I folder's own T5; MiniLM for 384-d models). ``max_stages``: run only the first N.
    ``offload``: keep every model on the CPU and move each to ``device`` only while it runs. ``stage3``: a
    stable-diffusion-x4-upscaler folder (IF's stage III) or another super-resolution stage, appended. ``lora``:
    LoRA adapter files, ``"PATH"`` or ``"PATH:SCALE"`` (or (path, scale) pairs), each merged into the stage it
    was trained on at its scale."""

    from .convert import CheckpointError
    from .pipeline import Cascade, PipelineError
    from .stage3 import SDx4Stage, is_sdx4_folder
    from .text.encoder import TextEncoderError, carries_text_encoder, load_encoder
    from .weights import load_stage
    dtype, device = torch_dtype(dtype), _device(device)
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
    try:
        stages = [SDx4Stage(p, home, dtype) if is_sdx4_folder(p) else load_stage(p, device=home, dtype=dtype)
                  for p in paths]
    except (CheckpointError, PipelineError) as e:
        raise ModelError(str(e)) from None
    if lora:
        _merge_loras(stages, lora)
    if not allow_sr_first and stages[0].is_super_res:
        raise ModelError(f"{paths[0]}: the first stage is a super-resolution model; stage I (text -> image) must "
                         "run first: list the stage I model before the stage II one")
    meta = stages[0].meta
    spec = text_encoder or meta.get("text_encoder")
    if spec is None:
        if carries_text_encoder(paths[0]):
            spec = str(paths[0])  # a diffusers IF pipeline folder carries its T5
        elif stages[0].cfg.encoder_dim == 384:
            spec = "minilm"
        else:
            raise ModelError(f"{paths[0]} expects {stages[0].cfg.encoder_dim}-d text states and names no text "
                             "encoder: pass --text-encoder /path/to/t5-v1_1-xxl (a local folder) for IF weights")
    try:
        encoder = load_encoder(spec, int(meta.get("text_max_length", 77)), device=home)
    except TextEncoderError as e:
        raise ModelError(str(e)) from None
    if getattr(encoder, "dim", None) and not getattr(stages[0], "uses_prompts", False) \
            and encoder.dim != stages[0].cfg.encoder_dim:
        raise ModelError(f"the text encoder gives {encoder.dim}-d states but {paths[0]} expects "
                         f"{stages[0].cfg.encoder_dim}-d: pass the encoder the model was trained with "
                         "(--text-encoder)")
    if allow_sr_first:
        return Stages(stages, encoder)
    try:
        return Cascade(stages, encoder, offload=device if offload and device != "cpu" else None)
    except ValueError as e:
        raise ModelError(str(e)) from None


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
