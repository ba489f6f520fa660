"""Samplers: pure functions with one signature (k-diffusion style).

    sample_x(denoiser, x, steps, *, cond, generator=None, callback=None, noise=None) -> x0

``denoiser(x_t, t, cond) -> Prediction`` (see ``diffusion.denoiser``); ``steps`` is a respaced
``Schedule`` (its ``timesteps`` are the original steps visited, ascending; sampling walks them down);
``x`` is the initial noise; ``generator`` seeds every draw; ``callback(i, num_steps, x, pred)`` sees each
step; ``noise(i, shape)`` can replace the generator's draws (used to replay another implementation's RNG).
Samplers never import models.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .diffusion.schedule import Schedule, _gather

NoiseFn = Callable[[int, tuple], torch.Tensor]


def _draw(noise: NoiseFn | None, generator: torch.Generator | None, k: int, x: torch.Tensor) -> torch.Tensor:
    if noise is not None:
        return noise(k, tuple(x.shape)).to(x)
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _t(steps: Schedule, i: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), int(steps.timesteps[i]), dtype=torch.long, device=x.device)


def _i(i: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)


@torch.no_grad()
def sample_ddpm(denoiser, x: torch.Tensor, steps: Schedule, *, cond, generator=None, callback=None,
                noise: NoiseFn | None = None, inpaint: torch.Tensor | None = None):
    """Ancestral DDPM on a respaced chain (IF's sampler; Ho et al. 2020, Nichol & Dhariwal 2021).

    x_{t-1} = mu~(x0_hat, x_t) + 1[t > 0] sigma_t z, with log sigma_t^2 from the learned range (or beta~_t).
    ``inpaint`` (a mask, 1 = regenerate): x <- (1 - m) x + m x_{t-1}, so pixels outside the mask keep their
    starting (clean) values at every step, as IF's p_sample.
    """
    n = len(steps)
    for k, i in enumerate(reversed(range(n))):
        pred = denoiser(x, _t(steps, i, x), cond)
        ii = _i(i, x)
        mean, logvar = steps.posterior(pred.x0, x, ii)
        if pred.var is not None:
            logvar = steps.learned_range_log_variance(pred.var, ii)
        z = _draw(noise, generator, k, x)
        x_new = mean + (float(i > 0) * torch.exp(0.5 * logvar)) * z
        if inpaint is not None:
            x_new = (1 - inpaint) * x + inpaint * x_new
        x = x_new
        if callback is not None:
            callback(k, n, x, pred)
    return x


@torch.no_grad()
def sample_ddim(denoiser, x: torch.Tensor, steps: Schedule, *, cond, generator=None, callback=None,
                noise: NoiseFn | None = None, eta: float = 0.0):
    """DDIM (Song et al. 2021, eq. 12): x_{t-1} = sqrt(ab') x0 + sqrt(1 - ab' - s^2) eps + s z."""
    n = len(steps)
    for k, i in enumerate(reversed(range(n))):
        pred = denoiser(x, _t(steps, i, x), cond)
        ii = _i(i, x)
        ab = _gather(steps.alphas_cumprod, ii, x.ndim)
        ab_prev = _gather(steps.alphas_cumprod_prev, ii, x.ndim)
        sigma = eta * torch.sqrt((1 - ab_prev) / (1 - ab)) * torch.sqrt(1 - ab / ab_prev)
        x = torch.sqrt(ab_prev) * pred.x0 + torch.sqrt((1 - ab_prev - sigma**2).clamp(min=0)) * pred.eps
        if eta > 0 and i > 0:
            x = x + sigma * _draw(noise, generator, k, x)
        if callback is not None:
            callback(k, n, x, pred)
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoiser, x: torch.Tensor, steps: Schedule, *, cond, generator=None, callback=None,
                    noise: NoiseFn | None = None):
    """DPM-Solver++(2M) (Lu et al. 2022, alg. 2), data prediction, deterministic.

    With lambda = log(alpha / sigma) and h = lambda_next - lambda:
    x_next = (sigma_next / sigma) x - alpha_next (e^{-h} - 1) D,
    D = x0 (first step / last step) or (1 + 1/(2r)) x0 - 1/(2r) x0_prev, r = h_prev / h.
    The last step lands on the clean image (sigma = 0).
    """
    ab = steps.alphas_cumprod
    n = len(steps)
    alpha, sigma = np.sqrt(ab), np.sqrt(1 - ab)
    lam = np.log(alpha) - np.log(sigma)
    x0_prev, h_prev = None, None
    for k, i in enumerate(reversed(range(n))):
        pred = denoiser(x, _t(steps, i, x), cond)
        if i == 0:  # next is sigma = 0: the clean estimate itself
            x = pred.x0
        else:
            h = lam[i - 1] - lam[i]
            d = pred.x0
            if x0_prev is not None and i > 1:  # lower order on the final step (more stable)
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * pred.x0 - (1 / (2 * r)) * x0_prev
            x = (sigma[i - 1] / sigma[i]) * x - alpha[i - 1] * np.expm1(-h) * d
            h_prev = h
        x0_prev = pred.x0
        if callback is not None:
            callback(k, n, x, pred)
    return x


SAMPLERS: dict[str, Callable] = {"ddpm": sample_ddpm, "ddim": sample_ddim, "dpmpp_2m": sample_dpmpp_2m}


def get_sampler(name: str) -> Callable:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]
