"""Schedules and respacing against the official code, diffusers' IF timestep lists and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pixelcascade.diffusion.schedule import RESPACING_PRESETS, make_schedule, space_timesteps


def test_cosine_schedule_closed_form():
    s = make_schedule("cosine")
    ab = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for i in (0, 1, 250, 499, 998):
        assert s.alphas_cumprod[i] == pytest.approx(ab((i + 1) / 1000) / ab(0), rel=1e-9)
    assert s.betas[-1] == 0.999 and s.betas[0] == pytest.approx(4.13e-5, rel=1e-2)
    assert s.alphas_cumprod[499] == pytest.approx(0.4938, abs=1e-4)


@pytest.mark.parametrize("name", sorted(RESPACING_PRESETS))
def test_presets_equal_diffusers_if_lists(name):
    pytest.importorskip("diffusers")
    import diffusers.pipelines.deepfloyd_if.timesteps as T
    expected = getattr(T, f"{name}_timesteps")
    got = sorted(space_timesteps(1000, name), reverse=True)
    assert got == list(expected)


@pytest.mark.parametrize("spec", ["150", "100", "27", "ddim25", "10,10,3,2,2", "20,20,20,20,10,0,0,0,0,0",
                                  "1,1,1,1,2,2,2,2,2,2,3,3,4,4,5,5,6,7,7,8,9,10,13"])
def test_space_timesteps_equals_official(deepfloyd, spec):
    assert space_timesteps(1000, spec) == deepfloyd.respace.space_timesteps(1000, spec)


def test_plain_counts_and_errors():
    assert sorted(space_timesteps(1000, "100"))[-2:] == [989, 999]
    assert sorted(space_timesteps(1000, 4)) == [0, 333, 666, 999]
    with pytest.raises(ValueError, match="unknown step spec 'smart51'"):
        space_timesteps(1000, "smart51")
    with pytest.raises(ValueError, match="cannot divide"):
        space_timesteps(10, "20")


def test_respaced_chain_equals_official_spaced_diffusion(deepfloyd):
    spec = RESPACING_PRESETS["smart50"]
    ref = deepfloyd.respace.create_gaussian_diffusion(steps=1000, learn_sigma=True, noise_schedule="cosine",
                                                      rescale_timesteps=True, timestep_respacing=spec)
    ours = make_schedule().respace("smart50")
    assert list(ours.timesteps) == ref.timestep_map
    for name in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "posterior_variance",
                 "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"):
        np.testing.assert_allclose(getattr(ours, name), getattr(ref, name), rtol=1e-10, atol=1e-14, err_msg=name)


def test_q_sample_moments():
    s = make_schedule()
    x0 = torch.full((20000, 1), 0.7)
    t = torch.full((20000,), 300)
    xt = s.q_sample(x0, t, torch.randn(20000, 1, generator=torch.Generator().manual_seed(0)))
    ab = s.alphas_cumprod[300]
    assert xt.mean().item() == pytest.approx(math.sqrt(ab) * 0.7, abs=0.02)
    assert xt.var().item() == pytest.approx(1 - ab, rel=0.05)


def test_parameterizations_round_trip():
    s = make_schedule()
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 900])  # at t=999 fp32 x0-from-eps is ill-conditioned (1/sqrt(ab) ~ 2e4)
    xt = s.q_sample(x0, t, eps)
    torch.testing.assert_close(s.x0_from_eps(xt, t, eps), x0, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(s.eps_from_x0(xt, t, x0), eps, atol=1e-2, rtol=1e-3)
    v = s.v_target(x0, t, eps)  # x0 = sqrt(ab) x_t - sqrt(1-ab) v
    torch.testing.assert_close(s.sqrt_ab(t) * xt - s.sqrt_1m_ab(t) * v, x0, atol=1e-5, rtol=1e-5)
