"""Training batches streamed from webdataset shards: decoded and resized in DataLoader workers, shards split across
ranks and workers, shuffled by seed, and resumable at any step on any number of processes.

The order of samples is a pure function of (seed, the shards' record counts), never of the process count:

- epoch e visits the shards in a seeded permutation (seed, e), each shard's records in their order;
- that sequence is shuffled inside consecutive windows of ``shuffle_buffer`` records (seed, e, window): the
  block shuffle of MosaicML Streaming's ``py1b``, a shuffle buffer whose state is a function of the position, so
  reads stay local (a window spans a few shards) and any position can be found without replaying the stream;
- global step k trains on positions [k B, (k + 1) B) of the endless sequence of epochs; process r of N takes
  rows r, r + N, ... of it (as the in-memory loop does), and DataLoader worker w of W makes the steps k with
  (k - first step) mod W = w, which the DataLoader hands back in step order.

So the resumable position is the step itself: a stopped run resumes with exactly the samples an uninterrupted run
would have seen, on this or another number of processes or workers. Records are read with two seeks each through
the shard index (:mod:`shard_index`); nothing but the batch in flight is held in memory. A record whose image cannot
be decoded, or whose caption is empty, is replaced by the next record of the sequence and counted.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..images import center_crop_resize
from .formats import decode_rgb
from .shard_index import DatasetIndex, RecordReader


class EpochOrder:
    """The position -> record map described above, for ``ids`` (training records of an index, in index order)."""

    def __init__(self, shard_of: np.ndarray, seed: int, window: int):
        self.n = len(shard_of)
        if self.n == 0:
            raise ValueError("no training records to stream")
        self.seed, self.window = seed, max(1, int(window))
        # each shard's records are contiguous in ``ids`` (index order is shard order)
        self.shards, self.starts, self.counts = np.unique(shard_of, return_index=True, return_counts=True)
        self._epoch, self._seq = None, None
        self._win, self._perm = None, None

    def _sequence(self, epoch: int) -> np.ndarray:
        if self._epoch != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
            self._seq = np.concatenate([np.arange(self.starts[s], self.starts[s] + self.counts[s]) for s in order])
            self._epoch, self._win = epoch, None
        return self._seq

    def __getitem__(self, pos: int) -> int:
        """The index into ``ids`` of global position ``pos``."""
        epoch, q = divmod(int(pos), self.n)
        seq = self._sequence(epoch)
        w, r = divmod(q, self.window)
        if self._win != w:
            size = min(self.window, self.n - w * self.window)
            self._perm = np.random.default_rng([self.seed, epoch, w, 1]).permutation(size)
            self._win = w
        return int(seq[w * self.window + self._perm[r]])


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Encoded bytes -> uint8 [size, size, 3]: transparency on white, centre crop, bicubic resize. ValueError if the
    bytes are not an image."""
    arr = decode_rgb(data)
    return arr if arr.shape[:2] == (size, size) else center_crop_resize(arr, size)


def usable(reader: RecordReader, i: int, size: int) -> tuple[np.ndarray, str] | None:
    """Record i's image at ``size`` and its caption, or None when the caption is empty or the image is broken."""
    data, caption = reader.read(i)
    if not caption:
        return None
    try:
        return decode_image(data, size), caption
    except ValueError:
        return None


@dataclasses.dataclass
class StreamSpec:
    """What a worker needs to make its batches (pickled into DataLoader workers)."""

    index: DatasetIndex
    ids: np.ndarray  # training records (indices into the index)
    image_size: int
    batch_size: int  # the global batch
    seed: int
    shuffle_buffer: int = 10_000
    rank: int = 0
    world: int = 1
    first_step: int = 0
    states: str | None = None  # a folder of text-state shards (text_states.StatesReader), or None: captions
    text_length: int = 77


class ShardStream(torch.utils.data.IterableDataset):
    """Endless per-step batches of this process's rows: {"step", "images" uint8 [b, S, S, 3], "captions",
    "keys", "states" and "state_lengths" (with ``spec.states``: the stored states, packed as
    text_states.StatesReader.packed gives them), "encoded" (with ``encoder``: its float states [b, L, D] of the
    captions), "replaced" (records replaced, corrupt or uncaptioned)}.

    ``encoder`` (a CPU text encoder, called as ``encoder(captions, allow_empty=True)``) encodes each batch's
    captions where the batch is made: in a DataLoader worker that overlaps the training step."""

    def __init__(self, spec: StreamSpec, encoder=None):
        super().__init__()
        if spec.batch_size % spec.world:
            raise ValueError(f"batch size {spec.batch_size} does not split over {spec.world} processes")
        self.spec, self.encoder = spec, encoder

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        s = self.spec
        order = EpochOrder(s.index.records["shard"][s.ids], s.seed, s.shuffle_buffer)
        reader = RecordReader(s.index)
        states = None
        if s.states:
            from .text_states import StatesReader
            states = StatesReader(s.states, s.index, s.text_length)
        rows = s.batch_size // s.world
        step = s.first_step + wid
        try:
            while True:
                yield self._batch(step, rows, order, reader, states)
                step += nw
        finally:
            reader.close()
            if states is not None:
                states.close()

    def _batch(self, step: int, rows: int, order: EpochOrder, reader: RecordReader, states) -> dict:
        s = self.spec
        images, captions, keys, shards, replaced = [], [], [], [], 0
        for j in range(rows):
            pos = step * s.batch_size + s.rank + j * s.world
            for attempt in range(64):  # a bad record: the next one in the sequence, deterministically
                i = int(s.ids[order[pos + attempt]])
                got = usable(reader, i, s.image_size)
                if got is None:
                    replaced += 1
                    continue
                images.append(got[0])
                captions.append(got[1])
                keys.append(s.index.key(i))
                shards.append(int(s.index.records["shard"][i]))
                break
            else:
                raise RuntimeError(f"64 records in a row near position {pos} are unreadable: is the dataset intact?")
        out = {"step": step, "images": torch.from_numpy(np.stack(images)), "captions": captions, "keys": keys,
               "replaced": replaced}
        if states is not None:
            out["states"], out["state_lengths"] = states.packed(list(zip(shards, keys)))
        if self.encoder is not None:
            with torch.no_grad():
                out["encoded"] = self.encoder(captions, allow_empty=True)[0].float()
        return out


def stream_loader(spec: StreamSpec, workers: int = 1, encoder=None) -> torch.utils.data.DataLoader:
    """A DataLoader over :class:`ShardStream` (batches already made per step: no collation); ``workers`` 0 reads in
    this process; ``encoder``: see :class:`ShardStream`."""
    return torch.utils.data.DataLoader(ShardStream(spec, encoder), batch_size=None, num_workers=workers,
                                       prefetch_factor=2 if workers else None, persistent_workers=False)


def read_records_by_id(index: DatasetIndex, ids: np.ndarray, image_size: int) -> tuple[np.ndarray, list[str], list]:
    """The images (uint8 [n, S, S, 3]), captions and ids of some records, in memory: a streamed run's validation
    set. Unreadable or uncaptioned records are left out."""
    reader = RecordReader(index)
    images, captions, kept = [], [], []
    try:
        for i in ids:
            got = usable(reader, int(i), image_size)
            if got is not None:
                images.append(got[0])
                captions.append(got[1])
                kept.append(int(i))
    finally:
        reader.close()
    if not images:
        return np.zeros((0, image_size, image_size, 3), np.uint8), [], []
    return np.stack(images), captions, kept

