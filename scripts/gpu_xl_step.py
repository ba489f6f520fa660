"""One LoRA step and one full step with gradient checkpointing on IF-I-XL-sized random weights in bf16: peak
device memory of each (the GPU figure bench/train_memory.py computes for IF-I-XL).

    python scripts/gpu_xl_step.py                                  # CUDA, IF-I-XL, batch 1, 64 px
    python scripts/gpu_xl_step.py --preset tiny --device cpu       # the same code at a tiny size (tests)

Each step: random x0, t, noise and 77-token text states; the hybrid loss (MSE + VLB for the learned variance),
backward, an optimizer step. The LoRA step wraps the attention projections with a rank-16 adapter (peft) and
trains only it; the full step trains every weight with checkpointing per block and AdamW (torchao's 8-bit AdamW
where installed). Prints one JSON line per step: peak allocated memory (CUDA) or peak RSS (CPU), seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pixelcascade.config import DiffusionConfig
from pixelcascade.diffusion.losses import diffusion_loss
from pixelcascade.diffusion.schedule import make_schedule
from pixelcascade.lora import AdapterSpec, add_adapter, target_modules
from pixelcascade.models.unet import build_unet
from pixelcascade.presets import get_preset


def _peak(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def _reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")


def one_step(mode: str, preset: str, batch: int, device: torch.device, dtype: torch.dtype,
             optimizer: str = "auto") -> dict:
    torch.manual_seed(0)
    cfg = get_preset(preset)
    model = build_unet(cfg).to(device=device, dtype=dtype)
    if mode == "lora":
        model.requires_grad_(False)
        add_adapter(model, AdapterSpec(16, 16.0, tuple(target_modules(model, "attention"))))
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()  # the adapter trains in fp32 beside the bf16 base
    else:
        model.gradient_checkpointing = True
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    if mode == "full" and optimizer != "adamw":
        try:
            from torchao.optim import AdamW8bit
            opt = AdamW8bit(params, lr=1e-5)
        except ImportError:
            pass
    schedule = make_schedule("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    size = cfg.image_size
    x0 = (torch.rand(batch, 3, size, size, generator=g) * 2 - 1).to(device)
    noise = torch.randn(batch, 3, size, size, generator=g).to(device)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)
    text = torch.randn(batch, 77, cfg.encoder_dim, generator=g).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    _reset(device)
    t0 = time.perf_counter()
    x_t = schedule.q_sample(x0, t, noise)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = model(x_t, t.float(), text)
    loss = diffusion_loss(out.float(), x0, x_t, t, noise, schedule, DiffusionConfig())["loss"].mean()
    loss.backward()
    loss = loss.detach()
    opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"mode": mode, "preset": preset, "batch": batch, "device": str(device), "dtype": str(dtype)[6:],
            "params": sum(p.numel() for p in model.parameters()), "trainable": sum(p.numel() for p in params),
            "optimizer": type(opt).__name__, "peak_gb": round(_peak(device), 3), "loss": loss.item(),
            "seconds": round(time.perf_counter() - t0, 2),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="IF-I-XL")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--modes", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    ap.add_argument("--fp32", action="store_true", help="weights in fp32 (default bf16)")
    ap.add_argument("--optimizer", default="auto", choices=["auto", "adamw"],
                    help="the full step's: auto = torchao's 8-bit AdamW where installed, else AdamW")
    a = ap.parse_args()
    device = torch.device(a.device)
    for mode in a.modes:
        print(json.dumps(one_step(mode, a.preset, a.batch, device, torch.float32 if a.fp32 else torch.bfloat16,
                                  a.optimizer)),
              flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
