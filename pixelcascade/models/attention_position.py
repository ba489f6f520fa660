"""Not in IF: a 2-D position signal in every attention block (config ``unet.attention_position``).

guided-diffusion's attention has no position, so a pixel knows only weakly where another object is ("a circle to
the left of a square"). This adds sinusoids of the pixel's coordinates (scaled to [-1, 1], so any resolution
works) through a zero-initialised linear map to the normalised tokens: a block starts as the one without it, and
with the option off nothing is built (IF's key names exactly).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..nn import zero_module

POSITION_FREQS = 4


def position_features(hgt: int, wid: int, device=None) -> torch.Tensor:
    """[H*W, 4 * POSITION_FREQS]: sin and cos of pi * 2^k * y and x, with pixel centres scaled to [-1, 1]."""
    ys = (torch.arange(hgt, device=device, dtype=torch.float32) + 0.5) / hgt * 2 - 1
    xs = (torch.arange(wid, device=device, dtype=torch.float32) + 0.5) / wid * 2 - 1
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    f = math.pi * 2.0 ** torch.arange(POSITION_FREQS, device=device, dtype=torch.float32)
    ang = torch.cat([y.reshape(-1, 1) * f, x.reshape(-1, 1) * f], dim=1)  # [HW, 2F]
    return torch.cat([ang.sin(), ang.cos()], dim=1)


def attach_position(block: nn.Module, ch: int) -> None:
    """The block's map from the position features to its ``ch`` channels (``pos_proj``), at zero."""
    block.pos_proj = zero_module(nn.Linear(4 * POSITION_FREQS, ch))


def add_position(block: nn.Module, tokens: torch.Tensor, hgt: int, wid: int) -> torch.Tensor:
    """[B, HW, C] tokens plus the block's position signal ([HW, C], broadcast over the batch)."""
    pos = block.pos_proj(position_features(hgt, wid, tokens.device).to(block.pos_proj.weight.dtype))
    return tokens + pos.to(tokens.dtype)
