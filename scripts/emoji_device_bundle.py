"""Pack what one GPU call needs to train, export and score the emoji cascade (issue 5), within the device
tool's 64 MiB for the whole working tree.

    python scripts/emoji_device_bundle.py [--dtype float16|float32] [--out .carry]

Writes OUT/cache/data/emoji128-seed0/curated/ (the curated emoji set: what `emoji64` / `emoji128-sr` read, so
the GPU machine neither renders nor curates; it has no faiss and no emoji font) and OUT/minilm/ (all-MiniLM-L6-v2
cut to the word pieces of every caption the runs and `eval emoji` encode: `text.bert.prune_vocab`). In fp32 the
pruned copy's states equal the package's bit for bit; fp16 halves it and changes the states by at most 4.7e-3
(mean 2.9e-4, against a mean |state| of 0.29: under what bf16 autocast rounds away in the UNet's first
projection); the script measures both on 2,048 of the captions. A pruned copy is named apart
(`text.bert.pruned_tag`), so caches never mix the two.
Then it prints the size of everything that would travel and the device call (scripts/device_emoji.sh).
The shipped weights (shapes 24 MB; the emoji cascade, once shipped, about 42 MB) must not travel: move
pixelcascade/weights/*/*.safetensors out of the working tree for the call and back after it (the call does not
need them).
"""
import argparse
import io
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pixelcascade.config import DataConfig  # noqa: E402
from pixelcascade.data.formats import read_records, write_parquet  # noqa: E402
from pixelcascade.data.worlds import default_cache_dir, emoji_images  # noqa: E402
from pixelcascade.text.bert import prune_vocab  # noqa: E402
from pixelcascade.text.encoder import HFEncoder, minilm_path  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
p.add_argument("--out", default=str(ROOT / ".carry"))
a = p.parse_args()
out = Path(a.out)
cache = default_cache_dir()
dc = DataConfig(world="emoji", image_size=64, num_images=0, seed=0)
# every caption the runs and `eval emoji` encode: the training lists (names, aliases, other languages, merged
# duplicates' names), the held-out names, and the empty caption (guidance); building them renders and curates
# the set here when it is not cached yet
texts = {""}
for split in ("train", "heldout"):
    texts.update(c for caps in emoji_images(dc, cache, split=split)[1] for c in caps)
src = cache / "data" / "emoji128-seed0" / "curated"
dst = out / "cache" / "data" / "emoji128-seed0" / "curated"
if dst.exists():
    shutil.rmtree(dst)
(dst / "data").mkdir(parents=True)
shutil.copy2(src / "report.json", dst / "report.json")
# the tar shards are half metadata and tar headers: one parquet with the pictures re-encoded as lossless WebP
# (the same pixels, checked) and the metadata as columns is a third of their size; read_records reads either
rows = []
for rec in read_records(src / "data"):
    buf = io.BytesIO()
    pixels = rec.decode()
    Image.fromarray(pixels).save(buf, "WEBP", lossless=True, quality=100, method=4)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")), pixels)
    rows.append({"key": rec.key, "caption": rec.caption, "image": buf.getvalue(),
                 **{k: v for k, v in rec.meta.items() if k not in ("key", "caption", "image")}})
write_parquet(rows, dst / "data" / "emoji.parquet")
for a_rec, b_rec in zip(read_records(src / "data"), read_records(dst / "data"), strict=True):
    assert a_rec.key == b_rec.key and a_rec.caption == b_rec.caption
    assert all(b_rec.meta.get(k) == v for k, v in a_rec.meta.items()), a_rec.key
texts = sorted(texts)
enc_dir = out / "minilm"
info = prune_vocab(minilm_path(), enc_dir, texts, getattr(torch, a.dtype))
full, pruned = HFEncoder(minilm_path(), max_length=24), HFEncoder(enc_dir, max_length=24)
sample = random.Random(0).sample(texts, min(2048, len(texts)))
x, mx = full(sample, allow_empty=True)
y, my = pruned(sample, allow_empty=True)
assert torch.equal(mx, my)
d = (x - y).abs()[mx.bool()]
worst, mean = d.max().item(), d.mean().item()
print(f"{len(rows)} emoji, {len(texts)} captions; MiniLM pruned to {info['kept']} of {info['of']} word pieces, "
      f"{a.dtype}, {info['bytes'] / 1e6:.1f} MB; states vs the package's (2,048 captions): max |diff| {worst:.2e}, "
      f"mean {mean:.2e}")
tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
tree = sum((ROOT / f.decode()).stat().st_size for f in tracked if f and (ROOT / f.decode()).is_file())
weights = sum(f.stat().st_size for f in (ROOT / "pixelcascade/weights").glob("*/*.safetensors"))
carry = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
total = tree - weights + carry
print(f"travels: tree {tree / 1e6:.1f} MB - shipped weights {weights / 1e6:.1f} MB + {out.name} {carry / 1e6:.1f} MB "
      f"= {total / 2**20:.1f} MiB of 64")
if total > 64 * 2**20:
    sys.exit("too large for one device call")
rel = os.path.relpath(out, ROOT)
print(f"device call: command 'bash scripts/device_emoji.sh MINUTES', carry ['{rel}']")
