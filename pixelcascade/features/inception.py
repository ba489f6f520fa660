"""FID's Inception (clean-fid's TorchScript file, from a local path) and a seeded random conv net for tests.

The Inception file cannot be downloaded here: fetch it once where there is internet, from
https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt
and pass its path (``--inception PATH``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from .base import FeatureExtractor, FIDError

INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"


class InceptionExtractor(FeatureExtractor):
    """clean-fid's Inception: NVIDIA's TorchScript file (TorchScript holds no Python code; nothing is unpickled)."""

    input_size = 299

    def __init__(self, path: str | Path):
        super().__init__()
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / "inception-2015-12-05.pt"
        if not p.is_file():
            raise FIDError(f"Inception weights not found at {p}: download {INCEPTION_URL} on a machine with internet "
                           "(clean-fid's file, 95 MB) and pass its path with --inception PATH")
        try:
            base = torch.jit.load(str(p), map_location="cpu").eval()
        except RuntimeError as e:
            raise FIDError(f"{p} is not the TorchScript Inception file clean-fid uses ({str(e).splitlines()[0]}); "
                           f"re-download it from {INCEPTION_URL}") from None
        self.layers = base.layers
        digest = hashlib.sha256(p.read_bytes()).hexdigest()[:12]
        self.name = f"inception-2015-12-05[{digest}]"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers.forward((x - 128) / 128).view(x.shape[0], 2048)


class RandomConvExtractor(FeatureExtractor):
    """A seeded random conv net: deterministic features for tests and quick offline comparisons (not Inception)."""

    def __init__(self, seed: int = 0, dim: int = 64, input_size: int | None = 299):
        super().__init__()
        self.input_size = input_size
        self.name = f"random-conv(seed={seed},dim={dim},size={input_size})"
        g = torch.Generator().manual_seed(seed)
        self.net = nn.Sequential(
            nn.AdaptiveAvgPool2d(32), nn.Conv2d(3, 32, 3, stride=2), nn.ReLU(),
            nn.Conv2d(32, dim, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        for prm in self.net.parameters():
            prm.data = torch.randn(prm.shape, generator=g) * 0.1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x / 255.0)
