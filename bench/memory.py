"""Peak memory of sampling at each --offload and --text-encoder-dtype setting: measured beside the estimate of
`pixelcascade memory`, and the estimate alone for the released IF sizes.

``measure``: random-weight stand-ins written once under --root (our .safetensors stages in fp16 as shipped, a T5
folder in bf16). Each setting runs `pixelcascade generate` (one image, 2 steps a stage) in a fresh process that
reports its peak: on a CPU the resident memory (VmHWM, loading included), on a GPU what PyTorch allocated there;
`pixelcascade memory --json` on the same files gives the estimate. On this CPU the largest that fit: an
IF-I-M-sized stage I, an IF-II-M-sized stage II and a T5 of T5-XXL's width cut to 4 of its 24 layers. On a GPU,
the released sizes. ``released``: the estimate for IF-I-XL + IF-II-L + T5-v1.1-XXL on a CPU and a GPU.

    python bench/memory.py measure                  # this CPU, ~8 min; rows appended to bench/results/memory.jsonl
    python bench/memory.py measure --device cuda --dtype fp16 --stage-i IF-I-XL --stage-ii IF-II-L --t5-layers 24
    python bench/memory.py released                 # the README's table (estimates)
    python bench/memory.py quant-error              # quantized states against bf16 on the T5 stand-in
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_jsonl, cpu, save_random_t5  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "memory.jsonl"
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_heads=64, num_layers=24,
              feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)
TEXT_MODES = ("bf16", "int8", "nf4", "states")
OFFLOADS = ("none", "model", "sequential")
GB = 2 ** 30


def t5_config(width: int, layers: int) -> dict:
    """T5-XXL's config at ``layers`` of its 24 layers; another ``width``: a small T5 of that width (tests)."""
    if width == T5_XXL["d_model"]:
        return dict(T5_XXL, num_layers=layers)
    return dict(T5_XXL, d_model=width, d_kv=max(1, width // 4), num_heads=4, d_ff=2 * width, num_layers=layers,
                vocab_size=64)


def make_models(root: Path, stage_i: str, stage_ii: str, t5_width: int, t5_layers: int, device: str) -> dict:
    """Random stand-ins (written once per sizes): stage1/stage2 .safetensors (fp16, as shipped) and a T5 folder
    (bf16) with a word-level tokenizer."""
    import torch

    from pixelcascade.config import DiffusionConfig, SampleConfig
    from pixelcascade.models.unet import build_unet
    from pixelcascade.pipeline import Stage
    from pixelcascade.presets import get_preset
    from pixelcascade.weights import save_stage
    root = root / f"{stage_i}+{stage_ii}+t5-{t5_width}x{t5_layers}"
    t5 = root / "t5"
    files = {"stage1": root / "stage1.safetensors", "stage2": root / "stage2.safetensors", "t5": t5, "root": root}
    if all(p.exists() for p in files.values()):
        return files
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for key, preset in (("stage1", stage_i), ("stage2", stage_ii)):
        with torch.device(device):  # random weights made where they are fast to make (IF-I-XL: 4.3 B)
            unet = build_unet(get_preset(preset, encoder_dim=t5_width)).to(torch.float16)
        stage = Stage(unet=unet, diffusion=DiffusionConfig(), meta={"text_max_length": "77"},
                      settings=SampleConfig(num_steps="2", guidance_scale=7.0 if key == "stage1" else 4.0))
        save_stage(stage, files[key], encoder_name=str(t5))
        files[key].with_suffix(".md").unlink(missing_ok=True)
        del unet, stage
    save_random_t5(t5, t5_config(t5_width, t5_layers), device, torch.bfloat16)
    return files


def run_one(argv: list[str]) -> None:
    """In this process: the CLI, then its peak memory as the last line: on a GPU what PyTorch allocated there,
    else the peak resident memory (VmHWM), in bytes."""
    import time

    import torch

    from pixelcascade.cli import main
    t0 = time.perf_counter()
    rc = main(argv)
    seconds = time.perf_counter() - t0
    if "cuda" in argv:
        peak = torch.cuda.max_memory_allocated()
    else:
        hwm = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM"))
        peak = int(hwm.split()[1]) * 1024
    print(json.dumps({"rc": rc, "peak": peak, "seconds": seconds}))


def _child(argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "one", *argv], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"failed: {' '.join(argv)}\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(a) -> list[dict]:
    """Each --offload x text setting measured in a fresh process, beside `pixelcascade memory`'s estimate."""
    files = make_models(Path(a.root), a.stage_i, a.stage_ii, a.t5_width, a.t5_layers, a.device)
    model = f"{files['stage1']},{files['stage2']}"
    common = ["--model", model, "--text-encoder", str(files["t5"]), "--dtype", a.dtype, "--device", a.device,
              "--threads", str(a.threads)]
    estimate = json.loads(subprocess.run([sys.executable, "-m", "pixelcascade.cli", "memory", model, "--text-encoder",
                                          str(files["t5"]), "--dtype", a.dtype, "--device", a.device, "--json"],
                                         capture_output=True, text=True, check=True).stdout)
    states = files["root"] / "states.safetensors"
    _child(["encode", "a red circle left of the blue square", "-o", str(states), "-q", "--model", model,
            "--text-encoder", str(files["t5"]), "--device", a.device])
    rows = []
    for offload in a.offloads:
        for text in a.texts:
            argv = ["generate", "a red circle left of the blue square", "-o", str(files["root"] / "out.png"), "-q",
                    *common, "--steps", "2", "--steps-ii", "2"]
            argv += ["--prompt-states", str(states)] if text == "states" else ["--text-encoder-dtype", text]
            argv += ["--offload", offload] if offload != "none" else []
            got = _child(argv)
            est = estimate["peaks"][offload][text]
            row = {"bench": "memory", "device": a.device, "offload": offload, "text": text,
                   "measured_gb": got["peak"] / GB, "estimate_gb": est / GB, "error": est / got["peak"] - 1,
                   "seconds": got["seconds"], "models": f"{a.stage_i} + {a.stage_ii} random, T5 width "
                   f"{a.t5_width} {a.t5_layers} layers", "unet_dtype": a.dtype, "threads": a.threads, **cpu()}
            print(f"{offload:<11} {text:<7} measured {row['measured_gb']:.2f} GiB  estimate "
                  f"{row['estimate_gb']:.2f} GiB  ({row['error']:+.1%})  {row['seconds']:.1f} s", flush=True)
            rows.append(row)
    append_jsonl(a.results, rows)
    return rows


def released(results: str | Path = RESULTS) -> list[dict]:
    """The estimate for IF-I-XL + IF-II-L + T5-XXL, batch 1, on a CPU (bf16) and a GPU (fp16)."""
    import torch
    import transformers

    from pixelcascade.memory import OFFLOAD_MODES, baselines, config_encoder_memory, estimate_peak, unet_memory
    from pixelcascade.presets import get_preset
    rows = []
    cpu_base = baselines()  # first: what a run's process holds, before this one builds anything
    for device, dtype in (("cpu", torch.bfloat16), ("cuda", torch.float16)):
        stages = [unet_memory(get_preset("IF-I-XL"), dtype, device=device, name="IF-I-XL"),
                  unet_memory(get_preset("IF-II-L"), dtype, device=device, name="IF-II-L")]
        base = cpu_base if device == "cpu" else {}
        for text in ("bf16", "int8", "nf4", "states"):
            enc = config_encoder_memory(transformers.T5Config(**T5_XXL), None if text == "states" else text)
            if text == "states":
                enc.weights = enc.largest_unit = enc.activations = 0
            for mode in OFFLOAD_MODES:
                rows.append({"bench": "memory-released", "device": device, "unet_dtype": str(dtype)[6:],
                             "text": text, "offload": mode,
                             "estimate_gb": estimate_peak([enc, *stages], mode, device, base.get(text, 0)) / GB,
                             "parts_gb": {p.name: p.weights / GB for p in [enc, *stages]}, **cpu()})
    for device in ("cpu", "cuda"):
        print(f"\n{device}: peak by --offload (rows) and --text-encoder-dtype (columns), GiB")
        print(f"{'':<12}" + "".join(f"{t:>9}" for t in ("bf16", "int8", "nf4", "states")))
        for mode in OFFLOAD_MODES:
            vals = [r["estimate_gb"] for r in rows if r["device"] == device and r["offload"] == mode]
            print(f"{mode:<12}" + "".join(f"{v:>9.1f}" for v in vals))
    append_jsonl(results, rows)
    return rows


def quant_error(a) -> list[dict]:
    """Per-token cosine of the stand-in T5's states at fp32 / int8 / nf4 to its bf16 states (4 prompts)."""
    import torch

    from pixelcascade.text.encoder import load_encoder
    t5 = str(make_models(Path(a.root), a.stage_i, a.stage_ii, a.t5_width, a.t5_layers, a.device)["t5"])
    texts = ["a red circle left of the blue square", "two three", "a blue square and two red circle", "the"]
    ref, mask = load_encoder(t5, 77, text_dtype="bf16")(texts)
    rows = []
    for mode in ("fp32", "int8", "nf4"):
        got, _ = load_encoder(t5, 77, text_dtype=mode)(texts)
        cos = torch.nn.functional.cosine_similarity(ref, got, dim=-1)[mask.bool()]
        rows.append({"bench": "memory-quant-error", "text": mode, "cos_min": cos.min().item(),
                     "cos_mean": cos.mean().item(), "encoder": f"T5 width {a.t5_width} {a.t5_layers} layers, random",
                     **cpu()})
        print(f"{mode:<5} min {cos.min().item():.5f}  mean {cos.mean().item():.5f}", flush=True)
    append_jsonl(a.results, rows)
    return rows


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["one"]:
        return run_one(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("measure", "released", "quant-error"))
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "runs" / "memory-models"),
                    help="where the random stand-ins are written (outside the repository)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda: the figures are then GPU memory allocated")
    ap.add_argument("--dtype", default="bf16", help="the UNets' (fp16 on a GPU, as IF ships)")
    ap.add_argument("--stage-i", default="IF-I-M", help="a preset (IF-I-XL on a GPU)")
    ap.add_argument("--stage-ii", default="IF-II-M", help="a preset (IF-II-L on a GPU)")
    ap.add_argument("--t5-width", type=int, default=T5_XXL["d_model"], help="4096: T5-XXL's; smaller: a test T5")
    ap.add_argument("--t5-layers", type=int, default=4, help="of T5-XXL's 24 (24 on a GPU)")
    ap.add_argument("--offloads", nargs="+", default=list(OFFLOADS), choices=OFFLOADS)
    ap.add_argument("--texts", nargs="+", default=list(TEXT_MODES), choices=TEXT_MODES)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", default=str(RESULTS), help="the JSON-lines file rows are appended to")
    a = ap.parse_args(argv)
    if a.what == "measure":
        measure(a)
    elif a.what == "quant-error":
        quant_error(a)
    else:
        released(a.results)


if __name__ == "__main__":
    main()
