"""Super-resolution training inputs that match inference."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def degrade(x0: torch.Tensor, low_size: int) -> torch.Tensor:
    """The low-res image a stage-I model would have made: the target down-sampled (area-weighted, antialiased
    bilinear) to ``low_size``. ``noise_augment`` then up-samples it back (bilinear, align_corners=True, as IF)."""
    return F.interpolate(x0, size=(low_size, low_size), mode="bilinear", antialias=True, align_corners=False)
