"""Peak memory of a cascade, computed from its configs before anything is loaded (``pixelcascade memory``).

Weights are counted from each model built on the meta device (no weight is read); activations are the peak of
live tensors in one denoising step, measured by running the UNet on fake tensors (``FakeTensorMode``: shapes and
devices, no storage) under a dispatch mode that adds up every output's storage and subtracts it when the tensor
dies. A stage's step runs its classifier-free-guidance batch (2 rows per image), and for a stage with layout
guidance also the gradient pass it takes on the guided rows.

What a process holds beyond that: the Python + torch baseline (measured in this process), and on a CPU the
memory glibc keeps from freed activations (blocks under its 32 MB mmap threshold stay in the heap: measured at
1.8-2.4x the live peak, docs/memory.md), counted as ``CPU_ALLOCATOR_SLACK``. A GPU's figure is what PyTorch
allocates (``max_memory_allocated``), without the CUDA context.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only

from .config import UNetConfig
from .models.unet import build_unet
from .offload import block_units

CPU_ALLOCATOR_SLACK = 2.0  # peak RSS growth / live-tensor peak while sampling on a CPU (glibc), measured
OFFLOAD_MODES = ("none", "model", "sequential")
MB = 2 ** 20
# what a quantized linear allocates while it runs, per weight: torchao dequantizes the whole weight for each call
# (nf4 through int64 code indices), measured with LiveBytes on torchao 0.18 (tests/test_memory.py checks it)
DEQUANT_BYTES_PER_WEIGHT = {"int8": 3.1, "nf4": 14.0}
# and while it quantizes a weight as the encoder loads, beside that weight as read (bf16) and its file bytes:
# (fixed bytes, bytes per weight)
QUANTIZE_BYTES = {"int8": (0, 10.0), "nf4": (64 * MB, 5.0)}


class LiveBytes(TorchDispatchMode):
    """The peak bytes of tensors alive at once among the outputs of the ops run under it (views share their
    storage: each storage counts once, until its last tensor dies)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._refs: dict[int, int] = {}
        self._size: dict[int, int] = {}

    def _drop(self, key: int) -> None:
        self._refs[key] -= 1
        if not self._refs[key]:
            del self._refs[key]
            self.live -= self._size.pop(key)

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key not in self._refs:
            self._refs[key], self._size[key] = 0, storage.nbytes()
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        self._refs[key] += 1
        weakref.finalize(t, self._drop, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tree_map_only(torch.Tensor, self._track, out)
        return out


@dataclass
class PartMemory:
    """One model's memory: its weights, its largest streaming unit, and the live peak of one step's tensors."""

    name: str
    weights: int
    largest_unit: int
    activations: int  # live tensors of one step (on a CPU, counted with the allocator's slack)
    largest_tensor: int = 0  # read from the file beside the model as it loads (one tensor at a time)
    transient: int = 0  # allocated in blocks of more than 32 MB, given back at once: no slack (nf4 dequantizing)


def _fake_model(model: torch.nn.Module, device: str, dtype: torch.dtype) -> None:
    """Every meta parameter and buffer of ``model`` replaced by a fake tensor on ``device`` (inside the mode)."""
    for m in model.modules():
        for group in (m._parameters, m._buffers):
            for name, t in group.items():
                if t is None:
                    continue
                new = torch.empty_strided(t.shape, t.stride(), dtype=dtype if t.is_floating_point() else t.dtype,
                                          device=device)
                group[name] = torch.nn.Parameter(new, requires_grad=False) if isinstance(t, torch.nn.Parameter) \
                    else new


def unet_memory(cfg: UNetConfig, dtype: torch.dtype, batch: int = 1, size: tuple[int, int] | None = None,
                text_length: int = 77, device: str = "cpu", guidance: bool = True, layout: bool = False,
                name: str = "UNet") -> PartMemory:
    """A UNet's weights and one sampling step's activation peak at ``batch`` images of ``size`` (default: its
    own), computed on fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    with torch.device("meta"):
        unet = build_unet(cfg).eval()
    size_of = torch.empty(0, dtype=dtype).element_size()
    weights = sum(p.numel() for p in unet.parameters()) * size_of
    largest = max((sum(p.numel() for p in u.parameters()) for _, u in block_units(unet)), default=0) * size_of
    largest_tensor = max(p.numel() for p in unet.parameters()) * size_of
    h, w = size or (cfg.image_size, cfg.image_size)
    # a GPU's step without one (a CPU-only torch cannot make even fake CUDA tensors): the CPU path's, whose
    # attention runs in blocks as the GPU's flash kernel does; every other layer allocates the same
    fake_device = device if device == "cpu" or torch.cuda.is_available() else "cpu"
    with FakeTensorMode(allow_non_fake_inputs=True):
        _fake_model(unet, fake_device, dtype)
        peak = _step_peak(unet, cfg, 2 * batch if guidance else batch, h, w, text_length, fake_device, grad=False)
        if layout:
            peak = max(peak, _step_peak(unet, cfg, batch, h, w, text_length, fake_device, grad=True))
    return PartMemory(name, weights, largest, peak, largest_tensor)


def _step_peak(unet, cfg: UNetConfig, rows: int, h: int, w: int, length: int, device: str, grad: bool) -> int:
    x = torch.zeros(rows, cfg.in_channels if not cfg.super_res else 3, h, w, device=device)
    t = torch.full((rows,), 500.0, device=device)
    text = torch.zeros(rows, length, cfg.encoder_dim, device=device)
    extra = dict(low_res=torch.zeros(rows, 3, h, w, device=device), aug_t=torch.zeros(rows, device=device)) \
        if cfg.super_res else {}
    meter = LiveBytes()
    with meter:
        if grad:
            with torch.enable_grad():
                x.requires_grad_(True)
                out = unet(x, t, text, **extra)
                torch.autograd.grad(out.float().square().mean(), x)
        else:
            with torch.no_grad():
                unet(x, t, text, **extra)
    return meter.peak


def estimate_peak(parts: list[PartMemory], mode: str, device: str = "cpu", baseline: int = 0) -> int:
    """The peak a run takes at offload ``mode`` (``parts``: the text encoder first, then the stages).

    * none: every model resident, plus the largest step.
    * model: one model at a time (on a CPU each read from its file, on a GPU moved there from CPU memory).
    * sequential: the encoder as in model; each UNet only one block at a time (on a GPU two: one prefetched; on a
      CPU one, beside the tensor being read from the file).
    On a CPU the activations count with :data:`CPU_ALLOCATOR_SLACK`, and a model read from its file as it runs
    (model, sequential) its largest tensor as read; ``baseline`` is added as it is.
    """
    if mode not in OFFLOAD_MODES:
        raise ValueError(f"offload mode {mode!r}: one of {', '.join(OFFLOAD_MODES)}")
    cpu = device == "cpu"
    slack = CPU_ALLOCATOR_SLACK if cpu else 1.0

    def step(p: PartMemory) -> float:
        return slack * p.activations + p.transient
    if mode == "none":
        return int(baseline + sum(p.weights for p in parts) + max(step(p) for p in parts))
    encoder, stages = parts[0], parts[1:]
    each = [encoder.weights + step(encoder)]
    for st in stages:
        if mode == "model":
            resident = st.weights + (st.largest_tensor if cpu else 0)
        else:
            resident = st.largest_unit + st.largest_tensor if cpu else 2 * st.largest_unit
        each.append(resident + step(st))
    return int(baseline + max(each))


def encoder_memory(spec: str, text_dtype: str | None, batch: int = 1, length: int = 77) -> PartMemory:
    """A Hugging Face text encoder's memory (``spec``: "minilm" or a local folder), from its config.json."""
    from pathlib import Path

    from .text.encoder import carries_text_encoder, is_t5, minilm_path
    from .utils import import_transformers
    import_transformers()
    from transformers import AutoConfig
    minilm = spec in ("minilm", "all-MiniLM-L6-v2")
    path = minilm_path() if minilm else Path(spec).expanduser()
    if carries_text_encoder(path):
        path = path / "text_encoder"
    label = "all-MiniLM-L6-v2" if minilm else path.parent.name if path.name == "text_encoder" else path.name
    return config_encoder_memory(AutoConfig.from_pretrained(str(path)), text_dtype, batch, length,
                                 t5=is_t5(str(path)), label=label)


def config_encoder_memory(config, text_dtype: str | None, batch: int = 1, length: int = 77, t5: bool = True,
                          label: str = "T5") -> PartMemory:
    """An encoder's memory from its transformers config, built on the meta device: linear weights at
    ``text_dtype``'s bytes per weight (int8, nf4: ``text.quantize``), the rest (token embedding, norms) in its
    compute dtype; activations of the prompts and the empty prompt, from the widest layer (a few MB at 77
    tokens)."""
    from .text.quantize import bytes_per_weight, compute_dtype
    from .utils import import_transformers
    import_transformers()
    from transformers import AutoModel, T5EncoderModel
    mode = text_dtype or ("bf16" if t5 else "fp32")
    with torch.device("meta"):
        model = T5EncoderModel(config) if t5 else AutoModel.from_config(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    other = sum(p.numel() for p in model.parameters()) - linear
    size = torch.empty(0, dtype=compute_dtype(mode)).element_size()
    weights = int(linear * bytes_per_weight(mode) + other * size)
    d = getattr(config, "d_model", None) or config.hidden_size
    ff = getattr(config, "d_ff", None) or config.intermediate_size
    heads = getattr(config, "num_heads", None) or config.num_attention_heads
    rows = 2 * batch  # the prompts and the empty prompt (guidance)
    activations = rows * length * (3 * ff + 6 * d) * size + rows * heads * length * length * 4
    widest = max((m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)), default=0)
    running = DEQUANT_BYTES_PER_WEIGHT.get(mode, 0) * widest
    loading = 0
    if mode in QUANTIZE_BYTES:  # quantizing the last linear (the weight as read beside it), before the embedding
        fixed, per_weight = QUANTIZE_BYTES[mode]
        embedding = model.get_input_embeddings().weight.numel() * size
        loading = fixed + (per_weight + 2 * size) * widest - embedding
    transient = int(max(running, loading))
    return PartMemory(f"text encoder ({label}, {mode})", weights, weights, activations, transient=transient)


def process_rss() -> int:
    """This process's resident memory now (bytes): the baseline a command starts from."""
    try:
        import psutil
        return psutil.Process().memory_info().rss
    except ImportError:  # Linux without psutil
        import os
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def stage_config(path) -> tuple[UNetConfig, dict]:
    """A stage's UNet config and metadata without reading a weight: our file's metadata, a folder's config."""
    from pathlib import Path

    from .model_files import meta_config, unet_config_of
    from .tensorfiles import read_metadata
    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        meta = read_metadata(path)
        if "unet_config" in meta:
            return meta_config(meta, "unet_config", UNetConfig, path), meta
    return unet_config_of(path), {}


def memory_report(model: str = "shapes", *, device: str = "cpu", dtype: torch.dtype = torch.bfloat16,
                  batch: int = 1, text_encoder: str | None = None, text_dtypes: tuple = ("fp32", "bf16", "int8", "nf4"),
                  baseline: int | dict = 0) -> dict:
    """Every part's memory and the peak of a ``batch``-image run at each offload mode and text encoder dtype
    (plus "states": a prompt-states file, no encoder), as :func:`estimate_peak` counts it. Bytes. ``baseline``:
    what the process holds before any model, one number or one per text encoder dtype (:func:`baselines`)."""
    from .api import encoder_spec
    from .config import SampleConfig
    from .model_files import meta_config
    from .shipped import stage_paths
    paths = stage_paths(model)
    stages, first = [], None
    for i, p in enumerate(paths):
        cfg, meta = stage_config(p)
        first = first or (cfg, meta, p)
        sample = meta_config(meta, "sample_config", SampleConfig, p, SampleConfig())
        stages.append(unet_memory(cfg, dtype, batch, text_length=int(meta.get("text_max_length", 77)),
                                  device=device, layout=i == 0 and sample.layout_guidance > 0,
                                  name=f"stage {'I' * (i + 1)} ({p.name})"))
    cfg, meta, p = first
    spec = text_encoder or encoder_spec(p, meta, cfg.encoder_dim)
    length = int(meta.get("text_max_length", 77))
    encoders = {m: encoder_memory(spec, m, batch, length) for m in text_dtypes}
    encoders["states"] = PartMemory("prompt-states file (no encoder)", 0, 0, 0)
    base = baseline if isinstance(baseline, dict) else dict.fromkeys(encoders, baseline)
    peaks = {mode: {m: estimate_peak([enc, *stages], mode, device, base.get(m, 0)) for m, enc in encoders.items()}
             for mode in OFFLOAD_MODES}
    return {"model": str(model), "device": device, "dtype": str(dtype).replace("torch.", ""), "batch": batch,
            "baseline": base, "parts": [vars(e) for e in encoders.values()] + [vars(s) for s in stages],
            "peaks": peaks}


def baselines() -> dict[str, int]:
    """What a run's process holds before any model, per text encoder dtype, measured in this one as it imports
    what each needs: torch (a prompt-states file), + transformers' T5 (an HF encoder), + torchao (int8, nf4)."""
    base = {"states": process_rss()}
    from .utils import import_transformers
    import_transformers()
    import transformers.models.t5.modeling_t5  # noqa: F401  (what loading an HF encoder imports)
    base["fp32"] = base["bf16"] = process_rss()
    from .text.quantize import QuantizationError, import_torchao
    try:
        import_torchao()
    except QuantizationError:  # not installed: int8 / nf4 cannot run, their columns count without it
        pass
    base["int8"] = base["nf4"] = process_rss()
    return base
