"""LAION's aesthetic predictor, loaded from a local path (the IF recipe keeps LAION images scoring 4.5 or more)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import PixelcascadeError
from .clip import CLIPScorer


class AestheticModelError(PixelcascadeError, ValueError):
    """A scorer folder that lacks its files."""


class AestheticScorer:
    """LAION's improved aesthetic predictor: an MLP (768 -> 1024 -> 128 -> 64 -> 16 -> 1) on L2-normalised CLIP
    ViT-L/14 image embeddings. ``path``: a folder with ``clip/`` (a Hugging Face CLIP) and ``mlp.safetensors``
    (keys layers.{0,2,4,6,7}.weight/bias as in the original sac+logos+ava1-l14-linearMSE.pth)."""

    def __init__(self, path: str | Path):
        import torch
        from safetensors.torch import load_file

        p = Path(path).expanduser()
        if not (p / "mlp.safetensors").is_file():
            raise AestheticModelError(f"--aesthetic-model {p}: needs mlp.safetensors and clip/ (a local CLIP ViT-L/14)")
        self.clip = CLIPScorer(p / "clip")
        sd = load_file(str(p / "mlp.safetensors"))
        dims = [sd[f"layers.{i}.weight"].shape for i in (0, 2, 4, 6, 7)]
        layers = []
        for k, (o, i) in enumerate(dims):
            layers.append(torch.nn.Linear(i, o))
            if k < 3:
                layers.append(torch.nn.Dropout(0.0))
        self.mlp = torch.nn.Sequential(*layers)
        self.mlp.load_state_dict({f"{j}.{t}": sd[f"layers.{i}.{t}"] for j, i in
                                  zip((0, 2, 4, 6, 7), (0, 2, 4, 6, 7)) for t in ("weight", "bias")})
        self.mlp.eval()

    def __call__(self, images: list[np.ndarray]) -> list[float]:
        import torch
        with torch.no_grad():
            e = self.clip.image_embeddings(images)
            return [float(v) for v in self.mlp(e).squeeze(-1)]
