"""pixelcascade memory: what a cascade will take, per part and per offload / text encoder setting, before loading."""

from __future__ import annotations

import argparse
import json

from .common import dtype_arg
from .flags import DTYPE_HELP, at_least_1


def add_commands(sub) -> None:
    m = sub.add_parser("memory", help="the peak memory a model takes at each --offload and --text-encoder-dtype",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Computes, from the configs alone (no weight is read, no GPU needed), each "
                                   "part's weights and one sampling step's activations, and the peak of a run at "
                                   "each offload setting (none, model, sequential) and text encoder dtype (or a "
                                   "prompt-states file: no encoder). On a CPU the peak is the process's resident "
                                   "memory (this Python + torch included); on a GPU, what PyTorch allocates "
                                   "there (add the CUDA context, ~0.5 GB). docs/memory.md compares it with "
                                   "measured runs.",
                       epilog="examples:\n  pixelcascade memory\n"
                              "  pixelcascade memory /models/IF-I-XL-v1.0,/models/IF-II-L-v1.0 "
                              "--text-encoder /models/t5-v1_1-xxl --device cuda --dtype fp16\n"
                              "  pixelcascade memory shapes --batch-size 8 --json")
    m.add_argument("model", nargs="?", default="shapes", help="what `generate --model` takes (default: shapes)")
    m.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the UNets would run")
    m.add_argument("--dtype", default="auto", help=f"UNet weights: {DTYPE_HELP} (default: auto, as generate)")
    m.add_argument("--batch-size", type=at_least_1, default=1, help="images sampled together (default 1)")
    m.add_argument("--text-encoder", help="the text encoder, if not the one the model names")
    m.add_argument("--json", action="store_true", help="print the whole estimate as JSON")
    m.set_defaults(fn=cmd_memory)


def cmd_memory(a) -> int:
    import torch

    from ..memory import baselines, memory_report  # their errors are one `error:` line (PixelcascadeError)
    dtype = torch.bfloat16 if a.dtype == "auto" and a.device == "cuda" else dtype_arg(a.dtype, a.device)
    baseline = baselines() if a.device == "cpu" else 0  # measured here, as a run's process imports them
    report = memory_report(a.model, device=a.device, dtype=dtype, batch=a.batch_size, text_encoder=a.text_encoder,
                           baseline=baseline)
    print(json.dumps(report, indent=2) if a.json else format_report(report))
    return 0


def _size(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.0f} MiB"


def format_report(r: dict) -> str:
    where = "process RSS, baseline included" if r["device"] == "cpu" else "GPU memory allocated"
    lines = [f"{r['model']}: UNets {r['dtype']} on {r['device']}, batch {r['batch']}"
             + (f", baseline (Python + torch) {_size(r['baseline']['states'])}, + transformers "
                f"{_size(r['baseline']['bf16'])}, + torchao {_size(r['baseline']['int8'])}"
                if r["baseline"].get("states") else ""), "",
             f"{'part':<48}{'weights':>10}{'largest block':>15}{'step activations':>18}"]
    for p in r["parts"]:
        if p["weights"]:
            lines.append(f"{p['name']:<48}{_size(p['weights']):>10}{_size(p['largest_unit']):>15}"
                         f"{_size(p['activations'] + p['transient']):>18}")
    cols = list(next(iter(r["peaks"].values())))
    lines += ["", f"peak ({where}) by --offload and --text-encoder-dtype ('states': generate --prompt-states):",
              f"{'offload':<12}" + "".join(f"{c:>10}" for c in cols)]
    for mode, row in r["peaks"].items():
        lines.append(f"{mode:<12}" + "".join(f"{_size(row[c]):>10}" for c in cols))
    return "\n".join(lines)
