"""The denoiser: the one place where a network's output becomes (x0, eps, variance).

Boundary (k-diffusion / EDM style): a network maps (x_t, t, text) to raw channels; the ``Denoiser`` turns
them into predictions under the model's parameterization (eps / v / x0, optional learned-range variance),
applies classifier-free guidance and dynamic thresholding, and hands samplers a ``Prediction``.
Samplers never see the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import DiffusionConfig
from .guidance import cfg_combine, dynamic_threshold
from .schedule import Schedule, make_schedule


@dataclass
class Prediction:
    x0: torch.Tensor  # clean-image estimate (guided, thresholded)
    eps: torch.Tensor  # the noise estimate consistent with x0 and x_t
    var: torch.Tensor | None  # learned-range value v in [-1, 1] (conditional branch), None if not learned


@dataclass
class Cond:
    """Everything the denoiser needs besides x_t and t; built once per sampling run by ``Denoiser.condition``.

    ``text_cond`` holds the network's text work for the batch [cond; uncond] (or [cond] without guidance),
    so it runs once per run, not once per step (IF's ``use_cache``).
    """

    text_cond: tuple  # tensors with the batch first, or tuples of them (UNet.encode_text's per-block keys/values)
    guidance_scale: float = 1.0
    guided: bool = False  # True when text_cond holds [cond; uncond]
    dyn_thresh_p: float = 0.95
    dyn_thresh_max: float | None = 1.5  # None: no thresholding
    model_kwargs: dict = field(default_factory=dict)  # e.g. low_res, aug_t for super-resolution


class Denoiser:
    def __init__(self, model: torch.nn.Module, diffusion: DiffusionConfig | None = None,
                 schedule: Schedule | None = None):
        self.model = model
        self.diffusion = diffusion or DiffusionConfig()
        self.schedule = schedule or make_schedule(self.diffusion.schedule, self.diffusion.num_timesteps)

    @torch.no_grad()
    def condition(self, text_emb: torch.Tensor, uncond_emb: torch.Tensor | None = None, *,
                  guidance_scale: float = 1.0, dyn_thresh_p: float = 0.95, dyn_thresh_max: float | None = 1.5,
                  **model_kwargs) -> Cond:
        """Prepare a ``Cond``. ``uncond_emb`` (the empty prompt's states) enables guidance when scale != 1."""
        guided = uncond_emb is not None and guidance_scale != 1.0
        if guided:
            if uncond_emb.shape[0] == 1 and text_emb.shape[0] > 1:
                uncond_emb = uncond_emb.expand(text_emb.shape[0], -1, -1)
            if uncond_emb.shape != text_emb.shape:
                raise ValueError(f"uncond_emb {tuple(uncond_emb.shape)} must match text_emb {tuple(text_emb.shape)}")
            text_emb = torch.cat([text_emb, uncond_emb])  # [2B, L, D]
            model_kwargs = {k: torch.cat([v, v]) for k, v in model_kwargs.items()}
        self.model.check_inputs(_dummy_x(self.model, text_emb), text_emb)
        return Cond(text_cond=self.model.encode_text(text_emb), guidance_scale=guidance_scale, guided=guided,
                    dyn_thresh_p=dyn_thresh_p, dyn_thresh_max=dyn_thresh_max, model_kwargs=model_kwargs)

    def raw(self, x: torch.Tensor, t: torch.Tensor, cond: Cond, rows: list[int] | None = None,
            known: tuple[list[int], torch.Tensor] | None = None) -> torch.Tensor:
        """The network's output in fp32 for the batch layout of ``cond``. With ``rows``: the conditional branch
        only, for those images of the batch (x and t are then theirs: [len(rows), ...]). With ``known`` =
        (rows, output): those images' conditional-branch output is already at hand (layout guidance computes it
        with gradients), so only the other rows of the batch run."""
        t = t.float()
        text_cond, kwargs = cond.text_cond, cond.model_kwargs
        if rows is not None:
            text_cond = _take(text_cond, rows)  # the conditional branch is the first B rows
            kwargs = {k: v[rows] for k, v in kwargs.items()}
        elif cond.guided:
            x, t = torch.cat([x, x]), torch.cat([t, t])
        if known is None:
            return self.model(x, t, text_cond=text_cond, **kwargs).float()
        done, out_done = known
        skip = set(done)
        todo = [i for i in range(x.shape[0]) if i not in skip]
        out_todo = self.model(x[todo], t[todo], text_cond=_take(text_cond, todo),
                              **{k: v[todo] for k, v in kwargs.items()}).float()
        out = out_todo.new_empty((x.shape[0], *out_todo.shape[1:]))
        out[todo], out[done] = out_todo, out_done.float()
        return out

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> Prediction:
        """x: [B, C, H, W] at the original timesteps t [B] (ints of the 1000-step chain)."""
        return self.predict(self.raw(x, t, cond), x, t, cond)

    def predict(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor, cond: Cond,
                eps_shift: torch.Tensor | None = None) -> Prediction:
        """The prediction from the network's output ``out`` ([B or 2B, C or 2C, H, W], from ``raw``).

        ``eps_shift`` ([B, C, H, W]) is added to the guided eps before x0 is formed: a guidance gradient in the
        form of classifier guidance, eps' = eps - sqrt(1 - alpha_bar_t) grad log p(y | x_t) (Dhariwal & Nichol
        2021, eq. 14); diffusion.layout passes sqrt(1 - alpha_bar_t) * scale * grad L.
        """
        c = x.shape[1]
        xx, tt = (torch.cat([x, x]), torch.cat([t, t])) if cond.guided else (x, t)
        eps = self.eps_from_output(out[:, :c], xx, tt)
        var = out[:, c:] if self.diffusion.learned_variance else None
        if cond.guided:
            eps_c, eps_u = eps.chunk(2)
            eps = cfg_combine(eps_c, eps_u, cond.guidance_scale)  # guidance on eps
            var = var[: x.shape[0]] if var is not None else None  # variance of the conditional branch
        if eps_shift is not None:
            eps = eps + eps_shift
        x0 = self.schedule.x0_from_eps(x, t, eps)
        if cond.dyn_thresh_max is not None:
            x0 = dynamic_threshold(x0, cond.dyn_thresh_p, cond.dyn_thresh_max)
            eps = self.schedule.eps_from_x0(x, t, x0)
        return Prediction(x0=x0, eps=eps, var=var)

    def eps_from_output(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Turn the mean channels into eps under the model's parameterization."""
        kind = self.diffusion.prediction
        s = self.schedule
        if kind == "eps":
            return out
        if kind == "v":  # eps = sqrt(ab) v + sqrt(1 - ab) x_t
            return s.sqrt_ab(t, x.ndim) * out + s.sqrt_1m_ab(t, x.ndim) * x
        if kind == "x0":
            return s.eps_from_x0(x, t, out)
        raise ValueError(f"unknown prediction type {kind!r}; use eps, v or x0")


def _take(text_cond, rows: list[int]):
    """Those images' rows of every tensor in ``text_cond`` (nested tuples kept)."""
    return tuple(_take(c, rows) if isinstance(c, tuple) else c[rows] for c in text_cond)


def _dummy_x(model, text_emb: torch.Tensor) -> torch.Tensor:
    """A zero-size stand-in image for ``check_inputs`` (checks the text only)."""
    c = model.cfg.in_channels - (3 if model.cfg.super_res else 0)
    d = model.cfg.min_divisor
    return torch.empty(text_emb.shape[0], c, d, d, device="meta")
