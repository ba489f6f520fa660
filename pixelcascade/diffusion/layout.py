"""Layout guidance: a spatial relation in the prompt steers sampling through the cross-attention maps.

A frozen text encoder read by cross-attention may carry what is in a prompt and not where: with MiniLM the shapes
stage I draws "a circle left of a square" as often with the circle on the right (docs/models.md, "Position"). The
relation is in the words, though, and each noun's cross-attention map shows where the network is drawing it. So,
training free (Chen et al. 2024, "Training-Free Layout Control with Cross-Attention Guidance", backward guidance;
Epstein et al. 2023, "Diffusion Self-Guidance"): parse the relation, and during the early (noisy) steps add the
gradient of a loss that wants the centre of the subject's attention on the relation's side of the object's centre,
in the form of classifier guidance:

    eps' = eps + s * sqrt(1 - alpha_bar_t) * grad_x L(x_t)

L, per image and attention layer, with c = the centre of a noun's normalised attention map (x right, y down, in
[0, 1]) and d = sign * (c_object - c_subject):  relu(m - d_axis)^2 + relu(|d_other| - d_axis+ / 2)^2  (the second
term keeps the pair on the relation's axis, as GenEval's angle rule asks). When the two nouns are one word ("a
circle above a circle"), their states, hence their maps, cannot tell the objects apart, and any order passes; the
loss then asks for the pair on the axis only: with s = the standard deviation of the noun's map along each axis,
relu(m / 2 - s_axis)^2 + relu(s_other - s_axis / 2)^2 (two objects m apart have s_axis = m / 2). Each image's loss
is its own, so an image never depends on its batch-mates. Prompts without a relation sample exactly as without it.
"""

from __future__ import annotations

import torch

from ..text.relations import LayoutTarget

MARGIN = 0.3  # the wanted gap between the two centres along the relation's axis, in image widths

def _marginals(maps: torch.Tensor, idx: tuple[int, ...]):
    """The summed attention of tokens ``idx`` as two marginal distributions, over x and over y, with the pixel
    centres in [0, 1]; maps: [L, H, W] -> (px [W], py [H], xs [W], ys [H])."""
    m = maps[list(idx)].sum(0)  # [H, W]
    p = m / m.sum().clamp_min(1e-12)
    h, w = p.shape
    ys = (torch.arange(h, device=p.device, dtype=p.dtype) + 0.5) / h
    xs = (torch.arange(w, device=p.device, dtype=p.dtype) + 0.5) / w
    return p.sum(0), p.sum(1), xs, ys


def _centre(maps: torch.Tensor, idx: tuple[int, ...]) -> torch.Tensor:
    """Centre (x, y) in [0, 1] of the summed attention of tokens ``idx``; maps: [L, H, W] -> [2]."""
    px, py, xs, ys = _marginals(maps, idx)
    return torch.stack([(px * xs).sum(), (py * ys).sum()])


def _std(maps: torch.Tensor, idx: tuple[int, ...]) -> torch.Tensor:
    """Standard deviation (x, y) of the summed attention of tokens ``idx``; maps: [L, H, W] -> [2]."""
    px, py, xs, ys = _marginals(maps, idx)
    cx, cy = (px * xs).sum(), (py * ys).sum()
    var = torch.stack([(px * (xs - cx) ** 2).sum(), (py * (ys - cy) ** 2).sum()])
    return var.clamp_min(1e-12).sqrt()


def _order_loss(maps: torch.Tensor, tg: LayoutTarget, margin: float) -> torch.Tensor:
    """The subject's centre at least ``margin`` on its side of the object's, on the relation's axis."""
    d = tg.sign * (_centre(maps, tg.object) - _centre(maps, tg.subject))  # [2]
    along, across = d[tg.axis], d[1 - tg.axis]
    return torch.relu(margin - along) ** 2 + torch.relu(across.abs() - 0.5 * torch.relu(along)) ** 2


def _spread_loss(maps: torch.Tensor, tg: LayoutTarget, margin: float) -> torch.Tensor:
    """One noun for both objects: its attention spread along the axis (two objects ``margin`` apart have a
    standard deviation of margin / 2 there) and at most half as wide across it."""
    std = _std(maps, tg.subject)
    along, across = std[tg.axis], std[1 - tg.axis]
    return torch.relu(0.5 * margin - along) ** 2 + torch.relu(across - 0.5 * along) ** 2


def layout_loss(maps: list[torch.Tensor], targets: list[LayoutTarget | None],
                margin: float = MARGIN) -> torch.Tensor:
    """Sum over images (each its own term) of the mean over attention layers of the relation loss (module
    docstring). maps: per layer [B, L, H, W] (``UNet.record_text_attention``); targets: one per image."""
    total = maps[0].new_zeros(())
    for b, tg in enumerate(targets):
        if tg is None:
            continue
        loss = _spread_loss if tg.spread else _order_loss
        total = total + torch.stack([loss(m[b], tg, margin) for m in maps]).mean()
    return total


class LayoutGuidance:
    """A denoiser (``diffusion.denoiser.Denoiser`` interface) that adds layout guidance to another one.

    At steps with t >= (1 - share) * T, the conditional branch of the images with a target runs once more, with
    gradients and its attention recorded, and their eps is shifted by ``scale * sqrt(1 - alpha_bar_t) * grad L``;
    that run's output is their conditional branch, so the guided step runs the rest of the batch only. Everything
    else is the wrapped denoiser's own computation, so an image without a target comes out as without guidance (to
    float rounding: its rows may run in a smaller batch). The model needs ``record_text_attention`` (ours have it).
    """

    def __init__(self, denoiser, targets: list[LayoutTarget | None], scale: float, share: float = 0.5,
                 margin: float = MARGIN):
        self.denoiser, self.targets, self.scale, self.margin = denoiser, targets, scale, margin
        self.schedule = denoiser.schedule
        self.t_min = (1.0 - share) * len(self.schedule)
        self.rows = [i for i, tg in enumerate(targets) if tg is not None]

    def __getattr__(self, name):  # everything else is the wrapped denoiser's
        return getattr(self.denoiser, name)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond):
        den, rows = self.denoiser, self.rows
        if float(t.max()) < self.t_min or not rows:
            return den(x, t, cond)
        with torch.enable_grad():
            xg = x[rows].detach().requires_grad_(True)  # [R, C, H, W]
            with den.model.record_text_attention() as maps:
                out_rows = den.raw(xg, t[rows], cond, rows=rows)
            loss = layout_loss(maps, [self.targets[i] for i in rows], self.margin)
            (grad,) = torch.autograd.grad(loss, xg)  # [R, C, H, W]
        with torch.no_grad():
            shift = torch.zeros_like(x)
            shift[rows] = self.scale * self.schedule.sqrt_1m_ab(t[rows], x.ndim) * grad.float()
            # the rows just run with gradients are not run again: one forward of R images less per guided step
            out = den.raw(x, t, cond, known=(rows, out_rows.detach()))
            return den.predict(out, x, t, cond, eps_shift=shift)
