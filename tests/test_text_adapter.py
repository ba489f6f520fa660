"""The text adapter (models/text_adapter.py, not in IF): each option starts as the model without it, off it is
IF's UNet key for key, and its parts (token position, neighbours, whitening, layers) do what they say."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import randomize, tiny_cfg

from pixelcascade.config import ConfigError, TextAdapterConfig, UNetConfig
from pixelcascade.models.unet import build_unet


def test_the_adapter_config_is_the_unets_text_fields_and_checks_them():
    cfg = UNetConfig(text_whiten=True, text_whiten_attn=True, encoder_channels=128)
    assert cfg.adapter == TextAdapterConfig(dim=4096, whiten=True, whiten_attn=True)
    assert UNetConfig().adapter == TextAdapterConfig(dim=4096)  # everything off: IF
    with pytest.raises(ConfigError, match="needs unet.text_whiten=true"):
        UNetConfig(text_whiten_pool=True)
    with pytest.raises(ConfigError, match="cannot be combined with unet.text_layers"):
        TextAdapterConfig(layers=1, whiten=True, whiten_attn=True)


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
    from pixelcascade.models.text_adapter import WHITEN_EPS, whitening_stats
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
    from pixelcascade.models.text_adapter import TEXT_CONTEXT_DECAY as d
    from pixelcascade.models.text_adapter import context_weights
    before, after = context_weights(6)
    x = torch.randn(6, 3)
    for i in range(6):
        want_b = sum((1 - d) * d ** (i - 1 - j) * x[j] for j in range(i)) if i else torch.zeros(3)
        want_a = sum((1 - d) * d ** (j - 1 - i) * x[j] for j in range(i + 1, 6)) if i < 5 else torch.zeros(3)
        assert torch.allclose((before @ x)[i], want_b, atol=1e-6)
        assert torch.allclose((after @ x)[i], want_a, atol=1e-6)
    assert torch.allclose(context_weights(200)[0].sum(1)[-1], torch.tensor(1.0), atol=1e-6)  # a mean, far in


def test_token_position_features_are_monotone_sinusoids():
    from pixelcascade.models.text_adapter import TEXT_POSITION_FEATURES, token_position_features
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
