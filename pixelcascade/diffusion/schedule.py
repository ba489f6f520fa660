"""Noise schedules and timestep respacing (IF's named presets: smart27/50/100/185, fast27, super27/40/100).

Notation (Ho et al. 2020; Nichol & Dhariwal 2021): alpha_bar_t = prod_{s<=t} (1 - beta_s),
q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I). All tables are float64 (as IF's numpy code)
and cast to float32 only when gathered for a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

# IFBaseModule.respacing_modes (deepfloyd_if/modules/base.py): section strings resolved before spacing
RESPACING_PRESETS: dict[str, str] = {
    "fast27": "10,10,3,2,2",
    "smart27": "7,4,2,1,2,4,7",
    "smart50": "10,6,4,3,2,2,3,4,6,10",
    "smart100": "1,1,1,1,2,2,2,2,2,2,3,3,4,4,5,5,6,7,7,8,9,10,13",
    "smart185": "1,1,2,2,2,3,3,3,4,5,6,7,8,9,10,11,12,13,14,15,16,18,20",
    "super27": "1,1,1,1,1,1,1,2,5,13",
    "super40": "2,2,2,2,2,2,3,4,6,15",
    "super100": "4,4,6,6,8,8,10,10,14,30",
}


def betas_for_alpha_bar(num_timesteps: int, alpha_bar, max_beta: float = 0.999) -> np.ndarray:
    """beta_i = min(1 - alpha_bar((i+1)/T) / alpha_bar(i/T), max_beta)  (Nichol & Dhariwal 2021, eq. 17)."""
    return np.array([min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
                     for i in range(num_timesteps)], dtype=np.float64)


def cosine_betas(num_timesteps: int = 1000, s: float = 0.008) -> np.ndarray:
    """alpha_bar(t) = cos^2((t + s) / (1 + s) * pi / 2)  (IF / improved DDPM; diffusers' squaredcos_cap_v2)."""
    return betas_for_alpha_bar(num_timesteps, lambda t: math.cos((t + s) / (1 + s) * math.pi / 2) ** 2)


def linear_betas(num_timesteps: int = 1000) -> np.ndarray:
    scale = 1000 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def make_betas(name: str, num_timesteps: int = 1000) -> np.ndarray:
    if name == "cosine":
        return cosine_betas(num_timesteps)
    if name == "linear":
        return linear_betas(num_timesteps)
    raise ValueError(f"unknown noise schedule {name!r}; use 'cosine' or 'linear'")


def _gather(table: np.ndarray, idx: torch.Tensor, ndim: int) -> torch.Tensor:
    """table[idx] as float32, shaped [B, 1, ..., 1] to broadcast against a rank-``ndim`` tensor."""
    out = torch.from_numpy(table).to(idx.device)[idx.long()].float()
    return out.view(-1, *([1] * (ndim - 1)))


@dataclass(frozen=True, eq=False)
class Schedule:
    """A discrete diffusion chain given by its betas; ``timesteps[i]`` is the model's timestep of step i.

    For the full 1000-step chain ``timesteps = 0..999``; a respaced chain keeps a subset of the original
    steps and rebuilds beta_i = 1 - alpha_bar_i / alpha_bar_{i-1} over them (IF's SpacedDiffusion).
    """

    betas: np.ndarray
    timesteps: np.ndarray  # original timestep of each step, ascending

    def __len__(self) -> int:
        return len(self.betas)

    @cached_property
    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(1.0 - self.betas)

    @cached_property
    def alphas_cumprod_prev(self) -> np.ndarray:
        return np.append(1.0, self.alphas_cumprod[:-1])

    @cached_property
    def posterior_variance(self) -> np.ndarray:
        """beta~_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)  (Ho et al. eq. 7)."""
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @cached_property
    def posterior_log_variance_clipped(self) -> np.ndarray:
        """log beta~_t with the t=0 value (0) replaced by beta~_1, as guided-diffusion. A one-step chain (img2img
        at a low strength) has no beta~_1: its t=0 value is beta_0, the same bound a longer chain's beta~_1
        approaches; the last step adds no noise, so only the learned-variance interpolation sees it."""
        pv = self.posterior_variance
        return np.log(np.append(pv[1] if len(pv) > 1 else self.betas[0], pv[1:]))

    @cached_property
    def posterior_mean_coef1(self) -> np.ndarray:
        return self.betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @cached_property
    def posterior_mean_coef2(self) -> np.ndarray:
        return (1.0 - self.alphas_cumprod_prev) * np.sqrt(1.0 - self.betas) / (1.0 - self.alphas_cumprod)

    # -- per-batch gathers -------------------------------------------------------------------------
    def sqrt_ab(self, i: torch.Tensor, ndim: int = 4) -> torch.Tensor:
        return _gather(np.sqrt(self.alphas_cumprod), i, ndim)

    def sqrt_1m_ab(self, i: torch.Tensor, ndim: int = 4) -> torch.Tensor:
        return _gather(np.sqrt(1.0 - self.alphas_cumprod), i, ndim)

    def q_sample(self, x0: torch.Tensor, i: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps."""
        return self.sqrt_ab(i, x0.ndim) * x0 + self.sqrt_1m_ab(i, x0.ndim) * noise

    def x0_from_eps(self, x_t: torch.Tensor, i: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar), written as IF does (recip coefficients)."""
        ab = self.alphas_cumprod
        return _gather(np.sqrt(1.0 / ab), i, x_t.ndim) * x_t - _gather(np.sqrt(1.0 / ab - 1), i, x_t.ndim) * eps

    def eps_from_x0(self, x_t: torch.Tensor, i: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        ab = self.alphas_cumprod
        return (_gather(np.sqrt(1.0 / ab), i, x_t.ndim) * x_t - x0) / _gather(np.sqrt(1.0 / ab - 1), i, x_t.ndim)

    def v_target(self, x0: torch.Tensor, i: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0  (Salimans & Ho 2022)."""
        return self.sqrt_ab(i, x0.ndim) * noise - self.sqrt_1m_ab(i, x0.ndim) * x0

    def posterior(self, x0: torch.Tensor, x_t: torch.Tensor, i: torch.Tensor):
        """q(x_{t-1} | x_t, x0) = N(c1 x0 + c2 x_t, beta~_t): returns (mean, log variance clipped)."""
        c1 = _gather(self.posterior_mean_coef1, i, x_t.ndim)
        c2 = _gather(self.posterior_mean_coef2, i, x_t.ndim)
        mean = c1 * x0 + c2 * x_t
        return mean, _gather(self.posterior_log_variance_clipped, i, x_t.ndim)

    def learned_range_log_variance(self, v: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """log sigma^2 = frac log beta_t + (1 - frac) log beta~_t, frac = (v + 1) / 2  (improved DDPM eq. 15)."""
        frac = (v + 1) / 2
        max_log = _gather(np.log(self.betas), i, v.ndim)
        min_log = _gather(self.posterior_log_variance_clipped, i, v.ndim)
        return frac * max_log + (1 - frac) * min_log

    def model_t(self, i: torch.Tensor) -> torch.Tensor:
        """The (float) timestep the network sees for step index i (IF's _WrappedModel map)."""
        return torch.from_numpy(self.timesteps.astype(np.float32)).to(i.device)[i.long()]

    def respace(self, spec: str | int | list[int]) -> Schedule:
        """A sub-chain keeping the timesteps named by ``spec`` (see ``space_timesteps``)."""
        if len(self) != len(self.timesteps) or not np.array_equal(self.timesteps, np.arange(len(self))):
            raise ValueError("respace a full chain, not an already respaced one")
        keep = sorted(space_timesteps(len(self), spec))
        ab = self.alphas_cumprod[keep]
        prev = np.append(1.0, ab[:-1])
        return Schedule(betas=1.0 - ab / prev, timesteps=np.array(keep, dtype=np.int64))


def truncate(steps: Schedule, strength: float) -> Schedule:
    """The last ``int(len(steps) * strength)`` steps of a respaced chain: where image-to-image starts.

    The convention of diffusers' IF image-to-image and inpainting pipelines (``get_timesteps``): strength 1
    runs the whole chain from pure noise, strength 0.5 the lower half of its steps. A prefix of a respaced
    chain is itself consistent (each beta depends only on the kept step before it).
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    k = min(int(len(steps) * strength), len(steps))
    if k < 1:
        raise ValueError(f"strength {strength} keeps no step of a {len(steps)}-step chain: raise the strength "
                         f"to at least {1 / len(steps):.3f} or use more steps")
    return Schedule(betas=steps.betas[:k], timesteps=steps.timesteps[:k])


def make_schedule(name: str = "cosine", num_timesteps: int = 1000) -> Schedule:
    return Schedule(betas=make_betas(name, num_timesteps), timesteps=np.arange(num_timesteps, dtype=np.int64))


def space_timesteps(num_timesteps: int, spec: str | int | list[int]) -> set[int]:
    """Which original steps to keep (guided-diffusion / IF respace.py semantics).

    ``spec``: a preset name (``"smart50"``...), a count (``"100"`` or 100: evenly spread, both ends
    included), a section string (``"10,10,3,2,2"``: equal sections of the chain, each strided to its count,
    0 skips a section) or ``"ddimN"`` (a fixed integer stride from 0).
    """
    if isinstance(spec, int):
        spec = [spec]
    elif isinstance(spec, str):
        spec = RESPACING_PRESETS.get(spec, spec).strip()
        if spec.startswith("ddim") and spec[4:].isdigit():
            want = int(spec[4:])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == want:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(f"cannot make exactly {want} steps with an integer stride over {num_timesteps}")
        try:
            spec = [int(c) for c in spec.split(",")]
        except ValueError:
            raise ValueError(
                f"unknown step spec {spec!r}: use a count (50), sections ('10,10,3,2,2'), 'ddimN' or one of "
                f"{', '.join(RESPACING_PRESETS)}"
            ) from None
    if any(c < 0 for c in spec) or sum(spec) < 1:
        raise ValueError(f"step spec {','.join(map(str, spec))!r}: the counts must be 0 or more and keep at least "
                         "one step (e.g. 50 or smart50)")
    size_per, extra = divmod(num_timesteps, len(spec))
    start, steps = 0, []
    for k, count in enumerate(spec):
        size = size_per + (1 if k < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0  # accumulated like the reference (float sums, then round) so the lists match exactly
        for _ in range(count):
            steps.append(start + round(cur))
            cur += stride
        start += size
    return set(steps)
