"""Image features for metrics and curation: the extractor interface, clean-fid's resize, batched extraction.

Every extractor maps float [N, 3, S, S] images in [0, 255] to [N, D] features and carries a ``name`` that goes into
every saved statistic, so statistics from different extractors are never compared.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from ..images import ImageInputError


class FIDError(ImageInputError):
    """Bad input to a metric (missing weights, empty folder, mismatched statistics): one clear message."""


def clean_resize(img: np.ndarray, size: int = 299) -> np.ndarray:
    """uint8/float [H, W, 3] -> float32 [size, size, 3] in [0, 255]: PIL bicubic per channel in mode 'F'.

    This is clean-fid's ``make_resizer("PIL", False, "bicubic", (299, 299))``; PIL's bicubic filter is
    antialiased when it down-samples, which is what makes the "clean" FID insensitive to aliasing.
    """
    from PIL import Image
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    chans = []
    for c in range(3):
        ch = Image.fromarray(img[:, :, c].astype(np.float32), mode="F").resize((size, size), Image.BICUBIC)
        chans.append(np.asarray(ch).clip(0, 255).reshape(size, size, 1))
    return np.concatenate(chans, axis=2).astype(np.float32)


class FeatureExtractor(nn.Module):
    """Maps float [N, 3, S, S] images in [0, 255] (S = ``input_size``) to [N, D] features.

    ``name`` goes into every saved statistic, so statistics from another extractor are refused.
    ``input_size=None`` means the extractor takes the images at their own size (no resizing).
    """

    name: str = "custom"
    input_size: int | None = 299


@torch.no_grad()
def extract_features(images: Iterable[np.ndarray], extractor: FeatureExtractor, batch_size: int = 64,
                     progress: bool = False, total: int | None = None, desc: str = "features") -> np.ndarray:
    """uint8 [H, W, 3] images -> float64 [N, D] features (clean resize to the extractor's input size)."""
    size = extractor.input_size
    extractor.eval()
    feats, batch = [], []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, desc=desc, unit="img")

    def flush():
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous()
        feats.append(extractor(x).double().cpu().numpy())
        if bar is not None:
            bar.update(len(batch))
        batch.clear()

    for img in images:
        batch.append(clean_resize(img, size) if size else np.asarray(img, dtype=np.float32))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if bar is not None:
        bar.close()
    if not feats:
        raise FIDError("no images to compute features of")
    return np.concatenate(feats)
