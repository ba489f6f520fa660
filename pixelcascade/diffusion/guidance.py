"""Classifier-free guidance, dynamic thresholding and super-resolution noise augmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .schedule import Schedule


def cfg_combine(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """eps = eps_u + w (eps_c - eps_u)  (Ho & Salimans 2022); w = 1 is the conditional model."""
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def dynamic_threshold(x0: torch.Tensor, p: float = 0.95, max_value: float = 1.5) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, sec. 2.3), as IF applies it at every step.

    s = clamp(quantile_p(|x0|) per sample, 1, max_value); x0 <- clip(x0, -s, s) / s.
    ``max_value = 1`` is plain clipping to [-1, 1] (IF stages II/III).
    """
    flat = x0.reshape(x0.shape[0], -1)  # [B, CHW]
    s = quantile(flat.abs().float(), p).clamp(min=1.0, max=max_value).to(x0.dtype)  # [B]
    s = s.view(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def quantile(flat: torch.Tensor, p: float) -> torch.Tensor:
    """``torch.quantile(flat, p, dim=-1)`` (linear interpolation), bit for bit, from two ``kthvalue`` selections
    instead of a full sort: 20x faster on a 64x64 image (1.5 ms against 80 us, 2 cores), at every sampling step."""
    n = flat.shape[-1]
    rank = torch.tensor(p, dtype=flat.dtype) * (n - 1)  # computed as torch.quantile does, in the input's dtype
    lo = int(rank)
    below = flat.kthvalue(lo + 1, dim=-1).values
    above = flat.kthvalue(min(lo + 2, n), dim=-1).values
    return torch.lerp(below, above, rank - lo)


def upsample_low_res(low_res: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear up-sampling with align_corners=True, as IF's SuperResUNetModel."""
    if tuple(low_res.shape[-2:]) == tuple(size):
        return low_res
    return F.interpolate(low_res.float(), size=size, mode="bilinear", align_corners=True).to(low_res.dtype)


def noise_augment(low_res: torch.Tensor, size: tuple[int, int], aug_t: torch.Tensor, schedule: Schedule,
                  noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Up-sample the low-res image to ``size`` and noise it to timestep ``aug_t`` of the 1000-step chain.

    IF conditions stage II on q(z | up(low_res)) at t = int(aug_level * 1000) (aug_level 0.25 at sampling,
    uniform in [0, 1000) in training) so that the model tolerates stage I's artefacts.
    """
    up = upsample_low_res(low_res, size)  # [B, 3, H, W]
    if noise is None:
        noise = torch.randn(up.shape, generator=generator, device=up.device, dtype=torch.float32).to(up.dtype)
    return schedule.q_sample(up, aug_t, noise)


def aug_level_to_t(aug_level: float | torch.Tensor, batch: int, num_timesteps: int = 1000,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """IF's map from aug_level in [0, 1] to the integer augmentation timestep: int(aug_level * 1000)."""
    if isinstance(aug_level, torch.Tensor):
        return (aug_level * num_timesteps).long().clamp(0, num_timesteps - 1).to(device)
    if not 0.0 <= aug_level <= 1.0:
        raise ValueError(f"aug_level must be in [0, 1], got {aug_level}")
    return torch.full((batch,), min(int(aug_level * num_timesteps), num_timesteps - 1), dtype=torch.long,
                      device=device)
