"""Prompt suites to look at by eye: DrawBench, PartiPrompts and GenEval's prompts, as captioned contact sheets
per category with fixed seeds (the suites are judged by people; only GenEval-style scoring is automatic)."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..features.base import FIDError

SUITES = {"drawbench": "DrawBench.csv", "parti": "PartiPrompts.tsv", "geneval": "geneval_evaluation_metadata.jsonl"}


def default_prompts_dir() -> Path | None:
    """../shared/prompts beside the repository, when this is a checkout."""
    here = Path(__file__).resolve()
    for up in here.parents:
        cand = up.parent / "shared" / "prompts"
        if cand.is_dir():
            return cand
    return None


def load_suite(name: str, prompts_dir: str | Path | None = None) -> dict[str, list[str]]:
    """category -> prompts, in file order. ``name``: drawbench, parti, geneval, or a path to such a file."""
    p = Path(name)
    if not p.is_file():
        if name not in SUITES:
            raise FIDError(f"unknown suite {name!r}: choose {', '.join(SUITES)} or pass a suite file")
        d = Path(prompts_dir) if prompts_dir else default_prompts_dir()
        if d is None or not (d / SUITES[name]).is_file():
            raise FIDError(f"{SUITES[name]} not found (looked in {d}): pass --prompts-dir FOLDER holding it")
        p = d / SUITES[name]
    cats: dict[str, list[str]] = defaultdict(list)
    if p.suffix == ".jsonl":
        for line in p.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                cats[r.get("tag", "all")].append(r["prompt"])
    else:
        rows = csv.DictReader(io.StringIO(p.read_text()), dialect="excel-tab" if p.suffix == ".tsv" else "excel")
        fields = rows.fieldnames or []
        pcol = next((f for f in fields if f.lower() in ("prompt", "prompts")), None)
        ccol = next((f for f in fields if f.lower() == "category"), None)
        if pcol is None:
            raise FIDError(f"{p}: no Prompt column (has {fields})")
        for r in rows:
            if r[pcol].strip():
                cats[r[ccol] if ccol else "all"].append(r[pcol].strip())
    return dict(cats)


def run_suite(cascade, suite: dict[str, list[str]], out_dir: str | Path, *, per_category: int = 8,
              images_per_prompt: int = 1, seed: int = 0, settings=None, num_stages: int | None = None,
              batch_size: int = 16, progress: bool = True, pick_seed: int = 0) -> dict:
    """``per_category`` prompts of every category (a seeded pick) -> images (resumable) + one sheet per category."""
    from ..images import contact_sheet, read_rgb
    from .batch import Job, generate_jobs
    out = Path(out_dir)
    rng = np.random.default_rng(pick_seed)
    chosen, jobs = {}, []
    for ci, (cat, prompts) in enumerate(sorted(suite.items())):
        idx = sorted(rng.choice(len(prompts), size=min(per_category, len(prompts)), replace=False))
        chosen[cat] = [prompts[i] for i in idx]
        for pi, p in enumerate(chosen[cat]):
            for k in range(images_per_prompt):
                jobs.append(Job(f"{ci:02d}-{pi:03d}-{k}", p, seed + k))
    counts = generate_jobs(cascade, jobs, out / "images", settings=settings, num_stages=num_stages,
                           batch_size=batch_size, progress=progress)
    from ..utils import dist_info
    if dist_info()[0] != 0:  # under torchrun, process 0 makes the sheets of the merged folder
        return {"categories": {c: len(v) for c, v in chosen.items()}, "generation": counts, "sheets": {}}
    sheets = {}
    by_cat = defaultdict(list)
    for j in jobs:
        by_cat[int(j.name[:2])].append(j)
    for ci, cat in enumerate(sorted(suite)):
        js = by_cat[ci]
        imgs = np.stack([read_rgb(out / "images" / f"{j.name}.png") for j in js])
        slug = "".join(c if c.isalnum() else "_" for c in cat.lower()).strip("_")
        scale = max(1, 128 // imgs.shape[1])
        sheets[cat] = str(contact_sheet(imgs, [j.prompt for j in js], out / f"sheet_{ci:02d}_{slug}.png", scale=scale,
                                        cols=min(8, len(js)), title=f"{cat} ({len(js)} images, seeds from {seed})"))
    report = {"categories": {c: len(v) for c, v in chosen.items()}, "generation": counts, "sheets": sheets}
    from ..utils import atomic_write_text
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    return report
