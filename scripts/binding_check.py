"""Binding check (CPU, minutes): can a small stage I learn WHICH shape goes left, given this text representation?

The world: the shapes world's position task with two different shapes and horizontal relations only, 32 px,
20,000 images. A small `shapes32-I` (model_channels 32) trains for MINUTES on one thread, then draws every prompt
x 8 seeds, and the scorer sorts the images into pass / swapped / misplaced / objects (docs/models.md, "Position").
Text modes (everything else is the same, seeds included):
  minilm        MiniLM per-token states of the caption (the benchmark template or its inverse wording, 50/50)
  oracle        a structured code with no language: token i = one-hot(shape i) + one-hot(its side)
  minilm-tl     MiniLM + unet.text_layers=2 (learned token position, starting at zero)
  minilm-tlsin  the same, with the token position starting as sinusoids at the states' scale
  minilm-tpos   MiniLM + unet.text_position (the token index, through a zero-initialised linear map, added to
                the states before cross-attention: first-order from step 0)
  minilm-white  MiniLM states ZCA-whitened with the training captions' token statistics (every direction the
                captions use at equal variance; the same map at evaluation)
  minilm-ctx    MiniLM + unet.text_context (each token's state plus a learned map of the decaying means of the
                states before and after it)
  minilm-white-full  as minilm-white, but with the shipped stage I's whitening (the statistics of the whole
                shapes caption table, every task: what `unet.text_whiten` computes for a real run; the
                shipped files of steps 800 and 1,600 hold the same statistics)
  minilm-addwhite    MiniLM + unet.text_whiten itself (the states plus a zero-initialised map of their
                whitened version; statistics of this check's captions, as Trainer.set_whitening computes them)
  minilm-wattn  MiniLM + unet.text_whiten + text_whiten_attn: cross-attention reads the whitened states, the
                pooled vector the states plus the map (statistics as in minilm-addwhite)
  minilm-wpool  the same + unet.text_whiten_pool: cross-attention and the pooled vector read the whitened states
  minilm-prefix each word piece's state computed with the caption cut after it ([CLS] w1 .. wi [SEP], the state of
                wi): a bidirectional encoder read causally, so a shape named after "left of" carries the relation
                in its own state and the subject does not; [CLS], [SEP] and padding keep the full caption's states
  minilm-pwpool minilm-prefix's states, read as minilm-wpool reads the states (whitened, statistics of this
                check's prefix states)
  MODE-real     any mode above, trained on the real training captions (the shapes world's caption generator:
                the template 40% of the time, else colour words, synonyms, inverse relations, prefixes); the
                same images and evaluation prompts
  MODE-mix      any MiniLM mode above, trained on a real run's task mix instead (every task of the shapes world,
                position weighted 12, so ~40% of the images are two different shapes in a relation on either
                axis), captions the plain templates only (data.template_share=1.0); the same evaluation
  MODE-mix-relstats  a text_whiten mode on the mix, its whitening statistics those of the relation captions
                alone (and the empty caption) instead of the whole caption table
  MODE-mix-realstats  a text_whiten mode on the mix, its whitening statistics those of the captions' real
                tokens only (no padding; eigenvalue floor 1e-3 of the mean instead of 1e-2), padding states
                replaced by the real tokens' mean so that they whiten to zero

Usage: [THREADS=n] python scripts/binding_check.py MODE OUT_DIR MINUTES [STEPS]   (prints the outcome shares; writes
result.json). STEPS stops at that many steps instead (the rows above ran ~1,400 steps in 25 minutes on an idle core
with native bf16; on a CPU without it the check trains in fp32).
"""
import dataclasses
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pixelcascade.config import DataConfig, DiffusionConfig, RunConfig, SampleConfig, TrainConfig
from pixelcascade.data import shapes as S
from pixelcascade.eval.shapes_score import relation_outcome
from pixelcascade.pipeline import Stage, to_uint8
from pixelcascade.presets import get_preset
from pixelcascade.training.data import TrainData
from pixelcascade.training.loop import Trainer

name, out, minutes = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
steps = int(sys.argv[4]) if len(sys.argv) > 4 else None
relstats = name.endswith("-relstats")
realstats = name.endswith("-realstats")
name_ = name.removesuffix("-relstats").removesuffix("-realstats")
real = name_.endswith("-real")
mix = name_.endswith("-mix")
mode = name_.removesuffix("-real").removesuffix("-mix")
THREADS = int(os.environ.get("THREADS", "1"))
torch.set_num_threads(THREADS)
SH = ["circle", "square", "triangle"]
INV = {"left of": "right of", "right of": "left of"}


def prompts():
    return [p for p in S.all_prompts("position", 32) if p.text.split()[1] != p.text.split()[-1]
            and (" left of " in p.text or " right of " in p.text)]


def oracle(text: str) -> np.ndarray:
    w = text.split()
    s1, rel, s2 = w[1], " ".join(w[2:-2]), w[-1]
    side1 = "left" if rel == "left of" else "right"
    side2 = "right" if side1 == "left" else "left"
    e = np.zeros((4, 384), np.float16)
    for i, (s, side) in enumerate([(s1, side1), (s2, side2)]):
        e[i, SH.index(s)] = 4
        e[i, 3 + (side == "right")] = 4
    return e


rng = random.Random(0)
cap_rng = random.Random(1)  # its own stream: the images are the same in every mode
P = prompts()
N = 20000
if mix:  # a real run's images and template captions
    imgs, caps = S.make_dataset(N, 32, seed=0, weights=S.parse_task_weights("position=12"), template_share=1.0)
else:
    imgs = np.empty((N, 32, 32, 3), np.uint8)
    caps = []
    for i in range(N):
        p = rng.choice(P)
        sc = S.scene_for_prompt(p, 32, rng, allow_unseen=False)
        imgs[i] = S.render(sc.objects, 32)
        w = p.text.split()
        rel = " ".join(w[2:-2])
        caps.append(p.text if rng.random() < 0.5 else f"a {w[-1]} {INV[rel]} a {w[1]}")
        if real:
            caps[-1] = S.training_caption(sc, cap_rng)
uniq = sorted(set(caps))
if mode == "oracle":
    table = np.stack([oracle(c) for c in uniq] + [np.zeros((4, 384), np.float16)])
    L = 4
else:
    from pixelcascade.text.encoder import load_encoder
    L = 24 if real or mix else 16  # the real wording and the other tasks' templates run longer
    enc = load_encoder("minilm", L)
    e, msk = enc(uniq)
    e0, m0 = enc.empty(1)
    if realstats:  # statistics of the real tokens only; padding states replaced by their mean (whiten to 0)
        real_states = torch.cat([e.float()[msk.bool()], e0.float()[m0.bool()]])
        real_mu = real_states.mean(0)

        def pad_to_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            x = x.clone()
            x[~m.bool()] = real_mu.to(x.dtype)
            return x
        e, e0 = pad_to_mean(e, msk), pad_to_mean(e0, m0)
    if mode in ("minilm-prefix", "minilm-pwpool"):
        def prefix_states(texts: list[str], full: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            """Word piece i of each caption: its state in [CLS] w1 .. wi [SEP] (the caption cut after it)."""
            tok = enc.tokenize(texts)
            ids, sep, pad = tok["input_ids"], enc.tokenizer.token_to_id("[SEP]"), enc.model.pad_id
            seqs, where = [], []
            for b in range(len(texts)):
                n = int(m[b].sum()) - 2  # word pieces between [CLS] and [SEP]
                for i in range(1, n + 1):
                    seq = torch.full((L,), pad, dtype=ids.dtype)
                    seq[:i + 1] = ids[b, :i + 1]
                    seq[i + 1] = sep
                    seqs.append(seq)
                    where.append((b, i))
            out = full.clone()
            for k in range(0, len(seqs), 512):
                chunk = torch.stack(seqs[k:k + 512])
                with torch.no_grad():
                    st = enc.model(chunk, (chunk != pad).long())
                for j, (b, i) in enumerate(where[k:k + 512]):
                    out[b, i] = st[j, i].to(out.dtype)
            return out
        e = prefix_states(uniq, e, msk)
    table = np.concatenate([e.half().numpy(), e0.half().numpy()])
    if mode == "minilm-white":  # ZCA: (x - mean) V diag((lam + eps)^-1/2) V^T, scaled to the states' RMS
        tok = torch.from_numpy(table).float().reshape(-1, 384)
        mu = tok.mean(0)
        lam, vec = torch.linalg.eigh(torch.cov((tok - mu).T))
        zca = vec @ torch.diag((lam.clamp(min=0) + 1e-2 * lam.clamp(min=0).mean()) ** -0.5) @ vec.T
        scale = tok.pow(2).mean().sqrt() / ((tok - mu) @ zca).pow(2).mean().sqrt()

        def whiten(x: torch.Tensor) -> torch.Tensor:
            return ((x.float() - mu) @ zca * scale).to(x.dtype)
        table = whiten(torch.from_numpy(table)).numpy()
    if mode == "minilm-white-full":  # the shipped model's buffers: statistics of the full caption table
        from safetensors.torch import load_file
        _w = load_file(str(Path(__file__).parents[1] / "pixelcascade/weights/shapes/stage1.safetensors"))
        _mu, _map = _w["text_white_mean"].float(), _w["text_white_map"].float()

        def whiten(x: torch.Tensor) -> torch.Tensor:
            return ((x.float() - _mu) @ _map).to(x.dtype)
        table = whiten(torch.from_numpy(table)).numpy()
row = {c: i for i, c in enumerate(uniq)}
data = TrainData(images=imgs, caption_idx=np.array([row[c] for c in caps]), text_table=torch.from_numpy(table),
                 null_idx=len(uniq), captions=caps)
unet = dataclasses.replace(get_preset("shapes32-I"), model_channels=32,
                           text_layers=2 if mode.startswith("minilm-tl") else 0,
                           text_position=mode == "minilm-tpos", text_context=mode == "minilm-ctx",
                           text_whiten=mode in ("minilm-addwhite", "minilm-wattn", "minilm-wpool", "minilm-pwpool"),
                           text_whiten_attn=mode in ("minilm-wattn", "minilm-wpool", "minilm-pwpool"),
                           text_whiten_pool=mode in ("minilm-wpool", "minilm-pwpool"))
cfg = RunConfig(name="bind", unet=unet, diffusion=DiffusionConfig(min_snr_gamma=5.0),
                sample=SampleConfig(sampler="ddpm", num_steps="smart27", guidance_scale=4.0, dyn_thresh_max=1.5),
                data=DataConfig(world="shapes", image_size=32, num_images=N, text_max_length=L),
                train=TrainConfig(lr=5e-4, batch_size=64, max_steps=10 ** 6, warmup_steps=100, ckpt_every=10 ** 6,
                                  val_every=10 ** 6, log_every=100, num_threads=THREADS))
# (train.bf16: the Trainer autocasts only on hardware with native bf16)
tr = Trainer(cfg, data, out, None, progress=False)
if relstats:  # whitening statistics of the relation captions' states only (and the empty caption's)
    rel_rows = [i for i, c in enumerate(uniq) if any(f" {r} " in c for r in ("above", "below", "left of", "right of"))]
    tr.set_whitening(data.text_table[rel_rows + [len(uniq)]])
    print(f"whitening statistics of {len(rel_rows)} relation captions of {len(uniq)}", flush=True)
if realstats:
    tr.set_whitening(real_states, eps=1e-3)
    print(f"whitening statistics of the {len(real_states)} real token states (eps 1e-3); padding at the mean",
          flush=True)
if mode == "minilm-tlsin":  # token position at full strength from the start
    pos = torch.arange(256)[:, None].float()
    div = torch.exp(torch.arange(0, 384, 2).float() * (-math.log(10000.0) / 384))
    pe = torch.zeros(256, 384)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
    with torch.no_grad():
        for blk in list(tr.model.text_layers) + list(tr.ema.model.text_layers):
            blk.pos.copy_(pe * 0.6)  # per-component RMS 0.42, like the MiniLM states (0.3-0.55)
t0 = time.time()
tr.fit(max_steps=steps, time_limit_s=None if steps else minutes * 60)
print(f"{name}: {tr.step} steps in {time.time() - t0:.0f}s", flush=True)

# evaluate: every prompt x 8 seeds, plain template wording
stage = Stage(unet=tr.ema.model.eval(), diffusion=cfg.diffusion, settings=cfg.sample)
res = {"pass": 0, "swapped": 0, "misplaced": 0, "objects": 0}
for p in P:
    if mode == "oracle":
        emb = torch.from_numpy(oracle(p.text)).float()[None].repeat(8, 1, 1)
        un = torch.zeros_like(emb)
    else:
        e, pm = enc([p.text])
        e0, m0 = enc.empty(8)
        if realstats:
            e, e0 = pad_to_mean(e, pm), pad_to_mean(e0, m0)
        if mode in ("minilm-prefix", "minilm-pwpool"):
            e = prefix_states([p.text], e, pm)
        emb = e.float().repeat(8, 1, 1)
        un = e0.float()
        if mode in ("minilm-white", "minilm-white-full"):
            emb, un = whiten(emb), whiten(un)
    with torch.no_grad():
        x = stage.sample(emb, un, seeds=list(range(8)))
    for im in to_uint8(x):
        res[relation_outcome(im, p) or "pass"] += 1
n = sum(res.values())
print(name, {k: round(v / n, 3) for k, v in res.items()}, n, flush=True)
(out / "result.json").write_text(json.dumps({"mode": name, "steps": tr.step, **res}))
