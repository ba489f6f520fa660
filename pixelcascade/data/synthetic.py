"""A synthetic large dataset for tests and benchmarks: shapes-world scenes with their varied training captions,
written as webdataset shards (``00000.tar`` ..., each record ``KEY.png`` + ``KEY.txt`` + ``KEY.json``), so that
streaming, text-state encoding and curation at scale are measurable offline. Shard s is rendered from seed
(seed, s) alone, so any shard can be made again on its own and the whole set in parallel."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from ..utils import atomic_path


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0
    tf.addfile(info, io.BytesIO(data))


def write_shapes_shard(out: str | Path, shard: int, count: int, image_size: int = 64, seed: int = 0) -> Path:
    """One shard of ``count`` scenes (keys ``SSSSS-IIIIII``), written atomically."""
    from PIL import Image

    from .shapes import make_dataset
    images, captions = make_dataset(count, image_size, seed=seed * 1_000_003 + shard)
    path = Path(out) / f"{shard:05d}.tar"
    with atomic_path(path) as tmp, tarfile.open(tmp, "w") as tf:
        for i, (img, cap) in enumerate(zip(images, captions)):
            key = f"{shard:05d}-{i:06d}"
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG", compress_level=1)
            _add(tf, f"{key}.png", buf.getvalue())
            _add(tf, f"{key}.txt", cap.encode())
            _add(tf, f"{key}.json", json.dumps({"key": key, "caption": cap, "world": "shapes"}).encode())
    return path


def write_shapes_shards(out: str | Path, num: int, image_size: int = 64, per_shard: int = 1000, seed: int = 0,
                        workers: int = 1, progress: bool = True) -> list[Path]:
    """``num`` scenes in shards of ``per_shard`` (the last may be smaller); shards already there are kept, so an
    interrupted run continues."""
    if image_size < 32:
        raise ValueError(f"image size {image_size}: the shapes world draws at 32 px or more")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(s, min(per_shard, num - s * per_shard)) for s in range(-(-num // per_shard))]
    todo = [(s, n) for s, n in jobs if not (out / f"{s:05d}.tar").is_file()]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=f"shapes shards -> {out}", unit="shard")
    if workers > 1 and len(todo) > 1:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(workers) as pool:
            waits = [pool.apply_async(write_shapes_shard, (out, s, n, image_size, seed)) for s, n in todo]
            for w in waits:
                w.get()
                if bar is not None:
                    bar.update(1)
    else:
        for s, n in todo:
            write_shapes_shard(out, s, n, image_size, seed)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return [out / f"{s:05d}.tar" for s, _ in jobs]
