"""The text adapter: what a UNet may add between a small frozen text encoder and its cross-attention. Not in IF.

IF reads T5-XXL's states as they are. A small encoder (the shipped models' MiniLM) keeps "which object is on
which side" in directions the UNet barely learns from, so the shapes studies (docs/position.md) added, as options
of :class:`~pixelcascade.config.TextAdapterConfig`: transformer layers over the states, the token index, the
neighbours' states, and ZCA whitening with the training captions' statistics. Each is zero-initialised (a model
starts as the one without it). The UNet takes the adapter as an optional part: with every option off nothing is
built and the UNet is IF's, key for key. The adapter's layers keep the key names models were trained with
(``text_layers.*``, ``text_pos_proj.*``, ``text_ctx_proj.*``, ``text_white_*``) on the UNet itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TextAdapterConfig
from ..nn import timestep_embedding, zero_module

TEXT_POSITION_FEATURES = 64  # sinusoids of the token index (config text_position)


def token_position_features(length: int, device=None) -> torch.Tensor:
    """[L, 64]: cos and sin of the token index at periods 2*pi up to 100*2*pi tokens (monotone over any prompt)."""
    return timestep_embedding(torch.arange(length, device=device), TEXT_POSITION_FEATURES, max_period=100.0)


TEXT_CONTEXT_DECAY = 0.75  # config text_context: weight of a neighbour k+1 tokens away is 0.25 * 0.75^k


def context_weights(length: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """([L, L] before, [L, L] after): row i weighs token j != i by (1 - d) d^(|i-j|-1), only j < i (before) or
    j > i (after): exponentially decaying means of the neighbours on each side."""
    i = torch.arange(length, device=device, dtype=torch.float32)
    gap = i[:, None] - i[None, :]  # [L, L]: i - j
    d = TEXT_CONTEXT_DECAY
    before = torch.where(gap > 0, (1 - d) * d ** (gap - 1).clamp(min=0), torch.zeros(()))
    return before, before.T.contiguous()


WHITEN_EPS = 1e-2  # config text_whiten: eigenvalues below 1% of the mean one are not blown up


@torch.no_grad()
def whitening_stats(states: torch.Tensor, chunk: int = 65536,
                    eps: float = WHITEN_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """ZCA whitening of token states [..., D]: (mean [D], map [D, D]) with (x - mean) @ map of covariance
    ~identity over the directions the states use (eigenvalues regularised by ``eps`` x their mean), scaled
    so the whitened states keep the states' RMS. Computed in float64, in chunks."""
    x = states.reshape(-1, states.shape[-1])
    n, d = x.shape
    total, outer, sq = torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64), 0.0
    for i in range(0, n, chunk):
        c = x[i:i + chunk].double()
        total += c.sum(0)
        outer += c.T @ c
        sq += float(c.pow(2).sum())
    mean = total / n
    cov = outer / n - torch.outer(mean, mean)
    lam, vec = torch.linalg.eigh(cov)
    lam = lam.clamp(min=0)
    zca = vec @ torch.diag((lam + eps * lam.mean()) ** -0.5) @ vec.T
    white_sq = float(torch.trace(zca @ cov @ zca)) / d  # mean square of a whitened component
    zca = zca * ((sq / (n * d)) / white_sq) ** 0.5
    return mean.float(), zca.float()


class TextBlock(nn.Module):
    """A pre-LayerNorm transformer layer over text tokens whose two residual branches start at zero."""

    MAX_TOKENS = 256

    def __init__(self, dim: int, head_dim: int = 64):
        super().__init__()
        self.heads = max(1, dim // head_dim)
        self.pos = nn.Parameter(torch.zeros(self.MAX_TOKENS, dim))  # learned token position, starts at 0
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = zero_module(nn.Linear(dim, dim))
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), zero_module(nn.Linear(4 * dim, dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        if n > self.MAX_TOKENS:
            raise ValueError(f"{n} text tokens: the text layers take at most {self.MAX_TOKENS}")
        h = self.norm1(x + self.pos[:n].to(x.dtype))
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(a)
        return x + self.mlp(self.norm2(x))


def attach_text_adapter(unet: nn.Module, cfg: TextAdapterConfig) -> None:
    """Register the adapter's layers and buffers on ``unet`` (nothing when every option is off)."""
    d = cfg.dim
    if cfg.layers:
        unet.text_layers = nn.Sequential(*[TextBlock(d) for _ in range(cfg.layers)])
    if cfg.position:
        unet.text_pos_proj = zero_module(nn.Linear(TEXT_POSITION_FEATURES, d))
    if cfg.context:
        unet.text_ctx_proj = zero_module(nn.Linear(2 * d, d))
    if cfg.whiten:  # the buffers come from the data (set_whitening) and are stored with the weights
        unet.register_buffer("text_white_mean", torch.zeros(d))
        unet.register_buffer("text_white_map", torch.zeros(d, d))
        if cfg.white_sum:
            unet.text_white_proj = zero_module(nn.Linear(d, d))


def whiten(unet: nn.Module, states: torch.Tensor) -> torch.Tensor:
    """(x - mean) @ map, with the run's caption statistics (the buffers)."""
    return (states - unet.text_white_mean.to(states.dtype)) @ unet.text_white_map.to(states.dtype)


def adapt_text(unet: nn.Module, cfg: TextAdapterConfig, text_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The states cross-attention reads and the states the pooling reads ([B, L, D] each): ``text_emb`` itself,
    twice, when every option is off (IF)."""
    if cfg.position:
        pos = unet.text_pos_proj(token_position_features(text_emb.shape[1], text_emb.device).to(text_emb.dtype))
        text_emb = text_emb + pos  # [B, L, D] + [L, D]
    white = None
    if cfg.whiten:
        white = whiten(unet, text_emb)
        if cfg.white_sum:
            text_emb = text_emb + unet.text_white_proj(white)
    if cfg.context:
        before, after = (w.to(text_emb.dtype) for w in context_weights(text_emb.shape[1], text_emb.device))
        ctx = torch.cat([before @ text_emb, after @ text_emb], dim=-1)  # [B, L, 2D]
        text_emb = text_emb + unet.text_ctx_proj(ctx)
    if cfg.layers:
        text_emb = unet.text_layers(text_emb)
    return (white if cfg.whiten_attn else text_emb), (white if cfg.whiten_pool else text_emb)


def adapt_pooled(unet: nn.Module, cfg: TextAdapterConfig, states: torch.Tensor) -> torch.Tensor:
    """A style prompt's states for the pooling path alone, through the same input map as the prompt's own."""
    return whiten(unet, states) if cfg.whiten_pool else states


@torch.no_grad()
def set_whitening(nets, states: torch.Tensor, eps: float = WHITEN_EPS) -> None:
    """The ZCA statistics of ``states`` (every token state of a run's captions) into each UNet's buffers."""
    mean, zca = whitening_stats(states, eps=eps)
    for net in nets:
        net.text_white_mean.copy_(mean)
        net.text_white_map.copy_(zca)


@torch.no_grad()
def fold_white_attn(unet: nn.Module, cfg: TextAdapterConfig) -> None:
    """whiten_attn, for a fine-tune of a model whose cross-attention read the states plus the whitening path
    (x + P(w), w = (x - mean) @ map): rewrite encoder_proj to read w and give the same output.
    x = w @ map^-1 + mean, so x + P(w) = w @ (map^-1 + P_W^T) + mean + P_b."""
    if not cfg.whiten_attn:
        raise ValueError("fold_white_attn is for models with unet.text_whiten_attn=true")
    zmap, mean = unet.text_white_map.double(), unet.text_white_mean.double()
    if not zmap.any():
        raise ValueError("fold_white_attn: the whitening statistics are not set (text_white_map is zero)")
    a = torch.linalg.inv(zmap) + unet.text_white_proj.weight.double().T  # [D, D]: w -> x + P(w), linear part
    shift = mean + unet.text_white_proj.bias.double()
    e_w, e_b = unet.encoder_proj.weight.double(), unet.encoder_proj.bias.double()
    unet.encoder_proj.weight.copy_((e_w @ a.T).to(unet.encoder_proj.weight.dtype))
    unet.encoder_proj.bias.copy_((shift @ e_w.T + e_b).to(unet.encoder_proj.bias.dtype))


def adapter_keys(name: str) -> bool:
    """Whether a state-dict name belongs to the adapter (a fine-tune may add these: they start at zero)."""
    return name.startswith(("text_layers.", "text_pos_proj.", "text_ctx_proj.", "text_white"))
