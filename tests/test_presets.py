"""IF presets built on the meta device: exact parameter counts and the official key names and shapes."""

from __future__ import annotations

import pytest
import torch

from pixelcascade.models.unet import build_unet
from pixelcascade.presets import PRESETS, get_preset


def _meta(name):
    with torch.device("meta"):
        return build_unet(get_preset(name))


def test_if_i_xl_exact_parameter_count_and_keys():
    m = _meta("IF-I-XL")
    sd = m.state_dict()
    assert sum(p.numel() for p in m.parameters()) == 4_304_695_110
    assert len(sd) == 643
    assert tuple(sd["input_blocks.5.1.qkv.weight"].shape) == (3 * 1408, 1408, 1)
    assert tuple(sd["input_blocks.13.1.encoder_kv.weight"].shape) == (2 * 2816, 2816, 1)
    assert tuple(sd["encoder_pooling.1.q_proj.weight"].shape) == (4096, 4096)
    assert tuple(sd["encoder_proj.weight"].shape) == (2816, 4096)
    assert tuple(sd["out.2.weight"].shape) == (6, 704, 3, 3)
    assert "output_blocks.3.2.in_layers.2.weight" in sd and "output_blocks.15.1.qkv.weight" not in sd


def test_if_ii_l_exact_parameter_count_and_keys():
    m = _meta("IF-II-L")
    sd = m.state_dict()
    assert sum(p.numel() for p in m.parameters()) == 1_243_277_190
    assert len(sd) == 801
    assert tuple(sd["input_blocks.0.0.weight"].shape) == (160, 6, 3, 3)
    assert "aug_proj.2.weight" in sd and "output_blocks.15.1.in_layers.0.weight" in sd


def test_if_xl_matches_official_key_names_and_shapes(deepfloyd):
    from conftest import official_kwargs
    cfg = get_preset("IF-I-XL")
    with torch.device("meta"):
        ref = deepfloyd.unet.UNetModel(**official_kwargs(cfg))
    ours = _meta("IF-I-XL").state_dict()
    assert {k: tuple(v.shape) for k, v in ref.state_dict().items()} == {k: tuple(v.shape) for k, v in ours.items()}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name):
    m = _meta(name)
    assert sum(p.numel() for p in m.parameters()) > 0


def test_unknown_preset_lists_known():
    with pytest.raises(KeyError, match="IF-I-XL"):
        get_preset("IF-I-XXL")


def test_a_short_run_warms_up_for_a_tenth_of_it_unless_told():
    from pixelcascade.presets import run_preset
    assert run_preset("files64").train.warmup_steps == 500
    assert run_preset("files64", ["train.max_steps=40"]).train.warmup_steps == 4
    assert run_preset("files64", ["train.max_steps=40", "train.warmup_steps=30"]).train.warmup_steps == 30
    assert run_preset("shapes32", ["train.max_steps=50000"]).train.warmup_steps == 200  # longer: as the preset
