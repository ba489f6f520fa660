"""Worlds: where a run's training examples come from. Each world gives the images and captions of its training and
validation splits, the recipe that goes into a model's metadata, and the prompts of the sample grid:

- ``shapes``: the rendered shapes world (../shared/specs/shapes-world.md), cached per data config;
- ``emoji``: the curated Noto emoji set, names in 14 languages, held-out names for validation;
- ``files``: your own dataset (``data.path``, any format of :mod:`formats`), decoded once into a memory-mapped
  cache; or streamed from webdataset shards (``data.stream``, :mod:`stream`).
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
from pathlib import Path
from typing import Protocol

import numpy as np

from ..config import DataConfig
from ..errors import PixelcascadeError
from ..images import center_crop_resize
from ..utils import atomic_path, default_cache_dir  # noqa: F401  (default_cache_dir: the cache every world uses)
from .buckets import BucketedImages, fit, nearest_bucket


@dataclasses.dataclass
class WorldSplit:
    """The examples of one split: rows of ``images`` and each row's captions (one or more)."""

    images: np.ndarray  # uint8 [N, S, S, 3] (an array or a memmap; may hold rows of other splits)
    captions: list[list[str]]  # one list per example image
    rows: np.ndarray | None = None  # which rows of ``images`` (None: all, in order)
    low_images: np.ndarray | None = None  # super-resolution: each image's own low-res render (shapes)
    bucketed: BucketedImages | None = None  # data.buckets: every image at its aspect bucket's shape (files)
    info: dict = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.captions)


class World(Protocol):
    name: str

    def splits(self, dc: DataConfig, cache: Path, progress: bool = True,
               super_res: bool = False) -> tuple[WorldSplit, WorldSplit]:
        """(training, validation) examples."""

    def recipe(self, dc: DataConfig, train: WorldSplit, val: WorldSplit) -> str:
        """One line for the model's metadata: what the data was and how to make it again."""

    def preview_prompts(self, dc: DataConfig, val: WorldSplit) -> list[str]:
        """16 prompts for the sample grid written at each checkpoint."""


def _shapes_key(dc: DataConfig) -> str:
    """The cache name of a shapes dataset: size, count, seed and (when not the defaults) the task mix, the
    template share and the largest count."""
    from .shapes import TASK_WEIGHTS, parse_task_weights
    weights = parse_task_weights(dc.task_weights)
    mix = "" if weights == TASK_WEIGHTS else "-w" + "_".join(f"{k}{v:g}" for k, v in weights.items()
                                                             if v != TASK_WEIGHTS[k])
    tmpl = "" if dc.template_share == DataConfig.template_share else f"-t{dc.template_share:g}"
    counts = f"-c{dc.count_to}" if dc.count_to else ""
    return f"shapes{dc.image_size}-n{dc.num_images}-seed{dc.seed}{mix}{tmpl}{counts}"


def shapes_images(dc: DataConfig, cache: Path, progress: bool = True) -> tuple[np.ndarray, list[str]]:
    """Rendered shapes-world images + captions, cached on disk (a pure function of the data config)."""
    from .shapes import make_dataset, parse_task_weights
    weights = parse_task_weights(dc.task_weights)
    path = cache / "data" / f"{_shapes_key(dc)}.npz"
    if path.exists():
        z = np.load(path, allow_pickle=False)
        return z["images"], [str(c) for c in z["captions"]]
    images, captions = make_dataset(dc.num_images, dc.image_size, dc.seed, progress=progress, weights=weights,
                                    template_share=dc.template_share, count_to=dc.count_to)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, images=images, captions=np.array(captions))
    return images, captions


def shapes_low_res_pairs(dc: DataConfig, cache: Path, progress: bool = True) -> np.ndarray:
    """Each training scene of :func:`shapes_images` rendered in the ``low_res_size`` world (uint8), cached."""
    from .shapes import make_dataset, parse_task_weights
    weights = parse_task_weights(dc.task_weights)
    path = cache / "data" / f"{_shapes_key(dc)}-low{dc.low_res_size}.npz"
    if path.exists():
        return np.load(path, allow_pickle=False)["low"]
    _, _, low = make_dataset(dc.num_images, dc.image_size, dc.seed, progress=progress, weights=weights,
                             low_res_size=dc.low_res_size, template_share=dc.template_share, count_to=dc.count_to)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, low=low)
    return low


def emoji_images(dc: DataConfig, cache: Path, progress: bool = True, split: str = "train"):
    """The curated emoji set at ``dc.image_size``: (images uint8 [N, S, S, 3], per-image caption lists).

    Rendered at 128 px (``dc.num_images`` > 0: only the first that many emoji), curated with the default
    settings (exact and near duplicates merged), resized here; cached on disk. ``split``: "train" (English
    name x8, aliases and the other languages' names once each) or "heldout" (English names only: the
    captions the model never sees).
    """
    from PIL import Image

    from .curate import CurateConfig, curate
    from .emoji import build_emoji_dataset, heldout
    from .formats import read_records
    limit = dc.num_images or None  # 0: every emoji; n: the first n (tests)
    root = cache / "data" / (f"emoji128-seed{dc.seed}" + (f"-first{limit}" if limit else ""))
    if not (root / "curated" / "report.json").is_file():
        if not (root / "raw" / "manifest.parquet").is_file():
            build_emoji_dataset(root / "raw", size=128, seed=dc.seed, progress=progress, limit=limit)
        curate(root / "raw", root / "curated", CurateConfig(), progress=progress)
    images, caps = [], []
    for rec in read_records(root / "curated" / "data"):
        held = rec.meta.get("split") == "heldout"
        if (split == "heldout") != held:
            continue
        img = rec.decode()
        if img.shape[0] != dc.image_size:
            img = np.asarray(Image.fromarray(img).resize((dc.image_size, dc.image_size), Image.BICUBIC))
        images.append(img)
        if split == "heldout":
            caps.append([rec.meta["name"]])
        else:
            names = [rec.meta["name"]] * 8 + [a for a in str(rec.meta.get("aliases") or "").split("|") if a]
            names += [v for k, v in sorted(rec.meta.items()) if k.startswith("name_") and v]
            # names of identical emoji merged into this one, except held-out ones (never trained on)
            names += [c for c in str(rec.meta.get("dup_captions") or "").split("|")
                      if c and not heldout(c, seed=dc.seed)]
            caps.append(names)
    if not images:
        raise RuntimeError(f"no {split} emoji in {root}")
    return np.stack(images), caps


class DatasetError(PixelcascadeError, RuntimeError):
    """A data.world=files dataset that cannot be trained on (missing, empty, too few usable records)."""


def _listing_key(path: Path) -> str:
    """What a dataset's files are: each file's name, size and modification time (changed data, new cache)."""
    import hashlib
    h = hashlib.sha256(str(path.resolve()).encode())
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path) if f != path else f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _sources(dc: DataConfig) -> list[tuple[Path, str]]:
    """Each dataset of data.path with its format; a missing or mixed one is one clear error."""
    from .formats import DataFormatError, detect_format
    if not dc.path:
        raise DatasetError("data.world=files trains on your own data: name it with data.path=DATASET (a folder of "
                           "images with .txt captions or a manifest.csv, parquet, or webdataset .tar shards; several: "
                           "data.path=A,B)")
    out = []
    for path in dc.paths:
        src = Path(path).expanduser()
        try:
            out.append((src, detect_format(src)))
        except DataFormatError as e:
            raise DatasetError(f"data.path: {e}; give a folder of images with .txt captions or a manifest.csv, a "
                               "parquet file or folder, or webdataset .tar shards") from None
    return out


def _decode_into_cache(sources: list[tuple[Path, str]], root: Path, dc: DataConfig, progress: bool,
                       shapes: list[tuple[int, int]] | None = None) -> None:
    """Decode, crop and resize every captioned record of ``sources`` into root/images.u8 (+ captions.json, the
    source of each row, info.json written last: the cache is complete); with ``shapes`` (aspect buckets) also each
    image at its bucket's shape into root/bucket-HxW.u8."""
    import contextlib
    import hashlib

    from .formats import ReadStats, read_records
    root.mkdir(parents=True, exist_ok=True)
    stats, captions, source_of, per_source = ReadStats(), [], [], []
    bucket_of, row_in_bucket, counts = [], [], [0] * len(shapes or [])
    digest = hashlib.sha256()
    with contextlib.ExitStack() as stack:
        files = [open(stack.enter_context(atomic_path(root / f"bucket-{h}x{w}.u8")), "wb") for h, w in shapes or []]
        for fh in files:
            stack.callback(fh.close)
        tmp = stack.enter_context(atomic_path(root / "images.u8"))
        f = stack.enter_context(open(tmp, "wb"))
        for j, (src, fmt) in enumerate(sources):
            it = read_records(src, stats, dc.caption_column)
            if progress:
                from tqdm import tqdm
                it = tqdm(it, desc=f"reading {src.name} ({fmt})", unit="img")
            kept = no_caption = 0
            for rec in it:
                caption = rec.caption.strip()
                if not caption:
                    no_caption += 1
                    continue
                try:
                    full = rec.decode()
                except ValueError as e:
                    stats.note("corrupt_images", rec.source or rec.key, str(e))
                    continue
                img = center_crop_resize(full, dc.image_size)
                if shapes:
                    k = nearest_bucket(full.shape[0], full.shape[1], shapes)
                    files[k].write(fit(full, shapes[k]).tobytes())
                    bucket_of.append(k)
                    row_in_bucket.append(counts[k])
                    counts[k] += 1
                f.write(img.tobytes())
                digest.update(img.tobytes())
                digest.update(caption.encode() + b"\0")
                captions.append(caption)
                source_of.append(j)
                kept += 1
            per_source.append({"path": str(src.resolve()), "format": fmt, "images": kept,
                               "skipped_no_caption": no_caption})
    info = {"path": ", ".join(s["path"] for s in per_source), "format": " + ".join(s["format"] for s in per_source),
            "images": len(captions), "image_size": dc.image_size, "sources": per_source,
            "skipped_no_caption": sum(s["skipped_no_caption"] for s in per_source), "read": stats.as_dict(),
            "sha256": digest.hexdigest(), "buckets": [[h, w, n] for (h, w), n in zip(shapes or [], counts)]}
    with atomic_path(root / "captions.json") as tmp:
        Path(tmp).write_text(json.dumps({"captions": captions, "source_of": source_of, "bucket_of": bucket_of,
                                         "row_in_bucket": row_in_bucket}))
    with atomic_path(root / "info.json") as tmp:
        Path(tmp).write_text(json.dumps(info, indent=1))


def check_captioned(dc: DataConfig, uncaptioned: int, total: int, progress: bool) -> None:
    """Records without a caption: an error before training starts, unless data.skip_uncaptioned (then a note)."""
    from .formats import CAPTION_SOURCES
    if not uncaptioned:
        return
    if not dc.skip_uncaptioned:
        raise DatasetError(f"data.path={dc.path}: {uncaptioned} of {total} records have no caption. Captions are "
                           f"read from {CAPTION_SOURCES}. Caption them, name the column, or add "
                           "data.skip_uncaptioned=true to train on the captioned ones")
    if progress:
        print(f"note: {uncaptioned} of {total} records have no caption and are left out (data.skip_uncaptioned)",
              file=sys.stderr)


def files_images(dc: DataConfig, cache: Path, progress: bool = True, shapes: list[tuple[int, int]] | None = None):
    """Your datasets (``data.path``, one or several, any format of :mod:`pixelcascade.data.formats`) for training:
    decoded once, centre-cropped and resized to ``dc.image_size``, into a uint8 file in the cache that training
    reads memory-mapped (so RAM holds the batches, not the dataset). Returns (images [N, S, S, 3] memmap, captions
    [N], held-out indices, training indices, info; info["source_of"]: each row's dataset). Records that cannot be
    decoded and truncated shards are skipped and counted in ``info``; records without a caption stop the run
    unless ``dc.skip_uncaptioned``; ``dc.seed`` picks the held-out images (5%, 1 to 512). ``shapes``: aspect
    buckets (data.buckets), each image also kept at its bucket's shape (info["bucketed"])."""
    import hashlib
    sources = _sources(dc)
    keys = [_listing_key(src) for src, _ in sources]
    listing = keys[0] if len(keys) == 1 else hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
    root = cache / "data" / f"files-{listing}-{dc.image_size}-{dc.caption_column or 'auto'}"
    if shapes:
        root = root.with_name(root.name + "-b" + "_".join(f"{h}x{w}" for h, w in shapes))
    if not (root / "info.json").is_file():
        _decode_into_cache(sources, root, dc, progress, shapes)
    info = json.loads((root / "info.json").read_text())
    table = json.loads((root / "captions.json").read_text())
    captions, info["source_of"] = table["captions"], np.array(table["source_of"], dtype=np.int64)
    n = info["images"]
    check_captioned(dc, info["skipped_no_caption"], n + info["skipped_no_caption"], progress)
    skipped = (f"{info['read']['corrupt_images']} corrupt images, {info['read']['truncated_shards']} truncated "
               f"shards, {info['skipped_no_caption']} records without a caption skipped")
    if n < 2:
        raise DatasetError(f"data.path={dc.path}: {n} usable image-caption records ({skipped}); training needs at "
                           "least 2 (one is held out for validation)")
    n_val = min(512, max(1, n // 20))
    order = np.random.default_rng(dc.seed).permutation(n)
    images = np.memmap(root / "images.u8", dtype=np.uint8, mode="r", shape=(n, dc.image_size, dc.image_size, 3))
    info["skipped"] = skipped
    if shapes:
        info["bucketed"] = BucketedImages(
            shapes, [np.memmap(root / f"bucket-{h}x{w}.u8", dtype=np.uint8, mode="r", shape=(c, h, w, 3))
                     if c else np.zeros((0, h, w, 3), np.uint8) for h, w, c in info["buckets"]],
            np.array(table["bucket_of"], dtype=np.int64), np.array(table["row_in_bucket"], dtype=np.int64))
    return images, captions, np.sort(order[:n_val]), np.sort(order[n_val:]), info


def repeated(ids: np.ndarray, source_of: np.ndarray, repeats: list[int]) -> np.ndarray:
    """``ids`` with each id of dataset j repeated ``repeats[j]`` times (data.repeats), in order."""
    return np.repeat(ids, np.asarray(repeats)[source_of[ids]]) if max(repeats) > 1 else ids


class ShapesWorld:
    name = "shapes"

    def splits(self, dc, cache, progress=True, super_res=False):
        images, captions = shapes_images(dc, cache, progress)
        n_val = max(1, min(512, len(images) // 20))
        # validation keeps the default task mix and wording, so runs with other mixes compare on the same images
        val_dc = dataclasses.replace(dc, num_images=n_val, seed=dc.seed + 10_000, task_weights="",
                                     template_share=DataConfig.template_share, count_to=0)
        val_images, val_captions = shapes_images(val_dc, cache, progress)
        low = shapes_low_res_pairs(dc, cache, progress) if dc.paired_low_res > 0 and super_res else None
        train = WorldSplit(images, [[c] for c in captions], low_images=low)
        return train, WorldSplit(val_images, [[c] for c in val_captions])

    def recipe(self, dc, train, val):
        return (f"shapes world {dc.image_size}px, {dc.num_images} images rendered with seed {dc.seed} "
                "(pixelcascade.data.shapes.make_dataset"
                + (f", task mix {dc.task_weights}" if dc.task_weights else "")
                + (f", template share {dc.template_share:g}" if dc.template_share != DataConfig.template_share else "")
                + (f", counts to {dc.count_to}" if dc.count_to else "")
                + (f"; {dc.paired_low_res:g} of the low-res inputs are the scene's own {dc.low_res_size}-px render"
                   if train.low_images is not None else "") + ")")

    def preview_prompts(self, dc, val):
        from .shapes import benchmark_prompts
        return [p.text for p in random.Random(0).sample(benchmark_prompts(dc.image_size, 64, 0), 16)]


class EmojiWorld:
    name = "emoji"

    def splits(self, dc, cache, progress=True, super_res=False):
        images, caps = emoji_images(dc, cache, progress)
        val_images, val_caps = emoji_images(dc, cache, progress, split="heldout")
        return WorldSplit(images, caps), WorldSplit(val_images, val_caps)

    def recipe(self, dc, train, val):
        return (f"emoji: Noto Color Emoji rendered at 128 px (pixelcascade data emoji, seed {dc.seed}), curated "
                f"(pixelcascade curate, defaults), resized to {dc.image_size} px; {len(train)} training emoji, names "
                f"in 14 languages; validation on the {len(val)} held-out emoji")

    def preview_prompts(self, dc, val):
        return ["grinning face", "red heart", "thumbs up", "cat", "rocket", "pizza", "sun", "tree"] * 2


def _is_shards(path: str) -> bool:
    from .formats import dataset_root
    p = dataset_root(Path(path).expanduser())  # a curate output folder: its data/
    return any(c in path for c in "*?[") or p.suffix == ".tar" or (p.is_dir() and any(p.glob("*.tar")))


def streams(dc: DataConfig) -> bool:
    """Whether a run reads its data as a stream: world=files, data.stream, and webdataset shards at each data.path
    (a mix of shards and other formats goes through the cache)."""
    if dc.world != "files" or not dc.stream or not dc.path or dc.buckets:
        return False
    return all(_is_shards(p) for p in dc.paths)


def files_stream(dc: DataConfig, cache: Path, progress: bool = True):
    """Streamed world=files: (index, training ids, validation ids, info). The index is built once per shard and
    cached; records without a caption stop the run (or, with data.skip_uncaptioned, are left out and counted);
    data.repeats repeats each dataset's training ids."""
    from .formats import DataFormatError
    from .shard_index import expand_shards, index_dataset
    try:  # each path's shards listed once: their count says which dataset a shard belongs to
        per_path = [expand_shards(p) for p in dc.paths]
        index = index_dataset([s for shards in per_path for s in shards], cache, progress)
    except DataFormatError as e:
        raise DatasetError(f"data.path: {e}") from None
    captioned = index.records["text_size"] > 0
    check_captioned(dc, int((~captioned).sum()), len(index), progress)
    train_ids, val_ids = index.split(dc.seed)
    train_ids, val_ids = train_ids[captioned[train_ids]], val_ids[captioned[val_ids]]
    source_of = np.repeat(np.arange(len(per_path)), [len(s) for s in per_path])[index.records["shard"]]
    train_ids = repeated(train_ids, source_of, dc.repeat_counts)
    info = {"path": str(dc.path), "format": "webdataset (streamed)", "images": len(index),
            "shards": len(index.shards), "fingerprint": index.fingerprint(),
            "skipped": (f"{index.stats['truncated_shards']} truncated shards, {index.stats['dropped_records']} "
                        f"records cut off or without an image, {int((~captioned).sum())} records without a caption "
                        "left out")}
    if dc.repeats:
        info["path"] += f" (repeats {dc.repeats})"
    if len(train_ids) < 1 or len(val_ids) < 1:
        raise DatasetError(f"data.path={dc.path}: {len(index)} records ({info['skipped']}); training needs at "
                           "least 2 with captions (one is held out for validation)")
    return index, train_ids, val_ids, info


class FilesWorld:
    name = "files"

    def splits(self, dc, cache, progress=True, super_res=False, buckets=None):
        """``buckets``: the aspect-bucket shapes (data.buckets, as the run's UNet allows them) or None."""
        images, captions, val_rows, train_rows, info = files_images(dc, cache, progress, buckets)
        train_rows = repeated(train_rows, info["source_of"], dc.repeat_counts)
        train = WorldSplit(images, [[captions[i]] for i in train_rows], rows=train_rows, info=info,
                           bucketed=info.get("bucketed"))
        return train, WorldSplit(images, [[captions[i]] for i in val_rows], rows=val_rows, info=info)

    def recipe(self, dc, train, val):
        info = train.info
        return (f"files: {sources_text(dc, info)}, {info['images']} image-caption records "
                f"({info['skipped']}; content sha256 {info['sha256'][:16]}), centre-cropped and resized to "
                f"{dc.image_size} px" + _buckets_text(info) + f"; {len(train)} training, {len(val)} held out for "
                f"validation (data.seed {dc.seed})")

    def preview_prompts(self, dc, val):  # the held-out captions (validation images), first 8, twice
        return ([c[0] for c in val.captions[:8]] * 2)[:16]


def _buckets_text(info: dict) -> str:
    if not info.get("buckets"):
        return ""
    return " (validation); trained in aspect buckets " + ", ".join(f"{h}x{w}: {n}" for h, w, n in info["buckets"])


def sources_text(dc: DataConfig, info: dict) -> str:
    """The datasets of a run for its recipe: each path, format and (several) its images and repeats."""
    if len(info.get("sources", [])) < 2:
        return f"{info['path']} ({info['format']})"
    return "; ".join(f"{s['path']} ({s['format']}, {s['images']} images, x{r})"
                     for s, r in zip(info["sources"], dc.repeat_counts))


WORLDS: dict[str, World] = {w.name: w for w in (ShapesWorld(), EmojiWorld(), FilesWorld())}


def get_world(name: str) -> World:
    if name not in WORLDS:
        raise ValueError(f"data.world={name!r}: choose {', '.join(WORLDS)}")
    return WORLDS[name]
