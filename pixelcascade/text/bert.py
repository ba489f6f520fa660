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
