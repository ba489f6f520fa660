"""Training the emoji feature extractor (features.emoji.EmojiNet): one class per emoji picture, under the damage
a generator does (features.emoji.augment)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..features.emoji import EmojiNet, augment
from ..tensorfiles import write_safetensors
from ..utils import bf16_autocast_pays


def check_feature_steps(steps: int) -> None:
    """ValueError unless the extractor's run is long enough (OneCycleLR needs a warm-up of 2 steps)."""
    if steps < 10:
        raise ValueError(f"steps={steps}: the extractor trains for at least 10 steps (3,000 by default)")


def train_emoji_features(images: np.ndarray, names: list[str], out: str | Path, steps: int = 3000,
                         batch_size: int = 128, lr: float = 2e-3, seed: int = 0, width: int = 32,
                         progress: bool = True, device: str = "cpu") -> dict:
    """Train EmojiNet to classify each picture (uint8 [N, 64, 64, 3]) under augmentation; save safetensors.

    ``device`` runs the net there (bf16 autocast where the device has native bf16); batches and their
    augmentation are drawn on the CPU from the seeded generator either way, so a run sees the same pictures on
    any device."""
    check_feature_steps(steps)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    dev = torch.device(device)
    net = EmojiNet(len(images), width=width).to(dev)
    bf16 = bf16_autocast_pays(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    # a warm-up of at least 2 steps: OneCycleLR divides by (warm-up steps - 1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=max(0.1, 2 / steps))
    it = range(steps)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="emoji features", unit="step")
    acc = 0.0
    for step in it:
        idx = torch.randint(0, len(images), (batch_size,), generator=g)
        batch = augment(x_all[idx], g).to(dev)
        idx = idx.to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            logits = net.logits(batch)
        loss = F.cross_entropy(logits.float(), idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        acc = 0.98 * acc + 0.02 * float((logits.argmax(-1) == idx).float().mean())
        if progress and step % 50 == 0:
            it.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.2f}")
    meta = {"kind": "emoji-features", "num_classes": str(len(images)), "names": json.dumps(names),
            "steps": str(steps), "seed": str(seed), "input_size": "64", "width": str(width),
            "recipe": f"pixelcascade data emoji-features (steps={steps}, batch={batch_size}, lr={lr}, seed={seed}, "
                      f"device={dev.type})"}
    write_safetensors(out, {k: v.detach().float().cpu().contiguous() for k, v in net.state_dict().items()}, meta)
    return {"train_acc_ema": acc, "path": str(out)}
