"""Loading by path: our safetensors, official and diffusers folders; clear errors for bad checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import randomize, tiny_cfg

from pixelcascade import convert, model_files
from pixelcascade.config import to_json
from pixelcascade.models.unet import build_unet


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, 32, 32, generator=g), torch.tensor([10.0]), torch.randn(1, 7, 48, generator=g)


def test_our_safetensors_round_trip(tmp_path):
    cfg = tiny_cfg()
    m = randomize(build_unet(cfg).eval())
    convert.write_safetensors(tmp_path / "m.safetensors", m.state_dict(), {"unet_config": to_json(cfg)})
    loaded, meta = model_files.load_unet(tmp_path / "m.safetensors")
    assert loaded.cfg == cfg and json.loads(meta["unet_config"])["model_channels"] == 32
    x, t, te = _inputs()
    with torch.no_grad():
        assert torch.equal(m(x, t, te), loaded(x, t, te))


def test_official_folder_with_config_yml_and_bin(tmp_path):
    cfg = tiny_cfg()
    m = randomize(build_unet(cfg).eval())
    torch.save(m.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.yml").write_text(
        "params:\n  image_size: 32\n  in_channels: 3\n  out_channels: 6\n  model_channels: 32\n"
        '  channel_mult: "1,2,3"\n  num_res_blocks: [1, 2, 1]\n  attention_resolutions: "16,8"\n'
        "  num_head_channels: 64\n  encoder_dim: 48\n  encoder_channels: 96\n  att_pool_heads: 4\n"
        '  activation: "gelu"\n  precision: "16"\n'.replace("num_head_channels: 64", "num_head_channels: 16"))
    loaded, _ = model_files.load_unet(tmp_path)
    assert loaded.cfg == cfg


def test_diffusers_folder(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    cfg = tiny_cfg()
    ours = randomize(build_unet(cfg).eval(), seed=2)
    ref = diffusers.UNet2DConditionModel(**convert.diffusers_config(cfg))
    ref.load_state_dict(convert.official_to_diffusers(ours.state_dict(), cfg))
    ref.save_pretrained(tmp_path / "unet")  # diffusion_pytorch_model.safetensors + config.json
    loaded, _ = model_files.load_unet(tmp_path)  # the pipeline folder: finds unet/
    x, t, te = _inputs()
    with torch.no_grad():
        assert (loaded(x, t, te) - ours(x, t, te)).abs().max() <= 1e-6


def test_infer_config_from_state_dict_alone():
    for cfg in (tiny_cfg(image_size=64, attention_resolutions=(32, 16)), tiny_cfg(super_res=True, image_size=256,
                                                                              attention_resolutions=(128, 64))):
        sd = build_unet(cfg).state_dict()
        got = convert.infer_unet_config(sd)
        assert (got.channel_mult, got.num_res_blocks, got.attention_resolutions, got.super_res) == \
            (cfg.channel_mult, cfg.num_res_blocks, cfg.attention_resolutions, cfg.super_res)


def test_mismatched_checkpoint_names_the_first_mismatches():
    m = build_unet(tiny_cfg())
    sd = build_unet(tiny_cfg(model_channels=64)).state_dict()
    sd.pop("out.2.bias")
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(model_files.CheckpointError) as e:
        model_files.load_state_dict_checked(m, sd)
    msg = str(e.value)
    assert "missing keys: out.2.bias" in msg and "unexpected keys: extra.weight" in msg
    assert "shape mismatches: time_embed.0.weight: checkpoint (192, 64) vs model (96, 32)" in msg
    assert "fix:" in msg


def test_missing_path_and_corrupt_file(tmp_path):
    with pytest.raises(model_files.CheckpointError, match="does not exist"):
        model_files.load_unet(tmp_path / "nope")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(model_files.CheckpointError, match="corrupt or truncated"):
        model_files.load_unet(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(model_files.CheckpointError, match="no weights in"):
        model_files.load_unet(tmp_path / "empty")


def test_bin_files_are_loaded_without_running_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({"x": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(model_files.CheckpointError, match="was refused: .* names code to run") as e:
        convert.read_tensors(tmp_path / "pytorch_model.bin")
    assert "weights_only=False" not in str(e.value)


@pytest.mark.parametrize("option", ["text_whiten", "attention_position"])
def test_conversion_refuses_layers_if_does_not_have(option):
    """A model with layers IF lacks is refused by name, both ways, instead of converted without them (diffusers
    would load the result without a missing key and compute something else)."""
    cfg = tiny_cfg(**{option: True})
    sd = build_unet(cfg).state_dict()
    with pytest.raises(model_files.CheckpointError, match="no counterpart in diffusers' IF UNet.*cannot be converted"):
        convert.official_to_diffusers(sd, cfg)
    plain = convert.official_to_diffusers(build_unet(tiny_cfg()).state_dict(), tiny_cfg())
    with pytest.raises(model_files.CheckpointError, match="first: extra.weight"):
        convert.diffusers_to_official({**plain, "extra.weight": torch.zeros(1)}, tiny_cfg())
