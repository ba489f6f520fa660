"""Configs: dotted overrides checked against field types."""

from __future__ import annotations

import pytest

from pixelcascade.config import ConfigError, RunConfig, UNetConfig, apply_overrides, from_dict, to_dict


def test_overrides_are_typed():
    cfg = apply_overrides(RunConfig(), ["train.lr=1e-4", "unet.channel_mult=1,2,2", "train.bf16=false",
                                       "unet.num_res_blocks=(1,1,1)", "sample.num_steps=smart50"])
    assert cfg.train.lr == 1e-4 and cfg.unet.channel_mult == (1, 2, 2) and cfg.train.bf16 is False
    assert cfg.unet.num_res_blocks == (1, 1, 1) and cfg.sample.num_steps == "smart50"


@pytest.mark.parametrize("bad,match", [("train.lr=fast", "expected a number"), ("train.lrate=1", "no field 'lrate'"),
                                       ("train.batch_size=3.5", "expected an integer"), ("lr", "key=value"),
                                       ("nope.x=1", "not a config section"),
                                       ("train.batch_size=inf", "expected an integer"),  # was OverflowError
                                       ("train.batch_size=nan", "expected an integer"),  # was ValueError
                                       ("unet.model_channels=1000000000", r"outside what a UNet config can hold"),
                                       ("unet.num_res_blocks=1,100000", "0..64 blocks a level")])
def test_bad_overrides_are_clear(bad, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(RunConfig(), [bad])


def test_round_trip_and_validation():
    cfg = RunConfig()
    assert from_dict(RunConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="one count per level"):
        UNetConfig(channel_mult=(1, 2), num_res_blocks=(1, 1, 1))
    for not_a_mapping in ([], None, 1, "x"):
        with pytest.raises(ConfigError, match="expected a mapping of fields"):
            from_dict(UNetConfig, not_a_mapping)
