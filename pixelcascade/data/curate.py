"""Curation of image-text data, the IF recipe's first step: exact and near duplicates, caption statistics,
size/aspect filters and an aesthetic-score threshold, as one streaming pass per shard plus a global step.

1. Per shard (in parallel: local processes, or Ray tasks with ``ray_address``): decode each image (corrupt ones are
   counted and dropped), its size, a content hash of the decoded pixels (exact duplicates: re-saved files with
   the same pixels count too), a 64-bit DCT perceptual hash, an 8x8 colour thumbnail, and the aesthetic score
   (a column of the data, e.g. LAION's, or a scorer model from a local path).
2. Candidates for near duplicates: pairs within ``phash_radius`` bits (faiss binary range search) plus each image's
   ``knn`` nearest thumbnails (faiss). Candidates are only candidates: re-encoded, resized and slightly shifted
   copies look alike to both, but so do different emoji (skin tones, flags of one colour layout).
3. Verification, the precise step: both images at ``compare_size`` in YCbCr, aligned over shifts of up to
   ``max_shift`` px, compared by the largest signed mean difference over 8x8 blocks (luma; chroma at half
   weight, since JPEG subsamples it). Noise from re-encoding averages out inside a block; a real change (a skin
   tone, a different mouth) moves a whole block. Pairs at most ``near_threshold`` apart are duplicates.
4. Duplicates are merged into clusters (union-find); each cluster keeps one record (``keep="best"``: highest
   aesthetic score, then one with a caption, then the largest image, then a lossless file (PNG, BMP) over a JPEG or
   WebP, then the largest file (the least compressed copy), then the first in the input's order; ``keep="first"``:
   the first in the input's order) and the captions of the others go into its ``dup_captions`` metadata;
   report.json names each large cluster's kept record.
5. The kept records are written as webdataset shards + manifest.parquet; ``report.json`` holds every count, the
   largest clusters, the most repeated captions (the "Valley 002" check: a caption repeated many times on one
   image), and ``clusters.png`` / ``scores.png`` picture the largest clusters and the score histogram.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from ..errors import PixelcascadeError
from .formats import ReadStats, Record, ShardWriter, read_shard, shard_list

SCORE_COLUMNS = ("aesthetic", "aesthetic_score", "AESTHETIC_SCORE", "score")


@dataclasses.dataclass
class CurateConfig:
    phash_radius: int = 10  # candidate pairs: Hamming distance of the 64-bit perceptual hashes
    knn: int = 8  # candidate pairs: nearest thumbnails per image
    # kNN candidates whose thumbnails differ by more than this (RMS, [0, 1] scale) are not verified: a near duplicate
    # differs by a few grey levels, and without the bound every image would be loaded for verification
    thumb_radius: float = 0.1
    # the nearest-neighbour index: "exact" (faiss flat, quadratic), "ivf" (exact within k-means cells, each image
    # searched in its two nearest: linear), "hnsw" (approximate graph), or "auto": exact below APPROX_FROM images,
    # ivf above
    index: str = "auto"
    near_threshold: float = 6.5  # verification: max block difference (0-255 scale) of a near duplicate
    compare_size: int = 128
    max_shift: int = 3
    min_size: int = 0  # drop images whose shorter side is below this
    max_aspect: float = 0.0  # drop images with long/short side above this (0: no limit)
    aesthetic_threshold: float | None = None  # keep score >= threshold (IF: 4.5 on LAION's score)
    aesthetic_model: str | None = None  # a local scorer (folder with clip/ and mlp.safetensors)
    workers: int = 1
    ray_address: str | None = None
    per_shard: int = 1000
    top_captions: int = 20
    caption_column: str = ""  # the column of a manifest / metadata / parquet holding the captions ("": the usual)
    keep: str = "best"  # which record of a duplicate cluster is written: "best" or "first" (module docstring, step 4)


class CurateError(PixelcascadeError, ValueError):
    pass


# --------------------------------------------------------------------------------------------------
# per-image features


def phash(img: np.ndarray) -> np.ndarray:
    """64-bit DCT perceptual hash (pHash): 32x32 grey, 2-D DCT, the 8x8 lowest frequencies against their median."""
    from PIL import Image
    from scipy.fft import dctn
    g = Image.fromarray(img).convert("L").resize((32, 32), Image.LANCZOS)
    d = dctn(np.asarray(g, np.float64), norm="ortho")[:8, :8].ravel()
    return np.packbits(d > np.median(d[1:]))


def thumbnail(img: np.ndarray) -> np.ndarray:
    from PIL import Image
    return (np.asarray(Image.fromarray(img).resize((8, 8), Image.BOX), np.float32) / 255).ravel()


def pixel_hash(img: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(img).tobytes() + str(img.shape).encode()).hexdigest()[:32]


def score_of(meta: dict) -> float | None:
    for c in SCORE_COLUMNS:
        v = meta.get(c)
        if isinstance(v, int | float) and np.isfinite(v):
            return float(v)
    return None


def shard_features(shard: str, cfg: CurateConfig) -> dict:
    """Step 1 for one shard (runs in a worker process or a Ray task)."""
    stats = ReadStats()
    rows = []
    scorer = None
    if cfg.aesthetic_model:
        from ..features.aesthetic import AestheticModelError, AestheticScorer
        try:
            scorer = AestheticScorer(cfg.aesthetic_model)
        except AestheticModelError as e:
            raise CurateError(str(e)) from None
    for rec in read_shard(shard, stats, cfg.caption_column):
        try:
            img = rec.decode()
        except ValueError as e:
            stats.note("corrupt_images", f"{Path(shard).name}:{rec.key}", str(e))
            continue
        score = score_of(rec.meta)
        if scorer is not None:
            score = scorer([img])[0]
        rows.append({"key": rec.key, "shard": str(shard), "caption": rec.caption, "h": img.shape[0],
                     "w": img.shape[1], "bytes": len(rec.image),
                     "lossless": rec.image[:8] == b"\x89PNG\r\n\x1a\n" or rec.image[:2] == b"BM",
                     "hash": pixel_hash(img), "phash": phash(img), "thumb": thumbnail(img),
                     "score": score})
    # caption frequencies counted here, per shard, and summed: the count streams with the shards
    return {"rows": rows, "stats": stats.as_dict(), "captions": dict(Counter(r["caption"] for r in rows
                                                                           if r["caption"]))}


# --------------------------------------------------------------------------------------------------
# verification of candidate pairs


def _prepare(img: np.ndarray, size: int, pad: int) -> np.ndarray:
    """Integral image of the YCbCr image at ``size``, edge-padded by ``pad`` px: block means at any offset."""
    from PIL import Image
    im = Image.fromarray(img)
    if im.size != (size, size):  # PIL's bicubic is antialiased when it shrinks: resampling error stays small
        im = im.resize((size, size), Image.BICUBIC)
    im = im.convert("YCbCr")
    a = np.pad(np.asarray(im, np.float64), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    ii = np.zeros((a.shape[0] + 1, a.shape[1] + 1, 3))
    ii[1:, 1:] = a.cumsum(0).cumsum(1)
    return ii


def _block_means(ii: np.ndarray, oy, ox, size: int, block: int) -> np.ndarray:
    g = np.arange(0, size - block + 1, block)
    y = np.asarray(oy)[..., None, None] + g[:, None]
    x = np.asarray(ox)[..., None, None] + g[None, :]
    s = ii[y + block, x + block] - ii[y, x + block] - ii[y + block, x] + ii[y, x]
    return s / block**2


def block_distance(ia: np.ndarray, ib: np.ndarray, size: int, max_shift: int, block: int = 8,
                   chroma_weight: float = 0.5) -> float:
    """min over shifts of the largest |mean difference| over blocks (luma; chroma x ``chroma_weight``)."""
    r = max_shift
    shifts = np.array([(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)])
    ma = _block_means(ia, r + shifts[:, 0], r + shifts[:, 1], size, block)  # [S, g, g, 3]
    mb = _block_means(ib, np.array([r]), np.array([r]), size, block)  # [1, g, g, 3]
    d = np.abs(ma - mb)
    score = np.maximum(d[..., 0].max((1, 2)), chroma_weight * d[..., 1:].max((1, 2, 3)))
    return float(score.min())


class UnionFind:
    def __init__(self, n):
        self.p = list(range(n))

    def find(self, a):
        while self.p[a] != a:
            self.p[a] = self.p[self.p[a]]
            a = self.p[a]
        return a

    def union(self, a, b):
        a, b = self.find(a), self.find(b)
        if a != b:
            self.p[max(a, b)] = min(a, b)


# --------------------------------------------------------------------------------------------------
# the whole job


def _map_shards(shards: list[Path], cfg: CurateConfig, progress: bool) -> list[dict]:
    if cfg.ray_address:
        try:
            import ray
        except ImportError:
            raise CurateError("--ray needs Ray: pip install ray (or run without --ray for local processes)") from None
        ray.init(address=cfg.ray_address, ignore_reinit_error=True)
        task = ray.remote(shard_features)
        return ray.get([task.remote(str(s), cfg) for s in shards])
    it = [str(s) for s in shards]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(it), desc="curate: features", unit="shard")
    out = []
    if cfg.workers > 1 and len(it) > 1:
        import multiprocessing as mp
        from functools import partial
        with mp.get_context("spawn").Pool(cfg.workers) as pool:
            for r in pool.imap(partial(shard_features, cfg=cfg), it):
                out.append(r)
                if bar is not None:
                    bar.update(1)
    else:
        for s in it:
            out.append(shard_features(s, cfg))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return out


def _faiss():
    try:
        import faiss
        return faiss
    except ImportError:  # the exact NumPy search below gives the same candidates, more slowly on large data
        return None


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


APPROX_FROM = 20_000  # "auto": exact search below this many images, approximate above


def index_kind(n: int, kind: str = "auto") -> str:
    if kind not in ("auto", "exact", "hnsw", "ivf"):
        raise CurateError(f"--index {kind}: choose auto, exact, hnsw or ivf")
    if kind == "auto":
        return "exact" if n < APPROX_FROM else "ivf"
    return kind


def hamming_within(codes: np.ndarray, radius: int, block: int = 2048, index: str = "auto",
                   knn: int = 16) -> list[np.ndarray]:
    """For each binary code (uint8 [N, B]), the indices of the codes within ``radius`` bits (itself included):
    faiss ``IndexBinaryFlat.range_search`` when faiss is installed (exact), else an exact NumPy search. With an
    approximate ``index`` (the default above APPROX_FROM codes), each code's ``knn`` nearest codes by
    :func:`nearest_l2` on the unpacked bits (squared L2 between 0/1 vectors is the Hamming distance), those within
    ``radius`` kept: near duplicates are among the nearest, and the search stays linear."""
    faiss = _faiss()
    kind = index_kind(len(codes), index) if faiss is not None else "exact"
    if kind != "exact":
        bits = np.unpackbits(codes, axis=1).astype(np.float32)
        labels, dist = nearest_l2(bits, min(knn, len(codes)), index=kind, return_distances=True)
        return [lab[(d <= radius + 0.5) & (lab >= 0)] for d, lab in zip(dist, labels)]
    if faiss is not None:
        idx = faiss.IndexBinaryFlat(codes.shape[1] * 8)
        idx.add(codes)
        lims, _, labels = idx.range_search(codes, radius + 1)  # faiss keeps distances < its radius
        return [labels[lims[q]:lims[q + 1]] for q in range(len(codes))]
    out = []
    for s in range(0, len(codes), block):
        d = _POPCOUNT[codes[s:s + block, None, :] ^ codes[None, :, :]].sum(-1, dtype=np.int32)  # [b, N]
        out += [np.flatnonzero(row <= radius) for row in d]
    return out


def nearest_l2(x: np.ndarray, k: int, block: int = 2048, index: str = "auto",
               return_distances: bool = False):
    """[N, k] indices of each row's k nearest rows by L2 distance (itself among them; -1 where fewer were found),
    and with ``return_distances`` their squared distances. ``index``: exact (faiss ``IndexFlatL2``, or NumPy
    without faiss: quadratic), ivf (:func:`cell_knn`: exact within cells of ~1,000 rows, linear), hnsw
    (``IndexHNSWFlat``, M=32), auto: exact below APPROX_FROM rows, ivf above."""
    faiss = _faiss()
    x = np.ascontiguousarray(x, dtype=np.float32)
    kind = index_kind(len(x), index) if faiss is not None else "exact"
    if kind == "ivf":
        labels, dist = cell_knn(x, k)
        return (labels, dist) if return_distances else labels
    if faiss is not None:
        if kind == "exact":
            idx = faiss.IndexFlatL2(x.shape[1])
        else:
            idx = faiss.IndexHNSWFlat(x.shape[1], 32)
            idx.hnsw.efConstruction = 40
            idx.hnsw.efSearch = max(64, 2 * k)
        idx.add(x)
        dist, labels = idx.search(x, k)
        return (labels, dist) if return_distances else labels
    x64 = x.astype(np.float64)
    sq = (x64 ** 2).sum(1)
    out, outd = [], []
    for s in range(0, len(x), block):
        d = sq[s:s + block, None] + sq[None, :] - 2 * x64[s:s + block] @ x64.T  # [b, N]
        part = np.argpartition(d, k - 1, axis=1)[:, :k] if k < len(x) else np.tile(np.arange(len(x)), (len(d), 1))
        order = np.take_along_axis(d, part, 1).argsort(1, kind="stable")
        out.append(np.take_along_axis(part, order, 1))
        outd.append(np.take_along_axis(d, out[-1], 1))
    labels, dist = np.concatenate(out), np.concatenate(outd).astype(np.float32)
    return (labels, dist) if return_distances else labels


def cell_knn(x: np.ndarray, k: int, cell: int = 1000, probe: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Approximate kNN that finds near duplicates, in time linear in N: k-means cells of about ``cell`` rows (faiss,
    trained on a sample); each row is stored in its nearest cell and searched, exactly, in its ``probe`` nearest
    cells, so a copy that lands across a cell border from its original is still found. (labels, squared
    distances) [N, k], nearest first, -1 / inf where a row's cells held fewer than k rows."""
    faiss = _faiss()
    n, d = x.shape
    nlist = max(1, n // cell)
    rng = np.random.default_rng(seed)

    def kmeans(rows: np.ndarray, cells_wanted: int) -> np.ndarray:
        km = faiss.Kmeans(d, cells_wanted, niter=10, seed=seed, max_points_per_centroid=64)
        km.train(rows[np.sort(rng.choice(len(rows), min(len(rows), 64 * cells_wanted), replace=False))])
        return km.centroids

    def assign(centroids: np.ndarray) -> np.ndarray:
        quantizer = faiss.IndexFlatL2(d) if len(centroids) <= 2000 else faiss.IndexHNSWFlat(d, 32)  # n log n
        quantizer.add(centroids)
        return quantizer.search(x, min(probe, len(centroids)))[1]  # [N, probe], nearest cell first

    centroids = kmeans(x, nlist)
    cells = assign(centroids)
    # a cell that took several dense clusters costs its size squared: split it by k-means of its own rows
    sizes = np.bincount(cells[:, 0], minlength=len(centroids))
    big = np.flatnonzero(sizes > 3 * cell)
    if len(big):
        parts = [np.delete(centroids, big, axis=0)]
        parts += [kmeans(x[cells[:, 0] == c], -(-int(sizes[c]) // cell)) for c in big]
        centroids = np.concatenate(parts)
        cells = assign(centroids)
    nlist, probe = len(centroids), cells.shape[1]
    home = cells[:, 0]
    stored = np.argsort(home, kind="stable")
    stored_at = np.searchsorted(home[stored], np.arange(nlist + 1))
    flat = cells.ravel()
    asked = np.argsort(flat, kind="stable")
    asked_at = np.searchsorted(flat[asked], np.arange(nlist + 1))
    row_of = np.repeat(np.arange(n), probe)
    labels = np.full((n, probe * k), -1, np.int64)
    dist = np.full((n, probe * k), np.inf, np.float32)
    filled = np.zeros(n, np.int64)  # the next free block of k columns of each row
    for c in range(nlist):
        db = stored[stored_at[c]:stored_at[c + 1]]
        qs = row_of[asked[asked_at[c]:asked_at[c + 1]]]
        if len(db) == 0 or len(qs) == 0:
            continue
        flat_c = faiss.IndexFlatL2(d)
        flat_c.add(x[db])
        dd, ll = flat_c.search(x[qs], min(k, len(db)))
        cols = filled[qs, None] * k + np.arange(ll.shape[1])[None, :]
        labels[qs[:, None], cols], dist[qs[:, None], cols] = db[ll], dd
        filled[qs] += 1
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]  # the cells are disjoint: no neighbour appears twice
    return np.take_along_axis(labels, order, 1), np.take_along_axis(dist, order, 1)


def find_duplicates(rows: list[dict], cfg: CurateConfig, loader) -> tuple[UnionFind, dict]:
    """Exact groups by pixel hash; near-duplicate candidates (pHash radius, thumbnail kNN) verified by
    ``block_distance``. ``loader(indices) -> {index: image}`` fetches the pixels of candidate images."""
    n = len(rows)
    uf = UnionFind(n)
    by_hash = defaultdict(list)
    for i, r in enumerate(rows):
        by_hash[r["hash"]].append(i)
    exact_pairs = 0
    for idx in by_hash.values():
        for j in idx[1:]:
            uf.union(idx[0], j)
            exact_pairs += 1
    reps = [idx[0] for idx in by_hash.values()]  # near duplicates are searched among distinct pixel contents
    cand = set()
    if len(reps) > 1:
        codes = np.stack([rows[i]["phash"] for i in reps]).astype(np.uint8)
        thumbs = np.stack([rows[i]["thumb"] for i in reps]).astype(np.float32)
        for q, ks in enumerate(hamming_within(codes, cfg.phash_radius, index=cfg.index, knn=2 * cfg.knn)):
            cand.update((min(q, int(k)), max(q, int(k))) for k in ks if k != q)
        labels, dist = nearest_l2(thumbs, min(cfg.knn + 1, len(reps)), index=cfg.index, return_distances=True)
        near = dist <= cfg.thumb_radius ** 2 * thumbs.shape[1]  # RMS over the thumbnail's values
        for q, (ks, ok) in enumerate(zip(labels, near)):
            cand.update((min(q, int(k)), max(q, int(k))) for k, o in zip(ks, ok) if o and k >= 0 and k != q)
    needed = sorted({reps[a] for pair in cand for a in pair})
    images = loader(needed)
    prepared = {i: _prepare(images[i], cfg.compare_size, cfg.max_shift) for i in needed if i in images}
    near_pairs, dists = [], []
    for a, b in sorted(cand):
        ia, ib = reps[a], reps[b]
        if ia not in prepared or ib not in prepared:
            continue
        d = block_distance(prepared[ia], prepared[ib], cfg.compare_size, cfg.max_shift)
        dists.append(d)
        if d <= cfg.near_threshold:
            uf.union(ia, ib)
            near_pairs.append((ia, ib, d))
    info = {"exact_duplicate_images": exact_pairs, "candidate_pairs": len(cand),
            "near_duplicate_pairs": len(near_pairs), "near_pairs": near_pairs, "candidate_distances": dists}
    return uf, info


OUTPUTS = ("data", "report.json", "clusters.png", "scores.png")  # what curate writes into its output folder


def shard_prefix(input_path) -> str:
    """The name curate's shards start with: the input's name and a hash of its path (``mine-3fa2c1``), so that
    the outputs of several curate runs can be merged into one folder without renaming."""
    import hashlib
    import re
    path = Path(input_path).expanduser().resolve()
    slug = re.sub(r"[^a-z0-9]+", "-", path.stem.lower()).strip("-")[:24] or "data"
    return f"{slug}-{hashlib.sha1(str(path).encode()).hexdigest()[:6]}"


def prepare_output(out: Path, overwrite: bool) -> None:
    """An output folder that holds nothing of an earlier run: training reads every shard in ``out/data``, so
    stale ones would join the new data. A non-empty folder is refused unless ``overwrite``; then curate's own
    outputs are removed (and nothing else)."""
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise CurateError(f"-o {out} is not empty: curate writes its shards there and would mix them with what is "
                          "in it; choose a new folder, or pass --overwrite to replace an earlier curate's output")
    import shutil
    data = out / "data"
    if data.is_dir():
        others = [p.name for p in data.iterdir()
                  if not (p.name.endswith((".tar", ".tar.tmp")) or p.name.startswith("manifest.parquet"))]
        if others:
            raise CurateError(f"--overwrite: {data} holds files curate did not write ({', '.join(others[:3])}); "
                              "move them away or choose a new folder")
        shutil.rmtree(data)
    for name in OUTPUTS[1:]:
        (out / name).unlink(missing_ok=True)


def curate(input_path: str | Path, output: str | Path, cfg: CurateConfig | None = None, progress: bool = True,
           overwrite: bool = False) -> dict:
    """Read, deduplicate, filter and write ``input_path``'s records as shards in ``output/data`` with a report.
    ``output`` must be new or empty, or hold an earlier curate's output with ``overwrite``."""
    cfg = cfg or CurateConfig()
    out = Path(output)
    prepare_output(out, overwrite)
    shards = shard_list(input_path)
    results = _map_shards(shards, cfg, progress)
    rows = [r for res in results for r in res["rows"]]
    caption_counts = Counter()
    for res in results:
        caption_counts.update(res["captions"])
    stats = ReadStats()
    for res in results:
        for k, v in res["stats"].items():
            if k == "problems":
                stats.problems.extend(v[: max(0, 20 - len(stats.problems))])
            else:
                setattr(stats, k, getattr(stats, k) + v)
    if not rows:
        raise CurateError(f"{input_path}: no readable image-text records ({stats.as_dict()})")
    index_of = {(r["shard"], r["key"]): i for i, r in enumerate(rows)}

    def loader(indices):
        want = defaultdict(set)
        for i in indices:
            want[rows[i]["shard"]].add(rows[i]["key"])
        got = {}
        for shard, keys in want.items():
            for rec in read_shard(shard, ReadStats(), cfg.caption_column):
                if rec.key in keys:
                    try:
                        got[index_of[(shard, rec.key)]] = rec.decode()
                    except ValueError:
                        pass
        return got

    uf, dup = find_duplicates(rows, cfg, loader)
    clusters = defaultdict(list)
    for i in range(len(rows)):
        clusters[uf.find(i)].append(i)

    def rank(i):
        r = rows[i]
        if cfg.keep == "first":
            return (i,)
        return (-(r["score"] if r["score"] is not None else -1e9), not r["caption"], -(r["h"] * r["w"]),
                not r["lossless"], -r["bytes"], i)
    keep_of = {}
    for members in clusters.values():
        best = min(members, key=rank)
        keep_of[best] = members
    # filters on the cluster representatives
    dropped = Counter()
    keep = {}
    for i, members in keep_of.items():
        r = rows[i]
        short, long_ = min(r["h"], r["w"]), max(r["h"], r["w"])
        if cfg.min_size and short < cfg.min_size:
            dropped["too_small"] += 1
            continue
        if cfg.max_aspect and long_ / max(short, 1) > cfg.max_aspect:
            dropped["aspect"] += 1
            continue
        if cfg.aesthetic_threshold is not None:
            if r["score"] is None:
                raise CurateError("--aesthetic-threshold needs scores: the data has no score column "
                                  f"({', '.join(SCORE_COLUMNS)}) and no --aesthetic-model was given")
            if r["score"] < cfg.aesthetic_threshold:
                dropped["aesthetic"] += 1
                continue
        keep[i] = members
    # write the kept records, streaming shard by shard
    keep_keys = {(rows[i]["shard"], rows[i]["key"]): i for i in keep}
    written = 0
    with ShardWriter(out / "data", cfg.per_shard, prefix=shard_prefix(input_path)) as w:
        for shard in shards:
            for rec in read_shard(shard, ReadStats(), cfg.caption_column):
                i = keep_keys.get((str(shard), rec.key))
                if i is None:
                    continue
                others = sorted({rows[j]["caption"] for j in keep[i] if j != i and rows[j]["caption"]}
                                - {rec.caption})
                meta = dict(rec.meta)
                if others:
                    meta["dup_captions"] = "|".join(others)
                meta["cluster_size"] = len(keep[i])
                w.write(Record(rec.key, rec.image, rec.caption, meta, rec.source))
                written += 1
    kept_in = {uf.find(best): best for best in keep_of}
    report = _report(rows, clusters, dup, stats, dropped, written, cfg, input_path, out, caption_counts, kept_in)
    _pictures(rows, clusters, loader, out, report)
    from ..utils import atomic_write_text
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False, default=float))
    return report


def _report(rows, clusters, dup, stats, dropped, written, cfg, input_path, out, caps: Counter,
            kept_in: dict) -> dict:
    multi = sorted(((c, m) for c, m in clusters.items() if len(m) > 1), key=lambda cm: len(cm[1]), reverse=True)
    cluster_of = {i: c for c, m in clusters.items() for i in m}
    top = []
    for cap, n in caps.most_common(cfg.top_captions):
        if n < 2:
            break
        idx = [i for i, r in enumerate(rows) if r["caption"] == cap]
        distinct = len({cluster_of[i] for i in idx})
        top.append({"caption": cap, "count": n, "distinct_images": distinct,
                    "share": n / len(rows), "one_image_repeated": distinct == 1})
    scores = [r["score"] for r in rows if r["score"] is not None]
    return {
        "input": str(input_path), "output": str(out / "data"), "config": dataclasses.asdict(cfg),
        "read": stats.as_dict(), "images": len(rows), "kept": written,
        "exact_duplicates": dup["exact_duplicate_images"],
        "near_duplicate_pairs": dup["near_duplicate_pairs"], "candidate_pairs_checked": dup["candidate_pairs"],
        "duplicate_clusters": len(multi), "images_in_clusters": sum(len(m) for _, m in multi),
        "removed_as_duplicates": sum(len(m) - 1 for _, m in multi), "kept_of_each_cluster": cfg.keep,
        "largest_clusters": [{"size": len(m), "kept": {"key": rows[kept_in[c]]["key"],
                                                        "caption": rows[kept_in[c]]["caption"]},
                              "captions": sorted({rows[i]["caption"] for i in m})[:8],
                              "keys": [rows[i]["key"] for i in m[:8]]} for c, m in multi[:10]],
        "dropped_by_filter": dict(dropped),
        "top_repeated_captions": top,
        "valley_check": [t for t in top if t["one_image_repeated"] and t["count"] >= max(3, 0.001 * len(rows))],
        "aesthetic": {"n_scored": len(scores), "threshold": cfg.aesthetic_threshold,
                      "mean": float(np.mean(scores)) if scores else None},
    }


def _pictures(rows, clusters, loader, out: Path, report: dict) -> None:
    from ..images import contact_sheet
    multi = sorted((m for m in clusters.values() if len(m) > 1), key=len, reverse=True)[:8]
    if multi:
        idx = [i for m in multi for i in m[:6]]
        imgs = loader(idx)
        from PIL import Image
        tiles, caps = [], []
        for m in multi:
            for k in range(6):
                if k < len(m) and m[k] in imgs:
                    tiles.append(np.asarray(Image.fromarray(imgs[m[k]]).resize((64, 64))))
                    caps.append(rows[m[k]]["caption"][:40])
                else:
                    tiles.append(np.full((64, 64, 3), 255, np.uint8))
                    caps.append("")
        contact_sheet(np.stack(tiles), caps, out / "clusters.png", scale=1, cols=6,
                      title="largest duplicate clusters (one row each)")
        report["clusters_png"] = str(out / "clusters.png")
    scores = [r["score"] for r in rows if r["score"] is not None]
    if scores:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from ..utils import atomic_path
        fig, ax = plt.subplots(figsize=(5, 3), dpi=110)
        ax.hist(scores, bins=40, color="C0")
        th = report["config"]["aesthetic_threshold"]
        if th is not None:
            ax.axvline(th, color="C3", label=f"threshold {th}")
            ax.legend()
        ax.set_xlabel("aesthetic score")
        ax.set_ylabel("images")
        fig.tight_layout()
        with atomic_path(out / "scores.png") as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        report["scores_png"] = str(out / "scores.png")
