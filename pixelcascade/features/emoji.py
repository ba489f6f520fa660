"""An offline quality measure for emoji models, honest about what it is.

Inception and CLIP cannot be downloaded here, so the emoji model is measured with a small feature extractor
trained here, on the emoji themselves: a conv net that must tell every emoji picture apart (one class per
picture) under the damage a generator does (shifts, rescaling, blur, noise, colour drift). Its 256-d pooled
features give FID/KID against the real emoji (comparable only between models measured with the same extractor
file, never with Inception FIDs), and its normalised embeddings give **retrieval accuracy**: does the generated
image's nearest real emoji carry the prompt's name? Chance is 1 / number of emoji.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..tensorfiles import read_tensors
from .base import FeatureExtractor, FIDError, clean_resize


class EmojiNet(nn.Module):
    def __init__(self, num_classes: int, width: int = 32, dim: int = 128):
        super().__init__()
        chans = [3, width, width * 2, width * 4, width * 8]
        layers = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.GroupNorm(8, b), nn.SiLU(),
                       nn.Conv2d(b, b, 3, padding=1), nn.GroupNorm(8, b), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(chans[-1], dim)
        self.classes = nn.Parameter(torch.randn(num_classes, dim) * 0.01)
        self.feature_dim = chans[-1]

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """x in [-1, 1], [B, 3, 64, 64] -> pooled features [B, 256]."""
        return self.body(x).mean((2, 3))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self.pooled(x)), dim=-1)

    def logits(self, x: torch.Tensor, scale: float = 16.0) -> torch.Tensor:
        return scale * self.embed(x) @ F.normalize(self.classes, dim=-1).T


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """What a generator does to a picture: shift, rescale, blur, noise, a colour drift. x in [-1, 1]."""
    b, _, h, w = x.shape
    s = 1 + (torch.rand(b, generator=g) - 0.5) * 0.3  # scale 0.85 .. 1.15
    t = (torch.rand(b, 2, generator=g) - 0.5) * 0.25  # shift up to 6% each way
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = 1 / s, 1 / s, t
    grid = F.affine_grid(theta, (b, 3, h, w), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)  # the white background continues
    blur = torch.rand(b, generator=g) < 0.5
    if blur.any():
        low = F.interpolate(F.avg_pool2d(x[blur], 2), size=(h, w), mode="bilinear", align_corners=False)
        x = x.clone()
        x[blur] = low
    x = x + torch.randn(x.shape, generator=g) * (torch.rand(b, 1, 1, 1, generator=g) * 0.15)
    x = x * (1 + (torch.rand(b, 3, 1, 1, generator=g) - 0.5) * 0.1) + (torch.rand(b, 3, 1, 1, generator=g) - 0.5) * 0.1
    return x.clamp(-1, 1)


class EmojiExtractor(FeatureExtractor):
    input_size = 64

    def __init__(self, path: str | Path):
        super().__init__()
        p = Path(path).expanduser()
        if not p.is_file():
            raise FIDError(f"emoji features {p}: no such file; make it with `pixelcascade data emoji-features -o {p}`")
        sd, meta = read_tensors(p)
        if meta.get("kind") != "emoji-features":
            raise FIDError(f"{p} is not an emoji feature extractor (made by pixelcascade data emoji-features)")
        try:
            self.net = EmojiNet(int(meta["num_classes"]), width=int(meta.get("width", 32)))
            self.net.load_state_dict(sd)
            self.names = json.loads(meta["names"])
        except (KeyError, ValueError, RuntimeError) as e:  # a file edited or cut: its parts do not fit together
            reason = " ".join(str(e).split())[:160]
            raise FIDError(f"{p}: an emoji feature extractor whose contents do not fit together ({reason}); make "
                           f"it again with `pixelcascade data emoji-features -o {p}`") from None
        self.net.eval()
        self.name = f"emoji-features[{hashlib.sha256(p.read_bytes()).hexdigest()[:12]}]"

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [0, 255] -> pooled features (FID/KID)
        return self.net.pooled(x / 127.5 - 1)

    @torch.no_grad()
    def embed(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.stack([clean_resize(im, 64) for im in images])).permute(0, 3, 1, 2)
        return self.net.embed(x / 127.5 - 1)


def load_emoji_extractor(path: str) -> EmojiExtractor:
    return EmojiExtractor(path)
