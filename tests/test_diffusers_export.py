"""`export --format diffusers`: diffusers' own IF pipelines, loaded from the exported folder, draw our pixels."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import FixedStates as _Encoder
from conftest import randomize, tiny_cfg

from pixelcascade.config import DiffusionConfig, SampleConfig
from pixelcascade.diffusers_export import export_diffusers
from pixelcascade.models.unet import build_unet
from pixelcascade.pipeline import Cascade, Stage

diffusers = pytest.importorskip("diffusers")
from pixelcascade.diffusion.schedule import space_timesteps  # noqa: E402

SEEDS = [3, 11]
STEPS = "12"  # a short respacing (the parity tests cover IF's presets); diffusers takes the same timesteps
TIMESTEPS = sorted(space_timesteps(1000, STEPS), reverse=True)
SETTINGS = SampleConfig(sampler="ddpm", num_steps=STEPS, guidance_scale=5.0, dyn_thresh_p=0.95, dyn_thresh_max=1.5)


def _states(dim, seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 8, dim, generator=g), torch.randn(2, 8, dim, generator=g) * 0.1


def _theirs(folder, emb, unc, **kw):
    cls = diffusers.IFSuperResolutionPipeline if "low_res" in kw else diffusers.IFPipeline
    pipe = cls.from_pretrained(str(folder))
    extra = {"image": kw.pop("low_res"), "noise_level": 250} if kw else {}
    return pipe(prompt_embeds=emb, negative_prompt_embeds=unc, timesteps=TIMESTEPS, guidance_scale=5.0,
                generator=[torch.Generator().manual_seed(s) for s in SEEDS], output_type="pt", **extra).images


def test_a_stage_i_and_a_stage_ii_exported_draw_the_same_pixels_in_diffusers(tmp_path):
    s1 = Stage(randomize(build_unet(tiny_cfg(image_size=16)), seed=1).eval(), DiffusionConfig(), SETTINGS)
    emb, unc = _states(s1.cfg.encoder_dim)
    export_diffusers(s1, tmp_path / "if-i")
    ours = Cascade([s1], _Encoder(emb, unc)).run(["a", "b"], SEEDS)[0]
    assert (ours - _theirs(tmp_path / "if-i", emb, unc).clamp(-1, 1)).abs().max() <= 1e-4
    s2 = Stage(randomize(build_unet(tiny_cfg(super_res=True, image_size=32)), seed=2).eval(), DiffusionConfig(),
               dataclasses.replace(SETTINGS, guidance_scale=5.0, dyn_thresh_max=1.0, aug_level=0.25))
    export_diffusers(s2, tmp_path / "if-ii")
    both = Cascade([s1, s2], _Encoder(emb, unc)).run(["a", "b"], SEEDS)
    ref = _theirs(tmp_path / "if-ii", emb, unc, low_res=both[0])
    assert (both[1] - ref.clamp(-1, 1)).abs().max() <= 1e-4


def test_a_lora_run_exports_merged_and_a_model_with_non_if_layers_is_refused(tmp_path, capsys):
    pytest.importorskip("peft")
    from test_lora import _lora_run
    from test_training import _cfg, _data

    from pixelcascade.cli import main
    from pixelcascade.training.loop import Trainer
    from pixelcascade.weights import load_stage
    Trainer(_cfg(), _data(), tmp_path / "base", progress=False).fit(max_steps=2)
    run = _lora_run(tmp_path, tmp_path / "base" / "ema.safetensors", "lora", 3)
    assert main(["export", str(tmp_path / "lora"), "--format", "diffusers", "-o", str(tmp_path / "dif")]) == 0
    assert main(["export", str(tmp_path / "lora"), "--merge-lora", "--dtype", "fp32", "-o",
                 str(tmp_path / "m.safetensors")]) == 0
    stage = load_stage(tmp_path / "m.safetensors")
    stage.settings = SETTINGS
    emb, unc = _states(stage.cfg.encoder_dim)
    ours = Cascade([stage], _Encoder(emb, unc)).run(["a", "b"], SEEDS)[0]
    pipe = diffusers.IFPipeline.from_pretrained(str(tmp_path / "dif"))
    ref = pipe(prompt_embeds=emb, negative_prompt_embeds=unc, timesteps=TIMESTEPS, guidance_scale=5.0,
               generator=[torch.Generator().manual_seed(s) for s in SEEDS], output_type="pt",
               height=16, width=16).images
    # the exported scheduler has the run's own thresholding; ours here uses SETTINGS: same values for this preset
    assert (ours - ref.clamp(-1, 1)).abs().max() <= 1e-4
    with torch.no_grad():  # the merged adapter is in the exported weights (not the base's)
        x, t = torch.randn(1, 3, 16, 16), torch.tensor([500.0])
        assert (run.ema.model(x, t, emb[:1]) - load_stage(tmp_path / "base" / "ema.safetensors").unet(
            x, t, emb[:1])).abs().max() > 1e-6
    whiten = dataclasses.replace(_cfg(), unet=dataclasses.replace(_cfg().unet, text_whiten=True))
    Trainer(whiten, _data(), tmp_path / "white", progress=False).fit(max_steps=1)
    capsys.readouterr()
    assert main(["export", str(tmp_path / "white"), "--format", "diffusers", "-o", str(tmp_path / "w")]) != 0
    err = capsys.readouterr().err
    assert "cannot export as diffusers" in err and "layers IF does not" in err and "Traceback" not in err
