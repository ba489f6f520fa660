"""The zero-shot COCO protocol (FID-30K + CLIP score), as Imagen and IF report it.

1. Draw N distinct images from a COCO captions file with a fixed seed and one of each image's captions (also
   seeded); the list is frozen as ``captions.csv`` in the output folder (``row, image_id, caption_idx, caption``).
2. Generate one sample per row with seed ``seed + row`` through any cascade, in batches that resume after a
   stop (finished PNGs are kept, see :mod:`pixelcascade.eval.batch`).
3. FID / KID against reference statistics of the real images (``eval fid REAL --save-stats``: the images
   centre-cropped on the long edge and resized to the output size, then clean-fid's method) and CLIP score
   when CLIP weights are given.

The papers' reference set is COCO 2014 val (40,504 images); ../shared/prompts holds val2017's captions
(5,000 images), so 30K rows need ``captions_val2014.json``; with val2017, use ``--num 5000`` or fewer.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..features.base import FIDError
from ..utils import atomic_write_text


def load_captions(path: str | Path) -> dict[int, list[str]]:
    """image_id -> captions, from a TSV/CSV with image_id and caption columns or a COCO annotations JSON."""
    p = Path(path)
    if not p.is_file():
        raise FIDError(f"{p}: no such captions file (a COCO captions_val2014.json, or a TSV with image_id and "
                       "caption columns)")
    caps: dict[int, list[str]] = defaultdict(list)
    if p.suffix == ".json":
        for a in json.loads(p.read_text())["annotations"]:
            caps[int(a["image_id"])].append(a["caption"].strip())
    else:
        text = p.read_text()
        dialect = "excel-tab" if p.suffix in (".tsv", ".txt") else "excel"
        rows = csv.DictReader(io.StringIO(text), dialect=dialect)
        if not rows.fieldnames or not {"image_id", "caption"} <= set(rows.fieldnames):
            raise FIDError(f"{p}: needs image_id and caption columns, has {rows.fieldnames}")
        for r in rows:
            caps[int(r["image_id"])].append(r["caption"].strip())
    if not caps:
        raise FIDError(f"{p}: holds no captions")
    return dict(caps)


def sample_captions(caps: dict[int, list[str]], num: int, seed: int = 0) -> list[dict]:
    """``num`` distinct images (seeded), one caption each (seeded): the frozen prompt list of the protocol."""
    ids = sorted(caps)
    if num > len(ids):
        raise FIDError(f"--num {num}: the captions file has only {len(ids)} images (one caption per image); use "
                       f"--num {len(ids)} or COCO 2014 val's captions_val2014.json (40,504 images) for 30K")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(ids), size=num, replace=False)
    rows = []
    for row, k in enumerate(picks):
        iid = ids[int(k)]
        ci = int(rng.integers(len(caps[iid])))
        rows.append({"row": row, "image_id": iid, "caption_idx": ci, "caption": caps[iid][ci]})
    return rows


def write_rows(rows: list[dict], path: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["row", "image_id", "caption_idx", "caption"])
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{"row": int(r["row"]), "image_id": int(r["image_id"]), "caption_idx": int(r["caption_idx"]),
                 "caption": r["caption"]} for r in csv.DictReader(f)]


def prepare_rows(captions: str | Path, out_dir: Path, num: int, seed: int) -> list[dict]:
    """The frozen list for this output folder; a folder made with another list is refused, not mixed."""
    rows = sample_captions(load_captions(captions), num, seed)
    path = out_dir / "captions.csv"
    if path.is_file():
        old = read_rows(path)
        if old != rows:
            raise FIDError(f"{out_dir} holds a run with another caption list (other --num, --seed or captions "
                           "file): use a new output folder, or the same settings to resume")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_rows(rows, path)
    return rows


def run_coco(cascade, *, captions: str | Path, out_dir: str | Path, num: int = 30000, seed: int = 0,
             settings=None, num_stages: int | None = None, batch_size: int = 16, ref: str | Path | None = None,
             extractor=None, clip=None, progress: bool = True) -> dict:
    """Generate (resuming) and score. ``ref``: real-image statistics (.npz) or folder; ``clip``: a CLIPScorer."""
    from .batch import Job, generate_jobs
    out = Path(out_dir)
    rows = prepare_rows(captions, out, num, seed)
    jobs = [Job(f"{r['row']:05d}", r["caption"], seed + r["row"]) for r in rows]
    counts = generate_jobs(cascade, jobs, out / "images", settings=settings, num_stages=num_stages,
                           batch_size=batch_size, progress=progress, sidecar={"protocol": "coco"})
    report = {"num": num, "seed": seed, "captions": str(captions), "generation": counts}
    from ..utils import dist_info
    if dist_info()[0] != 0:  # under torchrun, process 0 scores the merged folder
        return report
    if ref is not None and extractor is not None:
        from .fid import fid_kid
        report.update(fid_kid(out / "images", ref, extractor, progress=progress))
    if clip is not None:
        from .clip_score import clip_score_folder
        report.update(clip_score_folder(out / "images", clip, progress=progress))
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    return report
