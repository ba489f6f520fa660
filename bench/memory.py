"""Peak memory of sampling at each --offload and --text-encoder-dtype setting: measured on this CPU beside the
estimate of `pixelcascade memory`, and the estimate alone for the released IF sizes.

``measure``: random-weight stand-ins for the largest models that fit here, written once under --root: an
IF-I-M-sized stage I and an IF-II-M-sized stage II (our .safetensors, fp16 as shipped) and a T5 encoder of
T5-XXL's width (d_model 4096, d_ff 10240, 64 heads, its 32k vocabulary) cut to --t5-layers of its 24 layers.
Each setting runs `pixelcascade generate` (one image, 2 steps a stage, bf16 UNets) in a fresh process that reports
its peak resident memory (VmHWM: loading included); `pixelcascade memory --json` on the same files gives the
estimate. ``released``: the estimate for IF-I-XL + IF-II-L + T5-v1.1-XXL (24 layers) on a CPU and a GPU.

    python bench/memory.py measure                  # ~8 min; rows appended to bench/results/memory.jsonl
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
from common import append_jsonl, cpu  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "memory.jsonl"
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_heads=64, num_layers=24,
              feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)
TEXT_MODES = ("bf16", "int8", "nf4", "states")
OFFLOADS = ("none", "model", "sequential")
GB = 2 ** 30


def make_models(root: Path, t5_layers: int) -> dict:
    """Random stand-ins (written once): stage1/stage2 .safetensors and a T5 folder with a word-level tokenizer."""
    import torch

    from pixelcascade.config import DiffusionConfig, SampleConfig
    from pixelcascade.models.unet import build_unet
    from pixelcascade.pipeline import Stage
    from pixelcascade.presets import get_preset
    from pixelcascade.weights import save_stage
    t5 = root / f"t5-xxl-width-{t5_layers}-layers"
    files = {"stage1": root / "stage1-IF-I-M.safetensors", "stage2": root / "stage2-IF-II-M.safetensors", "t5": t5}
    if all(p.exists() for p in files.values()):
        return files
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for key, preset in (("stage1", "IF-I-M"), ("stage2", "IF-II-M")):
        unet = build_unet(get_preset(preset))
        stage = Stage(unet=unet, diffusion=DiffusionConfig(), meta={"text_max_length": "77"},
                      settings=SampleConfig(num_steps="2", guidance_scale=7.0 if key == "stage1" else 4.0))
        save_stage(stage, files[key], encoder_name=str(t5), dtype=torch.float16)
        files[key].with_suffix(".md").unlink(missing_ok=True)
        del unet, stage
    _make_t5(t5, t5_layers)
    return files


def _make_t5(path: Path, layers: int) -> None:
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    words = ["<pad>", "</s>", "<unk>"] + "a red circle blue square left of the and two three".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>").save_pretrained(path)
    cfg = transformers.T5Config(**dict(T5_XXL, num_layers=layers))
    model = transformers.T5EncoderModel(cfg).to(torch.bfloat16)
    model.save_pretrained(path)


def run_one(argv: list[str]) -> None:
    """In this process: the CLI, then the peak resident memory (VmHWM, bytes) as the last line."""
    import time

    from pixelcascade.cli import main
    t0 = time.perf_counter()
    rc = main(argv)
    seconds = time.perf_counter() - t0
    hwm = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM"))
    print(json.dumps({"rc": rc, "peak_rss": int(hwm.split()[1]) * 1024, "seconds": seconds}))


def _child(argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "one", *argv], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"failed: {' '.join(argv)}\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(root: Path, t5_layers: int, threads: int) -> list[dict]:
    files = make_models(root, t5_layers)
    model = f"{files['stage1']},{files['stage2']}"
    common = ["--model", model, "--text-encoder", str(files["t5"]), "--dtype", "bf16", "--threads", str(threads)]
    estimate = json.loads(subprocess.run([sys.executable, "-m", "pixelcascade.cli", "memory", model, "--text-encoder",
                                          str(files["t5"]), "--dtype", "bf16", "--json"], capture_output=True,
                                         text=True, check=True).stdout)
    states = root / "states.safetensors"
    _child(["encode", "a red circle left of the blue square", "-o", str(states), "-q", *common])
    rows = []
    for offload in OFFLOADS:
        for text in TEXT_MODES:
            argv = ["generate", "a red circle left of the blue square", "-o", str(root / "out.png"), "-q", *common,
                    "--steps", "2", "--steps-ii", "2"]
            argv += ["--prompt-states", str(states)] if text == "states" else ["--text-encoder-dtype", text]
            argv += ["--offload", offload] if offload != "none" else []
            got = _child(argv)
            est = estimate["peaks"][offload][text]
            row = {"bench": "memory", "offload": offload, "text": text, "measured_gb": got["peak_rss"] / GB,
                   "estimate_gb": est / GB, "error": est / got["peak_rss"] - 1, "seconds": got["seconds"],
                   "models": "IF-I-M + IF-II-M random, "
                   f"T5-XXL width {t5_layers} layers", "unet_dtype": "bf16", "threads": threads, **cpu()}
            print(f"{offload:<11} {text:<7} measured {row['measured_gb']:.2f} GiB  estimate "
                  f"{row['estimate_gb']:.2f} GiB  ({row['error']:+.1%})  {row['seconds']:.1f} s", flush=True)
            rows.append(row)
    append_jsonl(RESULTS, rows)
    return rows


def released() -> list[dict]:
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
    append_jsonl(RESULTS, rows)
    return rows


def quant_error(root: Path, t5_layers: int) -> list[dict]:
    """Per-token cosine of the stand-in T5's states at fp32 / int8 / nf4 to its bf16 states (4 prompts)."""
    import torch

    from pixelcascade.text.encoder import load_encoder
    t5 = str(make_models(root, t5_layers)["t5"])
    texts = ["a red circle left of the blue square", "two three", "a blue square and two red circle", "the"]
    ref, mask = load_encoder(t5, 77, text_dtype="bf16")(texts)
    rows = []
    for mode in ("fp32", "int8", "nf4"):
        got, _ = load_encoder(t5, 77, text_dtype=mode)(texts)
        cos = torch.nn.functional.cosine_similarity(ref, got, dim=-1)[mask.bool()]
        rows.append({"bench": "memory-quant-error", "text": mode, "cos_min": cos.min().item(),
                     "cos_mean": cos.mean().item(), "encoder": f"T5-XXL width {t5_layers} layers, random", **cpu()})
        print(f"{mode:<5} min {cos.min().item():.5f}  mean {cos.mean().item():.5f}", flush=True)
    append_jsonl(RESULTS, rows)
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "one":
        return run_one(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("measure", "released", "quant-error"))
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "runs" / "memory-models"),
                    help="where the random stand-ins are written (outside the repository)")
    ap.add_argument("--t5-layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    if a.what == "measure":
        measure(Path(a.root), a.t5_layers, a.threads)
    elif a.what == "quant-error":
        quant_error(Path(a.root), a.t5_layers)
    else:
        released()


if __name__ == "__main__":
    main()
