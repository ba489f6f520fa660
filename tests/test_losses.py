"""The hybrid loss against the official training_losses; min-SNR weights against their closed form."""

from __future__ import annotations

import pytest
import torch

from pixelcascade.config import DiffusionConfig
from pixelcascade.diffusion.losses import diffusion_loss, fixed_timesteps_loss, snr
from pixelcascade.diffusion.schedule import make_schedule


def test_hybrid_loss_matches_official(deepfloyd):
    ref = deepfloyd.respace.create_gaussian_diffusion(steps=1000, learn_sigma=True, noise_schedule="cosine",
                                                     rescale_timesteps=True, rescale_learned_sigmas=True)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(6, 3, 8, 8, generator=g)
    out = torch.randn(6, 6, 8, 8, generator=g) * 0.5
    out[:, 3:] = out[:, 3:].tanh()
    t = torch.tensor([0, 1, 10, 300, 700, 999])
    terms_ref = ref.training_losses(lambda *a, **k: out, x0, t, noise=noise)
    s = make_schedule()
    ours = diffusion_loss(out, x0, s.q_sample(x0, t, noise), t, noise, s, DiffusionConfig())
    for key in ("mse", "vb", "loss"):
        torch.testing.assert_close(ours[key], terms_ref[key], rtol=1e-4, atol=1e-5, msg=key)


def test_vlb_term_trains_only_the_variance():
    s = make_schedule()
    x0, noise = torch.rand(2, 3, 4, 4) * 2 - 1, torch.randn(2, 3, 4, 4)
    out = torch.randn(2, 6, 4, 4, requires_grad=True)
    t = torch.tensor([5, 500])
    terms = diffusion_loss(out, x0, s.q_sample(x0, t, noise), t, noise, s, DiffusionConfig())
    terms["vb"].sum().backward()
    assert out.grad[:, :3].abs().max() == 0 and out.grad[:, 3:].abs().max() > 0


def test_min_snr_weighting():
    s = make_schedule()
    t = torch.tensor([10, 500, 990])
    x0, noise, out = torch.zeros(3, 3, 2, 2), torch.ones(3, 3, 2, 2), torch.zeros(3, 3, 2, 2)  # mse = 1 each
    cfg = DiffusionConfig(learned_variance=False, min_snr_gamma=5.0)
    loss = diffusion_loss(out, x0, s.q_sample(x0, t, noise), t, noise, s, cfg)["loss"]
    expected = torch.clamp(snr(s, t), max=5.0) / snr(s, t)
    torch.testing.assert_close(loss, expected.float())
    assert loss[0] < 1 and loss[2] == pytest.approx(1.0)


def test_snr_floor_weighting():
    """eps error e at SNR s is an x0 error of e / s: the floor makes that count at least ``snr_floor`` x,
    so the weight on the eps MSE is max(1, floor / s), capped (t -> T has s -> 0)."""
    s = make_schedule()
    t = torch.tensor([10, 500, 700, 900, 990])
    x0, noise, out = torch.zeros(5, 3, 2, 2), torch.ones(5, 3, 2, 2), torch.zeros(5, 3, 2, 2)  # mse = 1 each
    cfg = DiffusionConfig(learned_variance=False, snr_floor=1.0, snr_floor_cap=30.0)
    loss = diffusion_loss(out, x0, s.q_sample(x0, t, noise), t, noise, s, cfg)["loss"]
    r = snr(s, t)
    expected = torch.clamp(torch.clamp(1.0 / r, min=1.0), max=30.0)
    torch.testing.assert_close(loss, expected.float())
    assert loss[0] == 1.0 and 3 < loss[2] < 5 and loss[3] == loss[4] == 30.0  # t=700: SNR ~ 0.25
    both = DiffusionConfig(learned_variance=False, snr_floor=1.0, min_snr_gamma=5.0)  # with min-SNR above
    loss = diffusion_loss(out, x0, s.q_sample(x0, t, noise), t, noise, s, both)["loss"]
    assert loss[0] == pytest.approx(float(5.0 / r[0])) and loss[2] == pytest.approx(float(1 / r[2]))
    v = DiffusionConfig(learned_variance=False, snr_floor=1.0, prediction="v")  # v's MSE already weighs x0 SNR + 1
    plain = dict(learned_variance=False, prediction="v")
    ratio = (diffusion_loss(out, x0, s.q_sample(x0, t, noise), t, noise, s, v)["loss"]
             / diffusion_loss(out, x0, s.q_sample(x0, t, noise), t, noise, s, DiffusionConfig(**plain))["loss"])
    torch.testing.assert_close(ratio, (torch.clamp(r, min=1.0) / (r + 1)).float())


def test_fixed_timestep_validation_is_deterministic_and_per_timestep():
    s = make_schedule()
    x0, noise = torch.rand(4, 3, 4, 4) * 2 - 1, torch.randn(4, 3, 4, 4)
    fn = lambda x_t, t: torch.zeros(4, 6, 4, 4)  # noqa: E731  (predicts eps = 0: mse = E[noise^2])
    a = fixed_timesteps_loss(fn, x0, noise, s, DiffusionConfig())
    assert list(a) == [50, 250, 500, 750, 950]
    assert a == fixed_timesteps_loss(fn, x0, noise, s, DiffusionConfig())
    assert all(v == pytest.approx(float(noise.pow(2).mean()), rel=1e-6) for v in a.values())
