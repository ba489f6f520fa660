"""Every speed figure against the peers, in one process, interleaved, on this machine.

    python bench/speed.py                                  # all sections, bf16 + fp32
    python bench/speed.py --sections stage1,cascade --dtypes bf16 --runs 3
    python bench/speed.py --sections unet --presets if64-t5xxl,shapes32-I --batch 16

Sections (each timed as the median of --runs, implementations alternating run by run so that a machine slowing
down mid-run slows each alike):
  unet     UNet forward (inference mode) and training step (forward + backward of a mean-square loss) against
           diffusers' UNet2DConditionModel and deepfloyd_if's UNetModel on the same weights (--presets, --batch).
  stage1   stage I end to end, smart27 with guidance 7 and dynamic thresholding, the same prompt states and
           noise: our Cascade against diffusers' IFPipeline on the same weights (if64-t5xxl, batch 4).
  cascade  the shipped cascade's sizes (32 px stage I, 32 -> 64 stage II, 384-d states) end to end with random
           weights: our Cascade against IFPipeline + IFSuperResolutionPipeline, both smart27 (batch 4).
  text     encoding 77-token prompts with all-MiniLM-L6-v2: our BERT against transformers' BertModel.
  flops    our UNet forward and training step (if64-t5xxl, --batch) as a fraction of this CPU's matrix-multiply
           peak: FLOPs counted by torch.utils.flop_counter, the peak measured on a 4096^3 GEMM.
Prints a table with the ratios (peer seconds / ours: above 1 means ours is faster) and appends JSON lines to
--out, each with the machine: CPU model, whether it has AVX512-BF16, threads, torch version.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_jsonl, cpu  # noqa: E402
from unet_speed import build_all, make_call, unet_inputs, use_our_layout  # noqa: E402

from pixelcascade.presets import get_preset  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# how far the peers' images may be from ours on the same weights, states and noise: fp32 agrees to 1e-4 (the
# parity tests); bf16 rounds differently per implementation, and 27 steps carry it along
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 0.25}


def machine(threads: int) -> dict:
    return {**cpu(), "threads": threads, "torch": torch.__version__}


def interleaved(calls: dict, runs: int, tolerance: float | None = None) -> dict[str, float]:
    """Median seconds per call, implementations alternating run by run, after one warm-up call each; with a
    ``tolerance``, the warm-up outputs must agree with ours (the same weights, states and noise must give the same
    images), else nothing is timed."""
    outs = {k: f() for k, f in calls.items()}
    if tolerance is not None:
        ref = _tensor(outs["ours"])
        for name, out in outs.items():
            diff = (_tensor(out) - ref).abs().max().item()
            if diff > tolerance:
                raise SystemExit(f"{name} and ours disagree by {diff:.3g} (> {tolerance}): not timed")
    times = {k: [] for k in calls}
    for _ in range(runs):
        for name, f in calls.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def unet_section(presets: list[str], dtype: torch.dtype, batch: int, runs: int) -> list[dict]:
    rows = []
    for preset in presets:
        cfg = get_preset(preset)
        if cfg.super_res:  # the peers' SR calls differ; the UNet section times stage I kinds
            continue
        models = build_all(cfg, dtype)
        x, t, text = unet_inputs(cfg, batch, dtype)
        for task in ("forward", "train"):
            use_our_layout(models["ours"], task, dtype)
            calls = {}
            for name, m in models.items():
                f = make_call(name, m, x, t, text)
                if task == "forward":
                    calls[name] = (lambda f=f: _no_grad(f))
                else:
                    calls[name] = (lambda f=f, m=m: _train_step(f, m))
            med = interleaved(calls, runs)
            rows.append({"section": "unet", "what": f"{task} {preset} b{batch}", "seconds": med})
    return rows


def _tensor(out) -> torch.Tensor:
    """The images (or states) a call returned, as one float tensor in [-1, 1] for images."""
    if isinstance(out, list):  # our engine: each stage's images; the last stage's
        return out[-1].float()
    if isinstance(out, tuple):  # a text encoder's (states, mask)
        return out[0].float()
    if hasattr(out, "images"):  # a diffusers pipeline output
        return torch.as_tensor(out.images).float().clamp(-1, 1)
    return out.float()


def _no_grad(f):
    with torch.inference_mode():
        f()


def _train_step(f, model):
    model.zero_grad(set_to_none=True)
    f().float().square().mean().backward()


def _if_pipeline(cls, stage, dyn_max: float, **extra):
    """A diffusers IF pipeline around our stage's weights (no text encoder: states are given)."""
    import diffusers

    from pixelcascade import convert
    unet = diffusers.UNet2DConditionModel(**convert.diffusers_config(stage.cfg))
    unet.load_state_dict(convert.official_to_diffusers(stage.unet.state_dict(), stage.cfg))
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                        variance_type="learned_range", thresholding=True,
                                        dynamic_thresholding_ratio=0.95, sample_max_value=dyn_max,
                                        prediction_type="epsilon", clip_sample=True)
    pipe = cls(tokenizer=None, text_encoder=None, unet=unet.eval().to(stage.unet.dtype), scheduler=scheduler,
               safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False,
               **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_stage(preset: str, dtype: torch.dtype, settings, seed: int = 0):
    """A stage of ``preset`` with random (non-zero) weights: the peers run the same weights converted."""
    from pixelcascade.config import DiffusionConfig
    from pixelcascade.models.unet import build_unet
    from pixelcascade.pipeline import Stage
    torch.manual_seed(seed)
    unet = build_unet(get_preset(preset)).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, 0.02)
    return Stage(unet.to(dtype), DiffusionConfig(), settings)


def states(batch: int, dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt and empty-prompt states, 77 tokens (what a text encoder would have given both sides)."""
    g = torch.Generator().manual_seed(5)
    return (torch.randn(batch, 77, dim, generator=g).to(dtype),
            (torch.randn(batch, 77, dim, generator=g) * 0.1).to(dtype))


def stage1_section(dtype: torch.dtype, batch: int, runs: int, preset: str = "if64-t5xxl") -> list[dict]:
    """``preset`` as stage I: our engine against IFPipeline, the same weights, states and seeds."""
    import diffusers
    from diffusers.pipelines.deepfloyd_if.timesteps import smart27_timesteps

    from pixelcascade.config import SampleConfig
    from pixelcascade.pipeline import Cascade
    settings = SampleConfig(sampler="ddpm", num_steps="smart27", guidance_scale=7.0, dyn_thresh_p=0.95,
                            dyn_thresh_max=1.5)
    stage = random_stage(preset, dtype, settings)
    emb, unc = states(batch, stage.cfg.encoder_dim, dtype)
    ours = Cascade([stage], None)
    theirs = _if_pipeline(diffusers.IFPipeline, stage, 1.5)
    seeds = list(range(batch))
    size = stage.cfg.image_size
    calls = {
        "ours": lambda: ours.run([""] * batch, seeds, text_states=(emb, None), negative_states_=(unc, None)),
        "diffusers": lambda: theirs(prompt_embeds=emb, negative_prompt_embeds=unc, timesteps=smart27_timesteps,
                                    guidance_scale=7.0, generator=[torch.Generator().manual_seed(s) for s in seeds],
                                    output_type="pt", height=size, width=size)}
    return [{"section": "stage1", "what": f"{preset} smart27 cfg7 b{batch}",
             "seconds": interleaved(calls, runs, TOLERANCE[dtype])}]


def cascade_section(dtype: torch.dtype, batch: int, runs: int,
                    presets: tuple[str, str] = ("shapes32-I", "shapes64-II")) -> list[dict]:
    """The shipped cascade's sizes (shapes32-I, then shapes64-II: 32 -> 64 px, 384-d states) with random weights
    (the shipped ones carry text layers IF lacks, which diffusers cannot run): our Cascade against IFPipeline +
    IFSuperResolutionPipeline, smart27 both, the shipped guidance (6, none) and aug level 0.25."""
    import diffusers
    from diffusers.pipelines.deepfloyd_if.timesteps import smart27_timesteps

    from pixelcascade.config import SampleConfig
    from pixelcascade.pipeline import Cascade
    settings = [SampleConfig(sampler="ddpm", num_steps="smart27", guidance_scale=6.0, dyn_thresh_p=0.95,
                             dyn_thresh_max=1.5),
                SampleConfig(sampler="ddpm", num_steps="smart27", guidance_scale=1.0, dyn_thresh_p=0.95,
                             dyn_thresh_max=1.0, aug_level=0.25)]
    s1, s2 = random_stage(presets[0], dtype, settings[0]), random_stage(presets[1], dtype, settings[1], seed=1)
    emb, unc = states(batch, s1.cfg.encoder_dim, dtype)
    ours = Cascade([s1, s2], None)
    p1 = _if_pipeline(diffusers.IFPipeline, s1, 1.5)
    p2 = _if_pipeline(diffusers.IFSuperResolutionPipeline, s2, 1.0, image_noising_scheduler=diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2"))
    seeds = list(range(batch))

    def gens():  # each stage draws from generators seeded afresh with the images' seeds, as ours
        return [torch.Generator().manual_seed(s) for s in seeds]

    def theirs():
        low = p1(prompt_embeds=emb, negative_prompt_embeds=unc, timesteps=smart27_timesteps, guidance_scale=6.0,
                 generator=gens(), output_type="pt", height=s1.cfg.image_size, width=s1.cfg.image_size).images
        return p2(image=low.clamp(-1, 1), prompt_embeds=emb, negative_prompt_embeds=unc, timesteps=smart27_timesteps,
                  guidance_scale=1.0, noise_level=250, generator=gens(), output_type="pt",
                  height=s2.cfg.image_size, width=s2.cfg.image_size)
    calls = {"ours": lambda: ours.run([""] * batch, seeds, text_states=(emb, None), negative_states_=(unc, None)),
             "diffusers": theirs}
    return [{"section": "cascade", "what": f"{presets[0]} + {presets[1]} smart27 b{batch}",
             "seconds": interleaved(calls, runs, TOLERANCE[dtype])}]


def text_section(runs: int, batch: int = 16) -> list[dict]:
    """all-MiniLM-L6-v2 on 77-token prompts: our BERT against transformers' BertModel on the same weights."""
    from pixelcascade.text.encoder import HFEncoder, minilm_path
    folder = minilm_path()
    ours = HFEncoder(folder, 77)
    prompts = [f"prompt {i}: three red circles to the left of a blue square, and a green triangle above them"
               for i in range(batch)]
    calls = {"ours": lambda: ours(prompts)}
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            from transformers import AutoTokenizer, BertModel
        tok, model = AutoTokenizer.from_pretrained(folder), BertModel.from_pretrained(folder).eval()

        def theirs():
            with torch.inference_mode():
                return model(**tok(prompts, padding="max_length", max_length=77, truncation=True,
                                   return_tensors="pt")).last_hidden_state
        calls["transformers"] = theirs
    except (ImportError, AttributeError, OSError) as e:
        print(f"text: transformers' BertModel skipped ({e})")
    return [{"section": "text", "what": f"MiniLM 77 tokens b{batch}", "seconds": interleaved(calls, runs)}]


def gemm_peak(dtype: torch.dtype, n: int = 4096, runs: int = 5) -> float:
    """This CPU's matrix-multiply peak in FLOP/s, as measured: the median of an n x n x n GEMM in ``dtype``."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def flops_section(dtype: torch.dtype, batch: int, runs: int, preset: str = "if64-t5xxl") -> list[dict]:
    """The fraction of the GEMM peak our UNet forward and training step reach: FLOPs counted by
    torch.utils.flop_counter (convolutions, matmuls, attention), divided by the measured time and the peak."""
    from torch.utils.flop_counter import FlopCounterMode
    cfg = get_preset(preset)
    ours = build_all(cfg, dtype, peers=False)["ours"]
    f = make_call("ours", ours, *unet_inputs(cfg, batch, dtype))
    peak = gemm_peak(dtype)
    rows = []
    for task, call in (("forward", lambda: _no_grad(f)), ("train", lambda: _train_step(f, ours))):
        use_our_layout(ours, task, dtype)
        with FlopCounterMode(display=False) as counter:
            call()
        seconds = interleaved({"ours": call}, runs)["ours"]
        rows.append({"section": "flops", "what": f"{task} {preset} b{batch}", "seconds": {"ours": seconds},
                     "flops": counter.get_total_flops(), "gemm_peak_flops": peak,
                     "fraction_of_peak": counter.get_total_flops() / seconds / peak})
    return rows


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="unet,flops,stage1,cascade,text")
    ap.add_argument("--dtypes", default="bf16,fp32")
    ap.add_argument("--presets", default="if64-t5xxl,shapes32-I", help="UNet section's presets")
    ap.add_argument("--batch", type=int, default=16, help="UNet section's batch")
    ap.add_argument("--e2e-batch", type=int, default=4, help="stage1 and cascade sections' batch")
    ap.add_argument("--stage1-preset", default="if64-t5xxl")
    ap.add_argument("--flops-preset", default="if64-t5xxl")
    ap.add_argument("--cascade-presets", default="shapes32-I,shapes64-II")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default="bench/results/speed.jsonl")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    where = machine(torch.get_num_threads())
    print(json.dumps(where), flush=True)
    sections = a.sections.split(",")
    rows = []
    for dname in a.dtypes.split(","):
        dtype = DTYPES[dname]
        parts = {"unet": lambda d: unet_section(a.presets.split(","), d, a.batch, a.runs),
                 "stage1": lambda d: stage1_section(d, a.e2e_batch, a.runs, a.stage1_preset),
                 "flops": lambda d: flops_section(d, a.batch, a.runs, a.flops_preset),
                 "cascade": lambda d: cascade_section(d, a.e2e_batch, a.runs,
                                                      tuple(a.cascade_presets.split(",")))}
        for name in sections:
            if name in parts:
                for row in parts[name](dtype):
                    rows.append(_report({**row, "dtype": dname, **where}))
    if "text" in sections:
        for row in text_section(a.runs):
            rows.append(_report({**row, "dtype": "fp32", **where}))
    append_jsonl(a.out, rows)
    return rows


def _report(row: dict) -> dict:
    if row["section"] == "flops":
        print(f"flops    {row['dtype']:5s} {row['what']:32s} {row['flops'] / 1e12:.2f} TFLOP in "
              f"{row['seconds']['ours'] * 1000:.0f} ms = {row['flops'] / row['seconds']['ours'] / 1e9:.0f} GFLOP/s, "
              f"{row['fraction_of_peak']:.0%} of the measured GEMM peak ({row['gemm_peak_flops'] / 1e9:.0f} GFLOP/s)",
              flush=True)
        return row
    ours = row["seconds"]["ours"]
    row["ours_speedup"] = {k: v / ours for k, v in row["seconds"].items() if k != "ours"}
    times = "  ".join(f"{k} {v * 1000:8.1f} ms" for k, v in row["seconds"].items())
    ratios = "  ".join(f"{v:.2f}x {k}" for k, v in row["ours_speedup"].items())
    print(f"{row['section']:8s} {row['dtype']:5s} {row['what']:32s} {times}   ours: {ratios}", flush=True)
    return row


if __name__ == "__main__":
    main()
