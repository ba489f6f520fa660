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
    from pixelcascade.models.unet import POSITION_FREQS, position_features
    f = position_features(2, 4)  # rows y in {-0.5, 0.5}, columns x in {-0.75, -0.25, 0.25, 0.75}
    assert f.shape == (8, 4 * POSITION_FREQS)
    k = POSITION_FREQS
    y, x = -0.5, 0.25  # pixel (row 0, column 2)
    want = [math.sin(math.pi * 2 ** i * y) for i in range(k)] + [math.sin(math.pi * 2 ** i * x) for i in range(k)]
    want += [math.cos(math.pi * 2 ** i * y) for i in range(k)] + [math.cos(math.pi * 2 ** i * x) for i in range(k)]
    assert torch.allclose(f[2], torch.tensor(want), atol=1e-6)
    assert torch.allclose(position_features(3, 5), position_features(3, 5))  # non-square sizes work


def _text_option_inputs(super_res):
    """Inputs for the tiny models of the text-option tests: (x, text_emb, t, super-resolution kwargs)."""
    x, te, t = torch.randn(2, 3, 32, 32), torch.randn(2, 9, 48), torch.tensor([3.0, 300.0])
    kw = {"low_res": torch.randn(2, 3, 32, 32), "aug_t": torch.tensor([0, 100])} if super_res else {}
    return x, te, t, kw


def _with_text_option(super_res, prefix, **option):
    """A random model and the same model with a zero-initialised text option (new keys named ``prefix``...)
    loaded from its weights, plus inputs."""
    base = randomize(build_unet(tiny_cfg(super_res)).eval())
    withx = build_unet(tiny_cfg(super_res, **option)).eval()
    missing, unexpected = withx.load_state_dict(base.state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.startswith(prefix) for k in missing)
    assert not any(k.startswith(prefix) for k in base.state_dict())  # IF's key names when off
    return base, withx, *_text_option_inputs(super_res)


@pytest.mark.parametrize("super_res", [False, True])
def test_text_position_starts_as_the_model_without_it(super_res):
    """unet.text_position (not in IF): the token index through a zero-initialised map. Loaded with a model's
    weights it gives exactly that model's output; trained (here random), it makes the text keys depend on
    where a token stands, which the encoder's states alone may not (the same state at two places)."""
    base, withp, x, te, t, kw = _with_text_option(super_res, "text_pos_proj.", text_position=True)
    same = te.clone()
    same[:, 6] = same[:, 2]  # token 2 repeated at index 6: one state, two places
    with torch.no_grad():
        assert torch.equal(base(x, t, te, **kw), withp(x, t, te, **kw))
        assert torch.equal(base.encode_text(same)[0][..., 2], base.encode_text(same)[0][..., 6])
        randomize(withp.text_pos_proj, seed=1, std=0.3)
        assert not torch.equal(base(x, t, te, **kw), withp(x, t, te, **kw))
        enc = withp.encode_text(same)[0]  # [B, C_enc, L]
        assert (enc[..., 2] - enc[..., 6]).abs().max() > 0.1


@pytest.mark.parametrize("super_res", [False, True])
def test_text_context_starts_as_the_model_without_it(super_res):
    """unet.text_context (not in IF): zero-initialised, so a model's weights give exactly its output; trained
    (here random), a token's key depends on what precedes and follows it: the same state followed by another
    token and preceded by it gives two keys."""
    base, withc, x, te, t, kw = _with_text_option(super_res, "text_ctx_proj.", text_context=True)
    a, b = torch.randn(48), torch.randn(48)
    ab, ba = te.clone(), te.clone()  # "... a b ..." and "... b a ...": token a at index 2 in both
    ab[:, 2], ab[:, 3] = a, b
    ba[:, 1], ba[:, 2] = b, a
    ba[:, 3] = ab[:, 1]
    with torch.no_grad():
        assert torch.equal(base(x, t, te, **kw), withc(x, t, te, **kw))
        randomize(withc.text_ctx_proj, seed=1, std=0.3)
        assert (base.encode_text(te)[0] - withc.encode_text(te)[0]).abs().max() > 0.1
        assert not torch.equal(base(x, t, te, **kw), withc(x, t, te, **kw))
        assert torch.equal(base.encode_text(ab)[0][..., 2], base.encode_text(ba)[0][..., 2])
        assert (withc.encode_text(ab)[0][..., 2] - withc.encode_text(ba)[0][..., 2]).abs().max() > 0.1


@pytest.mark.parametrize("super_res", [False, True])
def test_text_whiten_starts_as_the_model_without_it(super_res):
    """unet.text_whiten (not in IF): whatever the whitening buffers hold, the zero-initialised map keeps a loaded
    model's output exactly; trained (here random), the whitened states change it."""
    base, withw, x, te, t, kw = _with_text_option(super_res, "text_white", text_whiten=True)
    assert sorted(k for k in withw.state_dict() if k.startswith("text_white")) == [
        "text_white_map", "text_white_mean", "text_white_proj.bias", "text_white_proj.weight"]
    with torch.no_grad():
        g = torch.Generator().manual_seed(2)
        withw.text_white_mean.copy_(torch.randn(48, generator=g))
        withw.text_white_map.copy_(torch.randn(48, 48, generator=g) / 48 ** 0.5)
        assert torch.equal(base(x, t, te, **kw), withw(x, t, te, **kw))
        randomize(withw.text_white_proj, seed=1, std=0.3)
        assert (base.encode_text(te)[0] - withw.encode_text(te)[0]).abs().max() > 0.1
        assert not torch.equal(base(x, t, te, **kw), withw(x, t, te, **kw))


@pytest.mark.parametrize("super_res", [False, True])
def test_text_whiten_attn_fold_keeps_the_model_and_attention_then_reads_whitened_states(super_res):
    """unet.text_whiten_attn (not in IF): cross-attention reads the whitened states. A model trained with the
    additive path loads into it and, folded (UNet.fold_white_attn), gives the same output; unfolded it does
    not. After the fold, encoder_proj's input is the whitened states themselves."""
    from pixelcascade.config import ConfigError
    with pytest.raises(ConfigError, match="needs unet.text_whiten=true"):
        tiny_cfg(super_res, text_whiten_attn=True)
    add = build_unet(tiny_cfg(super_res, text_whiten=True)).eval()
    randomize(add)
    with torch.no_grad():
        g = torch.Generator().manual_seed(2)
        add.text_white_mean.copy_(torch.randn(48, generator=g))
        q = torch.randn(48, 48, generator=g) / 48 ** 0.5
        add.text_white_map.copy_(q @ q.T + 0.3 * torch.eye(48))  # a ZCA map is symmetric positive definite
        randomize(add.text_white_proj, seed=1, std=0.1)
    attn = build_unet(tiny_cfg(super_res, text_whiten=True, text_whiten_attn=True)).eval()
    attn.load_state_dict(add.state_dict())  # strict: the same keys
    x, te, t, kw = _text_option_inputs(super_res)
    te = te * 2
    with torch.no_grad():
        want, keys = add(x, t, te, **kw), add.encode_text(te)[0]
        assert (attn.encode_text(te)[0] - keys).abs().max() > 0.1  # unfolded: other text keys
        attn.fold_white_attn()
        assert torch.allclose(attn.encode_text(te)[0], keys, atol=1e-4)
        assert torch.allclose(attn(x, t, te, **kw), want, atol=1e-5)
        assert torch.equal(attn.encode_text(te)[1], add.encode_text(te)[1])  # the pooled vector is untouched
        white = (te - attn.text_white_mean) @ attn.text_white_map
        assert torch.allclose(attn.encode_text(te)[0], attn.encoder_proj(white).transpose(1, 2), atol=1e-6)


@pytest.mark.parametrize("super_res", [False, True])
def test_text_whiten_pool_and_attn_make_the_unet_read_only_the_whitened_states(super_res):
    """unet.text_whiten_pool (not in IF): the attention pooling reads the whitened states. With text_whiten_attn
    too, the UNet is a function of w = (x - mean) @ map alone: the states and the states plus anything the map
    sends to zero give one output, and the pooled vector is encoder_pooling(w). A style prompt's states
    (pooled_text_emb) go through the same map. Config refuses it without text_whiten."""
    from pixelcascade.config import ConfigError
    with pytest.raises(ConfigError, match="needs unet.text_whiten=true"):
        tiny_cfg(super_res, text_whiten_pool=True)
    net = randomize(build_unet(tiny_cfg(super_res, text_whiten=True, text_whiten_attn=True,
                                        text_whiten_pool=True)).eval())
    x, te, t, kw = _text_option_inputs(super_res)
    with torch.no_grad():
        g = torch.Generator().manual_seed(2)
        net.text_white_mean.copy_(torch.randn(48, generator=g))
        q = torch.randn(48, 47, generator=g) / 48 ** 0.5
        zmap = q @ q.T  # rank 47: one direction (its null space) that the whitened states ignore
        net.text_white_map.copy_(zmap)
        null = torch.linalg.eigh(zmap)[1][:, 0]
        white = (te - net.text_white_mean) @ net.text_white_map
        assert torch.allclose(net.encode_text(te)[1], net.encoder_pooling(white), atol=1e-6)
        moved = te + 3.0 * null  # differs from te only along the map's null space
        assert (moved - te).abs().max() > 0.1
        assert torch.allclose(net(x, t, moved, **kw), net(x, t, te, **kw), atol=1e-5)
        style = torch.randn(te.shape, generator=g)
        got = net.encode_text(te, pooled_text_emb=style)[1]
        assert torch.allclose(got, net.encoder_pooling((style - net.text_white_mean) @ zmap), atol=1e-6)
        off = build_unet(tiny_cfg(super_res, text_whiten=True, text_whiten_attn=True)).eval()
        res = off.load_state_dict(net.state_dict(), strict=False)  # the option adds no weights...
        assert not res.unexpected_keys  # ...and drops the additive map, which nothing would read
        assert sorted(res.missing_keys) == ["text_white_proj.bias", "text_white_proj.weight"]
        assert (off.encode_text(te)[1] - net.encode_text(te)[1]).abs().max() > 1e-3  # float error: ~1e-7
    # every parameter gets a gradient (DDP with find_unused_parameters=False needs that)
    net.train()
    net(x, t, te, **kw).square().mean().backward()
    assert [n for n, p in net.named_parameters() if p.grad is None] == []


def test_whitening_stats_equalise_the_directions_the_states_use():
    """Analytic oracle: in the covariance's eigenbasis the whitened variances are c * lam / (lam + eps * mean lam),
    so every direction well above eps comes out at the same variance c, whatever its own; the whitened states
    keep the states' mean square; chunking does not change the result."""
    from pixelcascade.models.unet import WHITEN_EPS, whitening_stats
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([8.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    rot = torch.linalg.qr(torch.randn(6, 6, generator=g))[0]
    x = (torch.randn(20000, 6, generator=g) * scales) @ rot + 2.0
    mean, zca = whitening_stats(x.reshape(400, 50, 6), chunk=777)
    assert torch.allclose(mean, x.mean(0), atol=1e-4)
    w = (x - mean) @ zca
    assert torch.allclose(w.pow(2).mean(), x.pow(2).mean(), rtol=1e-4)
    lam, vec = torch.linalg.eigh(torch.cov(x.T, correction=0).double())
    got = torch.diag(vec.T @ torch.cov(w.T, correction=0).double() @ vec)
    ratio = lam / (lam + WHITEN_EPS * lam.mean())
    c = got[-1] / ratio[-1]
    assert torch.allclose(got, c * ratio, rtol=1e-2)
    assert got[3:].max() / got[3:].min() < 1.15  # variances 64, 9 and 1 (a 64x spread): equal after whitening
    m2, z2 = whitening_stats(x.reshape(400, 50, 6))
    assert torch.allclose(z2, zca, atol=1e-5) and torch.allclose(m2, mean, atol=1e-5)


def test_context_weights_are_decaying_one_sided_means():
    from pixelcascade.models.unet import TEXT_CONTEXT_DECAY as d
    from pixelcascade.models.unet import context_weights
    before, after = context_weights(6)
    x = torch.randn(6, 3)
    for i in range(6):
        want_b = sum((1 - d) * d ** (i - 1 - j) * x[j] for j in range(i)) if i else torch.zeros(3)
        want_a = sum((1 - d) * d ** (j - 1 - i) * x[j] for j in range(i + 1, 6)) if i < 5 else torch.zeros(3)
        assert torch.allclose((before @ x)[i], want_b, atol=1e-6)
        assert torch.allclose((after @ x)[i], want_a, atol=1e-6)
    assert torch.allclose(context_weights(200)[0].sum(1)[-1], torch.tensor(1.0), atol=1e-6)  # a mean, far in


def test_token_position_features_are_monotone_sinusoids():
    from pixelcascade.models.unet import TEXT_POSITION_FEATURES, token_position_features
    f = token_position_features(77)
    assert f.shape == (77, TEXT_POSITION_FEATURES)
    half = TEXT_POSITION_FEATURES // 2
    assert torch.allclose(f[5, 0], torch.tensor(math.cos(5.0)))
    assert torch.allclose(f[5, half], torch.tensor(math.sin(5.0)))
    slowest = f[:, half - 1]  # cos at the longest period: decreasing over any prompt, so "earlier" is linear
    assert (slowest[1:] < slowest[:-1]).all()
    assert torch.equal(token_position_features(10), f[:10])


@pytest.mark.parametrize("super_res", [False, True])
def test_text_layers_start_as_the_model_without_them(super_res):
    """unet.text_layers (not in IF) are zero-initialised residual layers: with a model's weights loaded and the
    new layers fresh, the output is exactly the old model's; once trained they change it, and they see word
    order (the same tokens in another order give other states)."""
    base = randomize(build_unet(tiny_cfg(super_res)).eval())
    withl = build_unet(tiny_cfg(super_res, text_layers=2)).eval()
    missing, unexpected = withl.load_state_dict(base.state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.startswith("text_layers.") for k in missing)
    assert not any(k.startswith("text_layers") for k in base.state_dict())  # IF's key names when 0
    x, te, t = torch.randn(2, 3, 32, 32), torch.randn(2, 9, 48), torch.tensor([3.0, 300.0])
    kw = {"low_res": torch.randn(2, 3, 32, 32), "aug_t": torch.tensor([0, 100])} if super_res else {}
    with torch.no_grad():
        assert torch.equal(base(x, t, te, **kw), withl(x, t, te, **kw))
        randomize(withl.text_layers, seed=1, std=0.3)
        assert (base.encode_text(te)[0] - withl.encode_text(te)[0]).abs().max() > 0.1
        assert not torch.equal(base(x, t, te, **kw), withl(x, t, te, **kw))
        layers = withl.text_layers
        swapped = te[:, [1, 0] + list(range(2, 9))]
        assert not torch.allclose(layers(te)[:, 0], layers(swapped)[:, 1], atol=1e-4)  # position matters
