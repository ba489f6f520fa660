"""FID and KID the way clean-fid computes them, with a pluggable feature extractor.

The primary number is clean-fid's ``mode="clean"``: every image is resized to 299x299 with PIL's bicubic filter,
channel by channel in float32 (no quantisation), fed in [0, 255] to NVIDIA's TorchScript port of the TF Inception
(``inception-2015-12-05.pt``), pool3 features (2048-d); statistics in float64 (``np.cov``), the Frechet distance
through ``scipy.linalg.sqrtm`` and KID as clean-fid's unbiased polynomial-kernel MMD over 100 random subsets.
tests/test_fid.py runs clean-fid itself on the same files and extractor and checks the numbers agree.

The Inception file cannot be downloaded here: fetch it once where there is internet, from
https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt
and pass its path (``--inception PATH``). Any other extractor (``pixelstats``, hand-made statistics that need no
download; the emoji one; a seeded random net for tests) plugs in through :class:`FeatureExtractor`; numbers from
different extractors are not comparable.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from ..features.base import FeatureExtractor, FIDError, extract_features
from ..images import ImageInputError, center_crop_resize, list_images, read_rgb


def folder_features(folder: str | Path, extractor: FeatureExtractor, batch_size: int = 64,
                    progress: bool = False, ref_size: int | None = None) -> np.ndarray:
    """Features of every image under ``folder``; ``ref_size``: centre-crop + resize first (real reference sets)."""
    try:
        files = list_images(folder)
    except ImageInputError as e:  # a metric's input: reported as the metric's error
        raise FIDError(str(e)) from None
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


def fid_warnings(extractor: str, dim: int, n_gen: int, n_ref: int) -> list[str]:
    """What a reader of an FID should know: features from a random net measure little, and with fewer images
    than twice the feature width the covariance is poorly estimated, so FID is biased high and moves with the
    count (KID is unbiased)."""
    out = []
    if extractor.startswith("random"):
        out.append(f"{extractor}: a random network's features only say whether two sets differ, not how good "
                   "images are (noise can score close to real pictures); use --features pixelstats (no download) "
                   "or --inception FILE")
    n, enough = min(n_gen, n_ref), 2 * dim
    if n < enough:
        out.append(f"FID from {n} images in a {dim}-d feature space is biased high and changes with the count: "
                   f"compare models only at equal counts, prefer KID, and use {enough} or more images for a "
                   "steadier number")
    return out


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
    out = {"fid": fid_from_stats(a, b), "n_gen": a.n, "n_ref": b.n, "extractor": extractor.name, "mode": "clean",
           "warnings": fid_warnings(extractor.name, len(a.mu), a.n, b.n)}
    if kid and a.feats is not None and b.feats is not None:
        out["kid"] = kernel_distance(a.feats, b.feats, seed=kid_seed)
    return out
