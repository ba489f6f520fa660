"""An index of webdataset shards: where each record's image and caption lie in its tar, so that any record can be
read with two seeks and nothing else is ever decoded or held in memory.

A tar stores every member's bytes contiguously after a 512-byte header, so scanning the headers (``tarfile`` seeks
over the data in a seekable file) gives each member's offset and size. A record is the members that share a key
(the file name up to its first dot), as webdataset groups them. The index of one shard is cached beside the other
data of the cache, keyed by the shard's path, size and modification time, so a changed shard is indexed again.

A shard cut short (a partial download, a disk that filled up) keeps the records whose bytes are all there; the rest
are counted as ``truncated_shards`` / ``dropped_records``, never a crash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tarfile
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..utils import atomic_path
from .formats import IMAGE_MEMBERS, DataFormatError, has_end_marker, member_key

# one row per record: the image's and the caption's byte ranges in the shard (caption size 0: no .txt member)
RECORD_DTYPE = np.dtype([("shard", np.int32), ("image_offset", np.int64), ("image_size", np.int64),
                         ("text_offset", np.int64), ("text_size", np.int64)])
INDEX_VERSION = 1


def expand_shards(spec: str | Path) -> list[Path]:
    """The shards a ``data.path`` names: a .tar file, a folder of them, or a glob ("/data/laion/{00000..00099}.tar"
    braces are not expanded; use "/data/laion/*.tar"), sorted by name."""
    s = str(Path(spec).expanduser())
    if any(c in s for c in "*?["):
        import glob
        shards = sorted(Path(p) for p in glob.glob(s) if p.endswith(".tar"))
    elif Path(s).is_dir():
        from .formats import dataset_root
        shards = sorted(dataset_root(s).glob("*.tar"))
    elif s.endswith(".tar") and Path(s).is_file():
        shards = [Path(s)]
    else:
        shards = []
    if not shards:
        raise DataFormatError(f"{spec}: no webdataset .tar shards there (give a .tar file, a folder of shards, or a "
                              "glob such as 'data/*.tar')")
    return shards


@dataclasses.dataclass
class ShardStats:
    truncated_shards: int = 0
    dropped_records: int = 0  # records whose bytes run past the end of a cut shard, or without an image
    problems: list = dataclasses.field(default_factory=list)


def scan_shard(path: Path) -> tuple[np.ndarray, list[str], ShardStats]:
    """(records [n] of RECORD_DTYPE with shard 0, their keys, stats) from one shard's headers."""
    stats = ShardStats()
    size = path.stat().st_size
    rows, keys = [], []
    group: dict[str, tuple[int, int]] = {}
    key = None

    def close(k, g):
        img = next((g[e] for e in IMAGE_MEMBERS if e in g), None)
        if img is None:
            stats.dropped_records += 1
            return
        txt = g.get("txt", (0, 0))
        if img[0] + img[1] > size or txt[0] + txt[1] > size:
            stats.dropped_records += 1
            return
        rows.append((0, img[0], img[1], txt[0], txt[1]))
        keys.append(k)

    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                k, ext = member_key(m.name)
                if key is not None and k != key:
                    close(key, group)
                    group = {}
                key = k
                group[ext] = (m.offset_data, m.size)
    except (tarfile.TarError, OSError, EOFError) as e:
        stats.truncated_shards += 1
        stats.problems.append({"shard": path.name, "why": f"{type(e).__name__}: {e}"})
    if key is not None:
        close(key, group)
    if not stats.truncated_shards and not has_end_marker(path):
        stats.truncated_shards += 1
        stats.problems.append({"shard": path.name, "why": "no end-of-archive marker: the file was cut short"})
    return np.array(rows, dtype=RECORD_DTYPE), keys, stats


def _cache_name(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha256(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{INDEX_VERSION}".encode())
    return h.hexdigest()[:24] + ".npz"


def shard_index(path: Path, cache: Path | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(records, keys as a bytes array, stats dict) of one shard, from the cache when it is current."""
    f = cache / "index" / _cache_name(path) if cache is not None else None
    if f is not None and f.is_file():
        with np.load(f, allow_pickle=False) as z:
            return z["records"], z["keys"], {"truncated_shards": int(z["truncated"]), "dropped_records":
                                             int(z["dropped"])}
    records, keys, stats = scan_shard(path)
    key_arr = np.array([k.encode() for k in keys], dtype=bytes) if keys else np.zeros(0, dtype="S1")
    if f is not None:
        with atomic_path(f) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, records=records, keys=key_arr, truncated=stats.truncated_shards,
                     dropped=stats.dropped_records)
    return records, key_arr, {"truncated_shards": stats.truncated_shards, "dropped_records": stats.dropped_records,
                              "problems": stats.problems}


@dataclasses.dataclass
class DatasetIndex:
    """Every record of a set of shards: ``records[i]`` says where record i's bytes are, ``keys[i]`` its key."""

    shards: list[Path]
    records: np.ndarray  # RECORD_DTYPE [N]
    keys: np.ndarray  # bytes [N]
    stats: dict

    def __len__(self) -> int:
        return len(self.records)

    def key(self, i: int) -> str:
        return self.keys[i].decode()

    def fingerprint(self) -> str:
        """Names, sizes and record counts of the shards: a resumed run checks it reads the same data."""
        h = hashlib.sha256()
        for s in self.shards:
            h.update(f"{s.name}\0{s.stat().st_size}\n".encode())
        h.update(str(len(self.records)).encode())
        return h.hexdigest()[:16]

    def split(self, seed: int, val_share: float = 0.05, max_val: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """(training ids, validation ids): the validation records are those whose seeded key hash is smallest
        (``val_share`` of the data, 1 to ``max_val``), so the split does not depend on the shards' order."""
        n = len(self.records)
        n_val = min(max_val, max(1, int(n * val_share)))
        salt = str(seed).encode() + b"\0"
        h = np.fromiter((zlib.crc32(salt + k) for k in self.keys), dtype=np.uint64, count=n)
        order = np.argsort(h, kind="stable")
        val = np.sort(order[:n_val])
        mask = np.ones(n, dtype=bool)
        mask[val] = False
        return np.flatnonzero(mask), val


def index_dataset(spec: str | Path | list, cache: Path | None = None, progress: bool = False) -> DatasetIndex:
    """Index every shard ``spec`` names (a list: each one's, in order; cached per shard)."""
    shards = [s for one in (spec if isinstance(spec, list) else [spec]) for s in expand_shards(one)]
    if len({s.resolve() for s in shards}) < len(shards):
        raise DataFormatError(f"{spec}: a shard is named twice (weigh a dataset with data.repeats instead)")
    it = enumerate(shards)
    if progress and len(shards) > 1:
        from tqdm import tqdm
        it = tqdm(it, total=len(shards), desc="indexing shards", unit="shard")
    recs, keys = [], []
    stats = {"shards": len(shards), "truncated_shards": 0, "dropped_records": 0, "problems": []}
    for i, s in it:
        r, k, st = shard_index(s, cache)
        r = r.copy()
        r["shard"] = i
        recs.append(r)
        keys.append(k)
        stats["truncated_shards"] += st["truncated_shards"]
        stats["dropped_records"] += st["dropped_records"]
        stats["problems"] += st.get("problems", [])[: max(0, 20 - len(stats["problems"]))]
    width = max((k.dtype.itemsize for k in keys), default=1)
    all_keys = np.concatenate([k.astype(f"S{width}") for k in keys]) if keys else np.zeros(0, "S1")
    return DatasetIndex(shards, np.concatenate(recs) if recs else np.zeros(0, RECORD_DTYPE), all_keys, stats)


class RecordReader:
    """Reads a record's image bytes and caption through the index; keeps a few shards open (least recently used)."""

    def __init__(self, index: DatasetIndex, max_open: int = 8):
        self.index, self.max_open = index, max_open
        self._files: OrderedDict[int, object] = OrderedDict()

    def _file(self, shard: int):
        f = self._files.pop(shard, None)
        if f is None:
            f = open(self.index.shards[shard], "rb")  # noqa: SIM115 (kept open across reads, closed on eviction)
            while len(self._files) >= self.max_open:
                self._files.popitem(last=False)[1].close()
        self._files[shard] = f
        return f

    def read(self, i: int) -> tuple[bytes, str]:
        r = self.index.records[i]
        f = self._file(int(r["shard"]))
        f.seek(int(r["image_offset"]))
        image = f.read(int(r["image_size"]))
        caption = ""
        if r["text_size"]:
            f.seek(int(r["text_offset"]))
            caption = f.read(int(r["text_size"])).decode("utf-8", "replace").strip()
        return image, caption

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
