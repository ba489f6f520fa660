"""Judging an emoji model offline with the emoji feature extractor: retrieval accuracy of generated images against
the real emoji (does the nearest real picture carry the prompt's name? chance is 1 / number of emoji) and FID/KID in
the extractor's feature space (comparable only between models measured with the same extractor file)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..data.worlds import default_cache_dir, emoji_images
from ..features.base import extract_features
from ..features.emoji import EmojiExtractor
from ..images import contact_sheet
from ..utils import atomic_write_text
from .fid import Stats, fid_from_stats, kernel_distance


def retrieval_accuracy(extractor: EmojiExtractor, gen: np.ndarray, prompts: list[str], real: np.ndarray,
                       real_names: list[list[str]], batch: int = 256) -> dict:
    """Share of generated images whose nearest real emoji (cosine, the extractor's embedding) has the prompt
    among its names; also top-5."""
    ref = torch.cat([extractor.embed(real[i:i + batch]) for i in range(0, len(real), batch)])
    q = torch.cat([extractor.embed(gen[i:i + batch]) for i in range(0, len(gen), batch)])
    top = (q @ ref.T).topk(min(5, len(real)), dim=-1).indices.numpy()
    hit1 = [p in real_names[t[0]] for p, t in zip(prompts, top)]
    hit5 = [any(p in real_names[k] for k in t) for p, t in zip(prompts, top)]
    return {"top1": float(np.mean(hit1)), "top5": float(np.mean(hit5)), "n": len(prompts),
            "chance_top1": 1 / len(real), "per_prompt": [{"prompt": p, "top1": bool(h)} for p, h in zip(prompts, hit1)]}


def reference_emoji(cache: Path | None = None, progress: bool = True):
    """Every curated emoji picture at 64 px (training then held-out), with its caption lists:
    (images, train captions, held-out captions). What the extractor learns and the evaluation retrieves from."""
    cache = cache or default_cache_dir()
    dc = DataConfig(world="emoji", image_size=64, num_images=0, seed=0)
    tr_img, tr_caps = emoji_images(dc, cache, progress)
    ho_img, ho_caps = emoji_images(dc, cache, progress, split="heldout")
    return np.concatenate([tr_img, ho_img]), tr_caps, ho_caps


def evaluate_emoji(cascade, extractor: EmojiExtractor, *, cache: Path | None = None, per_split: int = 100,
                   seed: int = 0, batch_size: int = 32, num_stages: int | None = None, settings=None,
                   out_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Held-out and training captions (English names, ``per_split`` of each, seeded) -> images -> retrieval
    accuracy against every real emoji, and FID/KID of the images against the real emoji (extractor features)."""
    from PIL import Image

    from ..pipeline import to_uint8
    real, tr_caps, ho_caps = reference_emoji(cache, progress)
    real_names = [[c[0]] + [n for n in c[1:] if n != c[0]] for c in tr_caps] + ho_caps
    rng = np.random.default_rng(seed)
    picks = {"heldout": [ho_caps[i][0] for i in rng.choice(len(ho_caps), min(per_split, len(ho_caps)), False)],
             "train": [tr_caps[i][0] for i in rng.choice(len(tr_caps), min(per_split, len(tr_caps)), False)]}
    n = num_stages or len(cascade.stages)
    report, sheets = {}, {}
    real_feats = extract_features(list(real), extractor)
    for split, prompts in picks.items():
        imgs = []
        it = range(0, len(prompts), batch_size)
        if progress:
            from tqdm import tqdm
            it = tqdm(it, desc=f"emoji eval ({split})", unit="batch")
        for s in it:
            ps = prompts[s:s + batch_size]
            out = cascade.run(ps, list(range(s, s + len(ps))), settings=settings, num_stages=n)[-1]
            imgs.extend(to_uint8(out))
        gen = np.stack([np.asarray(Image.fromarray(im).resize((64, 64), Image.BICUBIC)) if im.shape[0] != 64 else im
                        for im in imgs])
        r = retrieval_accuracy(extractor, gen, prompts, real, real_names)
        gf = extract_features(list(gen), extractor)
        a, b = Stats.from_features(gf, extractor.name), Stats.from_features(real_feats, extractor.name)
        r.update(fid=fid_from_stats(a, b), kid=kernel_distance(gf, real_feats, num_subsets=20))
        report[split] = r
        sheets[split] = (np.stack(imgs[:32]), prompts[:32])
    report["extractor"] = extractor.name
    report["num_real"] = len(real)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False))
        for split, (ims, caps) in sheets.items():
            contact_sheet(ims, caps, out / f"contact_sheet_{split}.png", scale=max(1, 128 // ims.shape[1]),
                          title=f"{split} captions (top-1 retrieval {report[split]['top1']:.2f})")
    return report

