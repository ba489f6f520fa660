"""Peak memory of a training step: full AdamW, + gradient checkpointing, 8-bit AdamW, Adafactor, LoRA, LoRA +
checkpointing, measured on this CPU for a real IF preset, and the same table for IF-I-XL computed from measured
per-block figures.

Measured (``--preset IF-I-M``, default): each mode in a fresh process builds the Trainer (random weights; a LoRA
adapts a saved random base, as train.init_from), takes one warm-up step (the optimizer's moments are allocated
there), resets the kernel's high-water mark (/proc/self/clear_refs), takes ``--steps`` steps and reads the peak
RSS (VmHWM). The table gives the peak and what the steps added over the resident weights and optimizer.

Computed for IF-I-XL: weights, gradients, optimizer moments and EMA from the exact parameter count (bytes per
parameter of each mode), and activations from the XL UNet itself: built here in bf16 (8.6 GB) and run forward at
batch 1 under bf16 autocast with saved-tensor hooks that add up what each block keeps for the backward pass
(tensors sharing storage once), times the batch. With checkpointing a block keeps only its input, and one
block's activations exist again during its backward pass, so the peak is the block inputs plus the largest
block.

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
        "peak_gb": peak / GB, "step_gb": (peak - resident) / GB, "s_per_step": secs}


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


# --------------------------------------------------------------------------------------------------
# IF-I-XL from per-block figures on the meta device


def block_activations(preset: str, batch: int = 1, bf16: bool = True) -> dict:
    """What each UNet block keeps for the backward pass (bytes; tensors that share storage counted once) and each
    block's input, measured by a real forward pass on this CPU (weights built in bf16 when ``bf16``, under bf16
    autocast as training runs), with saved-tensor hooks; and the parameter count."""
    import torch

    from pixelcascade.models.unet import build_unet
    from pixelcascade.presets import get_preset
    cfg = get_preset(preset)
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if bf16 else torch.float32)
    try:
        model = build_unet(cfg)
    finally:
        torch.set_default_dtype(old)
    blocks = [*model.input_blocks, model.middle_block, *model.output_blocks]
    current, kept, inputs = [None], {}, {}
    seen = {p.untyped_storage().data_ptr() for p in model.parameters()}  # weights saved for backward: not new

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key[0] not in seen:  # a tensor saved by several ops (or views of one) is held once
            seen.add(key[0])
            kept[current[0]] = kept.get(current[0], 0) + key[1]
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
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(batch, 3, size, size, generator=g), torch.randn(batch, 77, cfg.encoder_dim, generator=g)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(x, torch.full((batch,), 500.0), text)
    return {"preset": preset, "batch": batch, "bf16": bf16, "params": sum(p.numel() for p in model.parameters()),
            "all": sum(kept.values()), "blocks": [kept.get(i, 0) for i in range(len(blocks))],
            "block_inputs": [inputs.get(i, 0) for i in range(len(blocks))], "outside_blocks": kept.get(None, 0)}


def xl_table(measured: list[dict], batch: int) -> list[dict]:
    """IF-I-XL's peak per mode: weights, gradients, moments and EMA from the exact parameter count (bytes per
    parameter of each mode), activations from IF-I-XL's own blocks measured at batch 1 (bf16), times ``batch``."""
    act = block_activations("IF-I-XL", 1)
    p = act["params"]
    full_act = act["all"] * batch
    # checkpointing keeps every block's input; one block's inside exists again during its backward pass
    ckpt_act = (sum(act["block_inputs"]) + act["outside_blocks"]) * batch + max(act["blocks"]) * batch
    m = {r["mode"]: r for r in measured}
    share = m["lora"]["trainable"] / m["lora"]["params"] if "lora" in m else 0.005  # adapters' share, measured
    lora_p = share * p
    # bytes per parameter: fp32 weights 4, gradients 4, AdamW moments 8 (8-bit: 2; Adafactor: ~0), EMA 4; and
    # with fp32 weights, bf16 autocast's copies of them (2), held from the forward to the backward pass
    rows = [("full-adamw", p * 22, full_act), ("full-ckpt", p * 22, ckpt_act), ("full-adamw8bit", p * 16, full_act),
            ("full-adamw8bit-ckpt", p * 16, ckpt_act), ("full-adafactor-ckpt", p * 14, ckpt_act),
            ("lora", p * 6 + lora_p * 20, full_act), ("lora-ckpt", p * 6 + lora_p * 20, ckpt_act),
            ("lora-ckpt, base in bf16", p * 2 + lora_p * 20, ckpt_act)]
    return [{"mode": name, "states_gb": states / GB, "activations_gb": a / GB, "peak_gb": (states + a) / GB}
            for name, states, a in rows] + [{"params": p, "batch": batch, "xl_blocks_batch1": act}]


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
    ap.add_argument("--no-xl", action="store_true", help="skip the IF-I-XL table (its measurement builds the XL "
                                                         "UNet in bf16: 8.6 GB)")
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast (default: where the CPU has bf16)")
    ap.add_argument("--work", default="/tmp/pixelcascade-train-memory", help="run folders and the LoRA base")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_memory.jsonl"))
    ap.add_argument("--xl-only", action="store_true", help="only the IF-I-XL table (the LoRA share from the last "
                                                           "measured lora row of --out)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.one:
        print(json.dumps(measure(a.one, a.preset, a.batch, a.steps, work, not a.fp32)))
        return
    rows = []
    if a.xl_only:
        with open(a.out) as f:
            rows = [r for r in map(json.loads, f) if r.get("mode") == "lora"][-1:]
    for mode in [] if a.xl_only else a.modes:
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
    if not a.xl_only:
        with open(a.out, "a") as f:
            for r in rows:
                f.write(json.dumps({**r, **info}) + "\n")
    if a.no_xl:
        return
    xl = xl_table(rows, a.xl_batch)
    meta = xl.pop()
    print(f"\nIF-I-XL ({meta['params'] / 1e9:.2f}B parameters), batch {meta['batch']}, 64 px, computed from its "
          f"blocks' activations measured here at batch 1 in bf16 ({meta['xl_blocks_batch1']['all'] / GB:.2f} GB):\n")
    print("| mode | weights, bf16 copies, gradients, optimizer, EMA (GB) | activations (GB) | total (GB) |")
    print("|---|---|---|---|")
    for r in xl:
        print(f"| {r['mode']} | {r['states_gb']:.1f} | {r['activations_gb']:.1f} | {r['peak_gb']:.1f} |")
    with open(a.out, "a") as f:
        f.write(json.dumps({"if_i_xl": xl, **meta, **info}) + "\n")


if __name__ == "__main__":
    main()
