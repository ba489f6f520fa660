"""Peak memory of a training step: full AdamW, + gradient checkpointing, 8-bit AdamW, Adafactor, LoRA, LoRA +
checkpointing, measured on this CPU for a real IF preset, and the same table for IF-I-XL computed from measured
per-block figures.

Measured (``--preset IF-I-M``, default): each mode in a fresh process builds the Trainer (random weights; a LoRA
adapts a saved random base, as train.init_from), takes one warm-up step (the optimizer's moments are allocated
there), resets the kernel's high-water mark (/proc/self/clear_refs), takes ``--steps`` steps and reads the peak
RSS (VmHWM). The table gives the peak and what the steps added over the resident weights and optimizer.

Computed for IF-I-XL: weights, gradients, optimizer moments and EMA from the exact parameter count (bytes per
parameter of each mode), and activations from the XL UNet itself, run forward and backward on PyTorch's meta
device (shapes, no memory) with saved-tensor hooks that add up what each block keeps for the backward pass.
With checkpointing a block keeps only its inputs, and one block's activations exist again during its backward
pass, so the peak is the sum of block inputs plus the largest block. fp32 activation bytes are scaled by the
bf16/fp32 ratio measured on the preset here (autocast keeps most activations in bf16).

    python bench/train_memory.py                              # IF-I-M, batch 4, 64 px; + the IF-I-XL table
    python bench/train_memory.py --preset if64-t5xxl --batch 8 --modes full-adamw full-ckpt
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

MODES = ["full-adamw", "full-ckpt", "full-adamw8bit", "full-adafactor", "lora", "lora-ckpt"]
GB = 1024 ** 3


# --------------------------------------------------------------------------------------------------
# one mode, measured in this process (``--one``)


def _rss_peak() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(mode: str, preset: str, batch: int, steps: int, work: Path, bf16: bool) -> dict:
    import numpy as np
    import torch

    from pixelcascade.config import DataConfig, LoraConfig, RunConfig, TrainConfig
    from pixelcascade.presets import get_preset
    from pixelcascade.training.data import TrainData
    from pixelcascade.training.loop import Trainer
    torch.manual_seed(0)
    unet = get_preset(preset)
    size = unet.image_size
    rng = np.random.default_rng(0)
    table = torch.from_numpy(rng.standard_normal((3, 77, unet.encoder_dim)).astype(np.float16))
    data = TrainData(images=rng.integers(0, 255, (batch * 2, size, size, 3), dtype=np.uint8),
                     caption_idx=rng.integers(0, 2, batch * 2), text_table=table, null_idx=2)
    train = dict(batch_size=batch, warmup_steps=1, max_steps=100, ckpt_every=10_000, val_every=10_000, bf16=bf16,
                 grad_checkpointing=mode.endswith("ckpt"))
    if mode.startswith("lora"):
        train.update(init_from=str(_base_file(preset, work)), lora=LoraConfig(rank=16))
    if mode in ("full-adamw8bit", "full-adafactor"):
        train["optimizer"] = mode.split("-")[1]
    cfg = RunConfig(name=mode, unet=unet, data=DataConfig(image_size=size, text_max_length=77),
                    train=TrainConfig(**train))
    trainer = Trainer(cfg, data, work / mode, val_data=data, progress=False)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train_step()  # the optimizer's state is allocated here
    resident = _rss()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    secs = (time.perf_counter() - t0) / steps
    peak = _rss_peak()
    return {"mode": mode, "preset": preset, "batch": batch, "bf16": trainer.bf16, "params": sum(
        p.numel() for p in trainer.model.parameters()), "trainable": trainable, "resident_gb": resident / GB,
        "peak_gb": peak / GB, "step_gb": (peak - resident) / GB, "s_per_step": secs,
        "activation_bytes": saved_bytes(trainer.model, unet, batch, trainer.bf16)}


def _base_file(preset: str, work: Path) -> Path:
    """Random weights of the preset saved once, as a LoRA's train.init_from."""
    import torch

    from pixelcascade.config import to_json
    from pixelcascade.models.unet import build_unet
    from pixelcascade.presets import get_preset
    from pixelcascade.tensorfiles import write_safetensors
    path = work / f"base-{preset}.safetensors"
    if not path.exists():
        torch.manual_seed(1)
        cfg = get_preset(preset)
        write_safetensors(path, build_unet(cfg).state_dict(), {"unet_config": to_json(cfg)})
    return path


def saved_bytes(model, cfg, batch: int, bf16: bool) -> int:
    """What the forward pass keeps for the backward pass (saved-tensor hooks), on this device."""
    import torch
    size = cfg.image_size
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t
    x = torch.randn(batch, cfg.in_channels if not cfg.super_res else 3, size, size)
    kw = {"low_res": torch.randn(batch, 3, size, size), "aug_t": torch.zeros(batch)} if cfg.super_res else {}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(x, torch.full((batch,), 500.0), torch.randn(batch, 77, cfg.encoder_dim), **kw)
    return total[0]


# --------------------------------------------------------------------------------------------------
# IF-I-XL from per-block figures on the meta device


def block_activations(preset: str, batch: int) -> dict:
    """fp32 bytes each UNet block keeps for the backward pass, and each block's input, for ``preset`` at
    ``batch``, computed on the meta device (exact shapes, nothing allocated)."""
    import torch

    from pixelcascade.models.unet import build_unet
    from pixelcascade.presets import get_preset
    cfg = get_preset(preset)
    with torch.device("meta"):
        model = build_unet(cfg)
    blocks = [*model.input_blocks, model.middle_block, *model.output_blocks]
    current, kept, inputs = [None], {}, {}

    def pack(t):
        kept[current[0]] = kept.get(current[0], 0) + t.numel() * t.element_size()
        return t

    def enter(i):
        def hook(module, args):
            current[0] = i
            if i is not None:  # a block's first layer sees the block's input (emb and text are shared by all)
                inputs.setdefault(i, args[0].numel() * args[0].element_size())
        return hook
    for i, block in enumerate(blocks):
        for layer in block:
            layer.register_forward_pre_hook(enter(i))
    model.out.register_forward_pre_hook(enter(None))  # after the blocks
    size = cfg.image_size
    with torch.device("meta"), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        x = torch.randn(batch, 3, size, size)
        out = model(x, torch.full((batch,), 500.0), torch.randn(batch, 77, cfg.encoder_dim))
    params = sum(p.numel() for p in model.parameters())
    per_block = [kept.get(i, 0) for i in range(len(blocks))]
    return {"preset": preset, "batch": batch, "params": params, "all": sum(kept.values()),
            "blocks": per_block, "block_inputs": [inputs.get(i, 0) for i in range(len(blocks))],
            "outside_blocks": kept.get(None, 0), "output_numel": out.numel()}


def xl_table(measured: list[dict], batch: int) -> list[dict]:
    """IF-I-XL's peak per mode: states from bytes per parameter, activations from the meta-device figures."""
    act = block_activations("IF-I-XL", batch)
    ratio = 1.0
    m = {r["mode"]: r for r in measured}
    if "full-adamw" in m:  # bf16 autocast against fp32 activations, measured on the preset here
        ref = block_activations(m["full-adamw"]["preset"], m["full-adamw"]["batch"])["all"]
        ratio = m["full-adamw"]["activation_bytes"] / ref
    p = act["params"]
    full_act = act["all"] * ratio
    ckpt_act = (sum(act["block_inputs"]) + max(act["blocks"]) + act["outside_blocks"]) * ratio
    lora_p = 0.005 * p  # rank-16 attention adapters: about 0.5% of the parameters (measured below on the preset)
    if "lora" in m:
        lora_p = m["lora"]["trainable"] / m["lora"]["params"] * p
    # bytes per parameter: fp32 weights 4, gradients 4, AdamW moments 8 (8-bit: 2), Adafactor ~0, EMA 4
    rows = [("full-adamw", p * 20, full_act), ("full-ckpt", p * 20, ckpt_act), ("full-adamw8bit", p * 14, full_act),
            ("full-adamw8bit-ckpt", p * 14, ckpt_act), ("full-adafactor-ckpt", p * 12, ckpt_act),
            ("lora", p * 4 + lora_p * 20, full_act), ("lora-ckpt", p * 4 + lora_p * 20, ckpt_act),
            ("lora-ckpt, base in bf16", p * 2 + lora_p * 20, ckpt_act)]
    return [{"mode": name, "states_gb": states / GB, "activations_gb": a / GB, "peak_gb": (states + a) / GB}
            for name, states, a in rows] + [{"params": p, "bf16_ratio": ratio, "batch": batch}]


# --------------------------------------------------------------------------------------------------


def machine() -> dict:
    import torch
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((ln.split(":", 1)[1].strip() for ln in flags.splitlines() if ln.startswith("model name")), "?")
    return {"cpu": name, "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags, "torch": torch.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="IF-I-M")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=1, help="measured steps after the warm-up step")
    ap.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    ap.add_argument("--xl-batch", type=int, default=1, help="batch of the computed IF-I-XL table")
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast (default: where the CPU has bf16)")
    ap.add_argument("--work", default="/tmp/pixelcascade-train-memory", help="run folders and the LoRA base")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_memory.jsonl"))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.one:
        print(json.dumps(measure(a.one, a.preset, a.batch, a.steps, work, not a.fp32)))
        return
    rows = []
    for mode in a.modes:
        cmd = [sys.executable, __file__, "--one", mode, "--preset", a.preset, "--batch", str(a.batch),
               "--steps", str(a.steps), "--work", str(work)] + (["--fp32"] if a.fp32 else [])
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if done.returncode:
            print(f"{mode}: failed (exit {done.returncode})")
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{mode}: peak {r['peak_gb']:.2f} GB, step adds {r['step_gb']:.2f} GB, {r['s_per_step']:.1f} s/step",
              flush=True)
    info = machine()
    print(f"\n{info['cpu']}, {info['cores']} cores, avx512_bf16={info['avx512_bf16']}, torch {info['torch']}, "
          f"{info['date']}; {a.preset}, batch {a.batch}, 64 px\n")
    print("| mode | trainable params | peak RSS (GB) | step's own (GB) | vs full AdamW | s / step |")
    print("|---|---|---|---|---|---|")
    base = next((r["peak_gb"] for r in rows if r["mode"] == "full-adamw"), None)
    for r in rows:
        rel = f"{r['peak_gb'] / base:.2f}x" if base else "-"
        print(f"| {r['mode']} | {r['trainable'] / 1e6:.1f}M | {r['peak_gb']:.2f} | {r['step_gb']:.2f} | {rel} | "
              f"{r['s_per_step']:.1f} |")
    xl = xl_table(rows, a.xl_batch)
    meta = xl.pop()
    print(f"\nIF-I-XL ({meta['params'] / 1e9:.2f}B parameters), batch {meta['batch']}, 64 px, computed "
          f"(activations x {meta['bf16_ratio']:.2f} for bf16 autocast):\n")
    print("| mode | weights, gradients, optimizer, EMA (GB) | activations (GB) | total (GB) |")
    print("|---|---|---|---|")
    for r in xl:
        print(f"| {r['mode']} | {r['states_gb']:.1f} | {r['activations_gb']:.1f} | {r['peak_gb']:.1f} |")
    with open(a.out, "a") as f:
        for r in rows:
            f.write(json.dumps({**r, **info}) + "\n")
        f.write(json.dumps({"if_i_xl": xl, **meta, **info}) + "\n")


if __name__ == "__main__":
    main()
