"""Judge a model on the images its run held out: the offline check of a model trained on your own data.

Every run keeps 5% of its data (1 to 512 records) out of training for validation. This generates one image per
held-out caption (seed + row, resumable), writes the real held-out images beside them, and reports FID and KID
between the two sets (by default in the no-download ``pixelstats`` feature space, with its warnings), the run's
validation loss (its last and best), and a contact sheet of real and generated pictures in pairs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..config import RunConfig, from_dict
from ..data.stream import read_records_by_id
from ..data.worlds import files_stream, streams
from ..features.base import FIDError
from ..images import contact_sheet, save_png
from ..tensorfiles import read_metadata
from ..training.data import world_splits
from ..utils import atomic_write_text, default_cache_dir


def run_config_of(run: str | Path) -> RunConfig:
    """The config a run folder trained with (from its ema.safetensors)."""
    ema = Path(run) / "ema.safetensors"
    if not ema.is_file():
        raise FIDError(f"{run}: not a run folder with weights (no ema.safetensors; a run writes it at its first "
                       "checkpoint): give the folder `pixelcascade train -o` wrote")
    meta = read_metadata(ema)
    if "run_config" not in meta:
        raise FIDError(f"{ema} records no run config: it was not written by `pixelcascade train`")
    return from_dict(RunConfig, json.loads(meta["run_config"]))


def heldout_examples(cfg: RunConfig, cache: Path | None = None) -> tuple[np.ndarray, list[str]]:
    """The run's validation images (uint8 [n, S, S, 3] at the run's size) and one caption each, as training
    held them out (same data, same data.seed)."""
    cache = cache or default_cache_dir()
    if cfg.data.world == "dreambooth":
        raise FIDError("a DreamBooth run holds out no images of its own: judge it by its sample grid")
    if streams(cfg.data):
        index, _, val_ids, _ = files_stream(cfg.data, cache, progress=False)
        images, captions, _ = read_records_by_id(index, val_ids, cfg.data.image_size)
        return images, captions
    _, val = world_splits(cfg, cache, progress=False)
    images = val.images if val.rows is None else val.images[val.rows]
    return np.asarray(images), [cs[0] for cs in val.captions]


def validation_losses(run: Path) -> dict:
    """The run's last and best mean validation loss at the fixed timesteps (val_loss.csv), and its plot."""
    from ..training.loop import mean_val_losses
    means = mean_val_losses(run / "val_loss.csv")
    if not means:
        return {}
    best, last = min(means, key=means.get), max(means)
    return {"val_loss_last": {"step": last, "loss": means[last]}, "val_loss_best": {"step": best, "loss": means[best]},
            "val_loss_plot": str(run / "val_loss.png") if (run / "val_loss.png").is_file() else None}


def judge_heldout(cascade, cfg: RunConfig, out_dir: str | Path, *, extractor, run: Path | None = None,
                  num: int | None = None, seed: int = 0, settings=None, num_stages: int | None = None,
                  batch_size: int = 16, progress: bool = True, cache: Path | None = None) -> dict:
    """Generate for the held-out captions and compare; writes real/, generated/, pairs.png and report.json."""
    from .batch import Job, generate_jobs
    from .fid import fid_kid
    out = Path(out_dir)
    images, captions = heldout_examples(cfg, cache)
    n = min(num or len(captions), len(captions))
    for i in range(n):
        if not (out / "real" / f"{i:05d}.png").is_file():
            save_png(images[i], out / "real" / f"{i:05d}.png", {"caption": captions[i], "heldout_row": i})
    jobs = [Job(f"{i:05d}", captions[i], seed + i) for i in range(n)]
    counts = generate_jobs(cascade, jobs, out / "generated", settings=settings, num_stages=num_stages,
                           batch_size=batch_size, progress=progress, sidecar={"protocol": "heldout"})
    report = {"heldout": n, "seed": seed, "generation": counts, "data": cfg.data.path or cfg.data.world}
    if n >= 2:
        report.update(fid_kid(out / "generated", out / "real", extractor, progress=progress))
    else:
        report["warnings"] = [f"the run held out {n} image: too few for FID/KID (a dataset of 40 or more holds out "
                              "2 or more); pairs.png and the validation loss still judge it"]
    if run is not None:
        report.update(validation_losses(Path(run)))
    _pairs(out, captions[:min(n, 8)])
    report["pairs"] = str(out / "pairs.png")
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    return report


def _pairs(out: Path, captions: list[str]) -> None:
    """Real (left) and generated (right) pictures of the first held-out captions, at the generated size."""
    from PIL import Image
    tiles, labels = [], []
    for i, cap in enumerate(captions):
        gen = Image.open(out / "generated" / f"{i:05d}.png").convert("RGB")
        real = Image.open(out / "real" / f"{i:05d}.png").convert("RGB").resize(gen.size, Image.BICUBIC)
        tiles += [np.asarray(real), np.asarray(gen)]
        labels += [f"real: {cap}", "generated"]
    contact_sheet(tiles, labels, out / "pairs.png", cols=2)
