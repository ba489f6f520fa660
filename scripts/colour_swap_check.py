"""Colour-binding failures of a stage I: how many are the two colours swapped between the shapes?

Draws the seen colour-binding prompts of the benchmark suite (one seed each) with the model's stage I and checks
every failed image against the same prompt with the colours exchanged.
Usage: python scripts/colour_swap_check.py [MODEL]   (default: the shipped shapes model)
"""
import collections
import sys

import torch

from pixelcascade.cli import DEFAULT_MODEL, load_cascade
from pixelcascade.data import shapes as S
from pixelcascade.eval.shapes_score import score_image
from pixelcascade.pipeline import to_uint8

torch.set_num_threads(2)
casc = load_cascade(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_MODEL, max_stages=1)
P = [p for p in S.benchmark_prompts(32, per_task=64) if p.task == "color_attr" and not p.unseen]
bytext = {p.text: p for p in S.all_prompts("color_attr", 32)}
out = collections.Counter()
for i in range(0, len(P), 32):
    chunk = P[i:i + 32]
    imgs = casc.run([p.text for p in chunk], seeds=list(range(len(chunk))))[-1]  # stage I's images
    for p, im in zip(chunk, to_uint8(imgs)):
        w = p.text.split()  # a c1 s1 and a c2 s2
        sw = bytext.get(f"a {w[5]} {w[2]} and a {w[1]} {w[6]}")
        if score_image(im, p):
            out["pass"] += 1
        elif sw is not None and score_image(im, sw):
            out["colours swapped"] += 1
        else:
            out["other"] += 1
print(dict(out), sum(out.values()))
