"""Bad inputs end in one line, outputs are never silently wrong, and a run folder stays consistent however its
process ends (docs/reliability.md lists each promise with the test that proves it)."""

from __future__ import annotations

import csv
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import png_declaring
from PIL import Image

from pixelcascade.cli import main


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# -- images, masks and loaders ---------------------------------------------------------------------------


def test_an_image_too_large_is_refused_from_its_header_before_decoding(tiny_model, tmp_path, capsys):
    """A 20000 x 20000 PNG was a DecompressionBombError traceback and 10000 x 10000 took 4 GB: both are now one
    line naming --max-pixels, found from the header (the file below holds a single pixel)."""
    (tmp_path / "bomb.png").write_bytes(png_declaring(20000, 20000))  # a single pixel, declared 20000 x 20000
    (tmp_path / "big.png").write_bytes(png_declaring(10000, 10000))
    Image.new("RGB", (16, 16), "red").save(tmp_path / "ok.png")
    for args in (["img2img", "bomb.png", "x"], ["upscale", "big.png"], ["inpaint", "ok.png", "big.png", "x"]):
        args = [str(tmp_path / a) if a.endswith(".png") else a for a in args]
        assert main(args + ["--model", str(tiny_model), "-o", str(tmp_path / "o.png"), "-q"]) == 2
        line = _one_error_line(capsys)
        assert "over the limit of 50.0 MP" in line and "--max-pixels" in line, line
    # the limit is the user's to move: a 16 x 16 image (made 32 x 32) against 100 pixels, then 2000
    common = ["img2img", str(tmp_path / "ok.png"), "x", "--model", str(tiny_model), "-o", str(tmp_path / "o.png"),
              "--steps", "2", "-q"]
    assert main(common + ["--max-pixels", "100"]) == 2
    assert "16x16 (0.0 MP)" in _one_error_line(capsys)
    assert main(common + ["--max-pixels", "2000"]) == 0 and (tmp_path / "o.png").is_file()


def test_an_upscale_too_small_names_the_input_size(tmp_path, capsys):
    Image.new("RGB", (1, 1)).save(tmp_path / "one.png")
    from pixelcascade.api import DEFAULT_MODEL
    assert main(["upscale", str(tmp_path / "one.png"), "--model", str(DEFAULT_MODEL / "stage2.safetensors"),
                 "-o", str(tmp_path / "o.png"), "-q"]) == 2
    line = _one_error_line(capsys)
    assert "one.png is 1x1" in line and "e.g. 2x2" in line, line


def _pickle_that_runs(path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo this ran",))
    torch.save({"w": Payload()}, path)


def test_every_loader_refuses_a_pickle_that_would_run_code_in_one_line(tiny_model, tmp_path, capsys):
    """--text-encoder, eval clip --clip, eval fid --features emoji:, eval emoji --features: each was a traceback
    for a file it could not load. A pickle naming code to run is 'refused', never 'retry with weights_only=False'."""
    pytest.importorskip("transformers")
    evil = tmp_path / "evil.pt"
    _pickle_that_runs(evil)
    for name in ("encoder", "clip"):  # Hugging Face folders whose weights are that pickle
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text('{"model_type": "%s"}' % ("bert" if name == "encoder" else
                                                                                 "clip"))
        (tmp_path / name / "pytorch_model.bin").write_bytes(evil.read_bytes())
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8), "red").save(images / f"{i}.png")
        (images / f"{i}.json").write_text('{"prompt": "a red square"}')
    cases = [
        (["generate", "x", "--model", str(tiny_model), "--text-encoder", str(tmp_path / "encoder"),
          "-o", str(tmp_path / "o.png")], "pytorch_model.bin was refused"),
        (["generate", "x", "--model", str(tiny_model), "--text-encoder", str(tmp_path / "broken"),
          "-o", str(tmp_path / "o.png")], "not a valid JSON file"),
        (["eval", "clip", str(images), "--clip", str(tmp_path / "clip")], "pytorch_model.bin was refused"),
        (["eval", "fid", str(images), str(images), "--features", f"emoji:{evil}"], "evil.pt was refused"),
        (["eval", "emoji", "--features", str(evil)], "evil.pt was refused"),
    ]
    for args, msg in cases:
        assert main(args) == 2, args
        line = _one_error_line(capsys)
        assert msg in line and "weights_only" not in line, line
    assert "this ran" not in capsys.readouterr().out


# -- data folders ----------------------------------------------------------------------------------------


def _dataset(folder: Path, n: int = 6) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"picture number {i}")
    return folder


def test_curate_refuses_a_non_empty_output_unless_overwrite_which_drops_the_old_shards(tmp_path, capsys):
    """Curating into a folder that held an earlier run left its shards there, and training read them too."""
    src, out = _dataset(tmp_path / "src"), tmp_path / "out"
    assert main(["curate", str(src), "-o", str(out), "-q"]) == 0
    stale = out / "data" / "00099.tar"
    stale.write_bytes(b"an earlier run's shard")
    capsys.readouterr()
    assert main(["curate", str(src), "-o", str(out), "-q"]) == 2
    assert "is not empty" in _one_error_line(capsys) and stale.exists()
    assert main(["curate", str(src), "-o", str(out), "--overwrite", "-q"]) == 0
    from pixelcascade.data.curate import shard_prefix
    names = sorted(p.name for p in (out / "data").iterdir())
    assert not stale.exists() and names == ["manifest.parquet", f"{shard_prefix(src)}-00000.tar"]  # mergeable names
    (out / "data" / "notes.md").write_text("mine")  # never removed: curate did not write it
    capsys.readouterr()
    assert main(["curate", str(src), "-o", str(out), "--overwrite", "-q"]) == 2
    assert "files curate did not write (notes.md)" in _one_error_line(capsys)


def test_an_empty_caption_is_counted_as_empty_not_as_missing(tmp_path):
    from pixelcascade.data.formats import ReadStats, read_records
    src = _dataset(tmp_path / "src", n=3)
    (src / "1.txt").write_text("  \n")
    (src / "2.txt").unlink()
    stats = ReadStats()
    from pixelcascade.data import formats
    list(formats._read_folder(src, stats))
    assert (stats.empty_captions, stats.missing_captions) == (1, 1)
    assert [p["why"] for p in stats.problems] == ["empty .txt caption", "no sidecar .txt"]
    assert len(list(read_records(src))) == 3


# -- run folders -----------------------------------------------------------------------------------------


def test_a_config_mismatch_on_resume_is_found_before_the_data_is_prepared(tiny_model, capsys, monkeypatch):
    import pixelcascade.training.run as run

    def no_data(*_a, **_k):
        raise AssertionError("the data was prepared before the config was checked")
    monkeypatch.setattr(run, "prepare_data", no_data)
    assert main(["train", "tiny", "-o", str(tiny_model.parent), "train.lr=0.5", "-q"]) == 2
    assert "another config" in _one_error_line(capsys)


class _Killed(Exception):
    pass


def _tiny_run_cfg(steps: int):
    import dataclasses

    from pixelcascade.config import DataConfig, RunConfig, TrainConfig
    from pixelcascade.presets import get_preset
    unet = dataclasses.replace(get_preset("tiny"), image_size=16)
    return RunConfig(name="k", unet=unet, data=DataConfig(image_size=16, low_res_size=8),
                     train=TrainConfig(batch_size=4, max_steps=steps, warmup_steps=2, ckpt_every=2, val_every=2,
                                       log_every=1))


def _tiny_data():
    from pixelcascade.training.data import TrainData
    rng = np.random.default_rng(0)
    return TrainData(images=rng.integers(0, 255, (32, 16, 16, 3), dtype=np.uint8),
                     caption_idx=rng.integers(0, 4, 32),
                     text_table=torch.from_numpy(rng.standard_normal((5, 6, 24)).astype(np.float16)), null_idx=4)


def test_export_never_ships_an_ema_older_than_the_checkpoint(tmp_path, capsys, monkeypatch):
    """A stop between the checkpoint and the EMA write let export ship the older EMA without a word. The EMA is
    now written first (a stop leaves it ahead, equal to what the resumed run makes again), and an EMA found behind
    its checkpoint (a folder written the other way round) is rebuilt from the checkpoint, with a note."""
    import pixelcascade.training.loop as loop
    from pixelcascade.tensorfiles import read_metadata, read_tensors
    from pixelcascade.training.loop import Trainer
    ref = Trainer(_tiny_run_cfg(4), _tiny_data(), tmp_path / "ref", progress=False)
    ref.fit()
    real_save = loop.save_checkpoint

    def stopped_at_step_4(path, state):
        if state["step"] == 4:
            raise _Killed
        real_save(path, state)
    monkeypatch.setattr(loop, "save_checkpoint", stopped_at_step_4)
    run = tmp_path / "run"
    with pytest.raises(_Killed):
        Trainer(_tiny_run_cfg(4), _tiny_data(), run, progress=False).fit()
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert read_metadata(run / "ema.safetensors")["step"] == "4"  # ahead of checkpoint.pt (step 2)
    assert main(["export", str(run), "-o", str(tmp_path / "a.safetensors"), "--dtype", "fp32"]) == 0
    shipped, _ = read_tensors(tmp_path / "a.safetensors")
    for k, v in ref.ema.model.state_dict().items():
        assert torch.equal(shipped[k], v.float()), k
    # an EMA behind its checkpoint (written before the order was fixed, or restored by hand): rebuilt
    Trainer(_tiny_run_cfg(6), _tiny_data(), tmp_path / "old", progress=False).fit(max_steps=2)
    stale = (tmp_path / "old" / "ema.safetensors").read_bytes()
    Trainer(_tiny_run_cfg(6), _tiny_data(), tmp_path / "old", progress=False).fit(max_steps=4)
    (tmp_path / "old" / "ema.safetensors").write_bytes(stale)
    capsys.readouterr()
    assert main(["export", str(tmp_path / "old"), "-o", str(tmp_path / "b.safetensors"), "--dtype", "fp32"]) == 0
    err = capsys.readouterr().err
    assert "was from step 2 but checkpoint.pt from step 4" in err
    assert read_metadata(tmp_path / "b.safetensors")["step"] == "4"


# A tiny training run in its own process, to be killed: ckpt_every=1 puts a checkpoint write in every step.
# KILL_IN_WRITE=N: the process kills itself half-way through writing step N's checkpoint.
_KILLABLE_RUN = """
import dataclasses, os, signal, sys
import numpy as np, torch
from pixelcascade.config import DataConfig, RunConfig, TrainConfig
from pixelcascade.presets import get_preset
from pixelcascade.training.data import TrainData
from pixelcascade.training.loop import Trainer
out, steps = sys.argv[1], int(sys.argv[2])
if os.environ.get("KILL_IN_WRITE"):
    target, real_save = int(os.environ["KILL_IN_WRITE"]), torch.save
    def save(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("step") == target:
            with open(f, "wb") as fh:
                fh.write(b"half a checkpoint")
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *a, **k)
    torch.save = save
rng = np.random.default_rng(0)
data = TrainData(images=rng.integers(0, 255, (32, 16, 16, 3), dtype=np.uint8), caption_idx=rng.integers(0, 4, 32),
                 text_table=torch.from_numpy(rng.standard_normal((5, 6, 24)).astype(np.float16)), null_idx=4)
unet = dataclasses.replace(get_preset("tiny"), image_size=16)
cfg = RunConfig(name="k", unet=unet, data=DataConfig(image_size=16, low_res_size=8),
                train=TrainConfig(batch_size=4, max_steps=steps, warmup_steps=2, ckpt_every=1, val_every=2,
                                  log_every=1))
trainer = Trainer(cfg, data, out, progress=False)
print("ready", trainer.step, flush=True)
trainer.fit()
print("done", trainer.step, flush=True)
"""


def _launch(folder: Path, steps: int, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _KILLABLE_RUN, str(folder), str(steps)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, **env})


def _log_rows(path: Path) -> list[dict]:
    with open(path) as f:  # the columns that time the run differ between runs
        return [{k: v for k, v in r.items() if k not in ("img_per_s", "time")} for r in csv.DictReader(f)]


def _equal_nested(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal_nested(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal_nested(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    """SIGKILL at seeded random moments of a run that writes a checkpoint every step (so kills land in writes),
    and once half-way through a checkpoint write; each time the same command resumes. The final weights, EMA,
    optimizer state and logs equal an uninterrupted run's, and no temporary file is left."""
    steps = 6
    ref = _launch(tmp_path / "ref", steps)
    assert ref.stdout.readline().split() == ["ready", "0"]
    t0 = time.time()
    assert ref.wait(timeout=300) == 0
    duration = time.time() - t0
    run, rng, killed_at = tmp_path / "run", random.Random(0), []
    p = _launch(run, steps, KILL_IN_WRITE="3")
    p.wait(timeout=300)
    killed_at.append(("in a write", p.returncode))
    for _ in range(2):
        p = _launch(run, steps)
        start = int(p.stdout.readline().split()[1])
        time.sleep(rng.uniform(0, duration * 0.6))
        p.kill()
        p.wait(timeout=60)
        killed_at.append((start, p.returncode))
    assert sum(code == -9 for _, code in killed_at) >= 2, killed_at  # most launches were killed mid-run
    p = _launch(run, steps)
    p.stdout.readline()
    assert p.wait(timeout=300) == 0
    a, b = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (tmp_path / "ref", run))
    assert a["step"] == b["step"] == steps
    for part in ("model", "ema", "opt"):
        assert _equal_nested(a[part], b[part]), part
    for log in ("train_log.csv", "val_loss.csv"):
        assert _log_rows(tmp_path / "ref" / log) == _log_rows(run / log), log
    assert not list(run.rglob("*.tmp"))


def test_outputs_too_large_are_refused_before_sampling(tiny_model, tmp_path, capsys):
    """--height 100000 asked a UNet for 400 megapixels (an allocation failure or the OOM killer, minutes later)."""
    out = str(tmp_path / "o.png")
    assert main(["generate", "x", "--model", str(tiny_model), "--height", "100000", "--width", "4000", "-o", out,
                 "-q"]) == 2
    line = _one_error_line(capsys)
    assert "stage 1 would make 4000x100000 images (400.0 MP)" in line and "--max-pixels" in line, line
    Image.new("RGB", (32, 32)).save(tmp_path / "in.png")
    from pixelcascade.api import DEFAULT_MODEL
    assert main(["upscale", str(tmp_path / "in.png"), "--scale", "1000", "--model",
                 str(DEFAULT_MODEL / "stage2.safetensors"), "-o", out, "-q"]) == 2
    assert "it would be 32000x32000 (1024.0 MP)" in _one_error_line(capsys)


def test_a_model_file_asking_for_a_huge_unet_is_refused_without_building_it(tiny_model, tmp_path, capsys):
    """A file whose unet_config asks for 10^9 channels was built before its weights were compared (memory ran
    out); one whose config fits the range but not the weights is compared on a model that holds no memory."""
    import json

    from safetensors.torch import save_file

    from pixelcascade.tensorfiles import read_tensors
    tensors, meta = read_tensors(tiny_model)
    for name, channels, msg in (("huge", 10 ** 9, "outside what a UNet config can hold"),
                                ("wide", 8192, "does not match the model's config")):
        cfg = {**json.loads(meta["unet_config"]), "model_channels": channels}
        save_file(tensors, tmp_path / f"{name}.safetensors", {**meta, "unet_config": json.dumps(cfg)})
        t0 = time.time()
        assert main(["generate", "x", "--model", str(tmp_path / f"{name}.safetensors"), "-o",
                     str(tmp_path / "o.png"), "-q"]) == 2
        assert msg in _one_error_line(capsys) and time.time() - t0 < 30
