"""Image-text datasets in the formats users have, read and written as streams.

- a folder of images with captions in sidecar ``.txt`` files, or a ``manifest.csv`` / ``manifest.parquet`` beside
  them (columns ``file`` or ``path``, ``caption``, any others kept as metadata);
- parquet with image bytes (column ``image`` / ``jpg`` / ``png`` / ``bytes``) or image paths;
- webdataset tar shards (the LAION / img2dataset layout: ``KEY.jpg|png|webp`` + ``KEY.txt`` + ``KEY.json`` in
  order, shards named ``00000.tar``...).

Every reader yields :class:`Record` objects one at a time; a record whose image cannot be decoded, or a shard that
ends mid-file, is counted in a :class:`ReadStats` and skipped, never a crash and never silent.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import PixelcascadeError
from ..inputs import decode_caption

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
BYTES_COLUMNS = ("image", "jpg", "png", "webp", "bytes", "image_bytes")
PATH_COLUMNS = ("file", "path", "image_path", "filepath")
CAPTION_COLUMNS = ("caption", "text", "txt", "prompt")
# where captions are read from, as the messages about a record without one name them
CAPTION_SOURCES = ("a .txt sidecar beside each image, a column caption/text/txt/prompt of a manifest.csv, "
                   "manifest.parquet, metadata.jsonl or metadata.csv (Hugging Face imagefolder: file_name) or of a "
                   "parquet file, a shard's .txt member; another column: data.caption_column=NAME (curate "
                   "--caption-column NAME)")
IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp")  # a webdataset record's image, by member extension


class DataFormatError(PixelcascadeError, ValueError):
    pass


@dataclasses.dataclass
class Record:
    key: str
    image: bytes  # the encoded file as stored (PNG/JPEG/...)
    caption: str
    meta: dict = dataclasses.field(default_factory=dict)
    source: str = ""  # shard or file it came from

    def decode(self) -> np.ndarray:
        """uint8 RGB [H, W, 3]; raises ValueError for a corrupt image."""
        try:
            return decode_rgb(self.image)
        except ValueError as e:
            raise ValueError(f"cannot decode image {self.key} ({e})") from None


def decode_rgb(data: bytes) -> np.ndarray:
    """Encoded image bytes -> uint8 RGB [H, W, 3], transparency composited on white; ValueError if they are not an
    image."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL raises many types for broken files
        raise ValueError(f"{type(e).__name__}: {e}") from None


def member_key(name: str) -> tuple[str, str]:
    """A webdataset tar member's (key, extension): the name up to its first dot, with its folder."""
    path = Path(name)
    key, _, ext = path.name.partition(".")
    return (key if path.parent == Path(".") else str(path.parent / key)), ext.lower()


@dataclasses.dataclass
class ReadStats:
    records: int = 0
    corrupt_images: int = 0
    truncated_shards: int = 0
    unreadable_files: int = 0
    missing_captions: int = 0
    empty_captions: int = 0
    problems: list = dataclasses.field(default_factory=list)  # the first few, with their location

    def note(self, kind: str, where: str, why: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.problems) < 20:
            self.problems.append({"kind": kind, "where": where, "why": why})

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------
# readers


def dataset_root(path: str | Path) -> Path:
    """Where a dataset's records are: a curate output folder (report.json beside data/) means its data/."""
    p = Path(path)
    if p.is_dir() and (p / "report.json").is_file() and (p / "data").is_dir():
        return p / "data"
    return p


def detect_format(path: str | Path) -> str:
    p = dataset_root(path)
    if not p.exists():
        raise DataFormatError(f"{p}: no such file or folder")
    if p.is_file():
        if p.suffix == ".parquet":
            return "parquet"
        if p.suffix == ".tar":
            return "webdataset"
        raise DataFormatError(f"{p}: not a dataset (expected a folder, a .parquet file or a .tar shard)")
    tables = [n for n in ("manifest.parquet", "manifest.csv", "metadata.jsonl", "metadata.csv") if (p / n).is_file()]
    kinds = {"webdataset": sorted(p.glob("*.tar")),
             "parquet": [q for q in sorted(p.glob("*.parquet")) if q.name != "manifest.parquet"],
             "folder": [q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTS] if not tables else tables}
    if kinds["webdataset"] and tables == ["manifest.parquet"]:  # curate's own output: shards + their manifest
        kinds["folder"] = []
    present = {k: v for k, v in kinds.items() if v}
    if len(present) > 1:
        what = {"webdataset": ".tar shards", "parquet": "parquet files", "folder": "images (or their table)"}
        listed = ", ".join(f"{len(v)} {what[k]}" for k, v in present.items())
        raise DataFormatError(f"{p} mixes dataset formats ({listed}); one format a folder: move each into its own "
                              "folder and train or curate them one at a time")
    return next(iter(present), "folder")


def shard_list(path: str | Path) -> list[Path]:
    """The units of per-shard work: tar shards, parquet files, or the folder itself."""
    p = dataset_root(path)
    fmt = detect_format(p)
    if p.is_file():
        return [p]
    if fmt == "webdataset":
        return sorted(p.glob("*.tar"))
    if fmt == "parquet":
        return [q for q in sorted(p.glob("*.parquet")) if q.name != "manifest.parquet"]
    return [p]


def read_records(path: str | Path, stats: ReadStats | None = None, caption_column: str = "") -> Iterator[Record]:
    """Every record of a dataset in any supported format, streamed. ``caption_column``: the column of a
    manifest, metadata file or parquet that holds the captions (default: the first of CAPTION_COLUMNS there)."""
    stats = stats if stats is not None else ReadStats()
    for shard in shard_list(path):
        yield from read_shard(shard, stats, caption_column)


def read_shard(shard: str | Path, stats: ReadStats, caption_column: str = "") -> Iterator[Record]:
    p = Path(shard)
    if p.suffix == ".tar":
        yield from _read_tar(p, stats)
    elif p.suffix == ".parquet":
        yield from _read_parquet(p, stats, root=p.parent, caption_column=caption_column)
    else:
        yield from _read_folder(p, stats, caption_column)


def _read_tar(path: Path, stats: ReadStats) -> Iterator[Record]:
    """webdataset: members grouped by key (the name up to the first dot), in order."""
    group: dict = {}
    key = None

    def emit(k, g):
        img = next((g[e] for e in IMAGE_MEMBERS if e in g), None)
        if img is None:
            return None
        cap = decode_caption(g.get("txt", b""))
        meta = {}
        if "json" in g:
            try:
                meta = json.loads(g["json"])
            except ValueError:
                meta = {}
        if not cap:
            cap = meta.get("caption", "") if isinstance(meta, dict) else ""
        if not cap:
            empty = "txt" in g
            stats.note("empty_captions" if empty else "missing_captions", f"{path.name}:{k}",
                       "empty .txt caption" if empty else "no .txt caption")
        stats.records += 1
        return Record(k, img, cap, meta if isinstance(meta, dict) else {}, source=path.name)

    try:
        with tarfile.open(path, "r|*") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                k, ext = member_key(m.name)
                if key is not None and k != key:
                    rec = emit(key, group)
                    if rec is not None:
                        yield rec
                    group = {}
                key = k
                f = tf.extractfile(m)
                data = f.read() if f is not None else b""
                if len(data) != m.size:
                    raise EOFError(f"member {m.name} has {len(data)} of its {m.size} bytes")
                group[ext.lower()] = data
        if not has_end_marker(path):
            raise EOFError("no end-of-archive marker: the file was cut short")
    except (tarfile.TarError, EOFError, OSError) as e:
        stats.note("truncated_shards", path.name, f"{type(e).__name__}: {e}; kept the records before the break")
        return  # the last group may be incomplete: dropped
    if key is not None:
        rec = emit(key, group)
        if rec is not None:
            yield rec


def has_end_marker(path: Path) -> bool:
    """A complete tar ends with at least two 512-byte zero blocks (writers pad to the record size)."""
    size = path.stat().st_size
    if size < 1024 or size % 512:
        return False
    with open(path, "rb") as f:
        f.seek(size - 1024)
        return f.read(1024) == bytes(1024)


def _caption_of(row: dict, column: str = "") -> str:
    for c in (column,) if column else CAPTION_COLUMNS:
        if row.get(c):
            return str(row[c]).strip()
    return ""


def _check_caption_column(where: Path, names, column: str) -> None:
    """A caption column asked for that the table lacks: one error listing the columns it has."""
    if column and column not in names:
        raise DataFormatError(f"{where}: no column {column!r} (data.caption_column / --caption-column); its "
                              f"columns: {', '.join(map(str, names))}")


def _captioned(rec_caption: str, stats: ReadStats, where: str) -> str:
    if not rec_caption:
        stats.note("missing_captions", where, "no caption in its row (caption, text, txt, prompt, or "
                                              "data.caption_column)")
    return rec_caption


def _read_parquet(path: Path, stats: ReadStats, root: Path, caption_column: str = "") -> Iterator[Record]:
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        stats.note("unreadable_files", path.name, f"{type(e).__name__}: {e}")
        return
    names = pf.schema_arrow.names
    bcol = next((c for c in BYTES_COLUMNS if c in names), None)
    pcol = next((c for c in PATH_COLUMNS if c in names), None)
    if bcol is None and pcol is None:
        raise DataFormatError(f"{path}: no image column (one of {BYTES_COLUMNS + PATH_COLUMNS}); has {names}")
    _check_caption_column(path, names, caption_column)
    n = 0
    for batch in pf.iter_batches(batch_size=256):
        for row in batch.to_pylist():
            n += 1
            key = str(row.get("key") or f"{path.stem}-{n:08d}")
            data = row.get(bcol) if bcol else None
            if isinstance(data, dict):  # HF datasets store {"bytes": ..., "path": ...}
                data = data.get("bytes")
            if data is None and pcol:
                fp = Path(row[pcol])
                data = _read_bytes(fp if fp.is_absolute() else root / fp, stats)
                if data is None:
                    continue
            if data is None:
                stats.note("unreadable_files", f"{path.name}:{key}", "row without image bytes or path")
                continue
            meta = {k: v for k, v in row.items() if k not in (bcol, pcol) and _jsonable(v)}
            stats.records += 1
            caption = _captioned(_caption_of(row, caption_column), stats, f"{path.name}:{key}")
            yield Record(key, bytes(data), caption, meta, source=path.name)


def _jsonable(v) -> bool:
    return isinstance(v, str | int | float | bool) or v is None


def _read_bytes(fp: Path, stats: ReadStats) -> bytes | None:
    try:
        return fp.read_bytes()
    except OSError as e:
        stats.note("unreadable_files", str(fp), e.strerror or str(e))
        return None


def _read_folder(path: Path, stats: ReadStats, caption_column: str = "") -> Iterator[Record]:
    if (path / "manifest.parquet").is_file():
        yield from _read_parquet(path / "manifest.parquet", stats, root=path, caption_column=caption_column)
        return
    table = next((path / n for n in ("manifest.csv", "metadata.jsonl", "metadata.csv") if (path / n).is_file()),
                 None)
    if table is not None:  # our manifest, or Hugging Face imagefolder's metadata (file_name + columns)
        rows = _table_rows(table)
        _check_caption_column(table, list(rows[0]) if rows else [], caption_column)
        for row in rows:
            fp = path / str(row.get("file") or row.get("path") or row.get("file_name") or "")
            data = _read_bytes(fp, stats)
            if data is not None:
                stats.records += 1
                meta = {k: v for k, v in row.items() if k not in ("file", "path", "file_name") and _jsonable(v)}
                caption = _captioned(_caption_of(row, caption_column), stats, str(fp))
                yield Record(fp.stem, data, caption, meta, source=str(path.name))
        return
    for fp in sorted(q for q in path.rglob("*") if q.suffix.lower() in IMAGE_EXTS):
        txt = fp.with_suffix(".txt")
        cap = decode_caption(txt.read_bytes()) if txt.is_file() else ""  # decoded as a shard's .txt is
        if not txt.is_file():
            stats.note("missing_captions", str(fp), "no sidecar .txt")
        elif not cap:
            stats.note("empty_captions", str(fp), "empty .txt caption")
        data = _read_bytes(fp, stats)
        if data is not None:
            stats.records += 1
            yield Record(str(fp.relative_to(path).with_suffix("")), data, cap, {}, source=path.name)


def _table_rows(path: Path) -> list[dict]:
    """The rows of a manifest.csv, metadata.csv or metadata.jsonl."""
    if path.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataFormatError(f"{path}:{i}: not a JSON object ({e.msg}); one object a line") from None
        return rows
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------------------
# writers


def _ext_of(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "png"


class ShardWriter:
    """webdataset shards of at most ``per_shard`` records (``00000.tar``, ... or ``PREFIX-00000.tar``), each written
    atomically, plus ``manifest.parquet`` (key, shard, caption and the metadata columns) when closed."""

    def __init__(self, out_dir: str | Path, per_shard: int = 1000, prefix: str = ""):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.per_shard, self.shard, self.count = per_shard, 0, 0
        self.prefix = f"{prefix}-" if prefix else ""  # shards of several writers can share a folder
        self.rows: list[dict] = []
        self._tf = None
        self._tmp = None

    @property
    def name(self) -> str:
        """The shard being written: ``00000.tar``, or ``PREFIX-00000.tar``."""
        return f"{self.prefix}{self.shard:05d}.tar"

    def _open(self):
        import tempfile
        fd, tmp = tempfile.mkstemp(prefix=f".{self.name}.", suffix=".tar.tmp", dir=self.out)
        import os
        os.close(fd)
        self._tmp = Path(tmp)
        self._tf = tarfile.open(self._tmp, "w")

    def _close_shard(self):
        import os
        if self._tf is None:
            return
        self._tf.close()
        os.chmod(self._tmp, 0o644)
        os.replace(self._tmp, self.out / self.name)
        self._tf = None
        self.shard += 1

    def _add(self, name: str, data: bytes):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        self._tf.addfile(info, io.BytesIO(data))

    def write(self, rec: Record) -> None:
        if self._tf is None:
            self._open()
        key = rec.key.replace("/", "_").replace(".", "_")
        self._add(f"{key}.{_ext_of(rec.image)}", rec.image)
        self._add(f"{key}.txt", rec.caption.encode())
        self._add(f"{key}.json", json.dumps({"key": rec.key, "caption": rec.caption, **rec.meta},
                                            ensure_ascii=False).encode())
        self.rows.append({"key": key, "shard": self.name, "caption": rec.caption,
                          **{k: v for k, v in rec.meta.items() if _jsonable(v)}})
        self.count += 1
        if self.count % self.per_shard == 0:
            self._close_shard()

    def close(self) -> Path:
        self._close_shard()
        write_parquet(self.rows, self.out / "manifest.parquet")
        return self.out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
        elif self._tf is not None:
            self._tf.close()
            self._tmp.unlink(missing_ok=True)


def write_parquet(rows: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..utils import atomic_path
    cols = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("key", "shard", "caption"), k))
    table = pa.table({c: [r.get(c) for r in rows] for c in cols}) if rows else pa.table({"key": []})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_folder(records, out_dir: str | Path) -> Path:
    """Images + sidecar .txt captions + manifest.csv."""
    from ..utils import atomic_path, atomic_write_text
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for rec in records:
        key = rec.key.replace("/", "_")
        name = f"{key}.{_ext_of(rec.image)}"
        with atomic_path(out / name) as tmp:
            Path(tmp).write_bytes(rec.image)
        atomic_write_text(out / f"{key}.txt", rec.caption)
        rows.append({"file": name, "caption": rec.caption})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["file", "caption"])
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "manifest.csv", buf.getvalue())
    return out
