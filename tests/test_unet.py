"""The UNets against the official code and diffusers on the same weights; input checks; precisions."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import official_kwargs, randomize, tiny_cfg

from pixelcascade import convert
from pixelcascade.models.unet import build_unet

TOL = 1e-4


def _official(deepfloyd, cfg):
    if cfg.super_res:
        low = deepfloyd.respace.create_gaussian_diffusion(steps=1000, noise_schedule="cosine")
        return deepfloyd.unet.SuperResUNetModel(low, "bilinear", **official_kwargs(cfg)).eval()
    return deepfloyd.unet.UNetModel(**official_kwargs(cfg)).eval()


def test_stage_i_matches_official(deepfloyd):
    cfg = tiny_cfg()
    ref = randomize(_official(deepfloyd, cfg))
    ours = build_unet(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # official key names, strict
    g = torch.Generator().manual_seed(1)
    x, te = torch.randn(3, 3, 32, 32, generator=g), torch.randn(3, 77, 48, generator=g)
    t = torch.tensor([0.0, 437.0, 999.0])
    with torch.no_grad():
        a, b = ref(x, t, te), ours(x, t, te)
    assert a.abs().mean() > 1e-3  # the comparison is not between two zero tensors
    assert (a - b).abs().max() <= TOL


def test_stage_ii_matches_official_with_same_aug_noise(deepfloyd):
    from pixelcascade.diffusion.guidance import aug_level_to_t, noise_augment
    from pixelcascade.diffusion.schedule import make_schedule
    cfg = tiny_cfg(super_res=True)
    ref = randomize(_official(deepfloyd, cfg), seed=3)
    ours = build_unet(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    g = torch.Generator().manual_seed(2)
    x, te = torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 77, 48, generator=g)
    low = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    t = torch.tensor([5.0, 800.0])
    torch.manual_seed(123)  # the official model draws its augmentation noise from the global RNG
    with torch.no_grad():
        a = ref(x, t, low_res=low, aug_level=0.25, text_emb=te)
    noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(123))
    aug_t = aug_level_to_t(0.25, 2)
    aug = noise_augment(low, (32, 32), aug_t, make_schedule(), noise)
    with torch.no_grad():
        b = ours(x, t, te, low_res=aug, aug_t=aug_t)
    assert a.abs().mean() > 1e-3
    assert (a - b).abs().max() <= TOL


@pytest.mark.parametrize("super_res", [False, True])
def test_matches_diffusers_after_conversion(super_res):
    diffusers = pytest.importorskip("diffusers")
    cfg = tiny_cfg(super_res=super_res)
    ours = randomize(build_unet(cfg).eval(), seed=4)
    ref = diffusers.UNet2DConditionModel(**convert.diffusers_config(cfg)).eval()
    ref.load_state_dict(convert.official_to_diffusers(ours.state_dict(), cfg), strict=True)
    g = torch.Generator().manual_seed(5)
    x, te = torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 77, 48, generator=g)
    t = torch.tensor([3, 999])
    with torch.no_grad():
        if super_res:
            low, aug = torch.randn(2, 3, 32, 32, generator=g), torch.tensor([250, 0])
            a = ours(x, t.float(), te, low_res=low, aug_t=aug)
            b = ref(torch.cat([x, low], 1), t, encoder_hidden_states=te, class_labels=aug).sample
        else:
            a, b = ours(x, t.float(), te), ref(x, t, encoder_hidden_states=te).sample
    assert a.abs().mean() > 1e-3
    assert (a - b).abs().max() <= TOL
    # and back: diffusers -> official is the exact inverse
    back = convert.diffusers_to_official(ref.state_dict(), cfg)
    assert back.keys() == ours.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())
    assert convert.config_from_diffusers(convert.diffusers_config(cfg)) == cfg


def test_text_only_attention_matches_official(deepfloyd):
    cfg = tiny_cfg(disable_self_attentions=(8,))
    kw = official_kwargs(cfg)
    ref = randomize(deepfloyd.unet.UNetModel(disable_self_attentions="8", **kw).eval())
    ours = build_unet(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x, te, t = torch.randn(2, 3, 32, 32), torch.randn(2, 10, 48), torch.tensor([1.0, 500.0])
    with torch.no_grad():
        assert (ref(x, t, te) - ours(x, t, te)).abs().max() <= TOL


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_runs_close_to_fp32(dtype):
    cfg = tiny_cfg()
    m = randomize(build_unet(cfg).eval(), std=0.03)
    x, te, t = torch.randn(2, 3, 32, 32), torch.randn(2, 12, 48), torch.tensor([10.0, 900.0])
    with torch.no_grad():
        ref = m(x, t, te)
        out = m.to(dtype)(x, t, te)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() <= 0.05 * ref.abs().max() + 1e-3


def test_wrong_text_width_is_one_clear_error():
    m = build_unet(tiny_cfg())
    with pytest.raises(ValueError, match=r"text_emb must be \[B, L, 48\].*got \(1, 77, 4096\)"):
        m(torch.randn(1, 3, 32, 32), torch.tensor([1.0]), torch.randn(1, 77, 4096))


def test_indivisible_image_size_is_one_clear_error():
    m = build_unet(tiny_cfg())
    with pytest.raises(ValueError, match="30x32 cannot be divided by 4"):
        m(torch.randn(1, 3, 30, 32), torch.tensor([1.0]), torch.randn(1, 7, 48))


def test_non_square_and_other_resolutions_run():
    m = build_unet(tiny_cfg()).eval()
    with torch.no_grad():
        out = m(torch.randn(1, 3, 24, 40), torch.tensor([1.0]), torch.randn(1, 7, 48))
    assert out.shape == (1, 6, 24, 40)


def test_encode_text_cache_gives_the_same_output():
    m = randomize(build_unet(tiny_cfg()).eval())
    x, te, t = torch.randn(2, 3, 32, 32), torch.randn(2, 9, 48), torch.tensor([3.0, 30.0])
    with torch.no_grad():
        assert torch.equal(m(x, t, te), m(x, t, text_cond=m.encode_text(te)))


@pytest.mark.parametrize("dtype,lq,lk,tol", [(torch.float32, 200, 77, 1e-5), (torch.float32, 1024, 1101, 1e-5),
                                             (torch.bfloat16, 1024, 1101, 2e-2), (torch.float16, 300, 90, 5e-3)])
@pytest.mark.parametrize("chunk", [None, 5000])
def test_attention_blocks_equal_the_reference(dtype, lq, lk, tol, chunk, monkeypatch):
    """Our CPU attention (GEMM blocks sized to the cache, uneven last blocks included) against plain math."""
    import pixelcascade.nn as pnn
    if chunk:
        monkeypatch.setattr(pnn, "ATTN_CHUNK_ELEMENTS", chunk)  # many small blocks over batch x head and queries
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, n, 32, generator=g) for n in (lq, lk, lk))
    ref = torch.softmax(q.double() @ k.double().transpose(-1, -2) / 32 ** 0.5, -1) @ v.double()
    out = pnn.attention(q.to(dtype), k.to(dtype), v.to(dtype))
    assert out.shape == ref.shape and out.dtype == dtype
    assert (out.double() - ref).abs().max() < tol


@pytest.mark.parametrize("super_res", [False, True])
def test_attention_position_starts_as_the_model_without_it(super_res):
    """unet.attention_position (not in IF): zero-initialised, so IF weights loaded into it give the same output;
    with trained (here random) weights it breaks the attention's indifference to where a pixel is."""
    base = randomize(build_unet(tiny_cfg(super_res)).eval())
    withp = build_unet(tiny_cfg(super_res, attention_position=True)).eval()
    missing, unexpected = withp.load_state_dict(base.state_dict(), strict=False)
    assert unexpected == [] and missing and all(".pos_proj." in k for k in missing)
    assert not any("pos_proj" in k for k in base.state_dict())  # IF's key names when False
    x, te, t = torch.randn(2, 3, 32, 32), torch.randn(2, 9, 48), torch.tensor([3.0, 300.0])
    kw = {"low_res": torch.randn(2, 3, 32, 32), "aug_t": torch.tensor([0, 100])} if super_res else {}
    with torch.no_grad():
        assert torch.equal(base(x, t, te, **kw), withp(x, t, te, **kw))
        blocks = [m for m in withp.modules() if hasattr(m, "pos_proj")]
        assert blocks
        for m in blocks:
            randomize(m.pos_proj, seed=1, std=0.3)
        assert not torch.allclose(base(x, t, te, **kw), withp(x, t, te, **kw), atol=1e-4)
        # one block alone: without position, attention commutes with a mirror image; with it, it does not
        blk = blocks[0]
        h = torch.randn(2, blk.heads * blk.head_ch, 6, 6)
        enc = torch.randn(2, blk.encoder_kv.in_features, 5)
        pos = blk.pos_proj
        del blk.pos_proj
        assert torch.allclose(blk(h.flip(-1), enc), blk(h, enc).flip(-1), atol=1e-5)
        blk.pos_proj = pos
        assert not torch.allclose(blk(h.flip(-1), enc), blk(h, enc).flip(-1), atol=1e-3)


def test_position_features_are_sinusoids_of_centred_coordinates():
    from pixelcascade.models.attention_position import POSITION_FREQS, position_features
    f = position_features(2, 4)  # rows y in {-0.5, 0.5}, columns x in {-0.75, -0.25, 0.25, 0.75}
    assert f.shape == (8, 4 * POSITION_FREQS)
    k = POSITION_FREQS
    y, x = -0.5, 0.25  # pixel (row 0, column 2)
    want = [math.sin(math.pi * 2 ** i * y) for i in range(k)] + [math.sin(math.pi * 2 ** i * x) for i in range(k)]
    want += [math.cos(math.pi * 2 ** i * y) for i in range(k)] + [math.cos(math.pi * 2 ** i * x) for i in range(k)]
    assert torch.allclose(f[2], torch.tensor(want), atol=1e-6)
    assert torch.allclose(position_features(3, 5), position_features(3, 5))  # non-square sizes work


@pytest.mark.parametrize("super_res", [False, True])
def test_either_layout_computes_the_same(super_res):
    """set_layout is an execution choice: channels-last and NCHW give the same output and gradients (fp32)."""
    cfg = tiny_cfg(super_res=super_res)
    model = randomize(build_unet(cfg).train(), seed=2)
    g = torch.Generator().manual_seed(3)
    x, te = torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 77, 48, generator=g)
    kw = dict(low_res=torch.randn(2, 3, 32, 32, generator=g), aug_t=torch.tensor([250, 0])) if super_res else {}
    results = []
    for channels_last in (True, False):
        model.set_layout(channels_last)
        model.zero_grad()
        out = model(x, torch.tensor([3.0, 999.0]), te, **kw)
        out.square().mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
        assert model.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last) is channels_last
    (a, ga), (b, gb) = results
    assert (a - b).abs().max() <= 1e-5
    assert all(torch.allclose(u, v, atol=1e-5, rtol=1e-4) for u, v in zip(ga, gb))
