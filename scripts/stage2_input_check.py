"""Does stage II see stage I's world? Upscale two low-res versions of the same 64-px scenes and compare.

(a) the 64-px render down-sampled to 32 px (what stage II trains on), (b) the scene rendered in the 32-px world
(what stage I learns to draw: the spec's 8-px size floor makes its objects bigger in busy scenes). Prints, for
1-2 and 3-4 object scenes, the MSE of the output against the scene's 64-px render and the background's mean
colour error (images in [0, 1]).

    python scripts/stage2_input_check.py [--model DIR] [--n 8]
"""

import argparse
import random

import numpy as np
import torch

from pixelcascade.cli import DEFAULT_MODEL, load_cascade
from pixelcascade.data.shapes import benchmark_prompts, render, rescale_objects, scene_for_prompt
from pixelcascade.pipeline import stage_settings
from pixelcascade.training.sr import degrade


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--n", type=int, default=8, help="prompts per group")
    a = ap.parse_args()
    cascade = load_cascade(a.model)
    stage2, settings = cascade.stages[1], stage_settings(cascade.stages)[1]
    as_tensor = lambda arr: torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2).float() / 127.5 - 1  # noqa: E731
    for label, starts in (("1-2 objects", ("a ", "two")), ("3-4 objects", ("three", "four"))):
        prompts = [p for p in benchmark_prompts(64) if p.task in ("counting", "colors") and p.text.startswith(starts)]
        prompts = prompts[:a.n]
        emb, _ = cascade.encoder([p.text for p in prompts])
        scenes = [scene_for_prompt(p, 64, random.Random(i)).objects for i, p in enumerate(prompts)]
        target = as_tensor([render(objs, 64) for objs in scenes])
        down = degrade(target, 32)  # as stage II's training makes its low-res inputs
        world32 = as_tensor([render(rescale_objects(objs, 64, 32), 32) for objs in scenes])
        background = (target == target[:, :, :1, :1]).all(1, keepdim=True).expand_as(target)  # grey pixels
        for name, low in (("64-px render, down-sampled", down), ("32-px world render", world32)):
            out = stage2.sample(emb, None, list(range(len(prompts))), settings=settings, low_res=low).float()
            mse = ((out - target) ** 2).mean().item() / 4
            bg = ((out - target).abs()[background]).mean().item() / 2
            print(f"{label}: {name:27s} MSE vs the 64-px scene {mse:.4f}, background error {bg:.4f}", flush=True)


if __name__ == "__main__":
    main()
