"""Our UNet against diffusers' and deepfloyd_if's on the same config and the same weights, on this CPU.

Config: ``if64-t5xxl`` from reference/perf-anchors.md (64 px, 64 channels, mult 1,2,3,4, 2 res blocks,
attention at 32/16/8, 77 x 4096 text, 79.5M parameters). Forward (inference_mode) and forward+backward,
fp32 and bf16 (parameters cast, as the anchors), batch 16 by default. Timings are the median of clean
runs, implementations interleaved run by run so that load from elsewhere hits all of them alike; it prints
a table and our speed ratios, and appends JSON lines to ``--out``.

    python bench/unet_speed.py                      # fwd + fwd/bwd, fp32 + bf16, batch 16
    python bench/unet_speed.py --tasks forward --dtypes bf16 --batch 16 --runs 7
"""

from __future__ import annotations

import argparse
import contextlib
import io
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


def build_all(cfg, dtype: torch.dtype, seed: int = 0, peers: bool = True) -> dict[str, torch.nn.Module]:
    """ours, diffusers and deepfloyd with identical (random, non-zero) weights (``peers=False``: ours alone)."""
    torch.manual_seed(seed)
    ours = build_unet(cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.02)
    models = {"ours": ours}
    if not peers:
        return {"ours": ours.to(dtype)}
    try:
        from diffusers import UNet2DConditionModel
        d = UNet2DConditionModel(**convert.diffusers_config(cfg)).eval()
        d.load_state_dict(convert.official_to_diffusers(ours.state_dict(), cfg))
        models["diffusers"] = d
    except ImportError:
        print("diffusers not installed: skipped")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from deepfloyd_if.model.unet import UNetModel
        kw = dict(in_channels=3, model_channels=cfg.model_channels, out_channels=6,
                  num_res_blocks=list(cfg.num_res_blocks),
                  attention_resolutions=",".join(map(str, cfg.attention_resolutions)), activation="gelu",
                  encoder_dim=cfg.encoder_dim, att_pool_heads=cfg.att_pool_heads, encoder_channels=cfg.encoder_channels,
                  image_size=cfg.image_size, channel_mult=",".join(map(str, cfg.channel_mult)), num_heads=1,
                  num_head_channels=cfg.num_head_channels, use_scale_shift_norm=True, resblock_updown=True,
                  precision="bf16" if dtype == torch.bfloat16 else "32")  # the official bf16 path
        df = UNetModel(**kw).eval()
        df.load_state_dict(ours.state_dict())
        models["deepfloyd"] = df
    except ImportError:
        print("deepfloyd_if not installed: skipped")
    return {k: m.to(dtype) for k, m in models.items()}


def unet_inputs(cfg, batch: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """The same seeded (x, t, text states) for every implementation and dtype."""
    g = torch.Generator().manual_seed(1234 + batch)
    x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    text = torch.randn(batch, 77, cfg.encoder_dim, generator=g)
    return x.to(dtype), t, text.to(dtype)


def use_our_layout(ours, task: str, dtype: torch.dtype) -> None:
    """The layout our sampler and trainer run in: channels-last, but NCHW for half-precision training on a CPU
    (UNet.set_layout)."""
    ours.set_layout(channels_last=task == "forward" or dtype == torch.float32)


def make_call(name: str, model, x, t, text):
    if name == "diffusers":
        return lambda: model(x, t, encoder_hidden_states=text).sample
    return lambda: model(x, t.float(), text_emb=text) if name == "deepfloyd" else model(x, t.float(), text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="if64-t5xxl")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tasks", default="forward,train")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per implementation (after 2 warm-ups)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/results/unet_speed.jsonl")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = get_preset(a.preset)
    x, t, text = unet_inputs(cfg, a.batch)
    results = []
    for dname in a.dtypes.split(","):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dname]
        models = build_all(cfg, dtype)
        xs, ts = x.to(dtype), text.to(dtype)
        for task in a.tasks.split(","):
            use_our_layout(models["ours"], task, dtype)
            calls = {}
            for name, m in models.items():
                f = make_call(name, m, xs, t, ts)
                if task == "forward":
                    def run(f=f):
                        with torch.inference_mode():
                            f()
                else:
                    def run(f=f, m=m):
                        m.zero_grad(set_to_none=True)
                        f().float().square().mean().backward()
                calls[name] = run
            for run in calls.values():  # warm-up
                run()
                run()
            times = {k: [] for k in calls}
            for _ in range(a.runs):  # interleaved: every implementation sees the same machine state
                for name, run in calls.items():
                    t0 = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            for name, v in med.items():
                row = {"preset": a.preset, "task": task, "dtype": dname, "batch": a.batch, "impl": name,
                       "median_s": v, "runs": times[name], "ratio_vs_ours": v / med["ours"],
                       "torch": torch.__version__, "machine": cpu_name(),
                       "threads": a.threads, "time": time.time()}
                results.append(row)
            line = "  ".join(f"{k} {v * 1000:8.1f} ms" for k, v in med.items())
            ratios = "  ".join(f"ours is {med[k] / med['ours']:.2f}x faster than {k}" for k in med if k != "ours")
            print(f"{task:8s} {dname:5s} b{a.batch}: {line}   |  {ratios}", flush=True)
    append_jsonl(a.out, results)
    return results


if __name__ == "__main__":
    main()
