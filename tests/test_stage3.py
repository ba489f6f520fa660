"""Stage III: SD x4 upscaler from a local folder as a cascade stage (a tiny random one here), offloading."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import randomize, tiny_cfg
from test_clip_score import _bytes_to_unicode

from pixelcascade.config import DiffusionConfig, SampleConfig
from pixelcascade.models.unet import UNet
from pixelcascade.pipeline import Cascade, PipelineError, Stage

diffusers = pytest.importorskip("diffusers")

FAST = SampleConfig(sampler="ddim", num_steps="3", guidance_scale=9.0, aug_level=0.1)


@pytest.fixture(scope="module")
def sdx4_folder(tmp_path_factory):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    d = tmp_path_factory.mktemp("sdx4")
    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(vocab=str(d / "vocab.json"), merges=str(d / "merges.txt"), model_max_length=77)
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 32, 64), layers_per_block=1, sample_size=16, in_channels=7, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, use_linear_projection=True, only_cross_attention=(True, True, False),
        num_class_embeds=1000)
    vae = diffusers.AutoencoderKL(block_out_channels=[32, 32, 64], in_channels=3, out_channels=3,
                                  down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
                                  latent_channels=4, scaling_factor=0.08333)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=77,
                                      bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                                      pad_token_id=vocab["<|endoftext|>"]))
    pipe = diffusers.StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=te, tokenizer=tok, unet=unet, low_res_scheduler=diffusers.DDPMScheduler(),
        scheduler=diffusers.DDIMScheduler(prediction_type="v_prediction"), max_noise_level=350)
    pipe.save_pretrained(d / "pipe")
    return d / "pipe"


class _Encoder:
    def __call__(self, prompts):
        return torch.randn(len(prompts), 8, 48, generator=torch.Generator().manual_seed(1)), None

    def empty(self, n):
        return torch.zeros(n, 8, 48), None


def _stage1():
    unet = randomize(UNet(tiny_cfg(image_size=16)), seed=1).eval()
    return Stage(unet, DiffusionConfig(), SampleConfig(sampler="ddpm", num_steps="4", guidance_scale=3.0))


def test_sdx4_as_third_stage_equals_its_pipeline(sdx4_folder):
    from pixelcascade.stage3 import SDx4Stage
    sd = SDx4Stage(sdx4_folder, settings=FAST)
    cascade = Cascade([_stage1(), sd], _Encoder())
    outs = cascade.run(["a red circle", "two squares"], [4, 5], progress=True)
    assert [tuple(o.shape) for o in outs] == [(2, 3, 16, 16), (2, 3, 64, 64)]
    ref = sd.pipe(prompt=["a red circle", "two squares"], image=(outs[0] + 1) / 2, num_inference_steps=3,
                  guidance_scale=9.0, noise_level=100, output_type="pt",
                  generator=[torch.Generator().manual_seed(s) for s in (4, 5)]).images
    assert (outs[1] - (ref * 2 - 1).clamp(-1, 1)).abs().max() < 1e-5
    # offloading runs each model on the device in turn and gives the same images
    off = Cascade([_stage1(), sd], _Encoder(), offload="cpu").run(["a red circle", "two squares"], [4, 5])
    assert torch.equal(off[1], outs[1])


def test_sdx4_errors(tmp_path, sdx4_folder):
    from pixelcascade.stage3 import SDx4Stage
    with pytest.raises(PipelineError, match="not a stable-diffusion-x4-upscaler folder"):
        SDx4Stage(tmp_path)
    with pytest.raises(PipelineError, match="first stage is a super-resolution"):
        Cascade([SDx4Stage(sdx4_folder)], _Encoder())


def test_three_pixel_stages():
    """Our own third stage: any number of SuperResUNet stages chain, each at its native ratio."""
    from pixelcascade.models.unet import SuperResUNet
    s2 = Stage(randomize(SuperResUNet(tiny_cfg(super_res=True, image_size=32)), seed=2).eval(), DiffusionConfig(),
               SampleConfig(sampler="ddpm", num_steps="3", guidance_scale=2.0, dyn_thresh_max=1.0, aug_level=0.25))
    s3 = Stage(randomize(SuperResUNet(tiny_cfg(super_res=True, image_size=64)), seed=3).eval(), DiffusionConfig(),
               SampleConfig(sampler="ddpm", num_steps="2", guidance_scale=1.0, dyn_thresh_max=1.0, aug_level=0.0))
    outs = Cascade([_stage1(), s2, s3], _Encoder()).run(["x"], [0])
    assert [o.shape[-1] for o in outs] == [16, 32, 64]
