"""CLIP score as IF reports it: the mean cosine between CLIP ViT-B/32 image and caption embeddings (not x100).

Weights come from a local folder in the Hugging Face layout (``openai/clip-vit-base-patch32`` saved with
``save_pretrained``, or downloaded elsewhere and copied here). Preprocessing is CLIP's own: the short side
resized to 224 (bicubic), centre crop, CLIP mean/std; captions tokenised and truncated to 77 tokens.
torchmetrics' ``CLIPScore`` reports 100x this number (tests/test_clip_score.py checks the two agree).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..features.base import FIDError
from ..features.clip import CLIPScoreError, CLIPScorer
from ..images import ImageInputError, list_images, read_rgb


def clip_score_folder(folder: str | Path, scorer: CLIPScorer, batch_size: int = 64, progress: bool = False) -> dict:
    """CLIP score of a folder of generated PNGs, each captioned by its JSON sidecar's "prompt"."""
    try:
        files = list_images(folder)
    except ImageInputError as e:
        raise FIDError(str(e)) from None
    pairs = []
    for f in files:
        side = f.with_suffix(".json")
        if not side.is_file():
            continue
        pairs.append((f, json.loads(side.read_text()).get("prompt")))
    pairs = [(f, c) for f, c in pairs if c]
    if not pairs:
        raise CLIPScoreError(f"{folder}: no image has a JSON sidecar with its prompt (generate writes them)")
    vals = []
    it = range(0, len(pairs), batch_size)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="clip score", unit="batch")
    for s in it:
        chunk = pairs[s:s + batch_size]
        vals.append(scorer.scores([read_rgb(f) for f, _ in chunk], [c for _, c in chunk], batch_size))
    v = np.concatenate(vals)
    return {"clip_score": float(v.mean()), "std": float(v.std()), "n": int(len(v)), "model": scorer.name,
            "skipped_without_prompt": len(files) - len(v)}
