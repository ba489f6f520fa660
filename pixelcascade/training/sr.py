"""Super-resolution training inputs that match inference."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def degrade(x0: torch.Tensor, low_size: int, size: int | None = None) -> torch.Tensor:
    """The low-res image a stage-I model would have made: the target down-sampled (area-weighted, antialiased
    bilinear) by ``low_size / size`` on each side (``size``: the stage's square side; a non-square aspect bucket
    keeps its shape); square targets go to ``low_size``. ``noise_augment`` then up-samples it back (bilinear,
    align_corners=True, as IF)."""
    h, w = x0.shape[-2:]
    size = size or w
    out = (h * low_size // size, w * low_size // size)
    return F.interpolate(x0, size=out, mode="bilinear", antialias=True, align_corners=False)
