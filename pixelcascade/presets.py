"""The one registry of presets: networks (the released IF models and the small models trained on this machine),
IF's sampling defaults, and training runs (a network with its diffusion, sampling defaults, data and training
settings).

IF-I-XL and IF-II-L are the published configs (reference/if-anchor.md 1.6). IF-I-L/M and IF-II-M configs
are not public: these presets follow the IF family's rules (width = heads x 64, encoder_channels =
time_embed_dim for stage I) at the published parameter budgets; loading a real checkpoint reads its
``config.yml`` or infers the config from the state dict (``convert.infer_unet_config``) instead.
"""

from __future__ import annotations

import dataclasses

from .config import DataConfig, DiffusionConfig, RunConfig, SampleConfig, TrainConfig, UNetConfig, apply_overrides

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


# --------------------------------------------------------------------------------------------------
# sampling defaults: IF's own (its pipelines' settings), used for a model whose file records none

SAMPLING_PRESETS: dict[str, SampleConfig] = {
    "IF-I": SampleConfig(sampler="ddpm", num_steps="smart100", guidance_scale=7.0, dyn_thresh_max=1.5),
    "IF-II": SampleConfig(sampler="ddpm", num_steps="smart50", guidance_scale=4.0, dyn_thresh_max=1.0,
                          aug_level=0.25),
}


def default_sampling(super_res: bool) -> SampleConfig:
    """IF's sampling settings for a text-to-image stage or a super-resolution one."""
    return SAMPLING_PRESETS["IF-II" if super_res else "IF-I"]


# --------------------------------------------------------------------------------------------------
# training runs

RUN_PRESETS: dict[str, RunConfig] = {
    "shapes32": RunConfig(
        name="shapes32", unet=get_preset("shapes32-I"),
        diffusion=DiffusionConfig(min_snr_gamma=5.0),
        sample=SampleConfig(sampler="ddpm", num_steps="smart27", guidance_scale=3.0, dyn_thresh_max=1.5),
        data=DataConfig(world="shapes", image_size=32, num_images=60000, seed=0, text_max_length=32),
        train=TrainConfig(lr=3e-4, batch_size=64, max_steps=20000, warmup_steps=200, ema_decay=0.999,
                          ckpt_every=250, val_every=250),
    ),
    "shapes64-sr": RunConfig(
        # v-prediction: an eps model cannot express x0 at the first sampling step (SNR ~1e-9 at t=999), and the
        # colour error of that step survived the whole chain as a tint (docs/models.md, "Stage II")
        name="shapes64-sr", unet=get_preset("shapes64-II"),
        diffusion=DiffusionConfig(prediction="v"),
        sample=SampleConfig(sampler="ddpm", num_steps="smart27", guidance_scale=1.0, dyn_thresh_max=1.0,
                            aug_level=0.25),
        data=DataConfig(world="shapes", image_size=64, num_images=30000, seed=1, text_max_length=32,
                        low_res_size=32),
        train=TrainConfig(lr=3e-4, batch_size=32, max_steps=6000, warmup_steps=200, ema_decay=0.999,
                          ckpt_every=250, val_every=250),
    ),
    "shapes128-sr": RunConfig(
        name="shapes128-sr", unet=get_preset("shapes128-III"), diffusion=DiffusionConfig(),
        sample=SampleConfig(sampler="ddpm", num_steps="smart27", guidance_scale=1.0, dyn_thresh_max=1.0,
                            aug_level=0.25),
        data=DataConfig(world="shapes", image_size=128, num_images=20000, seed=2, text_max_length=32,
                        low_res_size=64),
        train=TrainConfig(lr=3e-4, batch_size=16, max_steps=6000, warmup_steps=200, ema_decay=0.999,
                          ckpt_every=250, val_every=250),
    ),
    # the emoji cascade: stage I at 64 px, stage II 64 -> 128, MiniLM text, the curated emoji set
    "emoji64": RunConfig(
        name="emoji64", unet=get_preset("emoji64-I"), diffusion=DiffusionConfig(min_snr_gamma=5.0),
        sample=SampleConfig(sampler="ddpm", num_steps="smart50", guidance_scale=4.0, dyn_thresh_max=1.5),
        data=DataConfig(world="emoji", image_size=64, num_images=0, seed=0, text_max_length=24),
        train=TrainConfig(lr=2e-4, batch_size=32, max_steps=30000, warmup_steps=500, ckpt_every=250,
                          val_every=250, sample_steps="smart27", sample_guidance=4.0),
    ),
    "emoji128-sr": RunConfig(
        # v-prediction: an eps super-resolution model cannot express x0 at the first step (SNR ~1e-9), and
        # the colour error of that step survives the chain (the shapes stage II tint, README)
        name="emoji128-sr", unet=get_preset("emoji128-II"), diffusion=DiffusionConfig(prediction="v"),
        sample=SampleConfig(sampler="ddpm", num_steps="smart27", guidance_scale=2.0, dyn_thresh_max=1.0,
                            aug_level=0.25),
        data=DataConfig(world="emoji", image_size=128, num_images=0, seed=0, text_max_length=24, low_res_size=64),
        train=TrainConfig(lr=2e-4, batch_size=16, max_steps=15000, warmup_steps=500, ckpt_every=250,
                          val_every=250),
    ),
    "tiny": RunConfig(
        name="tiny", unet=dataclasses.replace(get_preset("tiny"), image_size=32, encoder_dim=384, encoder_channels=32),
        sample=SampleConfig(num_steps="4", guidance_scale=2.0),
        data=DataConfig(world="shapes", image_size=32, num_images=64, seed=0, text_max_length=16),
        train=TrainConfig(batch_size=8, max_steps=4, warmup_steps=2, ckpt_every=2, val_every=2, log_every=1),
    ),
}


# your own data (data.path=DATASET): the emoji cascade's two stages (64 px, 64 -> 128) and training settings
for _emoji, _files in (("emoji64", "files64"), ("emoji128-sr", "files128-sr")):
    _p = RUN_PRESETS[_emoji]
    RUN_PRESETS[_files] = dataclasses.replace(_p, name=_files, data=dataclasses.replace(
        _p.data, world="files", text_max_length=32))


def run_preset(name: str, overrides: list[str] | None = None) -> RunConfig:
    """A run preset with dotted overrides (``["train.lr=1e-4"]``), checked against each field's type. A shorter
    run than the preset's (train.max_steps given, train.warmup_steps not) warms up for at most a tenth of it: a
    40-step trial of a 30,000-step preset does not spend its whole run in the 500-step warm-up."""
    if name not in RUN_PRESETS:
        raise KeyError(f"unknown training preset {name!r}; known: {', '.join(RUN_PRESETS)}")
    overrides = list(overrides or [])
    cfg = apply_overrides(RUN_PRESETS[name], overrides)
    given = {o.split("=", 1)[0].strip() for o in overrides}
    if "train.max_steps" in given and "train.warmup_steps" not in given:
        tc = cfg.train
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(
            tc, warmup_steps=min(tc.warmup_steps, max(1, tc.max_steps // 10))))
    return cfg
