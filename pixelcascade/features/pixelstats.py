"""A feature space for FID/KID that needs no download: hand-made image statistics, fixed by construction.

Inception (clean-fid's file) and CLIP cannot be fetched everywhere, and a random network measures little (noise and
real pictures can land close together in it). These 180 numbers describe what a user checks by eye, each group
scaled to a similar spread:

- colour layout: the image in an opponent colour space (luma, red-green, yellow-blue) averaged over a 4x4 grid (48);
- colour palette: a joint 4x4x4 RGB histogram, square-rooted (Hellinger) (64);
- edges: gradient-orientation histograms of the luma (8 orientations, weighted by gradient strength) at three
  scales over the whole image and on a 2x2 grid at full scale (24 + 32);
- texture and sharpness: the mean absolute Laplacian-pyramid band of each channel at four scales (12).

Numbers from it compare models with each other (the same extractor, the same image counts), never with Inception
FIDs in papers. Images are resized to 64 px (clean-fid's PIL bicubic) first.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from .base import FeatureExtractor

ORIENTATIONS = 8


def opponent(x: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> (luma, red-green, yellow-blue) [N, 3, H, W]."""
    r, g, b = x.unbind(1)
    return torch.stack([(r + g + b) / 3, (r - g) / 2, (r + g - 2 * b) / 4], 1)


def orientation_histogram(luma: torch.Tensor, cells: int = 1) -> torch.Tensor:
    """[N, 1, H, W] -> [N, cells * cells * ORIENTATIONS]: gradient strength per orientation (unsigned, 0..pi) in
    each of cells x cells regions, each region's histogram summing to 1."""
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=luma.dtype).view(1, 1, 3, 3) / 8
    gx = F.conv2d(F.pad(luma, (1, 1, 1, 1), mode="replicate"), kx)
    gy = F.conv2d(F.pad(luma, (1, 1, 1, 1), mode="replicate"), kx.transpose(-1, -2))
    strength = torch.sqrt(gx ** 2 + gy ** 2)
    angle = torch.remainder(torch.atan2(gy, gx), math.pi)
    bins = (angle / math.pi * ORIENTATIONS).long().clamp(max=ORIENTATIONS - 1)
    onehot = F.one_hot(bins[:, 0], ORIENTATIONS).permute(0, 3, 1, 2).to(luma.dtype) * strength  # [N, 8, H, W]
    hist = F.adaptive_avg_pool2d(onehot, cells)  # [N, 8, c, c]
    hist = hist / (hist.sum(1, keepdim=True) + 1e-6)
    return hist.permute(0, 2, 3, 1).flatten(1)


def laplacian_energy(x: torch.Tensor, levels: int = 4) -> torch.Tensor:
    """[N, C, H, W] -> [N, C * levels]: the mean absolute difference between each scale and its blurred half-size
    version (fine detail first)."""
    out = []
    for _ in range(levels):
        low = F.avg_pool2d(x, 2)
        out.append((x - F.interpolate(low, scale_factor=2, mode="bilinear", align_corners=False)).abs().mean((2, 3)))
        x = low
    return torch.cat(out, 1)


class PixelStatsExtractor(FeatureExtractor):
    """The weight-free extractor described in the module docstring ([N, 3, 64, 64] in [0, 255] -> [N, 180])."""

    name = "pixelstats-v1"
    input_size = 64
    dim = 180

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0
        opp = opponent(x)
        layout = F.adaptive_avg_pool2d(opp, 4).flatten(1) * 2  # [N, 48]
        q = (x * 4).long().clamp(0, 3)
        code = q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2]
        palette = F.one_hot(code.flatten(1), 64).to(x.dtype).mean(1).sqrt()  # [N, 64]
        luma = opp[:, :1]
        edges = [orientation_histogram(F.avg_pool2d(luma, s) if s > 1 else luma) for s in (1, 2, 4)]
        edges.append(orientation_histogram(luma, cells=2))
        texture = laplacian_energy(opp) * 30  # [N, 12]
        return torch.cat([layout, palette, *edges, texture], 1)
