"""Training data at scale: peak memory and speed of `files64` streamed from shards against the decoded cache.

Modes (each in a fresh process, its peak RSS and PSS summed over the process and its DataLoader workers, polled
from /proc every 0.1 s: RSS counts the pages a forked worker shares with its parent in both, PSS splits them;
steps timed after 2 warm-up steps, the training step only: no validation or checkpoint):

- stream-10k-wN / stream-200k-wN: `data.world=files`, the first 10 shards (10,000 images) or all 200 shards of a
  synthetic shapes set (`pixelcascade data shapes-shards`), N DataLoader workers, MiniLM encoding each batch;
- mlstates-10k-wN: the same with MiniLM's states computed once by `data encode` and read from disk;
- cached-10k: the same 10 shards through the decoded cache (data.stream=false), text states in a table in RAM;
- t5states-10k-wN / t5states-200k-wN: a 4096-wide UNet (files64 with unet.encoder_dim=4096) reading fake T5 states
  from disk (`data.text_states`, 77-token window, 14 real tokens a caption, bf16, as `data encode` writes them);
- t5cached-10k: the same UNet with the 10k set's caption states held in RAM as full 77 x 4096 fp16 windows (how a
  run without text-state shards keeps T5 states).

    python bench/data_scale.py --data /work/runs/data          # makes the shards and states there if missing
                                                               # 3 rounds, modes interleaved; medians reported
    python bench/data_scale.py --data DIR --modes stream-10k-w1 cached-10k
Prints a table and appends JSON lines to bench/results/data_scale.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

MODES = ["cached-10k", "stream-10k-w1", "stream-10k-w2", "mlstates-10k-w1", "mlstates-10k-w2", "stream-200k-w1",
         "stream-200k-w2", "t5cached-10k", "t5states-10k-w1", "t5states-10k-w2", "t5states-200k-w1",
         "t5states-200k-w2"]
FAKE_T5 = "fake-t5-v1_1-xxl"


# --------------------------------------------------------------------------------------------------
# data


def prepare(root: Path) -> None:
    """200 shards of 1,000 shapes scenes at 64 px; the first 10 as the 10k set; fake T5 states for both."""
    from pixelcascade.data.synthetic import write_shapes_shards
    full = root / "shapes200k"
    write_shapes_shards(full, 200_000, 64, per_shard=1000, seed=0, workers=2)
    small = root / "shapes10k"
    small.mkdir(exist_ok=True)
    for s in sorted(full.glob("*.tar"))[:10]:
        if not (small / s.name).exists():
            (small / s.name).symlink_to(s)
    for name in ("shapes10k", "shapes200k"):
        fake_states(root / name, root / f"t5states-{name}")
    if not (root / "mlstates-shapes10k" / "empty.safetensors").is_file():
        from pixelcascade.data.shard_index import index_dataset
        from pixelcascade.data.text_states import encode_dataset
        from pixelcascade.text.encoder import load_encoder
        encode_dataset(index_dataset(small), root / "mlstates-shapes10k", load_encoder("minilm", 32), "minilm")


def fake_states(shards: Path, out: Path, tokens: int = 14, dim: int = 4096) -> None:
    """What `data encode --text-encoder T5` writes, with random states: one file per shard, ``tokens`` real tokens."""
    import numpy as np
    import torch

    from pixelcascade.data.shard_index import index_dataset
    from pixelcascade.data.text_states import states_file, states_meta
    from pixelcascade.tensorfiles import write_safetensors
    index = index_dataset(shards)
    g = torch.Generator().manual_seed(0)
    pool = torch.randn(64, tokens, dim, generator=g).to(torch.bfloat16)
    encoder = types.SimpleNamespace(name=FAKE_T5, dim=dim, max_length=77)  # what data encode records of T5-XXL
    out.mkdir(parents=True, exist_ok=True)
    for s, shard in enumerate(index.shards):
        path = states_file(out, shard)
        if path.exists():
            continue
        ids = np.flatnonzero(index.records["shard"] == s)
        write_safetensors(path, {index.key(int(i)): pool[k % 64].clone() for k, i in enumerate(ids)},
                          states_meta(FAKE_T5, encoder, shard, len(ids)))
    write_safetensors(out / "empty.safetensors", {"empty": pool[0, :2].clone()},
                      states_meta(FAKE_T5, encoder, None, 1))


# --------------------------------------------------------------------------------------------------
# one mode, in its own process


def _trainer(mode: str, root: Path, cache: Path):
    import numpy as np
    import torch

    from pixelcascade.training.data import TrainData, prepare_data
    from pixelcascade.training.fine_tune import run_config
    from pixelcascade.training.loop import Trainer
    kind, size, *w = mode.split("-")
    workers = int(w[0][1:]) if w else 0
    shards = root / ("shapes10k" if size == "10k" else "shapes200k")
    over = [f"data.path={shards}", f"data.workers={workers}", "train.val_every=1000000", "train.ckpt_every=1000000"]
    if kind.startswith("t5"):
        over += ["unet.encoder_dim=4096", "unet.att_pool_heads=64", f"text_encoder={FAKE_T5}",
                 "data.text_max_length=77"]
    if kind in ("t5states", "mlstates"):
        over += [f"data.text_states={root / f'{kind}-shapes{size}'}"]
    if kind in ("cached", "t5cached"):
        over += ["data.stream=false"]
    cfg = run_config("files64", over)
    if kind == "t5cached":  # the decoded cache with T5 states in RAM: full windows, one per distinct caption
        from pixelcascade.data.worlds import files_images
        images, captions, val_rows, train_rows, _ = files_images(cfg.data, cache, progress=False)
        distinct = sorted(set(captions))
        row = {c: i for i, c in enumerate(distinct)}
        g = torch.Generator().manual_seed(0)
        table = torch.randn(len(distinct) + 1, 77, 4096, generator=g, dtype=torch.float16)

        def data_of(rows):
            return TrainData(images=images, caption_idx=np.array([row[captions[i]] for i in rows]), text_table=table,
                             null_idx=len(distinct), image_idx=np.asarray(rows))
        data, val = data_of(train_rows), data_of(val_rows)
    else:
        data, val, *_ = prepare_data(cfg, cache, progress=False)
    return Trainer(cfg, data, Path(os.environ["BENCH_OUT"]), val, progress=False)


def one(mode: str, root: Path, cache: Path, steps: int) -> dict:
    import torch
    t0 = time.perf_counter()
    trainer = _trainer(mode, root, cache)
    prep = time.perf_counter() - t0
    loader = None
    if trainer.streaming:
        loader = trainer.data.batches(0)
        trainer._batches = iter(loader)
    times = []
    for _ in range(steps + 2):
        t = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - t)
    timed = times[2:]
    return {"mode": mode, "steps": steps, "s_per_step": sum(timed) / len(timed), "prepare_s": prep,
            "threads": torch.get_num_threads(), "examples": len(trainer.data)}


# --------------------------------------------------------------------------------------------------
# the driver


def _tree_memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes of a process and all its descendants, from /proc. RSS counts a page shared by forked
    workers once in each; PSS divides it among them."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    rss = pss = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
        except OSError:
            pass
        todo += children.get(p, [])
    return rss, pss


def run_mode(mode: str, root: Path, cache: Path, steps: int, out: Path) -> dict:
    env = dict(os.environ, BENCH_OUT=str(out / mode))
    proc = subprocess.Popen([sys.executable, __file__, "--one", mode, "--data", str(root), "--cache", str(cache),
                             "--steps", str(steps)], stdout=subprocess.PIPE, text=True, env=env)
    peak = [0, 0]

    def poll():
        while proc.poll() is None:
            rss, pss = _tree_memory(proc.pid)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            time.sleep(0.1)
    th = threading.Thread(target=poll, daemon=True)
    th.start()
    stdout, _ = proc.communicate()
    th.join()
    if proc.returncode:
        raise SystemExit(f"{mode} failed (exit {proc.returncode})")
    r = json.loads(stdout.strip().splitlines()[-1])
    r["peak_rss_mb"], r["peak_pss_mb"] = round(peak[0] / 2**20), round(peak[1] / 2**20)
    return r


def machine() -> dict:
    import platform

    import torch

    from pixelcascade.utils import cpu_has_native_bf16
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "avx512_bf16": cpu_has_native_bf16(), "torch": torch.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder for the synthetic shards and fake states")
    ap.add_argument("--cache", default="", help="pixelcascade cache (default: DATA/cache)")
    ap.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per run of a mode")
    ap.add_argument("--rounds", type=int, default=3,
                    help="every mode runs once per round, modes interleaved; the median run of each mode is kept")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    root = Path(a.data)
    cache = Path(a.cache) if a.cache else root / "cache"
    if a.one:
        print(json.dumps(one(a.one, root, cache, a.steps)))
        return
    prepare(root)
    runs: dict[str, list[dict]] = {m: [] for m in a.modes}
    for _ in range(a.rounds):  # interleaved, so that a machine that slows down slows every mode alike
        for m in a.modes:
            runs[m].append(run_mode(m, root, cache, a.steps, root / "bench-runs"))
    results = []
    for m in a.modes:
        rs = sorted(runs[m], key=lambda r: r["s_per_step"])
        results.append({**rs[len(rs) // 2], "runs_s_per_step": [round(r["s_per_step"], 3) for r in runs[m]],
                        "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                        "peak_pss_mb": max(r["peak_pss_mb"] for r in rs)})
    by = {r["mode"]: r for r in results}
    info = machine()
    print(f"\n{info['cpu']}, {info['cores']} cores, avx512_bf16={info['avx512_bf16']}, torch {info['torch']}, "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"{a.rounds} rounds of {a.steps} timed steps, modes interleaved: the median round's s / step, the "
          "largest peak")
    print("| mode | examples | s / step | steps/s vs cached | peak RSS (MB) | peak PSS (MB) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        base = by.get("t5cached-10k" if r["mode"].startswith("t5") else "cached-10k")
        ratio = f"{base['s_per_step'] / r['s_per_step']:.2f}x" if base else "-"
        print(f"| {r['mode']} | {r['examples']:,} | {r['s_per_step']:.3f} | {ratio} | {r['peak_rss_mb']:,} | "
              f"{r['peak_pss_mb']:,} |")
    for kind in ("stream", "mlstates", "t5states"):
        for w in ("w1", "w2"):
            a10, a200 = by.get(f"{kind}-10k-{w}"), by.get(f"{kind}-200k-{w}")
            if a10 and a200:
                print(f"{kind} {w}: peak RSS 200k / 10k = {a200['peak_rss_mb'] / a10['peak_rss_mb']:.3f}, "
                      f"PSS {a200['peak_pss_mb'] / a10['peak_pss_mb']:.3f}")
    out = Path(__file__).parent / "results" / "data_scale.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        for r in results:
            f.write(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": info, **r}) + "\n")


if __name__ == "__main__":
    main()
