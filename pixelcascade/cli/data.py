"""Making datasets: data emoji / emoji-features / encode / shapes-shards, and curate."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import UserError, check_writable, device_arg
from .flags import (
    at_least_1,
    finite,
    fraction,
    non_negative,
    seed,
    threads,
    whole,
)


def add_commands(sub) -> None:
    d = sub.add_parser("data", help="make datasets")
    dsub = d.add_subparsers(dest="dataset", required=True)
    de = dsub.add_parser("emoji", help="render every emoji of Noto Color Emoji -> webdataset shards + manifest",
                         description="Every fully-qualified emoji the font draws (blank glyphs dropped and counted), "
                                     "captioned with its English name; aliases and its names in 13 other "
                                     "languages go into the metadata. A seeded 5% of the emoji are held out.",
                         epilog="example: pixelcascade data emoji -o data/emoji128 --size 128")
    de.add_argument("-o", "--output", required=True)
    de.add_argument("--size", type=at_least_1, default=128)
    de.add_argument("--font", help="NotoColorEmoji.ttf (default: the Debian package's, or setup.sh's copy)")
    de.add_argument("--per-shard", type=at_least_1, default=1000)
    de.add_argument("--heldout", type=fraction, default=0.05, help="fraction of emoji whose captions are held out")
    de.add_argument("--seed", type=seed, default=0)
    de.add_argument("--basic-layout", action="store_true",
                    help="draw without text shaping, for a Pillow without libraqm/FriBiDi: keeps only the "
                         "single-code-point emoji (about 40%%)")
    de.add_argument("-q", "--quiet", action="store_true")
    de.set_defaults(fn=cmd_data_emoji)

    df = dsub.add_parser("emoji-features", help="train the emoji feature extractor (FID/KID and retrieval for "
                                                "emoji models, offline)",
                         description="A small conv net trained to tell every emoji picture apart under shifts, "
                                     "rescaling, blur, noise and colour drift. Its features give FID/KID and its "
                                     "embedding a retrieval accuracy for emoji models; not comparable with "
                                     "Inception numbers.",
                         epilog="example: pixelcascade data emoji-features -o weights/emoji_features.safetensors")
    df.add_argument("-o", "--output", required=True)
    df.add_argument("--steps", type=at_least_1, default=3000)
    df.add_argument("--seed", type=seed, default=0)
    df.add_argument("--threads", type=threads, default=0)
    df.add_argument("--device", default="cpu", help="where the net trains: cpu, cuda, auto (batches are drawn on "
                                                    "the CPU either way)")
    df.add_argument("-q", "--quiet", action="store_true")
    df.set_defaults(fn=cmd_data_emoji_features)

    dn = dsub.add_parser("encode", help="compute every caption's text states once (T5 or any encoder) -> shards",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Encodes the caption of every record of webdataset shards with the text "
                                     "encoder and writes one states shard per image shard (bf16, the real tokens "
                                     "only, keyed by the record's key), which `train ... data.text_states=STATES` "
                                     "reads in the stream instead of running the encoder. Shards already encoded "
                                     "are skipped, so a stopped run resumes; under torchrun each process takes "
                                     "its share of the shards.",
                         epilog="examples:\n"
                                "  pixelcascade data encode data/shards -o data/states --text-encoder "
                                "/models/t5-v1_1-xxl --device cuda\n"
                                "  torchrun --nproc_per_node 8 -m pixelcascade.cli data encode 'data/*.tar' -o "
                                "data/states --text-encoder /models/t5-v1_1-xxl --device cuda\n"
                                "  pixelcascade train files64 -o runs/mine data.path=data/shards "
                                "data.text_states=data/states")
    dn.add_argument("dataset", help="webdataset shards: a .tar, a folder of them, or a glob ('data/*.tar')")
    dn.add_argument("-o", "--output", required=True, help="folder for the states shards")
    dn.add_argument("--text-encoder", default="minilm",
                    help="minilm (the offline default) or a local folder (T5: IF's 77-token window)")
    dn.add_argument("--max-length", type=whole, default=0,
                    help="the encoder's window in tokens (default: 77 for T5, 32 otherwise; the run's "
                         "data.text_max_length must match)")
    dn.add_argument("--batch-size", type=at_least_1, default=64)
    dn.add_argument("--device", default="cpu", help="cpu, cuda or auto; under torchrun, cuda means each process's GPU")
    dn.add_argument("-q", "--quiet", action="store_true")
    dn.set_defaults(fn=cmd_data_encode)

    dz = dsub.add_parser("shapes-shards", help="a synthetic dataset of any size: shapes scenes as webdataset shards",
                         description="Shapes-world scenes with varied captions, PNG + .txt + .json per record, in "
                                     "shards rendered from (seed, shard) alone: streaming, encoding and curation at "
                                     "scale, measurable offline. Shards already there are kept.",
                         epilog="example: pixelcascade data shapes-shards -o data/shapes200k --num 200000 --size 64")
    dz.add_argument("-o", "--output", required=True)
    dz.add_argument("--num", type=at_least_1, required=True, help="number of scenes")
    dz.add_argument("--size", type=at_least_1, default=64, help="image size in px (32 or more)")
    dz.add_argument("--per-shard", type=at_least_1, default=1000)
    dz.add_argument("--seed", type=seed, default=0)
    dz.add_argument("--workers", type=at_least_1, default=1, help="processes rendering shards")
    dz.add_argument("-q", "--quiet", action="store_true")
    dz.set_defaults(fn=cmd_data_shapes_shards)

    cu = sub.add_parser("curate", help="remove exact and near duplicates, filter by size / aspect / aesthetics",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="One streaming pass per shard (decode, pixel hash, perceptual hash, thumbnail, "
                                    "score), a global duplicate search (faiss: pHash radius + thumbnail kNN, each "
                                    "candidate verified by aligned block differences), then the kept data as "
                                    "webdataset shards and report.json, clusters.png (and scores.png, the "
                                    "histogram of the aesthetic scores, when there are any). INPUT: a folder of "
                                    "images with .txt captions or a manifest, parquet, or webdataset shards.",
                        epilog="examples:\n  pixelcascade curate data/emoji128 -o data/emoji128-curated\n"
                               "  pixelcascade curate laion/ -o laion-clean --aesthetic-threshold 4.5 --workers 16\n"
                               "  pixelcascade curate s3shards/ -o out --ray auto")
    cu.add_argument("input")
    cu.add_argument("-o", "--output", required=True, help="a new or empty folder: shards in data/, report.json")
    cu.add_argument("--overwrite", action="store_true", help="replace an earlier curate's output in -o")
    cu.add_argument("--caption-column", default="",
                    help="the column of a manifest.csv / metadata.jsonl / metadata.csv / parquet that holds the "
                         "captions (default: the first of caption, text, txt, prompt)")
    cu.add_argument("--keep", choices=("best", "first"), default="best",
                    help="which record of a duplicate cluster is written (the others' captions go into its "
                         "dup_captions): best = highest aesthetic score, then captioned, then the largest image, then "
                         "a lossless file (PNG) over a JPEG, then the largest file (the least compressed copy), then "
                         "the first; first = the first in the input's order (when the originals come before their "
                         "copies)")
    cu.add_argument("--near-threshold", type=non_negative, default=6.5,
                    help="largest aligned 8x8-block difference (0-255) of a near duplicate; 0 = exact only")
    cu.add_argument("--phash-radius", type=whole, default=10, help="candidate pairs: pHash Hamming radius")
    cu.add_argument("--knn", type=whole, default=8, help="candidate pairs: nearest thumbnails per image")
    cu.add_argument("--index", choices=("auto", "exact", "hnsw", "ivf"), default="auto",
                    help="nearest-neighbour search: exact (quadratic), ivf (exact within k-means cells, linear) or "
                         "hnsw (a graph); auto: exact below 20,000 images, ivf above")
    cu.add_argument("--compare-size", type=at_least_1, default=128, help="side of the thumbnails compared, px")
    cu.add_argument("--max-shift", type=whole, default=3, help="alignment search, px at --compare-size")
    cu.add_argument("--min-size", type=whole, default=0, help="drop images with a shorter side below this")
    cu.add_argument("--max-aspect", type=non_negative, default=0.0, help="drop images more elongated than this")
    cu.add_argument("--aesthetic-threshold", type=finite, help="keep images scoring at least this (IF: 4.5)")
    cu.add_argument("--aesthetic-model", help="scorer folder (clip/ + mlp.safetensors) when the data has no score")
    cu.add_argument("--workers", type=at_least_1, default=1, help="local processes for the per-shard work")
    cu.add_argument("--ray", help="a Ray cluster address (or 'auto'): the per-shard work as Ray tasks")
    cu.add_argument("--per-shard", type=at_least_1, default=1000, help="records per output shard")
    cu.add_argument("-q", "--quiet", action="store_true")
    cu.set_defaults(fn=cmd_curate)


def cmd_data_encode(a) -> int:
    from ..data.formats import DataFormatError
    from ..data.shard_index import index_dataset
    from ..data.text_states import encode_dataset
    from ..text.encoder import TextEncoderError, is_t5, load_encoder
    from ..utils import barrier, default_cache_dir, dist_info, resolve_device
    check_writable(Path(a.output))
    if a.batch_size < 1 or a.max_length < 0:
        raise UserError("--batch-size must be >= 1 and --max-length >= 0")
    rank, world = dist_info()
    try:
        device = str(resolve_device(a.device, rank))
        index = index_dataset(a.dataset, default_cache_dir(), progress=not a.quiet and rank == 0)
        length = a.max_length or (77 if is_t5(a.text_encoder) else 32)
        encoder = load_encoder(a.text_encoder, length, device=device)
    except (DataFormatError, TextEncoderError, RuntimeError) as e:
        raise UserError(str(e)) from None
    r = encode_dataset(index, a.output, encoder, a.text_encoder, batch_size=a.batch_size, rank=rank, world=world,
                       progress=not a.quiet)
    barrier()
    if rank == 0:
        print(f"states of {len(index)} records in {len(index.shards)} shards -> {a.output} ({r['encoded']} shards "
              f"encoded by this process, {r['skipped']} already there); train with data.text_states={a.output} "
              f"text_encoder={a.text_encoder} data.text_max_length={length}")
    return 0


def cmd_data_shapes_shards(a) -> int:
    from ..data.synthetic import write_shapes_shards
    if a.num < 1 or a.per_shard < 1 or a.size < 32:
        raise UserError("--num and --per-shard must be >= 1 and --size >= 32 (the shapes world's smallest size)")
    check_writable(Path(a.output))
    shards = write_shapes_shards(a.output, a.num, a.size, a.per_shard, a.seed, a.workers, progress=not a.quiet)
    print(f"{a.num} scenes in {len(shards)} shards -> {a.output}")
    return 0


def cmd_data_emoji(a) -> int:
    from ..data.emoji import EmojiError, build_emoji_dataset
    check_writable(Path(a.output))
    try:
        r = build_emoji_dataset(a.output, size=a.size, font=a.font, per_shard=a.per_shard,
                                heldout_fraction=a.heldout, seed=a.seed, progress=not a.quiet,
                                basic_layout=a.basic_layout)
    except EmojiError as e:
        raise UserError(str(e)) from None
    print(json.dumps(r, indent=2, ensure_ascii=False))
    return 0


def cmd_data_emoji_features(a) -> int:
    from ..data.emoji import EmojiError
    from ..eval.emoji import reference_emoji
    from ..training.emoji_features import check_feature_steps, train_emoji_features
    check_writable(Path(a.output))
    try:  # before the data loads
        check_feature_steps(a.steps)
    except ValueError as e:
        raise UserError(f"--steps: {e}") from None
    device = device_arg(a.device)
    if a.threads:
        import torch
        torch.set_num_threads(a.threads)
    try:
        images, tr_caps, ho_caps = reference_emoji(progress=not a.quiet)
    except EmojiError as e:
        raise UserError(str(e)) from None
    r = train_emoji_features(images, [c[0] for c in tr_caps] + [c[0] for c in ho_caps],
                             a.output, steps=a.steps, seed=a.seed, progress=not a.quiet, device=device)
    print(json.dumps(r, indent=2))
    return 0


def cmd_curate(a) -> int:
    from ..data.curate import CurateConfig, CurateError, curate
    from ..data.formats import DataFormatError
    check_writable(Path(a.output))
    cfg = CurateConfig(phash_radius=a.phash_radius, knn=a.knn, index=a.index, near_threshold=a.near_threshold,
                       compare_size=a.compare_size, max_shift=a.max_shift, min_size=a.min_size,
                       max_aspect=a.max_aspect, aesthetic_threshold=a.aesthetic_threshold,
                       aesthetic_model=a.aesthetic_model, workers=a.workers, ray_address=a.ray,
                       per_shard=a.per_shard, caption_column=a.caption_column, keep=a.keep)
    try:
        r = curate(a.input, a.output, cfg, progress=not a.quiet, overwrite=a.overwrite)
    except (CurateError, DataFormatError) as e:
        raise UserError(str(e)) from None
    rd = r["read"]
    uncaptioned = rd["missing_captions"] + rd["empty_captions"]
    print(f"{r['images']} images read ({rd['corrupt_images']} corrupt, {rd['truncated_shards']} truncated shards, "
          f"{rd['unreadable_files']} unreadable files skipped; {uncaptioned} without a caption, which training "
          f"refuses unless data.skip_uncaptioned=true); {r['exact_duplicates']} exact duplicates, "
          f"{r['near_duplicate_pairs']} near-duplicate pairs in {r['duplicate_clusters']} clusters (kept the "
          f"{'first in the input of each' if a.keep == 'first' else 'best of each: --keep'}; report.json lists them); "
          f"dropped by filters: {r['dropped_by_filter'] or 'none'}; kept {r['kept']}")
    if uncaptioned:
        from ..data.formats import CAPTION_SOURCES
        print(f"warning: {uncaptioned} of {r['images']} images have no caption; captions are read from "
              f"{CAPTION_SOURCES}")
    for v in r["valley_check"]:
        print(f"warning: caption {v['caption']!r} is one image repeated {v['count']} times ({v['share']:.2%})")
    print(f"data: {Path(a.output) / 'data'}  report: {Path(a.output) / 'report.json'}")
    return 0
