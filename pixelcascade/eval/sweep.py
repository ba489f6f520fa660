"""Sweeps over sampling settings (grid or seeded random search) on any metric, with their curves and Pareto fronts.

IF and Imagen pick their guidance weights and aug_level from such sweeps: FID against CLIP score over stage I
guidance, stage II guidance and stage II aug_level, keeping the non-dominated points. Here a point is a dict of
:func:`pixelcascade.pipeline.stage_settings` arguments; a metric maps a point to a dict of numbers. Every
finished point is written to ``sweep.json`` at once, so a stopped sweep resumes where it was.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import PixelcascadeError
from ..utils import atomic_path, atomic_write_text

PARAMS = {"guidance": float, "guidance_ii": float, "aug_level": float, "dyn_thresh_max": float, "steps": str,
          "steps_ii": str, "sampler": str, "layout_guidance": float}
# direction of each known metric: +1 higher is better, -1 lower is better
DIRECTION = {"overall": 1, "fid": -1, "kid": -1, "clip_score": 1, "retrieval": 1}


class SweepError(PixelcascadeError, ValueError):
    pass


def parse_space(specs: list[str]) -> dict[str, list]:
    """``["guidance=1,2,4", "aug_level=0:0.5"]`` -> {"guidance": [1.0, 2.0, 4.0], "aug_level": (0.0, 0.5)}.

    A comma list is a grid axis; ``lo:hi`` is a range for random search.
    """
    space: dict[str, list | tuple] = {}
    for spec in specs:
        key, eq, val = spec.partition("=")
        if not eq or key not in PARAMS:
            raise SweepError(f"{spec!r}: write NAME=v1,v2,... or NAME=lo:hi with NAME one of {', '.join(PARAMS)}")
        typ = PARAMS[key]
        try:
            if ":" in val and typ is float:
                lo, hi = (float(v) for v in val.split(":"))
                space[key] = (lo, hi)
            else:
                space[key] = [typ(v) for v in val.split(",") if v]
        except ValueError:
            raise SweepError(f"{spec!r}: values of {key} must be {typ.__name__}s") from None
        if not space[key]:
            raise SweepError(f"{spec!r}: no values")
    if not space:
        raise SweepError("nothing to sweep: give at least one NAME=values (e.g. guidance=1,2,3,4,6,8)")
    return space


def grid_points(space: dict) -> list[dict]:
    if any(isinstance(v, tuple) for v in space.values()):
        raise SweepError("a lo:hi range needs --random N (grid axes are comma lists)")
    keys = list(space)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(space[k] for k in keys))]


def random_points(space: dict, n: int, seed: int = 0) -> list[dict]:
    """``n`` points, each axis uniform in its range (or uniform over its list), from one seeded generator."""
    rng = np.random.default_rng(seed)
    pts = []
    for _ in range(n):
        p = {}
        for k, v in space.items():
            p[k] = round(float(rng.uniform(*v)), 3) if isinstance(v, tuple) else v[int(rng.integers(len(v)))]
        pts.append(p)
    return pts


def run_sweep(points: list[dict], metric: Callable[[dict], dict], out_dir: str | Path, progress: bool = True,
              meta: dict | None = None) -> list[dict]:
    """Evaluate every point not yet in ``out_dir/sweep.json``; returns all results in point order."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sweep.json"
    done: list[dict] = json.loads(path.read_text())["points"] if path.is_file() else []
    key = lambda p: json.dumps(p, sort_keys=True)  # noqa: E731
    have = {key(r["params"]): r for r in done}
    results = []
    it = points
    if progress:
        from tqdm import tqdm
        it = tqdm(points, desc="sweep", unit="point")
    for p in it:
        if key(p) not in have:
            have[key(p)] = {"params": p, "metrics": metric(p)}
            results_so_far = [have[key(q)] for q in points if key(q) in have]
            atomic_write_text(path, json.dumps({"meta": meta or {}, "points": results_so_far}, indent=2))
        results.append(have[key(p)])
    return results


def pareto_front(results: list[dict], x: str, y: str) -> list[dict]:
    """Non-dominated points for metrics x and y (directions from DIRECTION; unknown metrics: higher is better)."""
    dx, dy = DIRECTION.get(x, 1), DIRECTION.get(y, 1)
    pts = [(dx * r["metrics"][x], dy * r["metrics"][y], r) for r in results]
    front = [r for a, b, r in pts if not any((a2 >= a and b2 >= b) and (a2 > a or b2 > b) for a2, b2, _ in pts)]
    return sorted(front, key=lambda r: r["metrics"][x])


def plot_sweep(results: list[dict], path: str | Path, metrics: list[str], title: str = "") -> Path:
    """One swept parameter: a curve per metric against it. Two metrics over several parameters: a scatter
    of all points with the Pareto front drawn through it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    varied = [k for k in results[0]["params"] if len({json.dumps(r["params"][k]) for r in results}) > 1]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    if len(varied) == 1 and isinstance(results[0]["params"][varied[0]], float | int):
        k = varied[0]
        rs = sorted(results, key=lambda r: r["params"][k])
        for m in metrics:
            ax.plot([r["params"][k] for r in rs], [r["metrics"][m] for r in rs], marker="o",
                    lw=2.5 if m == metrics[0] else 1.2, label=m)
        ax.set_xlabel(k)
        ax.set_ylabel("metric")
        ax.legend(fontsize=8, ncol=2)
    else:
        if len(metrics) < 2:
            raise SweepError("several parameters vary: pass two metrics (e.g. fid clip_score) for a Pareto plot")
        x, y = metrics[:2]
        ax.scatter([r["metrics"][x] for r in results], [r["metrics"][y] for r in results], s=14, c="0.6")
        front = pareto_front(results, x, y)
        ax.plot([r["metrics"][x] for r in front], [r["metrics"][y] for r in front], "o-", c="C3", label="Pareto front")
        for r in front:
            ax.annotate(", ".join(f"{k}={v}" for k, v in r["params"].items()), (r["metrics"][x], r["metrics"][y]),
                        fontsize=6)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def shapes_metric(cascade, *, num_stages: int | None = None, per_task: int = 16, seeds: int = 2,
                  batch_size: int = 64) -> Callable[[dict], dict]:
    """Shapes-world accuracy (overall and per task) of a point."""
    from .shapes_eval import evaluate_shapes

    def metric(params: dict) -> dict:
        rep = evaluate_shapes(cascade, num_stages=num_stages, per_task=per_task, seeds=seeds, batch_size=batch_size,
                              progress=False, **params)
        return {t: r["accuracy"] for t, r in rep["summary"]["all"].items()}
    return metric


SHAPES_METRICS = ["overall", "single_object", "two_object", "counting", "colors", "position", "color_attr"]


def emoji_metric(cascade, extractor, *, num_stages: int, per_split: int = 16, batch_size: int = 64,
                 progress: bool = True) -> Callable[[dict], dict]:
    """The emoji model's retrieval accuracy (held-out and training captions) and held-out FID of a point."""
    from ..pipeline import stage_settings
    from .emoji import evaluate_emoji

    def metric(params: dict) -> dict:
        r = evaluate_emoji(cascade, extractor, per_split=per_split, batch_size=batch_size, num_stages=num_stages,
                           settings=stage_settings(cascade.stages[:num_stages], **params), progress=progress)
        return {"retrieval": r["heldout"]["top1"], "retrieval_train": r["train"]["top1"], "fid": r["heldout"]["fid"]}
    return metric


def coco_metric(cascade, *, captions: str, out_dir: Path, num: int, num_stages: int, batch_size: int = 16,
                ref=None, extractor=None, clip=None, progress: bool = True) -> Callable[[dict], dict]:
    """COCO FID / KID (with a reference and an extractor) and CLIP score (with a CLIP model) of a point; each
    point's images in their own folder under ``out_dir``, so a stopped sweep resumes."""
    from ..pipeline import stage_settings
    from .coco import run_coco

    def metric(params: dict) -> dict:
        tag = "_".join(f"{k}{v}" for k, v in params.items())
        r = run_coco(cascade, captions=captions, out_dir=Path(out_dir) / tag, num=num,
                     settings=stage_settings(cascade.stages[:num_stages], **params), num_stages=num_stages,
                     batch_size=batch_size, ref=ref, extractor=extractor, clip=clip, progress=progress)
        return {k: r[k] for k in ("fid", "kid", "clip_score") if k in r}
    return metric
