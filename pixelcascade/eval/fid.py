"""FID and KID the way clean-fid computes them, with a pluggable feature extractor.

The primary number is clean-fid's ``mode="clean"``: every image is resized to 299x299 with PIL's bicubic filter,
channel by channel in float32 (no quantisation), fed in [0, 255] to NVIDIA's TorchScript port of the TF Inception
(``inception-2015-12-05.pt``), pool3 features (2048-d); statistics in float64 (``np.cov``), the Frechet distance
through ``scipy.linalg.sqrtm`` and KID as clean-fid's unbiased polynomial-kernel MMD over 100 random subsets.
tests/test_fid.py runs clean-fid itself on the same files and extractor and checks the numbers agree.

The Inception file cannot be downloaded here: fetch it once where there is internet, from
https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt
and pass its path (``--inception PATH``). Any other extractor (the emoji one, a seeded random net for tests) plugs
in through :class:`FeatureExtractor`; numbers from different extractors are not comparable.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".tif", ".tiff", ".npy"}


class FIDError(ValueError):
    """Bad input to a metric (missing weights, empty folder, mismatched statistics): one clear message."""


# --------------------------------------------------------------------------------------------------
# resizing (clean-fid's "clean" mode)


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


# --------------------------------------------------------------------------------------------------
# feature extractors


class FeatureExtractor(nn.Module):
    """Maps float [N, 3, S, S] images in [0, 255] (S = ``input_size``) to [N, D] features.

    ``name`` goes into every saved statistic, so statistics from another extractor are refused.
    ``input_size=None`` means the extractor takes the images at their own size (no resizing).
    """

    name: str = "custom"
    input_size: int | None = 299


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


def load_extractor(spec: str) -> FeatureExtractor:
    """``inception:PATH`` (or a bare path to the Inception file), ``emoji:PATH``, ``random[:SEED]``."""
    kind, _, arg = spec.partition(":")
    if kind == "random":
        return RandomConvExtractor(int(arg or 0))
    if kind == "emoji":
        from .emoji_features import load_emoji_extractor
        return load_emoji_extractor(arg)
    if kind == "inception":
        return InceptionExtractor(arg)
    return InceptionExtractor(spec)


# --------------------------------------------------------------------------------------------------
# images in, features out


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FIDError(f"{folder}: no such folder of images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise FIDError(f"{folder}: holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return files


def read_rgb(path: Path) -> np.ndarray:
    from PIL import Image
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False)
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


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


def folder_features(folder: str | Path, extractor: FeatureExtractor, batch_size: int = 64,
                    progress: bool = False, ref_size: int | None = None) -> np.ndarray:
    """Features of every image under ``folder``; ``ref_size``: centre-crop + resize first (real reference sets)."""
    from ..utils import center_crop_resize
    files = list_images(folder)
    imgs = (read_rgb(p) for p in files)
    if ref_size:
        imgs = (center_crop_resize(im, ref_size) for im in imgs)
    return extract_features(imgs, extractor, batch_size, progress, len(files), desc=f"features {Path(folder).name}")


# --------------------------------------------------------------------------------------------------
# statistics and distances


class Stats:
    """mu, sigma (float64) of a feature set, with the features kept when asked (KID needs them)."""

    def __init__(self, mu: np.ndarray, sigma: np.ndarray, n: int, extractor: str, feats: np.ndarray | None = None,
                 meta: dict | None = None):
        self.mu, self.sigma, self.n, self.extractor, self.feats = mu, sigma, n, extractor, feats
        self.meta = meta or {}

    @classmethod
    def from_features(cls, feats: np.ndarray, extractor: str, keep_features: bool = True, meta: dict | None = None):
        feats = np.asarray(feats, dtype=np.float64)
        if len(feats) < 2:
            raise FIDError(f"FID needs at least 2 images, got {len(feats)}")
        return cls(np.mean(feats, axis=0), np.cov(feats, rowvar=False), len(feats), extractor,
                   feats if keep_features else None, meta)

    def save(self, path: str | Path) -> Path:
        from ..utils import atomic_path
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"mu": self.mu, "sigma": self.sigma, "n": np.int64(self.n),
                  "extractor": np.array(self.extractor), "meta": np.array(json.dumps(self.meta))}
        if self.feats is not None:
            arrays["feats"] = self.feats
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Stats:
        path = Path(path)
        if not path.is_file():
            raise FIDError(f"{path}: no such statistics file; make one with `pixelcascade eval fid REAL_FOLDER "
                           f"--save-stats {path}`")
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["mu"], z["sigma"], int(z["n"]), str(z["extractor"]),
                           z["feats"] if "feats" in z else None, json.loads(str(z["meta"])) if "meta" in z else {})
        except (KeyError, ValueError, OSError) as e:
            raise FIDError(f"{path}: not a statistics file written by pixelcascade ({e})") from None


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2), with clean-fid's sqrtm and its eps fallback."""
    from scipy import linalg
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise FIDError(f"feature sizes differ ({mu1.shape[0]} vs {mu2.shape[0]}): both sets must use one extractor")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # near-singular products are handled below
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise FIDError(f"FID: imaginary component {np.max(np.abs(covmean.imag)):.3g} in sqrtm (too few images "
                           "for the feature size?)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def kernel_distance(feats1: np.ndarray, feats2: np.ndarray, num_subsets: int = 100, max_subset_size: int = 1000,
                    seed: int | None = 0) -> float:
    """KID: clean-fid's unbiased MMD^2 with the kernel (x.y / d + 1)^3, averaged over random subsets.

    The subsets are drawn exactly as clean-fid draws them (``choice`` on feats2, then feats1), from a
    ``RandomState(seed)``; clean-fid uses numpy's global state, so ``np.random.seed(s)`` there equals ``seed=s``.
    """
    rng = np.random.RandomState(seed) if seed is not None else np.random
    n = feats1.shape[1]
    m = min(min(feats1.shape[0], feats2.shape[0]), max_subset_size)
    if m < 2:
        raise FIDError("KID needs at least 2 images in each set")
    t = 0.0
    for _ in range(num_subsets):
        x = feats2[rng.choice(feats2.shape[0], m, replace=False)]
        y = feats1[rng.choice(feats1.shape[0], m, replace=False)]
        a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
        b = (x @ y.T / n + 1) ** 3
        t += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
    return float(t / num_subsets / m)


def fid_from_stats(a: Stats, b: Stats) -> float:
    if a.extractor != b.extractor:
        raise FIDError(f"the two statistics come from different feature extractors ({a.extractor} vs {b.extractor}): "
                       "recompute one with the other's extractor")
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def compute_stats(source: str | Path, extractor: FeatureExtractor, batch_size: int = 64, progress: bool = False,
                  keep_features: bool = True, ref_size: int | None = None) -> Stats:
    """Statistics of a folder of images, or loaded from a .npz written by :meth:`Stats.save`."""
    p = Path(source)
    if p.suffix == ".npz":
        st = Stats.load(p)
        if st.extractor != extractor.name:
            raise FIDError(f"{p} was computed with {st.extractor}, not {extractor.name}: recompute it")
        return st
    feats = folder_features(p, extractor, batch_size, progress, ref_size)
    return Stats.from_features(feats, extractor.name, keep_features,
                               meta={"source": str(p), "mode": "clean", "ref_size": ref_size})


def fid_kid(gen: str | Path, ref: str | Path, extractor: FeatureExtractor, batch_size: int = 64,
            progress: bool = False, kid: bool = True, kid_seed: int = 0) -> dict:
    """FID (and KID when both sides have features) between a folder of generated images and a folder/.npz."""
    a = compute_stats(gen, extractor, batch_size, progress)
    b = compute_stats(ref, extractor, batch_size, progress)
    out = {"fid": fid_from_stats(a, b), "n_gen": a.n, "n_ref": b.n, "extractor": extractor.name, "mode": "clean"}
    if kid and a.feats is not None and b.feats is not None:
        out["kid"] = kernel_distance(a.feats, b.feats, seed=kid_seed)
    return out
