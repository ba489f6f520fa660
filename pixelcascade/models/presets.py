"""Named UNet presets: the released IF models and the small models trained on this machine.

IF-I-XL and IF-II-L are the published configs (reference/if-anchor.md 1.6). IF-I-L/M and IF-II-M configs
are not public: these presets follow the IF family's rules (width = heads x 64, encoder_channels =
time_embed_dim for stage I) at the published parameter budgets; loading a real checkpoint reads its
``config.yml`` or infers the config from the state dict (``convert.infer_unet_config``) instead.
"""

from __future__ import annotations

import dataclasses

from ..config import UNetConfig

_STAGE_I = dict(image_size=64, in_channels=3, out_channels=6, channel_mult=(1, 2, 3, 4),
                attention_resolutions=(32, 16, 8), num_head_channels=64, encoder_dim=4096, att_pool_heads=64)
_STAGE_II = dict(image_size=256, in_channels=6, out_channels=6, channel_mult=(1, 2, 4, 6, 8),
                 num_res_blocks=(2, 2, 3, 5, 5), attention_resolutions=(32, 16), num_head_channels=64,
                 encoder_dim=4096, att_pool_heads=64, efficient_activation=True, scale_skip_connection=True,
                 super_res=True)


def _stage_i(mc: int, nrb: int) -> UNetConfig:
    return UNetConfig(model_channels=mc, num_res_blocks=(nrb,) * 4, encoder_channels=mc * 4, **_STAGE_I)


def _stage_ii(mc: int) -> UNetConfig:
    return UNetConfig(model_channels=mc, encoder_channels=mc * 8, **_STAGE_II)


PRESETS: dict[str, UNetConfig] = {
    # released IF models (4.3B exact / ~935M / ~372M; 1.2B exact / ~482M)
    "IF-I-XL": _stage_i(704, 3),
    "IF-I-L": _stage_i(320, 3),
    "IF-I-M": _stage_i(192, 3),
    "IF-II-L": _stage_ii(160),
    "IF-II-M": _stage_ii(96),
    # the scaled-down IF-I used by the speed anchors (reference/perf-anchors.md, config if64_t5xxl)
    "if64-t5xxl": UNetConfig(model_channels=64, num_res_blocks=(2, 2, 2, 2), encoder_channels=256,
                             **{**_STAGE_I}),
    # small models for this machine (MiniLM, 384-d tokens)
    "shapes32-I": UNetConfig(image_size=32, model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=(1, 1, 2),
                             attention_resolutions=(16, 8), num_head_channels=32, encoder_dim=384,
                             encoder_channels=128, att_pool_heads=6),
    "shapes64-II": UNetConfig(image_size=64, in_channels=6, model_channels=32, channel_mult=(1, 2, 4),
                              num_res_blocks=(1, 1, 2), attention_resolutions=(16,), num_head_channels=32,
                              encoder_dim=384, encoder_channels=128, att_pool_heads=6, efficient_activation=True,
                              scale_skip_connection=True, super_res=True),
    # a third pixel stage of our own for the shapes cascade: 64 -> 128
    "shapes128-III": UNetConfig(image_size=128, in_channels=6, model_channels=32, channel_mult=(1, 1, 2, 4),
                                num_res_blocks=(1, 1, 1, 2), attention_resolutions=(16,), num_head_channels=32,
                                encoder_dim=384, encoder_channels=128, att_pool_heads=6, efficient_activation=True,
                                scale_skip_connection=True, super_res=True),
    # the emoji cascade (64 px, then 64 -> 128); small enough to ship in the package (10.0M + 7.7M parameters)
    "emoji64-I": UNetConfig(image_size=64, model_channels=64, channel_mult=(1, 2, 2, 2), num_res_blocks=(1, 1, 2, 2),
                            attention_resolutions=(16, 8), num_head_channels=32, encoder_dim=384,
                            encoder_channels=128, att_pool_heads=6),
    "emoji128-II": UNetConfig(image_size=128, in_channels=6, model_channels=32, channel_mult=(1, 2, 4, 4),
                              num_res_blocks=(1, 1, 2, 2), attention_resolutions=(16,), num_head_channels=32,
                              encoder_dim=384, encoder_channels=128, att_pool_heads=6, efficient_activation=True,
                              scale_skip_connection=True, super_res=True),
    "tiny": UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1),
                       attention_resolutions=(8,), num_head_channels=16, encoder_dim=24, encoder_channels=32,
                       att_pool_heads=4),
    "tiny-sr": UNetConfig(image_size=32, in_channels=6, model_channels=32, channel_mult=(1, 2),
                          num_res_blocks=(1, 2), attention_resolutions=(16,), num_head_channels=16,
                          encoder_dim=24, encoder_channels=32, att_pool_heads=4, efficient_activation=True,
                          scale_skip_connection=True, super_res=True),
}


def get_preset(name: str, **overrides) -> UNetConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown UNet preset {name!r}; known: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
