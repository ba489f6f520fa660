"""A BERT encoder in plain PyTorch, for the default text encoder's start-up time.

all-MiniLM-L6-v2 is a 6-layer BERT. Through transformers, `generate` spends ~2 s importing transformers and ~2 s
building the model before the first step; this module reads the same folder (config.json, model.safetensors,
tokenizer.json) with only `tokenizers` and `safetensors`, and gives the same per-token states as
transformers' BertModel (tests/test_text.py compares them on MiniLM's weights and a random tiny config).
Only what such checkpoints use: absolute positions, GELU (erf), post-LayerNorm, token type 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def native_bert_supported(path: Path) -> bool:
    """True when ``path`` holds a BERT this module reproduces exactly (else the caller uses transformers)."""
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (cfg.get("model_type") == "bert" and cfg.get("hidden_act", "gelu") == "gelu"
            and cfg.get("position_embedding_type", "absolute") == "absolute"
            and (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file())


class _Layer(nn.Module):
    def __init__(self, d: int, heads: int, ff: int, eps: float):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(d, eps=eps), nn.LayerNorm(d, eps=eps)
        self.ff1, self.ff2 = nn.Linear(d, ff), nn.Linear(ff, d)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t):
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)
        a = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)), attn_mask=bias)
        x = self.ln1(x + self.o(a.transpose(1, 2).reshape(b, n, d)))
        return self.ln2(x + self.ff2(F.gelu(self.ff1(x))))


class BertStates(nn.Module):
    """BertModel's last_hidden_state (no pooler)."""

    def __init__(self, cfg: dict):
        super().__init__()
        d, eps = cfg["hidden_size"], cfg.get("layer_norm_eps", 1e-12)
        self.word = nn.Embedding(cfg["vocab_size"], d)
        self.pos = nn.Embedding(cfg["max_position_embeddings"], d)
        self.type0 = nn.Parameter(torch.zeros(d))
        self.ln = nn.LayerNorm(d, eps=eps)
        self.layers = nn.ModuleList(_Layer(d, cfg["num_attention_heads"], cfg["intermediate_size"], eps)
                                    for _ in range(cfg["num_hidden_layers"]))
        self.hidden_size = d
        self.pad_id = int(cfg.get("pad_token_id") or 0)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.ln(self.word(ids) + self.pos.weight[: ids.shape[1]] + self.type0)
        # padded keys get the dtype's lowest value, as transformers' extended attention mask
        bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, bias)
        return x

    def load_hf(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load a BertModel state dict (keys with or without the "bert." prefix); any missing key is an error."""
        t = {k.removeprefix("bert."): v for k, v in tensors.items()}
        sd = {"word.weight": t["embeddings.word_embeddings.weight"],
              "pos.weight": t["embeddings.position_embeddings.weight"],
              "type0": t["embeddings.token_type_embeddings.weight"][0],
              "ln.weight": t["embeddings.LayerNorm.weight"], "ln.bias": t["embeddings.LayerNorm.bias"]}
        names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
                 "o": "attention.output.dense", "ln1": "attention.output.LayerNorm", "ff1": "intermediate.dense",
                 "ff2": "output.dense", "ln2": "output.LayerNorm"}
        for i in range(len(self.layers)):
            for ours, theirs in names.items():
                for p in ("weight", "bias"):
                    sd[f"layers.{i}.{ours}.{p}"] = t[f"encoder.layer.{i}.{theirs}.{p}"]
        self.load_state_dict(sd, strict=True)


def load_native_bert(path: Path, dtype: torch.dtype = torch.float32):
    """(tokenizer, model) from a BERT folder, without transformers."""
    from safetensors.torch import load_file
    from tokenizers import Tokenizer
    cfg = json.loads((path / "config.json").read_text())
    model = BertStates(cfg)
    model.load_hf(load_file(str(path / "model.safetensors")))
    model.to(dtype).eval().requires_grad_(False)
    return Tokenizer.from_file(str(path / "tokenizer.json")), model


def prune_vocab(src: str | Path, dst: str | Path, texts: list[str], dtype: torch.dtype = torch.float32) -> dict:
    """Copy a BERT folder keeping only the vocabulary ``texts`` use: a small, exact encoder for those texts.

    The word-embedding table is most of a small BERT (46.9 of MiniLM's 90.9 MB). The copy keeps the special
    tokens and every word piece the tokenizer gives ``texts``, renumbered in their old order; WordPiece is greedy
    longest-match, so on a vocabulary that still holds every piece it chose, it chooses the same pieces, and the
    states of ``texts`` are those of the full model (bit for bit in fp32; ``dtype`` stores the weights smaller).
    Other texts may lose pieces to [UNK]. Returns {"kept": tokens kept, "of": vocabulary size, "bytes": weights}.
    """
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer

    from ..utils import atomic_path
    src, dst = Path(src), Path(dst)
    if not native_bert_supported(src):
        raise ValueError(f"{src} is not a BERT folder this module reads (config.json, model.safetensors, "
                         "tokenizer.json)")
    tok_json = json.loads((src / "tokenizer.json").read_text())
    if tok_json["model"].get("type") != "WordPiece":
        raise ValueError(f"{src}: only WordPiece tokenizers can be pruned")
    tokenizer = Tokenizer.from_file(str(src / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    used = {i for enc in tokenizer.encode_batch(list(texts)) for i in enc.ids}
    used |= {t["id"] for t in tok_json["added_tokens"]}
    keep = sorted(used)
    new = {old: i for i, old in enumerate(keep)}
    vocab = tok_json["model"]["vocab"]
    tok_json["model"]["vocab"] = {t: new[i] for t, i in vocab.items() if i in new}
    for t in tok_json["added_tokens"]:
        t["id"] = new[t["id"]]
    for special in (tok_json.get("post_processor") or {}).get("special_tokens", {}).values():
        special["ids"] = [new[i] for i in special["ids"]]
    if tok_json.get("padding"):
        tok_json["padding"]["pad_id"] = new[tok_json["padding"]["pad_id"]]
    cfg = json.loads((src / "config.json").read_text())
    cfg["vocab_size"] = len(keep)
    cfg["pad_token_id"] = new[int(cfg.get("pad_token_id") or 0)]
    tensors = load_file(str(src / "model.safetensors"))
    key = next(k for k in tensors if k.endswith("embeddings.word_embeddings.weight"))
    tensors[key] = tensors[key][torch.tensor(keep)]
    tensors = {k: v.to(dtype).contiguous() if v.is_floating_point() else v for k, v in tensors.items()}
    dst.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"pruned_from": str(src), "kept_tokens": str(len(keep)),
                                               "dtype": str(dtype).removeprefix("torch.")})
    by_id = sorted(tok_json["model"]["vocab"], key=tok_json["model"]["vocab"].get)
    for name, text in (("tokenizer.json", json.dumps(tok_json, ensure_ascii=False)),
                       ("config.json", json.dumps(cfg, indent=2)), ("vocab.txt", "\n".join(by_id) + "\n")):
        with atomic_path(dst / name) as tmp:
            Path(tmp).write_text(text, encoding="utf-8")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).is_file():
            (dst / name).write_bytes((src / name).read_bytes())
    return {"kept": len(keep), "of": len(vocab), "bytes": (dst / "model.safetensors").stat().st_size}


def pruned_tag(path: str | Path) -> str:
    """"" for an ordinary BERT folder; "-pruned{tokens}-{dtype}" for a ``prune_vocab`` copy (its metadata), so that
    cached states of a copy stored in fp16 are never taken for the full model's (the cache is keyed by name)."""
    from safetensors import safe_open
    try:
        with safe_open(str(Path(path) / "model.safetensors"), "pt") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - not a readable safetensors file: the loader reports it
        return ""
    if "pruned_from" not in meta:
        return ""
    return f"-pruned{meta.get('kept_tokens', '')}-{meta.get('dtype', 'float32')}"
