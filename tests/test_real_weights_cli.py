"""`generate --model` on IF-format folders (tiny random weights): a diffusers IF pipeline folder whose T5 is
found inside it, an official stage II folder (config.yml + .bin), offloading, and the clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import randomize, tiny_cfg
from PIL import Image

from pixelcascade import convert, model_files
from pixelcascade.cli import main
from pixelcascade.models.unet import build_unet


@pytest.fixture(scope="module")
def if_folders(tmp_path_factory, tiny_t5):
    import shutil
    diffusers = pytest.importorskip("diffusers")
    root = tmp_path_factory.mktemp("if")
    # stage I in the diffusers pipeline layout: unet/ + text_encoder/ + tokenizer/
    c1 = tiny_cfg(image_size=16, encoder_dim=16)
    m1 = randomize(build_unet(c1).eval(), seed=1)
    ref = diffusers.UNet2DConditionModel(**convert.diffusers_config(c1))
    ref.load_state_dict(convert.official_to_diffusers(m1.state_dict(), c1))
    ref.save_pretrained(root / "IF-I" / "unet")
    shutil.copytree(tiny_t5, root / "IF-I" / "text_encoder")
    shutil.copytree(tiny_t5, root / "IF-I" / "tokenizer")
    for f in (root / "IF-I" / "text_encoder").glob("tokenizer*"):
        f.unlink()  # the tokenizer lives only in tokenizer/, as in the real repository
    # stage II in the official layout: config.yml + pytorch_model.bin
    c2 = tiny_cfg(super_res=True, image_size=32, encoder_dim=16)
    m2 = randomize(build_unet(c2).eval(), seed=2)
    (root / "IF-II").mkdir()
    torch.save(m2.state_dict(), root / "IF-II" / "pytorch_model.bin")
    (root / "IF-II" / "config.yml").write_text(
        "params:\n  image_size: 32\n  in_channels: 6\n  out_channels: 6\n  model_channels: 32\n"
        '  channel_mult: "1,2,3"\n  num_res_blocks: [1, 2, 1]\n  attention_resolutions: "16,8"\n'
        "  num_head_channels: 16\n  encoder_dim: 16\n  encoder_channels: 96\n  att_pool_heads: 4\n"
        "  efficient_activation: true\n  scale_skip_connection: true\n")
    return root


def test_generate_with_if_folders(if_folders, tmp_path, capsys):
    model = f"{if_folders / 'IF-I'},{if_folders / 'IF-II'}"
    out = tmp_path / "a.png"
    assert main(["generate", "a red circle left of a blue square", "--model", model, "-o", str(out),
                 "--steps", "3", "--steps-ii", "2", "--save-stages", "--sampler-ii", "ddim", "--thresh-max", "1.3",
                 "-q"]) == 0
    from PIL import Image
    assert Image.open(out).size == (32, 32) and Image.open(tmp_path / "a-stage1.png").size == (16, 16)
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["stages"] == 2 and side["settings"][1]["aug_level"] == 0.25  # IF's stage II default
    st1, st2 = side["settings"]  # per-stage choices
    assert (st1["sampler"], st1["dyn_thresh_max"], st2["sampler"], st2["dyn_thresh_max"]) == ("ddpm", 1.3, "ddim", 1.0)
    # the same run with offloading (here to the CPU itself) gives the same image
    assert main(["generate", "a red circle left of a blue square", "--model", model, "-o", str(tmp_path / "b.png"),
                 "--steps", "3", "--steps-ii", "2", "--sampler-ii", "ddim", "--thresh-max", "1.3", "--offload",
                 "-q"]) == 0
    assert Image.open(out).tobytes() == Image.open(tmp_path / "b.png").tobytes()


def test_if_folders_within_less_memory(if_folders, tmp_path):
    """The released layouts with T5: states encoded once give the encoder's images with no encoder loaded;
    streaming the UNets block by block (from CPU memory: IF folders are not our files) gives the same pixels;
    an int8 T5 runs and says so beside the image."""
    model = f"{if_folders / 'IF-I'},{if_folders / 'IF-II'}"
    prompt = "a red circle left of a blue square"
    common = ["--model", model, "--steps", "3", "--steps-ii", "2", "--dtype", "fp32", "-q"]
    states = tmp_path / "states.safetensors"
    assert main(["encode", prompt, "-o", str(states), "--model", model, "-q"]) == 0
    runs = {"encoder": [prompt], "states": ["--prompt-states", str(states)],
            "sequential": [prompt, "--offload", "sequential"]}
    for name, args in runs.items():
        assert main(["generate", *args, *common, "-o", str(tmp_path / f"{name}.png")]) == 0
    ref = Image.open(tmp_path / "encoder.png").tobytes()
    assert Image.open(tmp_path / "states.png").tobytes() == ref
    assert Image.open(tmp_path / "sequential.png").tobytes() == ref
    pytest.importorskip("torchao")
    assert main(["generate", prompt, *common, "--text-encoder-dtype", "int8", "-o", str(tmp_path / "int8.png")]) == 0
    assert json.loads((tmp_path / "int8.json").read_text())["text_encoder_dtype"] == "int8"


@pytest.mark.parametrize("which,msg", [
    ("IF-II-first", "first stage is a super-resolution model"),
    ("missing", "no such file or folder"),
    ("wrong-encoder", "expects 16-d"),
])
def test_if_folder_errors(if_folders, tmp_path, capsys, which, msg):
    model = {"IF-II-first": f"{if_folders / 'IF-II'},{if_folders / 'IF-I'}",
             "missing": f"{if_folders / 'IF-I'},{if_folders / 'nope'}",
             "wrong-encoder": str(if_folders / "IF-I")}[which]
    extra = ["--text-encoder", "minilm"] if which == "wrong-encoder" else []
    assert main(["generate", "a circle", "--model", model, "-o", str(tmp_path / "x.png"), "-q"] + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0], err


def test_fine_tune_released_if_weights_on_your_data(if_folders, tiny_t5, tmp_path, capsys):
    """train.init_from= an IF folder: the run takes its UNet config, IF's eps + learned-range diffusion, its size
    and (diffusers pipeline layout) its own T5; it starts from those exact weights; the exported stage generates.
    A stage II in the official layout carries no T5, so the run names one."""
    from conftest import make_user_dataset

    from pixelcascade.training.data import prepare_data
    from pixelcascade.training.fine_tune import run_config
    from pixelcascade.training.loop import Trainer
    from pixelcascade.training.run import train
    folder = make_user_dataset(tmp_path / "mine")
    common = [f"data.path={folder}", "train.batch_size=4", "train.max_steps=2", "train.ckpt_every=2",
              "train.val_every=2", "train.warmup_steps=1", "train.num_threads=1"]
    cfg = run_config("files64", common + [f"train.init_from={if_folders / 'IF-I'}"])
    assert cfg.unet == model_files.unet_config_of(if_folders / "IF-I") and cfg.data.image_size == 16
    assert cfg.text_encoder == str(if_folders / "IF-I") and cfg.data.text_max_length == 77
    assert cfg.diffusion.prediction == "eps" and cfg.diffusion.learned_variance
    data, val, _, _, _ = prepare_data(cfg, tmp_path / "cache", progress=False)
    start = Trainer(cfg, data, tmp_path / "start", val, progress=False)
    want, _, _ = model_files.read_unet(if_folders / "IF-I")
    got = start.model.state_dict()
    assert all(torch.equal(got[k], want[k].float()) for k in want)  # starts as the released model
    t = train(cfg, tmp_path / "run", cache=tmp_path / "cache", progress=False, grids=False)
    assert t.step == 2 and not torch.equal(t.model.state_dict()["out.2.weight"], want["out.2.weight"].float())
    out = tmp_path / "ft"
    assert main(["export", str(tmp_path / "run"), "-o", str(out / "stage1.safetensors")]) == 0
    assert main(["generate", "a red circle", "--model", str(out), "--steps", "2", "-o", str(tmp_path / "x.png"),
                 "-q"]) == 0  # the exported file names its T5 (the pipeline folder)
    # stage II (official layout, no T5 inside): the user names the encoder; without it, one clear line
    sr = run_config("files128-sr", common + [f"train.init_from={if_folders / 'IF-II'}",
                                                 f"text_encoder={tiny_t5}"])
    assert sr.unet.super_res and sr.data.image_size == 32 and sr.diffusion.prediction == "eps"
    code = main(["train", "files128-sr", "-o", str(tmp_path / "sr"), "-q", *common,
                 f"train.init_from={if_folders / 'IF-II'}"])
    err = capsys.readouterr().err
    assert code != 0 and "reads 16-d" in err and "Traceback" not in err


def test_a_lora_on_released_if_weights_trains_and_generates_with_them(if_folders, tmp_path):
    """train.lora on an IF folder (diffusers pipeline layout, its own T5): the adapter trains over the released
    weights, and `generate --model IF-I --lora` samples with it; at scale 0 the pixels are the base model's."""
    pytest.importorskip("peft")
    from conftest import make_user_dataset

    from pixelcascade.training.fine_tune import run_config
    from pixelcascade.training.run import train
    folder = make_user_dataset(tmp_path / "mine")
    cfg = run_config("files64", [f"data.path={folder}", "train.batch_size=4", "train.max_steps=2",
                                 "train.ckpt_every=2", "train.val_every=2", "train.warmup_steps=1", "train.lr=1e-2",
                                 "train.num_threads=1", f"train.init_from={if_folders / 'IF-I'}",
                                 "train.lora.rank=4"])
    train(cfg, tmp_path / "run", cache=tmp_path / "cache", progress=False, grids=False)
    adapter = tmp_path / "run" / "lora.safetensors"
    outs = {}
    for name, extra in (("base", []), ("lora", ["--lora", str(adapter)]), ("zero", ["--lora", f"{adapter}:0"])):
        path = tmp_path / f"{name}.png"
        assert main(["generate", "a red circle", "--model", str(if_folders / "IF-I"), "--steps", "2", "-o", str(path),
                     "-q", *extra]) == 0
        outs[name] = np.asarray(Image.open(path))
    assert np.array_equal(outs["zero"], outs["base"]) and not np.array_equal(outs["lora"], outs["base"])


def test_an_if_folder_whose_config_lacks_a_field_is_one_line(if_folders, tmp_path, capsys):
    """config.yml without `encoder_dim`: generate and train each say which field is missing (not a KeyError
    traceback, and not "unknown training preset")."""
    import shutil
    broken = tmp_path / "IF-II"
    shutil.copytree(if_folders / "IF-II", broken)
    text = (broken / "config.yml").read_text().replace("  encoder_dim: 16\n", "")
    (broken / "config.yml").write_text(text)
    for args in (["generate", "a", "--model", f"{if_folders / 'IF-I'},{broken}", "-o", str(tmp_path / "x.png")],
                 ["train", "files128-sr", "-o", str(tmp_path / "run"), f"train.init_from={broken}"]):
        assert main(args + ["-q"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "lacks the field 'encoder_dim'" in err[0] and "preset" not in err[0], err
