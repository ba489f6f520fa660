"""Training runs from named presets: data preparation (rendered images, cached text states) and the loop."""

from __future__ import annotations

import dataclasses
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig, DiffusionConfig, RunConfig, SampleConfig, TrainConfig, apply_overrides
from ..data.shapes import benchmark_prompts
from ..eval.sheets import contact_sheet
from ..models.presets import get_preset
from ..pipeline import Stage
from ..utils import atomic_path, center_crop_resize
from .loop import TrainData, Trainer, write_recipe

RUN_PRESETS: dict[str, RunConfig] = {
    "shapes32": RunConfig(
        name="shapes32", unet=get_preset("shapes32-I"),
        diffusion=DiffusionConfig(min_snr_gamma=5.0),
        sample=SampleConfig(sampler="ddpm", num_steps="smart27", guidance_scale=3.0, dyn_thresh_max=1.5),
        data=DataConfig(world="shapes", image_size=32, num_images=60000, seed=0, text_max_length=32),
        train=TrainConfig(lr=3e-4, batch_size=64, max_steps=20000, warmup_steps=200, ema_decay=0.999,
                          ckpt_every=250, val_every=250),
    ),
    "shapes64-sr": RunConfig(
        # v-prediction: an eps model cannot express x0 at the first sampling step (SNR ~1e-9 at t=999), and the
        # colour error of that step survived the whole chain as a tint (README, "Stage II")
        name="shapes64-sr", unet=get_preset("shapes64-II"),
        diffusion=DiffusionConfig(prediction="v"),
        sample=SampleConfig(sampler="ddpm", num_steps="smart27", guidance_scale=1.0, dyn_thresh_max=1.0,
                            aug_level=0.25),
        data=DataConfig(world="shapes", image_size=64, num_images=30000, seed=1, text_max_length=32,
                        low_res_size=32),
        train=TrainConfig(lr=3e-4, batch_size=32, max_steps=6000, warmup_steps=200, ema_decay=0.999,
                          ckpt_every=250, val_every=250),
    ),
    "shapes128-sr": RunConfig(
        name="shapes128-sr", unet=get_preset("shapes128-III"), diffusion=DiffusionConfig(),
        sample=SampleConfig(sampler="ddpm", num_steps="smart27", guidance_scale=1.0, dyn_thresh_max=1.0,
                            aug_level=0.25),
        data=DataConfig(world="shapes", image_size=128, num_images=20000, seed=2, text_max_length=32,
                        low_res_size=64),
        train=TrainConfig(lr=3e-4, batch_size=16, max_steps=6000, warmup_steps=200, ema_decay=0.999,
                          ckpt_every=250, val_every=250),
    ),
    # the emoji cascade: stage I at 64 px, stage II 64 -> 128, MiniLM text, the curated emoji set
    "emoji64": RunConfig(
        name="emoji64", unet=get_preset("emoji64-I"), diffusion=DiffusionConfig(min_snr_gamma=5.0),
        sample=SampleConfig(sampler="ddpm", num_steps="smart50", guidance_scale=4.0, dyn_thresh_max=1.5),
        data=DataConfig(world="emoji", image_size=64, num_images=0, seed=0, text_max_length=24),
        train=TrainConfig(lr=2e-4, batch_size=32, max_steps=30000, warmup_steps=500, ckpt_every=250,
                          val_every=250, sample_steps="smart27", sample_guidance=4.0),
    ),
    "emoji128-sr": RunConfig(
        # v-prediction: an eps super-resolution model cannot express x0 at the first step (SNR ~1e-9), and
        # the colour error of that step survives the chain (the shapes stage II tint, README)
        name="emoji128-sr", unet=get_preset("emoji128-II"), diffusion=DiffusionConfig(prediction="v"),
        sample=SampleConfig(sampler="ddpm", num_steps="smart27", guidance_scale=2.0, dyn_thresh_max=1.0,
                            aug_level=0.25),
        data=DataConfig(world="emoji", image_size=128, num_images=0, seed=0, text_max_length=24, low_res_size=64),
        train=TrainConfig(lr=2e-4, batch_size=16, max_steps=15000, warmup_steps=500, ckpt_every=250,
                          val_every=250),
    ),
    "tiny": RunConfig(
        name="tiny", unet=dataclasses.replace(get_preset("tiny"), image_size=32, encoder_dim=384, encoder_channels=32),
        sample=SampleConfig(num_steps="4", guidance_scale=2.0),
        data=DataConfig(world="shapes", image_size=32, num_images=64, seed=0, text_max_length=16),
        train=TrainConfig(batch_size=8, max_steps=4, warmup_steps=2, ckpt_every=2, val_every=2, log_every=1),
    ),
}


# your own data (data.path=DATASET): the emoji cascade's two stages (64 px, 64 -> 128) and training settings
for _emoji, _files in (("emoji64", "files64"), ("emoji128-sr", "files128-sr")):
    _p = RUN_PRESETS[_emoji]
    RUN_PRESETS[_files] = dataclasses.replace(_p, name=_files, data=dataclasses.replace(
        _p.data, world="files", text_max_length=32))


def get_run_preset(name: str, overrides: list[str] | None = None) -> RunConfig:
    """A preset plus dotted overrides. With ``train.init_from=`` an IF model folder (the released weights, in the
    official or the diffusers layout), the run takes that UNet's config, IF's diffusion (eps with learned-range
    variance), the folder's size as ``data.image_size`` and the pipeline folder's own T5 when it carries one
    (``text_encoder/``, 77 tokens); overrides of those fields still win."""
    if name not in RUN_PRESETS:
        raise KeyError(f"unknown training preset {name!r}; known: {', '.join(RUN_PRESETS)}")
    overrides = overrides or []
    cfg = apply_overrides(RUN_PRESETS[name], overrides)
    src = Path(cfg.train.init_from).expanduser() if cfg.train.init_from else None
    if src is None or not src.is_dir():
        return cfg
    from ..config import ConfigError
    from ..convert import CheckpointError, unet_config_of
    from ..text.encoder import carries_text_encoder, is_t5
    try:
        unet = unet_config_of(src)
    except CheckpointError as e:
        raise ConfigError(f"train.init_from={src}: {e}") from None
    given = {o.split("=", 1)[0].strip() for o in overrides}
    adopted = dataclasses.replace(
        cfg, unet=unet, diffusion=dataclasses.replace(cfg.diffusion, prediction="eps", learned_variance=True),
        data=dataclasses.replace(cfg.data, image_size=unet.image_size))
    pipeline = src.parent if src.name == "unet" else src
    if "text_encoder" not in given and carries_text_encoder(pipeline):
        adopted = dataclasses.replace(adopted, text_encoder=str(pipeline))
    if is_t5(adopted.text_encoder):
        adopted = dataclasses.replace(adopted, data=dataclasses.replace(adopted.data, text_max_length=77))
    # the user's own unet.*, diffusion.*, data.* and text_encoder overrides, on top
    mine = [o for o in overrides if o.split("=", 1)[0].strip().split(".")[0] in ("unet", "diffusion", "data",
                                                                               "text_encoder")]
    return apply_overrides(adopted, mine)


def default_cache_dir() -> Path:
    return Path(os.environ.get("PIXELCASCADE_CACHE", Path.home() / ".cache" / "pixelcascade"))


def _shapes_key(dc: DataConfig) -> str:
    """The cache name of a shapes dataset: size, count, seed and (when not the defaults) the task mix and the
    template share."""
    from ..data.shapes import TASK_WEIGHTS, parse_task_weights
    weights = parse_task_weights(dc.task_weights)
    mix = "" if weights == TASK_WEIGHTS else "-w" + "_".join(f"{k}{v:g}" for k, v in weights.items()
                                                             if v != TASK_WEIGHTS[k])
    tmpl = "" if dc.template_share == DataConfig.template_share else f"-t{dc.template_share:g}"
    return f"shapes{dc.image_size}-n{dc.num_images}-seed{dc.seed}{mix}{tmpl}"


def shapes_images(dc: DataConfig, cache: Path, progress: bool = True) -> tuple[np.ndarray, list[str]]:
    """Rendered shapes-world images + captions, cached on disk (a pure function of the data config)."""
    from ..data.shapes import make_dataset, parse_task_weights
    weights = parse_task_weights(dc.task_weights)
    path = cache / "data" / f"{_shapes_key(dc)}.npz"
    if path.exists():
        z = np.load(path, allow_pickle=False)
        return z["images"], [str(c) for c in z["captions"]]
    images, captions = make_dataset(dc.num_images, dc.image_size, dc.seed, progress=progress, weights=weights,
                                    template_share=dc.template_share)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, images=images, captions=np.array(captions))
    return images, captions


def shapes_low_res_pairs(dc: DataConfig, cache: Path, progress: bool = True) -> np.ndarray:
    """Each training scene of :func:`shapes_images` rendered in the ``low_res_size`` world (uint8), cached."""
    from ..data.shapes import make_dataset, parse_task_weights
    weights = parse_task_weights(dc.task_weights)
    path = cache / "data" / f"{_shapes_key(dc)}-low{dc.low_res_size}.npz"
    if path.exists():
        return np.load(path, allow_pickle=False)["low"]
    _, _, low = make_dataset(dc.num_images, dc.image_size, dc.seed, progress=progress, weights=weights,
                             low_res_size=dc.low_res_size, template_share=dc.template_share)
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

    from ..data.curate import CurateConfig, curate
    from ..data.emoji import build_emoji_dataset, heldout
    from ..data.formats import read_records
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


class DatasetError(RuntimeError):
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


def files_images(dc: DataConfig, cache: Path, progress: bool = True):
    """Your dataset (``data.path``, any format of :mod:`pixelcascade.data.formats`) for training: decoded once,
    centre-cropped and resized to ``dc.image_size``, into a uint8 file in the cache that training reads memory-
    mapped (so RAM holds the batches, not the dataset). Returns (images [N, S, S, 3] memmap, captions [N],
    held-out indices, training indices, info). Records that cannot be decoded, truncated shards and records
    without a caption are skipped and counted in ``info``; ``dc.seed`` picks the held-out images (5%, 1 to
    512)."""
    import hashlib
    import json

    from ..data.formats import DataFormatError, ReadStats, detect_format, read_records
    if not dc.path:
        raise DatasetError("data.world=files trains on your own data: name it with data.path=DATASET (a folder of "
                           "images with .txt captions or a manifest.csv, parquet, or webdataset .tar shards)")
    src = Path(dc.path).expanduser()
    try:
        fmt = detect_format(src)
    except DataFormatError as e:
        raise DatasetError(f"data.path: {e}; give a folder of images with .txt captions or a manifest.csv, a "
                           "parquet file or folder, or webdataset .tar shards") from None
    root = cache / "data" / f"files-{_listing_key(src)}-{dc.image_size}"
    info_path = root / "info.json"
    if not info_path.is_file():
        root.mkdir(parents=True, exist_ok=True)
        stats, captions, no_caption = ReadStats(), [], 0
        digest = hashlib.sha256()
        it = read_records(src, stats)
        if progress:
            from tqdm import tqdm
            it = tqdm(it, desc=f"reading {src.name} ({fmt})", unit="img")
        with atomic_path(root / "images.u8") as tmp, open(tmp, "wb") as f:
            for rec in it:
                caption = rec.caption.strip()
                if not caption:
                    no_caption += 1
                    continue
                try:
                    img = center_crop_resize(rec.decode(), dc.image_size)
                except ValueError as e:
                    stats.note("corrupt_images", rec.source or rec.key, str(e))
                    continue
                f.write(img.tobytes())
                digest.update(img.tobytes())
                digest.update(caption.encode() + b"\0")
                captions.append(caption)
        info = {"path": str(src.resolve()), "format": fmt, "images": len(captions), "image_size": dc.image_size,
                "skipped_no_caption": no_caption, "read": stats.as_dict(), "sha256": digest.hexdigest()}
        with atomic_path(root / "captions.json") as tmp:
            Path(tmp).write_text(json.dumps(captions))
        with atomic_path(info_path) as tmp:  # written last: the cache is complete
            Path(tmp).write_text(json.dumps(info, indent=1))
    info = json.loads(info_path.read_text())
    captions = json.loads((root / "captions.json").read_text())
    n = info["images"]
    skipped = (f"{info['read']['corrupt_images']} corrupt images, {info['read']['truncated_shards']} truncated "
               f"shards, {info['skipped_no_caption']} records without a caption skipped")
    if n < 2:
        raise DatasetError(f"data.path={dc.path}: {n} usable image-caption records ({skipped}); training needs at "
                           "least 2 (one is held out for validation)")
    n_val = min(512, max(1, n // 20))
    order = np.random.default_rng(dc.seed).permutation(n)
    images = np.memmap(root / "images.u8", dtype=np.uint8, mode="r", shape=(n, dc.image_size, dc.image_size, 3))
    info["skipped"] = skipped
    return images, captions, np.sort(order[:n_val]), np.sort(order[n_val:]), info


def build_multi_caption_data(images: np.ndarray, caps: list[list[str]], encoder, cache: Path,
                             progress: bool = True) -> TrainData:
    """One example per (image, caption) pair: captions drawn in proportion to how often they are listed."""
    from ..text.encoder import EmbeddingCache
    flat = sorted({c for cs in caps for c in cs}) + [""]
    emb = EmbeddingCache(cache / "text", encoder).get_many(flat, progress=progress)
    row = {c: i for i, c in enumerate(flat)}
    table = torch.from_numpy(np.stack([emb[c] for c in flat]))
    image_idx = np.array([i for i, cs in enumerate(caps) for _ in cs])
    caption_idx = np.array([row[c] for cs in caps for c in cs])
    return TrainData(images=images, caption_idx=caption_idx, text_table=table, null_idx=row[""],
                     captions=[c for cs in caps for c in cs], image_idx=image_idx)


def build_train_data(images: np.ndarray, captions: list[str], encoder, cache: Path, progress: bool = True,
                     image_idx: np.ndarray | None = None) -> TrainData:
    """One example per caption; example i is image i, or image ``image_idx[i]`` (rows of an image array shared
    by the training and held-out sets, as data.world=files's memory-mapped one)."""
    from ..text.encoder import EmbeddingCache
    emb = EmbeddingCache(cache / "text", encoder).get_many(captions + [""], progress=progress)
    names = list(emb)
    row = {c: i for i, c in enumerate(names)}
    table = torch.from_numpy(np.stack([emb[c] for c in names]))  # fp16 [U, L, D]
    return TrainData(images=images, caption_idx=np.array([row[c] for c in captions]), text_table=table,
                     null_idx=row[""], captions=captions, image_idx=image_idx)


def prepare_data(cfg: RunConfig, cache: Path | None = None, progress: bool = True):
    """Everything a run reads before its first step, built and cached: the images, the caption states, the
    validation set. Returns (data, val, recipe, encoder). Runs that share data (the two stages of a cascade
    started together) call it once first, so that they do not build the same cache at the same time."""
    from ..text.encoder import load_encoder
    cache = cache or default_cache_dir()
    # captions are encoded once (then cached) on the training device
    from .loop import resolve_device
    enc_device = resolve_device(cfg.train.device)
    encoder = load_encoder(cfg.text_encoder, cfg.data.text_max_length,
                           device=str(enc_device) if enc_device.type == "cuda" else "cpu")
    if encoder.dim != cfg.unet.encoder_dim:
        from .loop import ConfigMismatch
        hint = (" (IF's UNets read T5-v1.1-XXL: text_encoder=/path/to/t5-v1_1-xxl)" if cfg.unet.encoder_dim == 4096
                else "")
        raise ConfigMismatch(f"the text encoder {encoder.name} gives {encoder.dim}-d states and this UNet reads "
                             f"{cfg.unet.encoder_dim}-d ones: set text_encoder= an encoder of that width{hint}, or "
                             f"unet.encoder_dim={encoder.dim} for a new run")
    if cfg.data.world == "emoji":
        images, caps = emoji_images(cfg.data, cache, progress)
        val_images, val_caps = emoji_images(cfg.data, cache, progress, split="heldout")
        data = build_multi_caption_data(images, caps, encoder, cache, progress)
        val = build_multi_caption_data(val_images, val_caps, encoder, cache, progress)
        recipe = (f"emoji: Noto Color Emoji rendered at 128 px (pixelcascade data emoji, seed {cfg.data.seed}), "
                  f"curated (pixelcascade curate, defaults), resized to {cfg.data.image_size} px; {len(images)} "
                  f"training emoji, names in 14 languages; validation on the {len(val_images)} held-out emoji; "
                  f"training seed {cfg.train.seed}")
    elif cfg.data.world == "files":
        images, captions, val_rows, train_rows, info = files_images(cfg.data, cache, progress)
        data = build_train_data(images, [captions[i] for i in train_rows], encoder, cache, progress, train_rows)
        val = build_train_data(images, [captions[i] for i in val_rows], encoder, cache, progress, val_rows)
        recipe = (f"files: {info['path']} ({info['format']}), {info['images']} image-caption records "
                  f"({info['skipped']}; content sha256 {info['sha256'][:16]}), centre-cropped and resized to "
                  f"{cfg.data.image_size} px; {len(train_rows)} training, {len(val_rows)} held out for validation "
                  f"(data.seed {cfg.data.seed}); training seed {cfg.train.seed}")
    elif cfg.data.world == "shapes":
        images, captions = shapes_images(cfg.data, cache, progress)
        n_val = max(1, min(512, len(images) // 20))
        # validation keeps the default task mix and wording, so runs with other mixes compare on the same images
        val_dc = dataclasses.replace(cfg.data, num_images=n_val, seed=cfg.data.seed + 10_000, task_weights="",
                                     template_share=DataConfig.template_share)
        val_images, val_captions = shapes_images(val_dc, cache, progress)
        data = build_train_data(images, captions, encoder, cache, progress)
        val = build_train_data(val_images, val_captions, encoder, cache, progress)
        paired = cfg.data.paired_low_res > 0 and cfg.unet.super_res
        if paired:  # validation keeps the down-sampled inputs
            data.low_images = shapes_low_res_pairs(cfg.data, cache, progress)
        recipe = (f"shapes world {cfg.data.image_size}px, {cfg.data.num_images} images rendered with seed "
                  f"{cfg.data.seed} (pixelcascade.data.shapes.make_dataset"
                  + (f", task mix {cfg.data.task_weights}" if cfg.data.task_weights else "")
                  + (f", template share {cfg.data.template_share:g}"
                     if cfg.data.template_share != DataConfig.template_share else "")
                  + (f"; {cfg.data.paired_low_res:g} of the low-res inputs are the scene's own "
                     f"{cfg.data.low_res_size}-px render" if paired else "")
                  + f"), training seed {cfg.train.seed}")
    else:
        raise ValueError(f"data.world={cfg.data.world!r}: choose shapes or emoji")
    if cfg.train.init_from:
        recipe += f"; fine-tuned from {Path(cfg.train.init_from).name} (sha256 {_sha256(cfg.train.init_from)[:16]})"
    return data, val, recipe, encoder


def train(cfg: RunConfig, out_dir: str | Path, *, cache: Path | None = None, progress: bool = True,
          max_steps: int | None = None, time_limit_s: float | None = None, command: str = "",
          grids: bool = True) -> Trainer:
    out_dir = Path(out_dir)
    data, val, recipe, encoder = prepare_data(cfg, cache, progress)
    meta = {"text_encoder": cfg.text_encoder, "text_max_length": cfg.data.text_max_length,
            "encoder_name": encoder.name, "command": command, "data_recipe": recipe, "world": cfg.data.world}
    sample_fn = _grid_fn(encoder) if grids else None
    trainer = Trainer(cfg, data, out_dir, val, progress=progress, sample_fn=sample_fn, meta=meta)
    write_recipe(out_dir, cfg, command)
    if cfg.train.bf16 and not trainer.bf16:
        why = "no avx512_bf16 / amx_bf16 flag" if trainer.device.type == "cpu" else "torch says it lacks bf16"
        print(f"note: training in fp32: this {trainer.device.type} has no native bf16 ({why}), where bf16 "
              "autocast would be emulated and 2-4x slower. A run may resume on either kind of machine",
              file=sys.stderr)
    trainer.fit(max_steps=max_steps, time_limit_s=time_limit_s)
    return trainer


def _sha256(path: str | Path) -> str:
    import hashlib
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return "missing"
    return h.hexdigest()


def _grid_fn(encoder):
    """At each checkpoint: the EMA model on 16 benchmark prompts, saved as a captioned grid."""
    def fn(trainer: Trainer, path: Path) -> None:
        cfg = trainer.cfg
        if cfg.unet.super_res:
            return
        if cfg.data.world == "emoji":
            texts = ["grinning face", "red heart", "thumbs up", "cat", "rocket", "pizza", "sun", "tree"] * 2
        elif cfg.data.world == "files":  # the held-out captions (validation images), first 8, twice
            texts = (trainer.val.captions[:8] * 2)[:16]
        else:
            prompts = random.Random(0).sample(benchmark_prompts(cfg.data.image_size, 64, 0), 16)
            texts = [p.text for p in prompts]
        emb, _ = encoder(texts)
        unc, _ = encoder.empty(len(texts))
        stage = Stage(unet=trainer.ema.model, diffusion=cfg.diffusion, settings=cfg.sample)
        imgs = stage.sample(emb, unc, list(range(len(texts))))
        contact_sheet(imgs, texts, path, scale=3)
    return fn


def export_weights(run_dir: str | Path, dest: str | Path, dtype: torch.dtype = torch.float16,
                   sample_overrides: list[str] | None = None) -> Path:
    """Ship a run's final EMA: ``ema.safetensors`` cast to ``dtype`` (fp16 halves the size), metadata kept.

    Loading casts back to the requested dtype (fp32 by default), so shipping fp16 costs < 1e-3 in outputs.
    ``sample_overrides`` (``["guidance_scale=4", "num_steps=smart50"]``) set the default sampling settings.
    ``run_dir`` may also be an exported file: it is rewritten with the new settings (``dest`` may be itself).
    """
    import json

    from ..config import from_dict, to_json
    from ..convert import read_tensors, write_safetensors
    src = Path(run_dir) if Path(run_dir).is_file() else Path(run_dir) / "ema.safetensors"
    tensors, meta = read_tensors(src)
    meta = dict(meta, shipped_dtype=str(dtype).replace("torch.", ""), source=meta.get("source", str(src.name)))
    if sample_overrides:
        sample = from_dict(SampleConfig, json.loads(meta["sample_config"]))
        meta["sample_config"] = to_json(apply_overrides(sample, sample_overrides))
    write_safetensors(dest, {k: v.to(dtype) for k, v in tensors.items()}, meta)
    return Path(dest)
