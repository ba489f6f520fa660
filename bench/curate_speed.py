"""Curation throughput in images per second per core, on the emoji dataset (or any dataset path).

Times the two parts separately: the per-shard feature pass (decode, pixel hash, pHash, thumbnail; it scales
with cores: ``--workers``) and the global duplicate search + verification (faiss candidates, aligned block
differences, on the driver), then the whole ``curate`` run. One core per worker; the global step is one core.

    python bench/curate_speed.py                         # renders the emoji set at 128 px into /tmp first
    python bench/curate_speed.py --data data/emoji128 --workers 2
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="a dataset (default: the emoji set rendered at 128 px)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "curate_speed.jsonl"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    from pixelcascade.data.curate import CurateConfig, curate, shard_features
    from pixelcascade.data.formats import shard_list
    tmp = Path(tempfile.mkdtemp())
    data = a.data
    if data is None:
        from pixelcascade.data.emoji import build_emoji_dataset
        data = tmp / "emoji128"
        build_emoji_dataset(data, size=128, progress=False)
    cfg = CurateConfig(workers=a.workers)
    shards = shard_list(data)
    t0 = time.perf_counter()
    n = sum(len(shard_features(str(s), cfg)["rows"]) for s in shards)
    t_feat = time.perf_counter() - t0
    t0 = time.perf_counter()
    rep = curate(data, tmp / "out", cfg, progress=False)
    t_all = time.perf_counter() - t0
    row = {"data": str(data), "images": n, "workers": a.workers, "cpu": platform.processor() or platform.machine(),
           "feature_pass_img_per_s_per_core": n / t_feat, "curate_total_s": t_all,
           "curate_img_per_s": n / t_all, "curate_img_per_s_per_core": n / t_all / a.workers,
           "candidate_pairs": rep["candidate_pairs_checked"], "exact": rep["exact_duplicates"],
           "near_pairs": rep["near_duplicate_pairs"], "date": time.strftime("%Y-%m-%d %H:%M")}
    print(f"feature pass: {row['feature_pass_img_per_s_per_core']:.0f} img/s per core; whole curate run "
          f"({a.workers} worker(s), {rep['candidate_pairs_checked']} candidate pairs verified): {t_all:.1f} s = "
          f"{row['curate_img_per_s_per_core']:.0f} img/s per core")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
