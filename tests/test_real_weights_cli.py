"""`generate --model` on IF-format folders (tiny random weights): a diffusers IF pipeline folder whose T5 is
found inside it, an official stage II folder (config.yml + .bin), offloading, and the clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import randomize, tiny_cfg

from pixelcascade import convert
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
