"""Generate a list of (name, prompt, seed) jobs into a folder, resumably: finished PNGs are never redone.

Every image is written atomically (PNG, then its JSON sidecar), so a run stopped at any moment leaves only
whole images; the next run skips every job whose PNG and sidecar both exist and were made with the same
prompt and seed, and regenerates nothing else.

Under torchrun (any number of CPU or GPU processes) process r of N takes jobs r, r + N, ... of the list and all
wait for each other at the end, so the folder holds every image once; an image depends only on its prompt,
seed and settings (per-image noise streams), so the folder equals a single process's image by image.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Job:
    name: str  # file stem, unique in the folder
    prompt: str
    seed: int


def _done(out: Path, job: Job) -> bool:
    png, side = out / f"{job.name}.png", out / f"{job.name}.json"
    if not (png.is_file() and side.is_file()):
        return False
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError):
        return False
    return meta.get("prompt") == job.prompt and meta.get("seed") == job.seed


def generate_jobs(cascade, jobs: list[Job], out_dir: str | Path, *, settings=None, num_stages: int | None = None,
                  batch_size: int = 16, progress: bool = True, sidecar: dict | None = None,
                  save_stages: bool = False) -> dict:
    """Run the jobs not yet done, in batches; returns counts {"total", "skipped", "generated"}."""
    from ..images import save_png
    from ..pipeline import to_uint8
    from ..utils import barrier, dist_info
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rank, world = dist_info()
    todo = [j for j in jobs[rank::world] if not _done(out, j)]  # the split does not depend on what is done
    n = num_stages or len(cascade.stages)
    bar = None
    if progress and todo:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc=f"generate -> {out}", unit="img", initial=0)
    used = [s or st.settings for s, st in zip(list(settings or []) + [None] * n, cascade.stages[:n])]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        outs = cascade.run([j.prompt for j in chunk], [j.seed for j in chunk], settings=settings, num_stages=n)
        imgs = [to_uint8(o) for o in outs]
        for k, j in enumerate(chunk):
            meta = cascade.record(j.prompt, j.seed, used, imgs[-1][k].shape[:2], command="eval", **(sidecar or {}))
            if save_stages:
                for si in range(len(imgs) - 1):
                    save_png(imgs[si][k], out / f"{j.name}-stage{si + 1}.png", {**meta, "stage": si + 1})
            save_png(imgs[-1][k], out / f"{j.name}.png", meta)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    barrier()  # every process's images are in the folder before anyone scores it
    generated = len(todo)
    if world > 1:
        import torch
        import torch.distributed as dist
        n = torch.tensor([generated])
        dist.all_reduce(n)
        generated = int(n)
    return {"total": len(jobs), "skipped": len(jobs) - generated, "generated": generated, "processes": world}
