"""Exponential moving average of model weights (kept in fp32)."""

from __future__ import annotations

import copy

import torch

from .sharding import local


class EMA:
    """theta_ema <- d theta_ema + (1 - d) theta, with warm-up d_k = min(decay, (1 + k) / (10 + k)).

    Only trainable weights are averaged and stored: the model's frozen parameters (a LoRA fine-tune's base) are
    shared with the EMA model, not copied, so a frozen IF-I-XL costs its memory once."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        self.decay = decay
        frozen = {id(p): p for p in model.parameters() if not p.requires_grad}
        self.model = copy.deepcopy(model, memo=dict(frozen)).eval()
        self.frozen = {n for n, p in self.model.named_parameters() if id(p) in frozen}
        for n, p in self.model.named_parameters():
            if n not in self.frozen:
                p.data = p.data.float()
        self.model.requires_grad_(False)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        src = dict(model.named_parameters())
        names = [n for n, _ in self.model.named_parameters() if n not in self.frozen]
        # sharded (train.sharding=fsdp): model and EMA are sharded alike, so each process averages its shards
        ema_p = [local(p) for n, p in self.model.named_parameters() if n not in self.frozen]
        src_p = [local(src[n].detach()).float() for n in names]
        torch._foreach_mul_(ema_p, d)
        torch._foreach_add_(ema_p, src_p, alpha=1 - d)

    def state_dict(self) -> dict:
        model = {k: v for k, v in self.model.state_dict().items() if k not in self.frozen}
        return {"model": model, "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
        if unexpected or set(missing) - self.frozen:
            raise RuntimeError(f"EMA state does not fit the model (missing {sorted(set(missing) - self.frozen)[:3]}, "
                               f"unexpected {unexpected[:3]})")
        self.num_updates = int(state["num_updates"])
        self.decay = float(state["decay"])
