"""Composition check (CPU, minutes): does a small stage I draw a colour-shape pair it never saw, given this text?

The world: the shapes world's colour task at 32 px ("a {colour} {shape}", one object), 20,000 images, the held-out
pair (a purple triangle) never shown: the network sees purple circles and squares, and triangles of five other
colours. A small `shapes32-I` (model_channels 32) trains for STEPS steps on one thread, then draws every colour
prompt x 8 seeds; the benchmark's scorer passes or fails each image. Seen and unseen (purple triangle) apart.
Text modes (everything else the same, seeds included):
  minilm     MiniLM's per-token states of the caption (what every shipped model reads)
  oracle     a structured code with no language: token 0 = one-hot(colour), token 1 = one-hot(shape)
  word       each word's MiniLM states computed with the word alone ([CLS] word [SEP]; text_encoder=minilm:words):
             context-free, so "purple" is the same vector before "triangle" as before "circle"; [CLS], [SEP] and
             padding take the empty caption's states
  both       the caption's states followed by its word states (twice the tokens)
  MODE-pair  any mode, trained on the colour-binding task too ("a {c1} {s1} and a {c2} {s2}", half the images,
             never a purple triangle), as the real world does; the same evaluation, and colour binding on 24 seen
             and 8 unseen prompts x 4 seeds (word states alone carry no order: "a red circle and a blue square"
             and "a blue circle and a red square" are the same set of token states to cross-attention)

Usage: [THREADS=n] [UNSEEN_SEEDS=k] python scripts/composition_check.py MODE OUT_DIR STEPS
(prints seen / unseen accuracy and what the unseen images show; writes result.json)
"""
import dataclasses
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from pixelcascade.config import DataConfig, DiffusionConfig, RunConfig, SampleConfig, TrainConfig
from pixelcascade.data import shapes as S
from pixelcascade.eval.shapes_score import detect, score_image
from pixelcascade.pipeline import Stage, to_uint8
from pixelcascade.presets import get_preset
from pixelcascade.training.data import TrainData
from pixelcascade.training.loop import Trainer

name, out, steps = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
pair = name.endswith("-pair")
mode = name.removesuffix("-pair")
THREADS = int(os.environ.get("THREADS", "1"))
UNSEEN_SEEDS = int(os.environ.get("UNSEEN_SEEDS", "8"))  # images of "a purple triangle" (8 in docs/models.md)
torch.set_num_threads(THREADS)
L = 16
N = 20000


def oracle(text: str) -> np.ndarray:
    """One token per named object attribute: colour one-hots in dims 0-5, shape one-hots in 6-8."""
    e = np.zeros((L, 384), np.float16)
    k = 0
    for w in text.split():
        w = w.rstrip("s") if w.rstrip("s") in S.SHAPES else w
        if w in S.COLORS:
            e[k, S.COLORS.index(w)] = 4
            k += 1
        elif w in S.SHAPES:
            e[k, 6 + S.SHAPES.index(w)] = 4
            k += 1
    return e


rng = random.Random(0)
P = S.all_prompts("colors", 32)
train_prompts = [p for p in P if not p.unseen]
pair_prompts = [p for p in S.all_prompts("color_attr", 32) if not p.unseen]
imgs = np.empty((N, 32, 32, 3), np.uint8)
caps = []
for i in range(N):
    p = rng.choice(pair_prompts if pair and rng.random() < 0.5 else train_prompts)
    sc = S.scene_for_prompt(p, 32, rng, allow_unseen=False)
    imgs[i] = S.render(sc.objects, 32)
    caps.append(p.text)
uniq = sorted(set(caps))

if mode != "oracle":
    from pixelcascade.text.encoder import load_encoder
    if mode not in ("minilm", "word", "both"):
        raise SystemExit(f"unknown mode {mode!r}: minilm, oracle, word or both (optionally -pair)")
    # the encoders this mode reads: caption states, word states (pixelcascade/text/word_states.py) or both
    encoders = [load_encoder(spec, L) for spec, used in (("minilm", mode != "word"), ("minilm:words", mode != "minilm"))
                if used]

    def states(texts: list[str]) -> torch.Tensor:
        return torch.cat([e(texts)[0].float() for e in encoders], 1)
    # the unconditional branch: the empty caption's states (the same in both encoders), once per encoder
    empty = torch.cat([e.empty(1)[0].float() for e in encoders], 1)
else:
    def states(texts: list[str]) -> torch.Tensor:
        return torch.from_numpy(np.stack([oracle(t) for t in texts])).float()
    empty = states([""])

table = torch.cat([states(uniq), empty]).half()
row = {c: i for i, c in enumerate(uniq)}
data = TrainData(images=imgs, caption_idx=np.array([row[c] for c in caps]), text_table=table,
                 null_idx=len(uniq), captions=caps)
unet = dataclasses.replace(get_preset("shapes32-I"), model_channels=32)
cfg = RunConfig(name="compose", unet=unet, diffusion=DiffusionConfig(min_snr_gamma=5.0),
                sample=SampleConfig(sampler="ddpm", num_steps="smart27", guidance_scale=4.0, dyn_thresh_max=1.5),
                data=DataConfig(world="shapes", image_size=32, num_images=N, text_max_length=table.shape[1]),
                train=TrainConfig(lr=5e-4, batch_size=64, max_steps=10 ** 6, warmup_steps=100, ckpt_every=10 ** 6,
                                  val_every=10 ** 6, log_every=100, num_threads=THREADS))
tr = Trainer(cfg, data, out, None, progress=False)
t0 = time.time()
tr.fit(max_steps=steps)
train_s = time.time() - t0
print(f"{name}: {tr.step} steps in {train_s:.0f}s", flush=True)

stage = Stage(unet=tr.ema.model.eval(), diffusion=cfg.diffusion, settings=cfg.sample)
seen, unseen, drawn = [], [], Counter()
for p in P:
    n = UNSEEN_SEEDS if p.unseen else 8
    with torch.no_grad():
        x = stage.sample(states([p.text]).repeat(n, 1, 1), empty.repeat(n, 1, 1), seeds=list(range(n)))
    for im in to_uint8(x):
        ok = score_image(im, p)
        (unseen if p.unseen else seen).append(ok)
        if p.unseen:
            drawn[" + ".join(sorted(f"{d.color} {d.shape}" for d in detect(im))) or "nothing"] += 1
res = {"mode": name, "steps": tr.step, "train_s": round(train_s), "seen": round(float(np.mean(seen)), 3),
       "unseen": round(float(np.mean(unseen)), 3), "unseen_images": len(unseen), "unseen_drawn": dict(drawn)}
if pair:  # colour binding: 24 seen and 8 unseen (a purple triangle and another object) prompts x 4 seeds
    pool = S.all_prompts("color_attr", 32)
    picked = random.Random(2).sample([p for p in pool if not p.unseen], 24) + \
        random.Random(3).sample([p for p in pool if p.unseen], 8)
    bind = {True: [], False: []}
    for p in picked:
        with torch.no_grad():
            x = stage.sample(states([p.text]).repeat(4, 1, 1), empty.repeat(4, 1, 1), seeds=list(range(4)))
        bind[p.unseen] += [score_image(im, p) for im in to_uint8(x)]
    res.update(binding_seen=round(float(np.mean(bind[False])), 3), binding_unseen=round(float(np.mean(bind[True])), 3))
print(json.dumps(res), flush=True)
(out / "result.json").write_text(json.dumps(res))
