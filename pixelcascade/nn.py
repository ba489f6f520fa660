"""Shared network primitives: timestep embedding, GroupNorm, zero init, attention through SDPA."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (float) timesteps, **cos first** as IF/ADM: [cos(t w_i), sin(t w_i)].

    w_i = exp(-ln(max_period) * i / half), i = 0..half-1. Computed in fp32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # [B, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [B, 2*half]
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups, eps 1e-5, computed in the input dtype (as IF's ``normalization``)."""

    def __init__(self, channels: int):
        super().__init__(32, channels, eps=1e-5)


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def conv1x1_linear(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """Apply a kernel-1 ``Conv1d`` (kept for IF's key names and shapes) as a matmul on [B, L, C] tokens."""
    return F.linear(x, conv.weight.squeeze(-1), conv.bias)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over [B, heads, L, d] tensors, fused (flash kernel on CPU and CUDA)."""
    return F.scaled_dot_product_attention(q, k, v)
