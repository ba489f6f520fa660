"""Samplers against analytic oracles (exact denoisers of Gaussian data) and the official sampling loop."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import official_kwargs, randomize, tiny_cfg

from pixelcascade.diffusion.denoiser import Denoiser, Prediction
from pixelcascade.diffusion.schedule import RESPACING_PRESETS, make_schedule
from pixelcascade.models.unet import build_unet
from pixelcascade.samplers import SAMPLERS, get_sampler, sample_ddpm

FULL = make_schedule()


class GaussianMixtureOracle:
    """The exact posterior mean E[x0 | x_t] for data ~ sum_k w_k N(mu_k, s_k^2), per pixel."""

    def __init__(self, mus, stds, weights):
        self.mus, self.stds, self.w = (torch.tensor(v, dtype=torch.float64) for v in (mus, stds, weights))

    def __call__(self, x, t, cond) -> Prediction:
        ab = torch.from_numpy(FULL.alphas_cumprod)[t].view(-1, 1, 1, 1, 1)  # [B,1,1,1,1]
        xt = x.double()[..., None]  # [B, C, H, W, 1]
        a = ab.sqrt()
        var = ab * self.stds**2 + (1 - ab)  # marginal variance of x_t per component
        logp = torch.log(self.w) - 0.5 * torch.log(var) - 0.5 * (xt - a * self.mus) ** 2 / var
        r = torch.softmax(logp, dim=-1)  # responsibilities
        post = self.mus + a * self.stds**2 / var * (xt - a * self.mus)  # per-component E[x0 | x_t]
        x0 = (r * post).sum(-1).float()
        return Prediction(x0=x0, eps=FULL.eps_from_x0(x, t, x0), var=None)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_gaussian_data_mean_and_std(name):
    oracle = GaussianMixtureOracle([0.3], [0.5], [1.0])
    x = torch.randn(8000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    steps = FULL.respace("100")
    out = get_sampler(name)(oracle, x, steps, cond=None, generator=torch.Generator().manual_seed(1))
    assert out.mean().item() == pytest.approx(0.3, abs=0.03)
    assert out.std().item() == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("name", ["ddpm", "dpmpp_2m"])
def test_gaussian_mixture_modes(name):
    oracle = GaussianMixtureOracle([-0.6, 0.6], [0.1, 0.1], [0.3, 0.7])
    x = torch.randn(8000, 1, 1, 1, generator=torch.Generator().manual_seed(2))
    out = get_sampler(name)(oracle, x, FULL.respace("smart50"), cond=None, generator=torch.Generator().manual_seed(3))
    right = out > 0
    assert right.float().mean().item() == pytest.approx(0.7, abs=0.03)
    assert out[right].std().item() == pytest.approx(0.1, abs=0.03)
    assert out[right].mean().item() == pytest.approx(0.6, abs=0.03)


def test_dynamic_thresholding_matches_official(deepfloyd):
    from pixelcascade.diffusion.guidance import dynamic_threshold
    ref = deepfloyd.respace.create_gaussian_diffusion(steps=10, noise_schedule="cosine")
    x = torch.randn(4, 3, 8, 8) * torch.tensor([0.5, 1.2, 2.0, 4.0]).view(4, 1, 1, 1)
    for c in (1.0, 1.5):
        torch.testing.assert_close(dynamic_threshold(x, 0.95, c), ref.dynamic_thresholding(x, p=0.95, c=c))


@pytest.mark.parametrize("n", [1, 7, 100, 3 * 32 * 32, 3 * 64 * 64])
def test_quantile_is_torch_quantile_bit_for_bit(n):
    from pixelcascade.diffusion.guidance import quantile
    g = torch.Generator().manual_seed(n)
    for p in (0.0, 0.5, 0.9, 0.95, 0.99, 0.995, 1.0):
        flat = torch.randn(4, n, generator=g).abs()
        assert torch.equal(quantile(flat, p), torch.quantile(flat, p, dim=-1)), (n, p)


def _official_cfg_model_fn(model, scale):
    """IF's classifier-free guidance wrapper (deepfloyd_if/modules/base.py), for the reference run."""
    def model_fn(x_t, ts, **kwargs):
        half = x_t[: len(x_t) // 2]
        combined = torch.cat([half, half], dim=0)
        out = model(combined, ts, **kwargs)
        eps, rest = out[:, :3], out[:, 3:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + scale * (cond_eps - uncond_eps)
        return torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=1)
    return model_fn


@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_full_respaced_run_matches_official(deepfloyd, guidance):
    """One whole smart27 sampling run, same weights and same noise: the same image."""
    cfg = tiny_cfg()
    ref = randomize(deepfloyd.unet.UNetModel(**official_kwargs(cfg)).eval(), std=0.03)
    ours = build_unet(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    g = torch.Generator().manual_seed(7)
    te, ue = torch.randn(2, 77, 48, generator=g), torch.randn(2, 77, 48, generator=g)
    spec = RESPACING_PRESETS["smart27"]
    diff = deepfloyd.respace.create_gaussian_diffusion(steps=1000, learn_sigma=True, noise_schedule="cosine",
                                                      rescale_timesteps=True, rescale_learned_sigmas=True,
                                                      timestep_respacing=spec)
    B = 2
    if guidance != 1.0:
        fn, shape, kw = _official_cfg_model_fn(ref, guidance), (2 * B, 3, 32, 32), {"text_emb": torch.cat([te, ue])}
    else:
        fn, shape, kw = ref, (B, 3, 32, 32), {"text_emb": te}
    torch.manual_seed(11)
    with torch.no_grad():
        expected = diff.p_sample_loop(fn, shape, clip_denoised=True, dynamic_thresholding_p=0.95,
                                      dynamic_thresholding_c=1.5, model_kwargs=kw, device="cpu")[:B]
    replay = torch.Generator().manual_seed(11)  # the official draws: full batch each time, first B used

    def noise(_k, _shape):
        return torch.randn(shape, generator=replay)[:B]

    den = Denoiser(ours)
    cond = den.condition(te, ue if guidance != 1.0 else None, guidance_scale=guidance, dyn_thresh_p=0.95,
                         dyn_thresh_max=1.5)
    x = noise(-1, None)
    got = sample_ddpm(den, x, make_schedule().respace("smart27"), cond=cond, noise=noise)
    assert expected.abs().mean() > 0.05
    assert (got - expected).abs().max() <= 1e-4


def test_unknown_sampler_message():
    with pytest.raises(ValueError, match="unknown sampler 'euler'; choose one of: ddpm, ddim, dpmpp_2m"):
        get_sampler("euler")


def test_callback_sees_every_step():
    oracle = GaussianMixtureOracle([0.0], [1.0], [1.0])
    seen = []
    steps = FULL.respace("smart27")
    sample_ddpm(oracle, torch.randn(2, 1, 1, 1), steps, cond=None, callback=lambda k, n, x, p: seen.append((k, n)))
    assert seen == [(k, 27) for k in range(27)]
    assert math.isclose(len(steps), 27)
