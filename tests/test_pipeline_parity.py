"""Our pipelines against diffusers' IF pipelines on the same tiny random weights and the same noise.

Each image has its own generator on both sides (diffusers takes a list of generators), and both draw in the
same order: the starting noise, the noise augmentation of the low-res input (stage II), then one draw per step.
Covers text-to-image with guidance + dynamic thresholding on smart27, the two-stage cascade with noise
augmentation, image-to-image at strength 0.6 and inpainting.
"""

from __future__ import annotations

import pytest
import torch
from conftest import FixedStates as _Encoder
from conftest import randomize, tiny_cfg

from pixelcascade import convert
from pixelcascade.config import DiffusionConfig, SampleConfig
from pixelcascade.models.unet import SuperResUNet, UNet
from pixelcascade.pipeline import Cascade, Stage

diffusers = pytest.importorskip("diffusers")
from diffusers.pipelines.deepfloyd_if.timesteps import smart27_timesteps  # noqa: E402

SEEDS = [3, 11]
TOL = 1e-4


def _stage(cfg, seed, settings):
    unet = (SuperResUNet if cfg.super_res else UNet)(cfg)
    randomize(unet, seed=seed)
    return Stage(unet.eval(), DiffusionConfig(), settings)


def _scheduler(max_value):
    return diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                   variance_type="learned_range", thresholding=True, dynamic_thresholding_ratio=0.95,
                                   sample_max_value=max_value, prediction_type="epsilon", clip_sample=True)


def _diffusers_unet(stage):
    ref = diffusers.UNet2DConditionModel(**convert.diffusers_config(stage.cfg))
    ref.load_state_dict(convert.official_to_diffusers(stage.unet.state_dict(), stage.cfg))
    return ref.eval()


def _gens():
    return [torch.Generator().manual_seed(s) for s in SEEDS]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    s1 = _stage(tiny_cfg(image_size=16), 1, SampleConfig(sampler="ddpm", num_steps="smart27", guidance_scale=5.0,
                                                            dyn_thresh_p=0.95, dyn_thresh_max=1.5))
    s2 = _stage(tiny_cfg(super_res=True, image_size=32), 2,
                SampleConfig(sampler="ddpm", num_steps="smart27", guidance_scale=4.0, dyn_thresh_p=0.95,
                             dyn_thresh_max=1.0, aug_level=0.25))
    g = torch.Generator().manual_seed(5)
    emb = torch.randn(2, 8, s1.cfg.encoder_dim, generator=g)
    unc = torch.randn(2, 8, s1.cfg.encoder_dim, generator=g) * 0.1
    return s1, s2, emb, unc


def _if_pipe(cls, stage, **extra):
    return cls(tokenizer=None, text_encoder=None, unet=_diffusers_unet(stage), scheduler=_scheduler(
        stage.settings.dyn_thresh_max), safety_checker=None, feature_extractor=None, watermarker=None,
        requires_safety_checker=False, **extra)


def test_text_to_image_and_cascade_equal_diffusers(setup):
    s1, s2, emb, unc = setup
    ours = Cascade([s1, s2], _Encoder(emb, unc)).run(["a", "b"], SEEDS)
    p1 = _if_pipe(diffusers.IFPipeline, s1)
    ref1 = p1(prompt_embeds=emb, negative_prompt_embeds=unc, timesteps=smart27_timesteps, guidance_scale=5.0,
              generator=_gens(), output_type="pt", height=16, width=16).images
    assert (ours[0] - ref1.clamp(-1, 1)).abs().max() <= TOL
    p2 = _if_pipe(diffusers.IFSuperResolutionPipeline, s2, image_noising_scheduler=diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2"))
    ref2 = p2(image=ref1.clamp(-1, 1), prompt_embeds=emb, negative_prompt_embeds=unc, timesteps=smart27_timesteps,
              guidance_scale=4.0, noise_level=250, generator=_gens(), output_type="pt", height=32, width=32).images
    assert (ours[1] - ref2.clamp(-1, 1)).abs().max() <= TOL
    assert ours[1].std() > 0.05  # a real image, not a collapsed constant


def test_negative_prompts_equal_diffusers(setup):
    """negative_prompts replace the empty prompt's states in guidance's unconditional branch, as diffusers'
    negative_prompt(_embeds); "" keeps the empty prompt for that image."""
    s1, _, emb, unc = setup
    neg = torch.randn(1, *emb.shape[1:], generator=torch.Generator().manual_seed(8))

    class Named(_Encoder):  # states by text
        def __call__(self, prompts):
            table = {"a": emb[0], "b": emb[1], "blurry": neg[0]}
            return torch.stack([table[p] for p in prompts]), None

    enc = Named(emb, unc)
    ours = Cascade([s1], enc).run(["a", "b"], SEEDS, negative_prompts=["blurry", ""])[0]
    ref = _if_pipe(diffusers.IFPipeline, s1)(
        prompt_embeds=emb, negative_prompt_embeds=torch.stack([neg[0], unc[1]]), timesteps=smart27_timesteps,
        guidance_scale=5.0, generator=_gens(), output_type="pt", height=16, width=16).images
    assert (ours - ref.clamp(-1, 1)).abs().max() <= TOL
    plain = Cascade([s1], enc).run(["a", "b"], SEEDS)[0]
    assert (ours[0] - plain[0]).abs().max() > 1e-4 and torch.equal(ours[1], plain[1])  # (a weak random UNet)
    both = Cascade([s1], enc).run(["a", "b"], SEEDS, negative_prompts="blurry")[0]  # one for all
    assert torch.equal(both[0], ours[0]) and (both[1] - plain[1]).abs().max() > 1e-4
    from pixelcascade.pipeline import PipelineError
    with pytest.raises(PipelineError, match="3 negative prompts for 2 prompts"):
        Cascade([s1], enc).run(["a", "b"], SEEDS, negative_prompts=["x", "y", "z"])


def test_img2img_and_inpainting_equal_diffusers(setup):
    s1, _, emb, unc = setup
    g = torch.Generator().manual_seed(9)
    init = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 2:9] = 1
    enc = _Encoder(emb, unc)
    for cls, m, strength in ((diffusers.IFImg2ImgPipeline, None, 0.6), (diffusers.IFInpaintingPipeline, mask, 0.8)):
        ours = Cascade([s1], enc).run(["a", "b"], SEEDS, init_image=init, strength=strength, mask=m)[0]
        kw = {} if m is None else {"mask_image": m}
        ref = _if_pipe(cls, s1)(image=init, prompt_embeds=emb, negative_prompt_embeds=unc,
                                timesteps=smart27_timesteps, strength=strength, guidance_scale=5.0,
                                generator=_gens(), output_type="pt", **kw).images
        assert (ours - ref.clamp(-1, 1)).abs().max() <= TOL, cls.__name__
        if m is not None:  # the known pixels are the input's, exactly
            assert torch.equal(ours * (1 - m), init * (1 - m))
        assert (ours - init).abs().max() > 0.05  # and the prompt changed the rest
