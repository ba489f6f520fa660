"""Curation's candidate search at scale: planted near-duplicate pairs among 100k / 300k / 1M feature vectors.

The vectors are 192-d like curation's 8x8 colour thumbnails: a mixture of 1,000 clusters (spread 0.15) in [0, 1];
1% of them get a planted copy with the noise of a re-encode (0.01). The search is the one `pixelcascade curate`
runs (`data.curate.nearest_l2`, each vector's 9 nearest, kept within the thumbnail radius): the exact faiss index
below 20,000 vectors, above it "ivf" (`data.curate.cell_knn`: exact within k-means cells of ~1,000 vectors, each
vector searched in its two nearest cells), as "auto" chooses; `--index hnsw` measures faiss's HNSW graph instead.
Recall of the planted pairs is measured against the exact index (searched for the planted vectors only, which is
what keeps it affordable at 1M), and the time per million vectors shows how the search grows (linear: constant per
million; quadratic: proportional to n).

    python bench/curate_scale.py                      # 100k, 300k, 1M
    python bench/curate_scale.py --sizes 100000       # one size
Appends one JSON line per size to bench/results/curate_scale.jsonl.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np


def vectors(n: int, seed: int = 0, dim: int = 192, share: float = 0.01):
    """(x [n + p, dim] float32, planted pairs [p, 2]): n mixture vectors, then p noisy copies of random ones."""
    rng = np.random.default_rng(seed)
    centers = rng.random((1000, dim), dtype=np.float32)
    x = centers[rng.integers(0, 1000, n)] + rng.normal(0, 0.15, (n, dim)).astype(np.float32)
    p = int(n * share)
    src = rng.choice(n, p, replace=False)
    copies = x[src] + rng.normal(0, 0.01, (p, dim)).astype(np.float32)
    x = np.clip(np.concatenate([x, copies]), 0, 1).astype(np.float32)
    return x, np.stack([src, np.arange(n, n + p)], 1)


def found(labels: np.ndarray, dist: np.ndarray, pairs: np.ndarray, radius2: float) -> np.ndarray:
    """Per planted pair: is either vector among the other's neighbours within the radius?"""
    ok = np.zeros(len(pairs), bool)
    for col, other in ((0, 1), (1, 0)):
        lab, d = labels[pairs[:, col]], dist[pairs[:, col]]
        ok |= ((lab == pairs[:, other, None]) & (d <= radius2)).any(1)
    return ok


def run(n: int, k: int = 9, index: str = "auto") -> dict:
    import faiss

    from pixelcascade.data.curate import CurateConfig, index_kind, nearest_l2
    x, pairs = vectors(n)
    radius2 = CurateConfig.thumb_radius ** 2 * x.shape[1]
    t0 = time.perf_counter()
    labels, dist = nearest_l2(x, k, index=index, return_distances=True)
    took = time.perf_counter() - t0
    approx = found(labels, dist, pairs, radius2)
    # the exact index, queried with the planted vectors only
    flat = faiss.IndexFlatL2(x.shape[1])
    flat.add(x)
    q = np.unique(pairs.ravel())
    ed, el = flat.search(x[q], k)
    full_l, full_d = np.full((len(x), k), -1), np.full((len(x), k), np.inf, np.float32)
    full_l[q], full_d[q] = el, ed
    exact = found(full_l, full_d, pairs, radius2)
    return {"n": len(x), "index": index_kind(len(x), index), "seconds": round(took, 2),
            "seconds_per_million": round(took / len(x) * 1e6, 2), "planted_pairs": len(pairs),
            "found_exact": int(exact.sum()), "found_approx": int(approx.sum()),
            "recall_vs_exact": round(float((approx & exact).sum() / max(1, exact.sum())), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    ap.add_argument("--threads", type=int, default=0, help="faiss threads (0: all cores)")
    ap.add_argument("--index", default="auto", choices=("auto", "exact", "ivf", "hnsw"))
    args = ap.parse_args()
    import faiss
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    from pixelcascade.utils import cpu_has_native_bf16
    machine = {"cpu": platform.processor() or platform.machine(), "cores": faiss.omp_get_max_threads(),
               "avx512_bf16": cpu_has_native_bf16(), "faiss": faiss.__version__}
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), "?") if Path("/proc/cpuinfo").exists() else "?"
    machine["model"] = model
    out = Path(__file__).parent / "results" / "curate_scale.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    print("| vectors | index | seconds | s per million | planted pairs | found (exact) | found (index) | recall |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        r = run(n, index=args.index)
        print(f"| {r['n']:,} | {r['index']} | {r['seconds']} | {r['seconds_per_million']} | {r['planted_pairs']:,} "
              f"| {r['found_exact']:,} | {r['found_approx']:,} | {r['recall_vs_exact']} |", flush=True)
        with open(out, "a") as f:
            f.write(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": machine, **r}) + "\n")


if __name__ == "__main__":
    main()
