"""Text states computed once, stored beside the image shards: the IF recipe encodes every caption with T5-XXL once,
not at every epoch.

``STATES/<shard>.safetensors`` holds, for each record of image shard ``<shard>.tar``, one bf16 tensor named by the
record's key: the states of its real tokens only ([n, D], n = the caption's token count in the encoder's window,
special tokens included), so a 77-token T5 window costs what the caption uses. ``STATES/empty.safetensors`` holds
the empty caption's (classifier-free guidance's unconditional input), and every file's metadata names the encoder,
its width and window, and the image shard it belongs to (name, size, record count).

Reading pads each caption back to the window with zeros. The encoder gives the padding positions states of their
own, so a model trained on stored states records ``text_padding=zeros`` in its metadata and the pipeline zeroes
those positions when it samples that model (``pipeline.Cascade``): training and sampling see the same input.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from ..errors import PixelcascadeError
from ..tensorfiles import write_safetensors
from .shard_index import DatasetIndex, RecordReader

KIND = "pixelcascade-text-states"


class StatesError(PixelcascadeError, ValueError):
    """Stored text states that do not fit the data or the run: one clear line."""


def states_file(folder: str | Path, shard: Path) -> Path:
    return Path(folder) / f"{shard.stem}.safetensors"


def states_meta(encoder_spec: str, encoder, shard: Path | None, records: int) -> dict[str, str]:
    """A states file's metadata: the encoder (spec, name, width, window) and, for a shard's file, that shard."""
    meta = {"kind": KIND, "encoder": encoder_spec, "encoder_name": encoder.name, "dim": str(encoder.dim),
            "max_length": str(encoder.max_length), "padding": "zeros"}
    if shard is not None:
        meta.update(shard=shard.name, shard_size=str(shard.stat().st_size), records=str(records))
    return meta


def _real_tokens(emb: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Each row's states up to its last real token (tokenizers pad on the right), bf16."""
    return [e[: int(m.sum())].to(torch.bfloat16).contiguous() for e, m in zip(emb, mask)]


def _done(path: Path, shard: Path, encoder_spec: str) -> bool:
    if not path.is_file():
        return False
    try:
        meta = read_meta(path)
    except StatesError:
        return False
    return meta.get("encoder") == encoder_spec and meta.get("shard_size") == str(shard.stat().st_size)


def read_meta(path: Path) -> dict[str, str]:
    from ..tensorfiles import CheckpointError, read_metadata
    try:
        meta = read_metadata(path)
    except CheckpointError as e:  # a cut or foreign file
        raise StatesError(f"{e}: encode it again") from None
    if meta.get("kind") != KIND:
        raise StatesError(f"{path} is not a text-states file (made by `pixelcascade data encode`)")
    return meta


def encode_dataset(index: DatasetIndex, out: str | Path, encoder, encoder_spec: str, *, batch_size: int = 64,
                   rank: int = 0, world: int = 1, progress: bool = True) -> dict:
    """Encode every record's caption, one states shard per image shard; this process takes shards rank, rank +
    world, ...; shards already encoded with the same encoder are skipped (so a stopped run resumes)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    reader = RecordReader(index, max_open=2)
    mine = list(range(rank, len(index.shards), world))
    todo = [s for s in mine if not _done(states_file(out, index.shards[s]), index.shards[s], encoder_spec)]
    bar = None
    if progress:
        from tqdm import tqdm
        n = int(np.isin(index.records["shard"], todo).sum())
        bar = tqdm(total=n, desc=f"encode -> {out}", unit="caption")
    for s in todo:
        ids = np.flatnonzero(index.records["shard"] == s)
        tensors = {}
        for start in range(0, len(ids), batch_size):
            chunk = ids[start:start + batch_size]
            caps = [reader.read(int(i))[1] for i in chunk]
            with torch.no_grad():
                emb, mask = encoder(caps, allow_empty=True)
            for i, t in zip(chunk, _real_tokens(emb.float().cpu(), mask.cpu())):
                tensors[index.key(int(i))] = t
            if bar is not None:
                bar.update(len(chunk))
        meta = states_meta(encoder_spec, encoder, index.shards[s], len(ids))
        write_safetensors(states_file(out, index.shards[s]), tensors, meta)
    reader.close()
    if bar is not None:
        bar.close()
    if rank == 0:
        with torch.no_grad():
            emb, mask = encoder.empty(1)
        write_safetensors(out / "empty.safetensors", {"empty": _real_tokens(emb.float().cpu(), mask.cpu())[0]},
                          states_meta(encoder_spec, encoder, None, 1))
    return {"shards": len(mine), "encoded": len(todo), "skipped": len(mine) - len(todo)}


def check_states(folder: str | Path, index: DatasetIndex, encoder_spec: str, dim: int, max_length: int) -> dict:
    """Before training: every image shard has its states file, from this run's encoder (same spec, width and
    window) and with one entry per record. Raises StatesError naming what is wrong and the command that fixes it."""
    folder = Path(folder)
    fix = (f"run `pixelcascade data encode DATASET -o {folder} --text-encoder {encoder_spec} --max-length "
           f"{max_length}`")
    if not (folder / "empty.safetensors").is_file():
        raise StatesError(f"data.text_states={folder}: no text states there (no empty.safetensors); {fix}")
    missing = [s.name for s in index.shards if not states_file(folder, s).is_file()]
    if missing:
        raise StatesError(f"data.text_states={folder}: no states for {len(missing)} of {len(index.shards)} shards "
                          f"(first: {missing[0]}); {fix} (it encodes only what is missing)")
    counts = np.bincount(index.records["shard"], minlength=len(index.shards))
    files = [(folder / "empty.safetensors", None, 1)] + [(states_file(folder, s), s, counts[i])
                                                       for i, s in enumerate(index.shards)]
    for path, shard, records in files:
        meta = read_meta(path)
        if meta.get("encoder") != encoder_spec or meta.get("dim") != str(dim) or \
                meta.get("max_length") != str(max_length):
            raise StatesError(f"{path} holds states of {meta.get('encoder')} ({meta.get('dim')}-d, window "
                              f"{meta.get('max_length')}), this run reads {encoder_spec} ({dim}-d, window "
                              f"{max_length}): {fix}, or set text_encoder= and data.text_max_length= to match")
        if shard is not None and (meta.get("shard_size") != str(shard.stat().st_size)
                                  or meta.get("records") != str(records)):
            raise StatesError(f"{path} was encoded from another version of {shard.name} ({meta.get('records')} "
                              f"records, {meta.get('shard_size')} bytes; now {records}, {shard.stat().st_size}): "
                              f"delete it and {fix}")
    return {"shards": len(index.shards), "encoder": encoder_spec}


class StatesReader:
    """States of records by (shard, key), padded with zeros to the window. Each file's header (name -> byte range)
    is parsed once and the bytes of one record are read with one seek: no file is memory-mapped, so a worker's
    memory holds the batch, not the pages of every states shard it touched."""

    def __init__(self, folder: str | Path, index: DatasetIndex, max_length: int, max_open: int = 16):
        self.folder, self.index, self.max_length, self.max_open = Path(folder), index, max_length, max_open
        self._open: OrderedDict[int, tuple[object, dict, int]] = OrderedDict()

    def _entry(self, shard: int):
        entry = self._open.pop(shard, None)
        if entry is None:
            path = states_file(self.folder, self.index.shards[shard])
            f = open(path, "rb")  # noqa: SIM115 (kept open across reads, closed on eviction)
            n = int.from_bytes(f.read(8), "little")
            entry = (f, json.loads(f.read(n)), 8 + n)
            while len(self._open) >= self.max_open:
                self._open.popitem(last=False)[1][0].close()
        self._open[shard] = entry
        return entry

    def pad(self, t: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(self.max_length, t.shape[-1])
        out[: len(t)] = t.float()
        return out

    def get(self, shard: int, key: str) -> torch.Tensor:
        """The record's states padded to the window, float [L, D]."""
        return self.pad(self.raw(shard, key))

    def raw(self, shard: int, key: str) -> torch.Tensor:
        """The record's stored states, bf16 [n, D] (its real tokens)."""
        f, header, base = self._entry(shard)
        info = header.get(key)
        if info is None or info.get("dtype") != "BF16":
            raise StatesError(f"{states_file(self.folder, self.index.shards[shard])} has no states for record "
                              f"{key!r}: encode the dataset again")
        start, end = info["data_offsets"]
        f.seek(base + start)
        return torch.frombuffer(bytearray(f.read(end - start)), dtype=torch.bfloat16).reshape(info["shape"])

    def packed(self, shard_keys: list[tuple[int, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch's states as stored, for the trip from a DataLoader worker (a tenth of the padded fp32 bytes for
        a 14-token caption in T5's 77): (bf16 [sum n, D], lengths [B]); :func:`unpack` pads them."""
        parts = [self.raw(s, k) for s, k in shard_keys]
        return torch.cat(parts), torch.tensor([len(p) for p in parts])

    def empty(self) -> torch.Tensor:
        from safetensors import safe_open
        with safe_open(str(self.folder / "empty.safetensors"), framework="pt") as f:
            return self.pad(f.get_tensor("empty"))

    def close(self) -> None:
        for f, _, _ in self._open.values():
            f.close()
        self._open.clear()


def unpack(states: torch.Tensor, lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """(bf16 [sum n, D], lengths [B]) -> float [B, L, D], zeros after each caption's tokens."""
    out = torch.zeros(len(lengths), max_length, states.shape[-1])
    start = 0
    for i, n in enumerate(lengths.tolist()):
        out[i, :n] = states[start:start + n].float()
        start += n
    return out
