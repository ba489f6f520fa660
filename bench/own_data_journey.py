"""The own-data journey of docs/own-data.md, timed: a made-up photo folder in Hugging Face's imagefolder layout,
curated, both stages trained a few hundred steps, resumed, exported, sampled and judged on their held-out images.

The folder: 300 emoji (Noto Color Emoji, rendered by `pixelcascade data emoji`) pasted off-centre on coloured
canvases of three aspect ratios (4:3, 3:4, 1:1), JPEG and PNG, captions "NAME on a COLOUR background" in
metadata.jsonl; plus 6 re-encoded JPEG copies of earlier pictures (duplicates curate must merge) and 4 pictures
with an empty caption (which training refuses until they are captioned or skipped).

    python bench/own_data_journey.py --root /work/runs/journey          # ~25 min on 2 cores
    python bench/own_data_journey.py --root /tmp/j --steps 20 --sr-steps 10   # a quick pass

Writes ROOT/journey.json: each command, its wall time, its exit code and its last output line.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

COLOURS = {"red": (200, 60, 50), "green": (60, 160, 80), "blue": (60, 90, 200), "yellow": (230, 200, 60),
           "grey": (128, 128, 128), "pink": (230, 150, 190)}
CANVASES = ((96, 128), (128, 96), (112, 112))  # (height, width): 4:3, 3:4, 1:1


def make_folder(root: Path, emoji_root: Path, n: int = 300, seed: int = 0) -> Path:
    """The made-up dataset (see the module docstring) in ROOT/mydata."""
    from PIL import Image

    from pixelcascade.data.formats import read_records
    out = root / "mydata"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = [r for r in read_records(emoji_root) if r.meta.get("split") != "heldout"]
    picks = rng.choice(len(records), size=n, replace=False)
    lines = []
    for i, k in enumerate(picks):
        rec = records[int(k)]
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        h, w = CANVASES[i % len(CANVASES)]
        canvas = Image.new("RGB", (w, h), COLOURS[colour])
        emoji = Image.fromarray(rec.decode()).resize((72, 72), Image.BICUBIC)
        mask = Image.fromarray(((np.asarray(emoji).min(-1) < 245) * 255).astype(np.uint8))
        canvas.paste(emoji, (int(rng.integers(0, w - 72)), int(rng.integers(0, h - 72))), mask)
        name = f"p{i:04d}." + ("jpg" if i % 2 else "png")
        canvas.save(out / name, quality=92)
        caption = "" if i % 75 == 74 else f"{rec.caption} on a {colour} background"
        lines.append({"file_name": name, "text": caption})
    for j in range(6):  # re-encoded copies of earlier pictures
        src = out / lines[j * 7]["file_name"]
        name = f"copy{j}.jpg"
        Image.open(src).convert("RGB").save(out / name, quality=70)
        lines.append({"file_name": name, "text": f"a copy of {lines[j * 7]['text']}"})
    (out / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return out


def run(cmd: str, log: list, cwd: Path) -> int:
    print(f"$ {cmd}", flush=True)
    t = time.perf_counter()
    p = subprocess.run(shlex.split(cmd), cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip() and "it/s]" not in ln and "s/it]" not in ln]
    log.append({"command": cmd, "seconds": round(wall, 1), "rc": p.returncode, "last": lines[-3:]})
    print(f"  {wall:.1f} s, rc {p.returncode}: {lines[-1] if lines else ''}", flush=True)
    return p.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True)
    ap.add_argument("--steps", type=int, default=300, help="stage I steps (the run stops at 2/3 and resumes)")
    ap.add_argument("--sr-steps", type=int, default=150)
    a = ap.parse_args()
    root = Path(a.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    log: list = []
    px = f"{sys.executable} -m pixelcascade.cli"
    if not (root / "emoji128" / "manifest.parquet").is_file():
        run(f"{px} data emoji -o {root / 'emoji128'} --size 128 -q", log, root)
    make_folder(root, root / "emoji128")
    common = "train.batch_size=16 train.ckpt_every=50 train.val_every=50 train.sample_every=-1"
    first = a.steps * 2 // 3
    steps = [
        f"{px} curate {root / 'mydata'} -o {root / 'curated'} --overwrite -q",
        f"{px} train files64 -o {root / 'runs/mine'} data.path={root / 'curated'} data.skip_uncaptioned=true "
        f"data.buckets=auto {common} train.max_steps={a.steps} --dry-run",
        f"{px} train files64 -o {root / 'runs/mine'} data.path={root / 'curated'} data.skip_uncaptioned=true "
        f"data.buckets=auto {common} train.max_steps={first} -q",
        f"{px} train files64 -o {root / 'runs/mine'} data.path={root / 'curated'} data.skip_uncaptioned=true "
        f"data.buckets=auto {common} train.max_steps={a.steps} -q",
        f"{px} train files128-sr -o {root / 'runs/mine-sr'} data.path={root / 'curated'} "
        f"data.skip_uncaptioned=true {common} train.max_steps={a.sr_steps} -q",
        f"{px} export {root / 'runs/mine'} -o {root / 'model/stage1.safetensors'}",
        f"{px} export {root / 'runs/mine-sr'} -o {root / 'model/stage2.safetensors'}",
        f"{px} generate 'grinning face on a blue background' --model {root / 'model'} --seed 0 "
        f"-o {root / 'grinning.png'} -q",
        f"{px} generate 'red heart on a yellow background' --model {root / 'model'} --height 48 --width 88 "
        f"-o {root / 'wide.png'} -q",
        f"{px} eval heldout {root / 'runs/mine'} -o {root / 'judge'} -q",
    ]
    # the refusal a user meets first: curate keeps the empty captions, training stops on them
    refusal = f"{px} train files64 -o {root / 'runs/refused'} data.path={root / 'curated'} -q"
    for cmd in steps[:1] + [refusal] + steps[1:]:
        run(cmd, log, root)
    facts = {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
             "date": time.strftime("%Y-%m-%d"), "steps": a.steps, "sr_steps": a.sr_steps}
    try:
        facts["cpu"] = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                            if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    (root / "journey.json").write_text(json.dumps({"machine": facts, "commands": log}, indent=2))
    print(f"wrote {root / 'journey.json'}")


if __name__ == "__main__":
    main()
