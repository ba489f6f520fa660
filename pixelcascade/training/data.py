"""Training examples in memory: a world's images with a table of their captions' text states (computed once,
cached on disk), as batches the Trainer draws by index."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import RunConfig
from ..data.augment import flippable
from ..data.buckets import BucketedImages, bucket_shapes
from ..data.stream import StreamSpec, read_records_by_id, stream_loader
from ..data.text_states import StatesReader, check_states, read_meta, unpack
from ..data.worlds import DatasetError, WorldSplit, files_stream, get_world, streams
from ..errors import PixelcascadeError
from ..text.encoder import EmbeddingCache, load_encoder
from ..utils import default_cache_dir, resolve_device, sha256_file


@dataclass
class TrainData:
    """Images in [-1, 1] as uint8 [N, H, W, 3] plus per-image text states (indices into a caption table)."""

    images: np.ndarray  # uint8 [N, H, W, 3]
    caption_idx: np.ndarray  # int [N]
    text_table: torch.Tensor  # fp16 [U, L, D]
    null_idx: int  # row of the empty caption (classifier-free guidance's unconditional states)
    captions: list[str] | None = None
    # several captions per image (the emoji's names in many languages): example i is image image_idx[i] with
    # caption caption_idx[i]; None: one caption per image, example i is image i
    image_idx: np.ndarray | None = None
    # super-resolution: each image's own low-res render (uint8 [N, h, w, 3]), used for a share
    # (data.paired_low_res) of examples in place of the down-sampled target
    low_images: np.ndarray | None = None
    flippable: np.ndarray | None = None  # bool [N]: examples whose caption names no side (data.flip may mirror them)
    bucketed: BucketedImages | None = None  # data.buckets: the images at their aspect buckets' shapes

    def __len__(self) -> int:
        return len(self.caption_idx)

    def draw(self, g: torch.Generator, b: int) -> torch.Tensor:
        """A step's ``b`` examples, uniformly with replacement; with aspect buckets, all of one bucket (chosen in
        proportion to its examples: the bucket of one uniformly drawn example)."""
        if self.bucketed is None:
            return torch.randint(0, len(self), (b,), generator=g)
        members = self.bucket_members
        first = int(torch.randint(0, len(self), (1,), generator=g))
        bucket = members[int(self.bucketed.bucket_of[self._image_rows(np.array([first]))[0]])]
        return torch.from_numpy(bucket)[torch.randint(0, len(bucket), (b,), generator=g)]

    @functools.cached_property
    def bucket_members(self) -> list[np.ndarray]:
        """Each aspect bucket's examples (indices into this data)."""
        of = self.bucketed.bucket_of[self._image_rows(np.arange(len(self)))]
        return [np.flatnonzero(of == k) for k in range(len(self.bucketed.shapes))]

    def _image_rows(self, idx: np.ndarray) -> np.ndarray:
        return idx if self.image_idx is None else self.image_idx[idx]

    def _pixels(self, images: np.ndarray, idx: torch.Tensor) -> torch.Tensor:
        """The examples' images (of ``images``: the targets or their low-res renders) in [-1, 1], [B, 3, H, W]."""
        rows_img = self._image_rows(idx.numpy())
        if self.bucketed is not None and images is self.images:
            return torch.from_numpy(self.bucketed.gather(rows_img)).permute(0, 3, 1, 2).float() / 127.5 - 1
        return torch.from_numpy(images[rows_img]).permute(0, 3, 1, 2).float() / 127.5 - 1

    def low_res(self, idx: torch.Tensor) -> torch.Tensor:
        """The examples' own low-res renders (``low_images``) in [-1, 1]."""
        return self._pixels(self.low_images, idx)

    def batch(self, idx: torch.Tensor, drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = self._pixels(self.images, idx)  # [B, 3, H, W]
        rows = torch.from_numpy(self.caption_idx[idx.numpy()]).long()
        rows = torch.where(drop, torch.full_like(rows, self.null_idx), rows)
        return x0, self.text_table[rows].float()  # [B, L, D]


def build_train_data(split: WorldSplit, encoder, cache: Path, progress: bool = True) -> TrainData:
    """One example per (image, caption) pair of the split: an image with several captions (the emoji's names in
    many languages) is drawn in proportion to how many it has. Every distinct caption is encoded once (cached)."""
    flat = sorted({c for cs in split.captions for c in cs}) + [""]
    emb = EmbeddingCache(cache / "text", encoder).get_many(flat, progress=progress)
    row = {c: i for i, c in enumerate(flat)}
    table = torch.from_numpy(np.stack([emb[c] for c in flat]))  # fp16 [U, L, D]
    rows = np.arange(len(split.captions)) if split.rows is None else split.rows
    image_idx = np.array([rows[i] for i, cs in enumerate(split.captions) for _ in cs], dtype=np.int64)
    caption_idx = np.array([row[c] for cs in split.captions for c in cs])
    captions = [c for cs in split.captions for c in cs]
    return TrainData(images=split.images, caption_idx=caption_idx, text_table=table, null_idx=row[""],
                     captions=captions, image_idx=image_idx, low_images=split.low_images,
                     flippable=flippable(captions), bucketed=split.bucketed)


class ConfigMismatch(PixelcascadeError, RuntimeError):
    """Resuming a run folder with a config that would train another model, or an encoder the UNet cannot read."""


def run_encoder(cfg: RunConfig, device: str = "cpu"):
    """The run's text encoder, checked against the width the UNet reads."""
    encoder = load_encoder(cfg.text_encoder, cfg.data.text_max_length, device=device)
    if encoder.dim != cfg.unet.encoder_dim:
        hint = (" (IF's UNets read T5-v1.1-XXL: text_encoder=/path/to/t5-v1_1-xxl)" if cfg.unet.encoder_dim == 4096
                else "")
        raise ConfigMismatch(f"the text encoder {encoder.name} gives {encoder.dim}-d states and this UNet reads "
                             f"{cfg.unet.encoder_dim}-d ones: set text_encoder= an encoder of that width{hint}, or "
                             f"unet.encoder_dim={encoder.dim} for a new run")
    return encoder


@dataclass
class StreamData:
    """Training examples streamed from webdataset shards (data.stream): per-step batches from DataLoader workers,
    text states from disk (data.text_states) or from the run's encoder, batch by batch."""

    spec: StreamSpec  # rank, world and first_step are set by :meth:`batches`
    workers: int
    null_states: torch.Tensor  # [L, D]: the empty caption's (classifier-free guidance's dropout)
    encoder: object | None = None  # encodes each batch's captions; None when the states come from disk

    def __len__(self) -> int:
        return len(self.spec.ids)

    @property
    def fingerprint(self) -> str:
        return self.spec.index.fingerprint()

    def batches(self, first_step: int, rank: int = 0, world: int = 1):
        spec = dataclasses.replace(self.spec, first_step=first_step, rank=rank, world=world)
        return stream_loader(spec, self.workers, self.encoder if self._encode_in_workers else None)

    @property
    def _encode_in_workers(self) -> bool:
        """A CPU encoder runs in the DataLoader workers, beside the decoding, so that encoding overlaps the step,
        when the machine has a core for each worker beside the training threads; else (a 2-core machine: a worker
        encoding beside two training threads slowed the step more than the encoding it took over, measured in
        docs/data.md) and for a GPU encoder (a forked worker cannot use CUDA) the training process encodes."""
        if self.encoder is None or self.workers == 0:
            return False
        on_cpu = torch.device(getattr(self.encoder, "device", "cpu")).type == "cpu"
        return on_cpu and len(os.sched_getaffinity(0)) >= torch.get_num_threads() + self.workers

    def text(self, batch: dict, drop: torch.Tensor) -> torch.Tensor:
        """The batch's text states [b, L, D], the dropped rows' replaced by the empty caption's."""
        if "states" in batch:
            states = unpack(batch["states"], batch["state_lengths"], self.spec.text_length)
        elif "encoded" in batch:
            states = batch["encoded"]
        else:
            with torch.no_grad():
                states = self.encoder(batch["captions"], allow_empty=True)[0].float().cpu()
        return torch.where(drop[:, None, None], self.null_states.to(states.dtype), states)


class StoredStates:
    """An encoder stand-in over stored states (the validation captions' and the empty one's, rows of a table): what
    the sample grid of a run trained on ``data.text_states`` encodes with."""

    def __init__(self, table: torch.Tensor, rows: dict[str, int], null_row: int, name: str):
        self.table, self.rows, self.null_row, self.name = table, rows, null_row, name
        self.max_length, self.dim = table.shape[1:]

    def _states(self, rows: list[int]):
        emb = self.table[rows].float()  # [B, L, D]
        return emb, (emb.abs().sum(-1) > 0).long()  # stored states are zero exactly at the padding

    def __call__(self, texts: list[str], allow_empty: bool = False):
        return self._states([self.rows[t] for t in texts])

    def empty(self, n: int = 1):
        return self._states([self.null_row] * n)


def prepare_stream(cfg: RunConfig, cache: Path, progress: bool = True):
    """A streamed world=files run's data: as :func:`prepare_data` returns it."""
    dc = cfg.data
    index, train_ids, val_ids, info = files_stream(dc, cache, progress)
    val_images, val_caps, val_kept = read_records_by_id(index, val_ids, dc.image_size)
    if not val_caps:
        raise DatasetError(f"data.path={dc.path}: none of the {len(val_ids)} held-out records can be decoded")
    if dc.text_states:
        check_states(dc.text_states, index, cfg.text_encoder, cfg.unet.encoder_dim, dc.text_max_length)
        reader = StatesReader(dc.text_states, index, dc.text_max_length)
        rows = {}  # caption -> row of the table (a caption held out twice has one row)
        for c, i in zip(val_caps, val_kept):
            rows.setdefault(c, (len(rows), i))
        states = [reader.get(int(index.records["shard"][i]), index.key(i)) for _, i in rows.values()]
        null = reader.empty()
        reader.close()
        table = torch.stack(states + [null]).half()  # [U + 1, L, D]
        row_of = {c: r for c, (r, _) in rows.items()}
        encoder = StoredStates(table, row_of, len(rows), read_meta(Path(dc.text_states) / "empty.safetensors")
                               ["encoder_name"])
        val = TrainData(images=val_images, caption_idx=np.array([row_of[c] for c in val_caps]), text_table=table,
                        null_idx=len(rows), captions=val_caps)
        stream_encoder = None
    else:
        encoder = run_encoder(cfg, device=_encoder_device(cfg))
        val = build_train_data(WorldSplit(val_images, [[c] for c in val_caps]), encoder, cache, progress)
        null = encoder.empty(1)[0][0].float().cpu()
        stream_encoder = encoder
    spec = StreamSpec(index=index, ids=train_ids, image_size=dc.image_size, batch_size=cfg.train.batch_size,
                      seed=cfg.train.seed, shuffle_buffer=dc.shuffle_buffer, states=dc.text_states or None,
                      text_length=dc.text_max_length)
    data = StreamData(spec, dc.workers, null, stream_encoder)
    recipe = (f"files: {info['path']}, {info['shards']} webdataset shards streamed, {info['images']} records "
              f"({info['skipped']}; shards fingerprint {info['fingerprint']}), centre-cropped and resized to "
              f"{dc.image_size} px; {len(train_ids)} training, {len(val_caps)} held out for validation (data.seed "
              f"{dc.seed}); shuffle window {dc.shuffle_buffer}"
              + (f"; text states from {dc.text_states} (padding zeros)" if dc.text_states else ""))
    prompts = get_world("files").preview_prompts(dc, WorldSplit(val_images, [[c] for c in val_caps]))
    return data, val, recipe, encoder, prompts


def run_buckets(cfg: RunConfig) -> list[tuple[int, int]]:
    """data.buckets' shapes for this run: multiples of the UNet's down-sampling factor, and for a super-resolution
    stage of what keeps the low-res input whole (low_res_size / image_size of each side)."""
    from ..data.buckets import BucketError
    multiple = 2 ** (len(cfg.unet.channel_mult) - 1)
    if cfg.unet.super_res:
        size, low = cfg.data.image_size, cfg.data.low_res_size
        multiple = math.lcm(multiple, size // math.gcd(size, low))
    try:
        return bucket_shapes(cfg.data.buckets, cfg.data.image_size, multiple)
    except BucketError as e:
        raise DatasetError(str(e)) from None


def world_splits(cfg: RunConfig, cache: Path, progress: bool = True) -> tuple[WorldSplit, WorldSplit]:
    """The run's (training, validation) examples from its world, read as the run reads them (its aspect buckets
    included, so a later reader finds the run's own cache)."""
    buckets = {"buckets": run_buckets(cfg)} if cfg.data.buckets else {}
    return get_world(cfg.data.world).splits(cfg.data, cache, progress, super_res=cfg.unet.super_res, **buckets)


def _encoder_device(cfg: RunConfig) -> str:
    """Captions are encoded on the training device when it is a GPU, unless train.text_encoder_device=cpu."""
    device = resolve_device(cfg.train.device)
    return str(device) if device.type == "cuda" and cfg.train.text_encoder_device == "auto" else "cpu"


def prepare_data(cfg: RunConfig, cache: Path | None = None, progress: bool = True):
    """Everything a run reads before its first step, built and cached: the images, the caption states, the
    validation set. Returns (data, val, recipe, encoder, preview prompts). Runs that share data (the two stages of
    a cascade started together) call it once first, so that they do not build the same cache at the same time."""
    cache = cache or default_cache_dir()
    if streams(cfg.data):
        data, val, recipe, encoder, prompts = prepare_stream(cfg, cache, progress)
    elif cfg.data.world == "dreambooth":
        from .dreambooth import dreambooth_recipe, dreambooth_splits
        if cfg.unet.super_res and cfg.data.dreambooth.class_prompt and not cfg.data.dreambooth.class_model:
            raise DatasetError("DreamBooth with prior preservation for a super-resolution stage: give "
                               "data.dreambooth.class_model=STAGE_I (it draws the class images' low-res input)")
        encoder = run_encoder(cfg, device=_encoder_device(cfg))
        train_split, val_split = dreambooth_splits(cfg, cache, progress)
        data = build_train_data(train_split, encoder, cache, progress)
        val = build_train_data(val_split, encoder, cache, progress)
        db = cfg.data.dreambooth
        recipe = dreambooth_recipe(cfg, train_split, val_split)
        prompts = [db.instance_prompt] * 8 + [db.class_prompt or db.instance_prompt] * 8
    else:
        encoder = run_encoder(cfg, device=_encoder_device(cfg))
        world = get_world(cfg.data.world)
        train_split, val_split = world_splits(cfg, cache, progress)
        data = build_train_data(train_split, encoder, cache, progress)
        val = build_train_data(val_split, encoder, cache, progress)
        recipe, prompts = world.recipe(cfg.data, train_split, val_split), world.preview_prompts(cfg.data, val_split)
    recipe += f"; training seed {cfg.train.seed}"
    if cfg.train.init_from:
        recipe += f"; fine-tuned from {Path(cfg.train.init_from).name} (sha256 {sha256_file(cfg.train.init_from)[:16]})"
    return data, val, recipe, encoder, prompts
