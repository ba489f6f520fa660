"""IF-sized UNets on a GPU: ours against diffusers' on the same random weights, images/s and peak memory.

    python bench/gpu_speed.py                    # IF-I-XL (64 px) and IF-II-L (256 px), bf16 + fp16, batch 1/4/16
    python bench/gpu_speed.py --modes eager,compile,graphs --batches 1,4,16 --out bench/results/gpu_speed.jsonl
    python bench/gpu_speed.py --presets tiny,tiny-sr --device cpu --dtypes fp32 --batches 1,2 --modes eager

For each preset, dtype, batch and mode, both implementations run one UNet forward (inference mode, SDPA
attention) on the same inputs, interleaved run by run, after a check that their outputs agree. Reported per
implementation: the median seconds of a forward, images/s (batch / seconds: one denoising step), an estimate of
images/s for IF's 27-step sampling with guidance (batch / (27 x a forward at twice the batch), when that batch
was measured), and the peak memory its forward added on top of the weights. Modes: eager; compile
(``torch.compile``, default mode); graphs (``torch.compile(mode="reduce-overhead")``: CUDA graphs, GPU only).
Every row records the device, torch version and the mode; rows are appended to ``--out`` as JSON lines.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_jsonl, cpu_name  # noqa: E402

from pixelcascade import convert
from pixelcascade.models.unet import build_unet
from pixelcascade.presets import get_preset

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_pair(cfg, dtype: torch.dtype, device: str, seed: int = 0) -> dict[str, torch.nn.Module]:
    """Ours and diffusers' UNet with the same random weights, built on ``device`` (an IF-I-XL does not pass
    through host memory)."""
    from diffusers import UNet2DConditionModel
    torch.manual_seed(seed)
    with torch.device(device):
        ours = build_unet(cfg).eval()
        with torch.no_grad():
            for p in ours.parameters():
                p.normal_(0, 0.02)
        ours = ours.to(dtype)
        theirs = UNet2DConditionModel(**convert.diffusers_config(cfg)).eval().to(dtype)
    theirs.load_state_dict(convert.official_to_diffusers(ours.state_dict(), cfg))
    return {"ours": ours, "diffusers": theirs}


def inputs(cfg, batch: int, dtype: torch.dtype, device: str) -> dict:
    g = torch.Generator(device="cpu").manual_seed(1234 + batch)
    size = cfg.image_size
    x = torch.randn(batch, 3, size, size, generator=g)
    low = torch.randn(batch, 3, size, size, generator=g) if cfg.super_res else None
    return {"x": x.to(device, dtype), "t": torch.randint(0, 1000, (batch,), generator=g).to(device),
            "text": torch.randn(batch, 77, cfg.encoder_dim, generator=g).to(device, dtype),
            "low": None if low is None else low.to(device, dtype),
            "aug": torch.full((batch,), 250, device=device)}


def forward(name: str, model, inp: dict):
    """One forward of either implementation on the same inputs."""
    if name == "diffusers":
        x = inp["x"] if inp["low"] is None else torch.cat([inp["x"], inp["low"]], 1)
        kw = {} if inp["low"] is None else {"class_labels": inp["aug"]}
        return lambda: model(x, inp["t"], encoder_hidden_states=inp["text"], **kw).sample
    if inp["low"] is None:
        return lambda: model(inp["x"], inp["t"].float(), inp["text"])
    return lambda: model(inp["x"], inp["t"].float(), inp["text"], low_res=inp["low"], aug_t=inp["aug"])


def compiled(model, mode: str):
    if mode == "eager":
        return model
    return torch.compile(model, mode="reduce-overhead" if mode == "graphs" else None)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_pair(calls: dict, device: str, runs: int) -> dict[str, list[float]]:
    """Seconds per call, implementations interleaved run by run (3 warm-ups each: compilation, graph capture)."""
    for f in calls.values():
        for _ in range(3):
            f()
    sync(device)
    times = {k: [] for k in calls}
    for _ in range(runs):
        for name, f in calls.items():
            sync(device)
            t0 = time.perf_counter()
            f()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def peak_memory(f, device: str) -> float | None:
    """GB a forward allocates beyond what is held before it (activations, workspaces); None off the GPU."""
    if not device.startswith("cuda"):
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    f()
    sync(device)
    return (torch.cuda.max_memory_allocated() - before) / 1e9


def check_agree(calls: dict, dtype: torch.dtype) -> float:
    """The largest difference between the implementations' outputs, relative to the output's scale; raises when
    they disagree beyond the dtype's tolerance (the same weights must give the same function)."""
    a, b = (calls[k]().float() for k in ("ours", "diffusers"))
    rel = ((a - b).abs().max() / a.abs().max().clamp(min=1e-6)).item()
    limit = {torch.float32: 1e-3, torch.bfloat16: 0.1, torch.float16: 0.02}[dtype]
    if rel > limit:
        raise SystemExit(f"ours and diffusers disagree: max relative difference {rel:.3g} > {limit}")
    return rel


def machine(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") else cpu_name()


def run_case(preset: str, dname: str, batch: int, mode: str, models: dict, device: str, runs: int) -> list[dict]:
    cfg, dtype = get_preset(preset), DTYPES[dname]
    inp = inputs(cfg, batch, dtype, device)
    with torch.inference_mode():
        eager = {k: forward(k, m, inp) for k, m in models.items()}
        agree = check_agree(eager, dtype)
        calls = {k: forward(k, compiled(m, mode), inp) for k, m in models.items()}
        times = time_pair(calls, device, runs)
        memory = {k: peak_memory(f, device) for k, f in calls.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    return [{"preset": preset, "dtype": dname, "batch": batch, "mode": mode, "impl": k, "median_s": med[k],
             "images_per_s": batch / med[k], "peak_activation_gb": memory[k],
             "weights_gb": sum(p.numel() * p.element_size() for p in models[k].parameters()) / 1e9,
             "ours_speedup": med[k] / med["ours"], "max_rel_diff": agree, "runs": times[k], "device": machine(device),
             "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")} for k in med]


def add_sampling_estimates(rows: list[dict], steps: int = 27) -> None:
    """images/s of a ``steps``-step sampling with guidance: each step is one forward at twice the batch."""
    by_key = {(r["preset"], r["dtype"], r["mode"], r["impl"], r["batch"]): r for r in rows}
    for r in rows:
        doubled = by_key.get((r["preset"], r["dtype"], r["mode"], r["impl"], 2 * r["batch"]))
        r["sampling_images_per_s"] = None if doubled is None else r["batch"] / (steps * doubled["median_s"])


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="IF-I-XL,IF-II-L")
    ap.add_argument("--dtypes", default="bf16,fp16")
    ap.add_argument("--batches", default="1,4,16", help="comma-separated; a batch and its double give the "
                    "sampling estimate")
    ap.add_argument("--modes", default="eager,compile,graphs")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--out", default="bench/results/gpu_speed.jsonl")
    a = ap.parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run it on a GPU machine, or pass --device cpu with tiny presets")
    torch.backends.cuda.matmul.allow_tf32 = True  # as diffusers' and IF's users run
    rows = []
    for preset in a.presets.split(","):
        for dname in a.dtypes.split(","):
            models = build_pair(get_preset(preset), DTYPES[dname], a.device)
            for mode in a.modes.split(","):
                if mode == "graphs" and not a.device.startswith("cuda"):
                    continue
                for batch in map(int, a.batches.split(",")):
                    try:
                        new = run_case(preset, dname, batch, mode, models, a.device, a.runs)
                    except torch.OutOfMemoryError:
                        print(f"{preset} {dname} {mode} b{batch}: out of memory, skipped", flush=True)
                        torch.cuda.empty_cache()
                        continue
                    rows += new
                    line = "  ".join(f"{r['impl']} {r['images_per_s']:8.2f} img/s" for r in new)
                    print(f"{preset:8s} {dname:4s} {mode:7s} b{batch:<3d} {line}   ours "
                          f"{new[1]['ours_speedup']:.2f}x diffusers", flush=True)
            del models
            if a.device.startswith("cuda"):
                torch.cuda.empty_cache()
    add_sampling_estimates(rows)
    append_jsonl(a.out, rows)
    return rows


if __name__ == "__main__":
    main()
