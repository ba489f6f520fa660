"""Teach the shipped shapes stage I a colour it has never seen ("orange", data.shapes.CONCEPT_COLORS) with a LoRA.

    python scripts/lora_concept.py data /work/runs/data/orange32          # 20 shards of 1,000 scenes, 32 px
    pixelcascade train files64 -o /work/runs/lora-orange data.path=/work/runs/data/orange32 \
        train.init_from=pixelcascade/weights/shapes/stage1.safetensors train.lora.rank=8 ...   (docs/lora.md)
    python scripts/lora_concept.py score -o docs/lora_orange_before.json
    python scripts/lora_concept.py score --lora /work/runs/lora-orange/lora.safetensors -o docs/lora_orange_after.json
    pixelcascade eval shapes --stages 1 --lora /work/runs/lora-orange/lora.safetensors -o eval/orange-six

The data: half the scenes are the shipped model's own training mix (data.shapes.training_scene: what it must not
forget), half a colour task's prompt (colours, colour binding, composite) that names orange, with the varied
captions of the shapes world. The score: the colours task's 3 orange prompts and the 72 colour-binding prompts
that pair orange with a palette colour, 4 seeds each, scored by the shapes scorer (orange told apart as a colour
of its own), stage I at 32 px with the model's sampling settings.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import tarfile
from pathlib import Path

CONCEPT = "orange"
CONCEPT_TASKS = {"colors": 1.0, "color_attr": 1.5, "composite": 1.5}


def concept_prompts(size: int = 32, tasks=("colors", "color_attr", "composite")) -> list:
    from pixelcascade.data.shapes import COLORS, all_prompts
    return [p for t in tasks for p in all_prompts(t, size, colors=COLORS + (CONCEPT,)) if CONCEPT in p.text]


def concept_scene(rng: random.Random, size: int, prompts: dict):
    from pixelcascade.data.shapes import scene_for_prompt, training_caption
    while True:
        task = rng.choices(list(CONCEPT_TASKS), list(CONCEPT_TASKS.values()))[0]
        prompt = rng.choice(prompts[task])
        if prompt.unseen:  # the held-out split stays held out
            continue
        scene = scene_for_prompt(prompt, size, rng, allow_unseen=False)
        if scene is not None:
            return scene, training_caption(scene, rng)


def write_shard(out: Path, shard: int, count: int, size: int, seed: int, share: float) -> None:
    from PIL import Image

    from pixelcascade.data.shapes import render, training_scene
    from pixelcascade.data.synthetic import _add
    from pixelcascade.utils import atomic_path
    rng = random.Random(seed * 1_000_003 + shard)
    prompts = {t: concept_prompts(size, (t,)) for t in CONCEPT_TASKS}
    with atomic_path(out / f"{shard:05d}.tar") as tmp, tarfile.open(tmp, "w") as tf:
        for i in range(count):
            scene, caption = concept_scene(rng, size, prompts) if rng.random() < share else training_scene(rng, size)
            key = f"{shard:05d}-{i:06d}"
            buf = io.BytesIO()
            Image.fromarray(render(scene.objects, size)).save(buf, format="PNG", compress_level=1)
            _add(tf, f"{key}.png", buf.getvalue())
            _add(tf, f"{key}.txt", caption.encode())


def cmd_data(a) -> None:
    from tqdm import tqdm
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for s in tqdm(range(a.shards), desc=f"concept shards -> {out}"):
        if not (out / f"{s:05d}.tar").is_file():
            write_shard(out, s, a.per_shard, a.size, a.seed, a.share)


def cmd_score(a) -> None:
    import torch

    from pixelcascade.api import load
    from pixelcascade.eval.shapes_score import score_image, summarize
    from pixelcascade.pipeline import to_uint8
    from pixelcascade.utils import atomic_write_text
    torch.set_num_threads(a.threads)
    cascade = load(a.model, max_stages=1, lora=a.lora)
    prompts = concept_prompts(32, ("colors", "color_attr"))
    jobs = [(p, s) for p in prompts for s in range(a.seeds)]
    results, colours = [], {}
    for start in range(0, len(jobs), 64):
        chunk = jobs[start:start + 64]
        imgs = to_uint8(cascade.run([p.text for p, _ in chunk], [s for _, s in chunk], num_stages=1)[-1])
        for (p, _), img in zip(chunk, imgs):
            results.append((p, score_image(img, p)))
            if p.task == "colors":  # what the model paints for "an orange ...": the object's mean colour
                mask = (abs(img.astype(int) - 128).sum(-1) > 40)
                colours.setdefault(p.text, []).append(img[mask].mean(0).round().tolist() if mask.any() else None)
    report = {"model": str(a.model), "lora": a.lora or [], "seeds": a.seeds, "summary": summarize(results),
              "object_colour": colours,
              "per_prompt": [{"prompt": p.text, "task": p.task, "pass": bool(ok)} for p, ok in results]}
    atomic_write_text(Path(a.output), json.dumps(report, indent=2))
    for task, row in report["summary"]["all"].items():
        if "ci95" in row:
            print(f"{task}: {row['accuracy']:.3f} [{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}] (n={row['n']})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data", help="the LoRA's training shards")
    d.add_argument("out")
    d.add_argument("--shards", type=int, default=20)
    d.add_argument("--per-shard", type=int, default=1000)
    d.add_argument("--size", type=int, default=32)
    d.add_argument("--share", type=float, default=0.5, help="share of scenes that name the new colour")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(fn=cmd_data)
    s = sub.add_parser("score", help="the concept's prompts through stage I, scored")
    s.add_argument("--model", default="shapes")
    s.add_argument("--lora", action="append")
    s.add_argument("--seeds", type=int, default=4)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(fn=cmd_score)
    a = ap.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
