"""Training losses: MSE on the parameterization's target + the VLB term for learned variance (improved DDPM).

L_hybrid = L_simple + lambda L_vlb (Nichol & Dhariwal 2021, sec. 3.1), lambda = 0.001, L_vlb = T E_t[L_t];
per sample that is mse + vlb_weight * T * L_t, and with IF's defaults (T = 1000) exactly guided-diffusion's
RESCALED_MSE: mse + vb. The VLB term sees the mean with a stop-gradient, so it only trains the variance.
Optional min-SNR-gamma weighting of the MSE term (Hang et al. 2023).
"""

from __future__ import annotations

import math

import torch

from ..config import DiffusionConfig
from .schedule import Schedule, _gather


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=list(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(m1, e^lv1) || N(m2, e^lv2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Phi(x) ~ 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))  (as in improved DDPM)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor):
    """log p(x) of 8-bit images in [-1, 1] under a Gaussian discretized to bins of width 2/255."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))))


def vlb_terms(schedule: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, eps_pred: torch.Tensor,
              var_v: torch.Tensor) -> torch.Tensor:
    """L_t in bits/dim per sample: KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for t > 0, decoder NLL at t = 0."""
    true_mean, true_logvar = schedule.posterior(x0, x_t, t)
    x0_pred = schedule.x0_from_eps(x_t, t, eps_pred)
    model_mean, _ = schedule.posterior(x0_pred, x_t, t)
    model_logvar = schedule.learned_range_log_variance(var_v, t)
    kl = mean_flat(normal_kl(true_mean, true_logvar, model_mean, model_logvar)) / math.log(2.0)
    nll = -mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar)) / math.log(2.0)
    return torch.where(t == 0, nll, kl)


def snr(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    ab = _gather(schedule.alphas_cumprod, t, 1)
    return ab / (1 - ab)


def diffusion_loss(out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                   schedule: Schedule, cfg: DiffusionConfig) -> dict[str, torch.Tensor]:
    """Per-sample loss terms for a network output ``out`` [B, C or 2C, H, W] (fp32). Returns a dict of [B] tensors
    with 'loss' (what to minimise), 'mse' and, for learned variance, 'vb'.
    """
    c = x0.shape[1]
    mean_out = out[:, :c]
    if cfg.prediction == "eps":
        target = noise
        eps_pred = mean_out
    elif cfg.prediction == "v":
        target = schedule.v_target(x0, t, noise)
        eps_pred = schedule.sqrt_ab(t, x0.ndim) * mean_out + schedule.sqrt_1m_ab(t, x0.ndim) * x_t
    elif cfg.prediction == "x0":
        target = x0
        eps_pred = schedule.eps_from_x0(x_t, t, mean_out)
    else:
        raise ValueError(f"unknown prediction type {cfg.prediction!r}")
    mse = mean_flat((mean_out - target) ** 2)
    terms = {"mse": mse}
    weighted = mse
    if cfg.min_snr_gamma > 0 or cfg.snr_floor > 0:
        # the weight each sample's x0 error gets: the eps loss gives SNR, v gives SNR + 1, x0 gives 1
        s = snr(schedule, t).view(-1)
        w = torch.clamp(s, min=cfg.snr_floor if cfg.snr_floor > 0 else None,
                        max=cfg.min_snr_gamma if cfg.min_snr_gamma > 0 else None)
        w = w / s if cfg.prediction == "eps" else w / (s + 1) if cfg.prediction == "v" else w
        if cfg.snr_floor > 0:
            w = torch.clamp(w, max=cfg.snr_floor_cap)
        weighted = mse * w
    if cfg.learned_variance:
        vb = vlb_terms(schedule, x0, x_t, t, eps_pred.detach(), out[:, c:])  # mean stopped: trains variance only
        terms["vb"] = vb
        weighted = weighted + cfg.vlb_weight * len(schedule) * vb
    terms["loss"] = weighted
    return terms


def fixed_timesteps_loss(model_fn, x0: torch.Tensor, noise: torch.Tensor, schedule: Schedule, cfg: DiffusionConfig,
                         timesteps=(50, 250, 500, 750, 950)) -> dict[int, float]:
    """Validation loss at fixed timesteps with fixed noise and batch: comparable across runs, noise-free."""
    out = {}
    for t_val in timesteps:
        t = torch.full((x0.shape[0],), t_val, dtype=torch.long, device=x0.device)
        x_t = schedule.q_sample(x0, t, noise)
        pred = model_fn(x_t, t)
        out[t_val] = float(diffusion_loss(pred, x0, x_t, t, noise, schedule, cfg)["mse"].mean())
    return out

