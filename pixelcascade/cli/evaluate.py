"""The evaluation commands: eval shapes, fid, clip, coco, heldout, sweep, emoji, suite."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..data.shapes_phrasings import PHRASINGS, example
from ..shipped import EMOJI_FEATURES
from .common import UserError, check_writable, device_and_dtype, device_arg, load_cascade
from .flags import (
    at_least_1,
    eval_model_args,
    feature_args,
    seed,
)


def add_commands(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a model")
    esub = e.add_subparsers(dest="suite", required=True)
    es = esub.add_parser("shapes", help="the shapes-world compositional benchmark (GenEval tasks)",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Sample the benchmark suite (64 prompts per task x 4 seeds) and score it "
                                     "with the classical-vision scorer; prints per-task accuracy with 95% "
                                     "intervals, seen and unseen apart, and writes report.json and a contact sheet.",
                         epilog="examples:\n  pixelcascade eval shapes -o eval/shapes --stages 1\n"
                                "  pixelcascade eval shapes -o eval/position --stages 1 --tasks position")
    eval_model_args(es)
    es.add_argument("-o", "--output", default="eval/shapes")
    es.add_argument("--per-task", type=at_least_1, default=64, help="prompts per task (all when a task has fewer)")
    es.add_argument("--seeds", type=at_least_1, default=4, help="images per prompt")
    es.add_argument("--tasks", default=None,
                    help="only these tasks, comma-separated (e.g. position,counting): the same prompts and seeds "
                         "as in the full suite; overall then averages the GenEval tasks given")
    es.add_argument("--batch-size", type=at_least_1, default=64)
    es.add_argument("--language", default="en", choices=["en", "de", "fr", "es"],
                    help="the prompts in another language (same specs): measures the text encoder")
    es.add_argument("--phrasing", default="benchmark", choices=list(PHRASINGS),
                    help="the relation prompts (position, composite) in another wording, same specs: "
                         + "; ".join(f"{k}: '{example(k)}'" for k in PHRASINGS))
    es.set_defaults(fn=cmd_eval_shapes)

    ef = esub.add_parser("fid", help="FID and KID between two image folders (or a folder and saved statistics)",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="clean-fid's method: PIL bicubic resize to 299 in float, Inception pool3 "
                                     "features from a local file, float64 statistics. The Inception file cannot be "
                                     "downloaded here: fetch inception-2015-12-05.pt (clean-fid's, 95 MB) from\n"
                                     "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
                                     "inception-2015-12-05.pt",
                         epilog="examples:\n"
                                "  pixelcascade eval fid /data/coco/val2014 --ref-size 256 --save-stats coco256.npz "
                                "--inception inception-2015-12-05.pt\n"
                                "  pixelcascade eval fid out/coco/images coco256.npz "
                                "--inception inception-2015-12-05.pt\n"
                                "  pixelcascade eval fid samples/ heldout/ --features pixelstats   # no download")
    ef.add_argument("images", help="a folder of images (generated ones, or the real set with --save-stats)")
    ef.add_argument("reference", nargs="?", help="a folder of real images or a .npz of saved statistics")
    feature_args(ef)
    ef.add_argument("--save-stats", help="write the statistics of IMAGES to this .npz (reference sets: once)")
    ef.add_argument("--ref-size", type=at_least_1, help="centre-crop + resize IMAGES to this size first (real photos)")
    ef.add_argument("--batch-size", type=at_least_1, default=64)
    ef.add_argument("-q", "--quiet", action="store_true")
    ef.set_defaults(fn=cmd_eval_fid)

    ec = esub.add_parser("clip", help="CLIP score of generated images (their sidecars hold the prompts)",
                         description="Mean cosine between CLIP image and caption embeddings, as IF reports it "
                                     "(ViT-B/32, not x100). Needs a local CLIP folder in the Hugging Face layout.",
                         epilog="example: pixelcascade eval clip out/coco/images --clip /models/clip-vit-base-patch32")
    ec.add_argument("images", help="a folder of PNGs with JSON sidecars (what generate writes)")
    ec.add_argument("--clip", required=True, help="local CLIP model folder (openai/clip-vit-base-patch32)")
    ec.add_argument("--batch-size", type=at_least_1, default=64)
    ec.add_argument("--device", default="cpu")
    ec.add_argument("-q", "--quiet", action="store_true")
    ec.set_defaults(fn=cmd_eval_clip)

    eo = esub.add_parser("coco", help="zero-shot COCO: N seeded captions -> images (resumable) -> FID, CLIP score",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Draw --num distinct images from a COCO captions file (seeded) with one caption "
                                     "each, generate one image per caption with seed+row, resuming after a stop, and "
                                     "score against real-image statistics (make them once with eval fid "
                                     "--save-stats). The papers use COCO 2014 val (40,504 images) at 256 px.",
                         epilog="example:\n  pixelcascade eval coco --captions captions_val2014.json --num 30000 "
                                "-o out/coco --ref coco256.npz --inception inception-2015-12-05.pt "
                                "--clip /models/clip-vit-base-patch32")
    eval_model_args(eo)
    eo.add_argument("--captions", help="COCO captions (.json annotations, or TSV/CSV with image_id, caption); "
                                       "default: val2017's from ../shared/prompts")
    eo.add_argument("--num", type=at_least_1, default=30000, help="captions drawn, one per image (default 30000)")
    eo.add_argument("--seed", type=seed, default=0, help="seeds the caption draw; image of row r gets seed+r")
    eo.add_argument("-o", "--output", default="eval/coco")
    eo.add_argument("--ref", help="real-image statistics (.npz) or folder; without it only generation runs")
    feature_args(eo)
    eo.add_argument("--clip", help="local CLIP folder: also report the CLIP score")
    eo.add_argument("--batch-size", type=at_least_1, default=16)
    eo.set_defaults(fn=cmd_eval_coco)

    eh = esub.add_parser("heldout", help="your own model: images for the run's held-out captions vs the real "
                                         "ones (FID/KID with no download), validation loss, real/generated pairs",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Every run holds 5%% of its data (1 to 512 records) out of training. This "
                                     "generates one image per held-out caption with the run's EMA weights (seed+row, "
                                     "resumable), writes the real held-out images beside them, and reports FID and "
                                     "KID between the two (default: the no-download pixelstats features; "
                                     "--inception FILE for the papers' space), the run's last and best validation "
                                     "loss, and pairs.png (real beside generated). A super-resolution run is judged "
                                     "through a cascade: --model STAGE_I,RUN/ema.safetensors.",
                         epilog="examples:\n  pixelcascade eval heldout runs/mine -o eval/mine\n"
                                "  pixelcascade eval heldout runs/mine-sr --model runs/mine/ema.safetensors,"
                                "runs/mine-sr/ema.safetensors -o eval/mine-sr\n"
                                "  pixelcascade eval heldout runs/mine --num 64 --steps 50 -o eval/mine-50")
    eh.add_argument("run", help="the run folder `pixelcascade train -o` wrote")
    eval_model_args(eh, model="")
    eh.add_argument("--num", type=at_least_1, help="held-out captions used (default: all of them)")
    eh.add_argument("--seed", type=seed, default=0, help="image of row r gets seed+r")
    eh.add_argument("-o", "--output", default="eval/heldout")
    feature_args(eh)
    eh.add_argument("--batch-size", type=at_least_1, default=16)
    eh.set_defaults(fn=cmd_eval_heldout)

    ew = esub.add_parser("sweep", help="grid or random search over guidance / aug_level on a metric; JSON + PNG",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Evaluate a metric at every point of a grid (NAME=v1,v2,...) or at --random N "
                                     "points (NAME=lo:hi). NAME: guidance, guidance_ii, layout_guidance, aug_level, "
                                     "dyn_thresh_max, "
                                     "steps, steps_ii, sampler. Metrics: shapes (accuracy, offline), coco (FID + "
                                     "CLIP score: needs --ref/--inception and --clip), emoji (retrieval accuracy "
                                     "of held-out and training names: needs --features emoji:PATH; --per-task "
                                     "sets the captions per split). Writes sweep.json (resumes) "
                                     "and sweep.png: a curve for one parameter, the Pareto front for two metrics.",
                         epilog="examples:\n"
                                "  pixelcascade eval sweep --metric shapes guidance=1,2,3,4,6,8 -o eval/sweep-g\n"
                                "  pixelcascade eval sweep --metric shapes --stages 2 aug_level=0,0.1,0.25,0.5\n"
                                "  pixelcascade eval sweep --metric coco --random 20 guidance=1:10 guidance_ii=1:8 "
                                "aug_level=0:0.5 --num 1000 --ref coco256.npz --inception I.pt --clip CLIP/")
    ew.add_argument("space", nargs="+", help="NAME=v1,v2,... (grid) or NAME=lo:hi (with --random)")
    ew.add_argument("--metric", default="shapes", choices=["shapes", "coco", "emoji"])
    ew.add_argument("--random", type=at_least_1, help="random search with this many points instead of the grid")
    ew.add_argument("--search-seed", type=seed, default=0)
    eval_model_args(ew)
    ew.add_argument("-o", "--output", default="eval/sweep")
    ew.add_argument("--per-task", type=at_least_1, default=16, help="shapes: prompts per task at each point")
    ew.add_argument("--seeds", type=at_least_1, default=2, help="shapes: images per prompt at each point")
    ew.add_argument("--captions", help="coco: captions file")
    ew.add_argument("--num", type=at_least_1, default=1000, help="coco: captions per point (FID-1K by default)")
    ew.add_argument("--ref", help="coco: real-image statistics")
    feature_args(ew)
    ew.add_argument("--clip", help="coco: local CLIP folder")
    ew.add_argument("--batch-size", type=at_least_1, default=64)
    ew.set_defaults(fn=cmd_eval_sweep)

    em = esub.add_parser("emoji", help="emoji model: retrieval accuracy and FID/KID with the emoji extractor",
                         description="Generate the English names of held-out and of training emoji and ask the "
                                     "emoji feature extractor which real emoji each image is closest to.",
                         epilog="example: pixelcascade eval emoji --model emoji -o eval/emoji")
    em.add_argument("--features", default=str(EMOJI_FEATURES),
                    help="the extractor made by `pixelcascade data emoji-features` (default: the one shipped "
                         "with the emoji model)")
    eval_model_args(em, model="emoji")
    em.add_argument("--per-split", type=at_least_1, default=100, help="captions per split (held-out, training)")
    em.add_argument("-o", "--output", default="eval/emoji")
    em.add_argument("--batch-size", type=at_least_1, default=32)
    em.set_defaults(fn=cmd_eval_emoji)

    eu = esub.add_parser("suite", help="DrawBench / PartiPrompts / GenEval prompts -> contact sheets per category",
                         description="Generate a seeded pick of each category's prompts and write one captioned "
                                     "contact sheet per category, for judging by eye.",
                         epilog="example: pixelcascade eval suite drawbench --per-category 8 -o eval/drawbench")
    eu.add_argument("name", help="drawbench, parti, geneval, or a suite file (CSV/TSV with Prompt[, Category], "
                                 "or GenEval-style JSONL)")
    eu.add_argument("--prompts-dir", help="folder holding the suite files (default: ../shared/prompts)")
    eu.add_argument("--per-category", type=at_least_1, default=8)
    eu.add_argument("--images-per-prompt", type=at_least_1, default=1)
    eu.add_argument("--seed", type=seed, default=0)
    eval_model_args(eu)
    eu.add_argument("-o", "--output", default="eval/suite")
    eu.add_argument("--batch-size", type=at_least_1, default=16)
    eu.set_defaults(fn=cmd_eval_suite)


def _overrides(a) -> dict:
    return dict(guidance=a.guidance, guidance_ii=a.guidance_ii, steps=a.steps, steps_ii=a.steps_ii,
                aug_level=a.aug_level, sampler=a.sampler, layout_guidance=a.layout_guidance)


def _eval_cascade(a):
    import torch

    from ..samplers import SAMPLERS
    if a.sampler and a.sampler not in SAMPLERS:
        raise UserError(f"--sampler {a.sampler}: unknown; choose one of {', '.join(SAMPLERS)}")
    if a.threads:
        torch.set_num_threads(a.threads)
    check_writable(Path(a.output))
    return load_cascade(a.model, *device_and_dtype(a), a.text_encoder, max_stages=a.stages,
                        lora=a.lora, text_encoder_dtype=a.text_encoder_dtype)


def _extractor(a, required: bool = True):
    from ..features.base import FIDError
    from ..features.inception import InceptionExtractor
    from ..features.load import load_extractor
    try:
        if a.features:
            return load_extractor(a.features)
        if a.inception:
            return InceptionExtractor(a.inception)
    except FIDError as e:
        raise UserError(str(e)) from None
    if required:
        raise UserError("FID needs features: pass --inception inception-2015-12-05.pt (clean-fid's Inception, a "
                        "local file, the papers' numbers) or --features pixelstats (no download: colour, edge and "
                        "texture statistics, for comparing your own models)")
    return None


def print_warnings(warnings: list[str]) -> None:
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)


def _emoji_extractor(path: str):
    """The emoji feature extractor from PATH or emoji:PATH, a bad file as one clear line."""
    from ..features.base import FIDError
    from ..features.load import load_extractor
    try:
        return load_extractor(path if path.startswith("emoji:") else f"emoji:{path}")
    except FIDError as e:
        raise UserError(str(e)) from None


def cmd_eval_shapes(a) -> int:
    from ..eval.shapes_eval import check_tasks, evaluate_shapes, format_table
    tasks = None
    if a.tasks is not None:
        try:  # before the model loads: a typo fails at once
            tasks = check_tasks(t.strip() for t in a.tasks.split(",") if t.strip())
        except ValueError as e:
            raise UserError(f"--tasks: {e}") from None
    cascade = _eval_cascade(a)
    out = Path(a.output)
    report = evaluate_shapes(cascade, num_stages=a.stages or len(cascade.stages), per_task=a.per_task,
                             seeds=a.seeds, batch_size=a.batch_size, out_dir=out, progress=not a.quiet,
                             language=a.language, tasks=tasks, phrasing=a.phrasing, **_overrides(a))
    print(format_table(report))
    print(f"report: {out / 'report.json'}  contact sheet: {out / 'contact_sheet.png'}")
    return 0


def cmd_eval_fid(a) -> int:
    from ..eval.fid import compute_stats, fid_from_stats, fid_warnings, kernel_distance
    from ..features.base import FIDError
    ex = _extractor(a)
    try:
        st = compute_stats(a.images, ex, a.batch_size, progress=not a.quiet, ref_size=a.ref_size)
        out = {"images": a.images, "n": st.n, "extractor": ex.name, "mode": "clean"}
        if a.save_stats:
            out["saved_stats"] = str(st.save(a.save_stats))
        if a.reference:
            ref = compute_stats(a.reference, ex, a.batch_size, progress=not a.quiet)
            out.update(reference=a.reference, n_ref=ref.n, fid=fid_from_stats(st, ref))
            if st.feats is not None and ref.feats is not None:
                out["kid"] = kernel_distance(st.feats, ref.feats)
            out["warnings"] = fid_warnings(ex.name, len(st.mu), st.n, ref.n)
            print_warnings(out["warnings"])
        elif not a.save_stats:
            raise UserError("give a REFERENCE (folder or .npz) to compare with, or --save-stats FILE.npz")
    except FIDError as e:
        raise UserError(str(e)) from None
    print(json.dumps(out, indent=2))
    return 0


def cmd_eval_clip(a) -> int:
    from ..eval.clip_score import clip_score_folder
    from ..features.base import FIDError
    from ..features.clip import CLIPScoreError
    scorer = _clip(a)
    try:
        r = clip_score_folder(a.images, scorer, a.batch_size, progress=not a.quiet)
    except (CLIPScoreError, FIDError) as e:
        raise UserError(str(e)) from None
    print(json.dumps(r, indent=2))
    return 0


def _default_captions() -> str:
    from ..eval.suites import default_prompts_dir
    d = default_prompts_dir()
    if d is None or not (d / "coco_captions_val2017.tsv").is_file():
        raise UserError("--captions: no default captions file here; pass COCO's captions_val2014.json")
    return str(d / "coco_captions_val2017.tsv")


def _clip(a):
    if not a.clip:
        return None
    from ..features.clip import CLIPScoreError, CLIPScorer
    try:
        return CLIPScorer(a.clip, device_arg(a.device))
    except CLIPScoreError as e:
        raise UserError(str(e)) from None


def cmd_eval_coco(a) -> int:
    from ..eval.coco import run_coco
    from ..features.base import FIDError
    from ..pipeline import stage_settings
    ex = _extractor(a, required=a.ref is not None)
    clip = _clip(a)
    captions = a.captions or _default_captions()
    cascade = _eval_cascade(a)
    n = a.stages or len(cascade.stages)
    settings = stage_settings(cascade.stages[:n], **_overrides(a))
    try:
        r = run_coco(cascade, captions=captions, out_dir=a.output, num=a.num, seed=a.seed, settings=settings,
                     num_stages=n, batch_size=a.batch_size, ref=a.ref, extractor=ex, clip=clip,
                     progress=not a.quiet)
    except FIDError as e:
        raise UserError(str(e)) from None
    from ..utils import dist_info
    if dist_info()[0] == 0:
        print(json.dumps(r, indent=2))
        print_warnings(r.get("warnings", []))
    return 0


def cmd_eval_heldout(a) -> int:
    from ..eval.heldout import judge_heldout, run_config_of
    from ..features.base import FIDError
    from ..features.pixelstats import PixelStatsExtractor
    from ..pipeline import stage_settings
    try:
        cfg = run_config_of(a.run)
    except FIDError as e:
        raise UserError(str(e)) from None
    if cfg.unet.super_res and not a.model:
        raise UserError(f"{a.run} trained a super-resolution stage, which needs a low-res input: judge it through "
                        f"a cascade, --model STAGE_I.safetensors,{Path(a.run) / 'ema.safetensors'}")
    a.model = a.model or str(Path(a.run) / "ema.safetensors")
    ex = _extractor(a, required=False) or PixelStatsExtractor()
    cascade = _eval_cascade(a)
    n = a.stages or len(cascade.stages)
    try:
        r = judge_heldout(cascade, cfg, a.output, extractor=ex, run=Path(a.run), num=a.num, seed=a.seed,
                          settings=stage_settings(cascade.stages[:n], **_overrides(a)), num_stages=n,
                          batch_size=a.batch_size, progress=not a.quiet)
    except FIDError as e:
        raise UserError(str(e)) from None
    print(json.dumps(r, indent=2))
    print_warnings(r["warnings"])
    return 0


def cmd_eval_sweep(a) -> int:
    from ..eval import sweep as sw
    try:
        space = sw.parse_space(a.space)
        points = sw.random_points(space, a.random, a.search_seed) if a.random else sw.grid_points(space)
    except sw.SweepError as e:
        raise UserError(str(e)) from None
    base = {k: v for k, v in _overrides(a).items() if v is not None}
    cascade = _eval_cascade(a)
    n = a.stages or len(cascade.stages)
    if a.metric == "shapes":
        inner = sw.shapes_metric(cascade, num_stages=n, per_task=a.per_task, seeds=a.seeds, batch_size=a.batch_size)
        metrics = sw.SHAPES_METRICS
    elif a.metric == "emoji":
        if not a.features:
            raise UserError("--metric emoji needs --features emoji:PATH (made by `pixelcascade data emoji-features`)")
        inner = sw.emoji_metric(cascade, _emoji_extractor(a.features), num_stages=n, per_split=a.per_task,
                                batch_size=a.batch_size, progress=not a.quiet)
        metrics = ["retrieval", "retrieval_train"]
    else:
        ex, clip = _extractor(a, required=a.ref is not None), _clip(a)
        if ex is None and clip is None:
            raise UserError("--metric coco needs --ref with --inception (FID) and/or --clip (CLIP score)")
        inner = sw.coco_metric(cascade, captions=a.captions or _default_captions(), out_dir=Path(a.output),
                               num=a.num, num_stages=n, batch_size=a.batch_size, ref=a.ref, extractor=ex, clip=clip,
                               progress=not a.quiet)
        metrics = [m for m in ("fid", "clip_score") if (m == "fid" and ex) or (m == "clip_score" and clip)]

    def metric(p):
        return inner({**base, **p})
    meta = {"model": a.model, "metric": a.metric, "stages": n, "fixed": base, "space": a.space,
            "random": a.random, "search_seed": a.search_seed}
    results = sw.run_sweep(points, metric, a.output, progress=not a.quiet, meta=meta)
    png = sw.plot_sweep(results, Path(a.output) / "sweep.png", metrics,
                        title=f"{Path(a.model).name} ({a.metric}, stages {n})")
    keys = list(results[0]["params"])
    print("  ".join(f"{k:>10s}" for k in keys) + "  " + "  ".join(f"{m[:10]:>10s}" for m in metrics))
    for r in results:
        print("  ".join(f"{r['params'][k]!s:>10s}" for k in keys) + "  " +
              "  ".join(f"{r['metrics'].get(m, float('nan')):10.3f}" for m in metrics))
    print(f"sweep: {Path(a.output) / 'sweep.json'}  plot: {png}")
    return 0


def cmd_eval_suite(a) -> int:
    from ..eval.suites import load_suite, run_suite
    from ..features.base import FIDError
    from ..pipeline import stage_settings
    try:
        suite = load_suite(a.name, a.prompts_dir)
    except FIDError as e:
        raise UserError(str(e)) from None
    cascade = _eval_cascade(a)
    n = a.stages or len(cascade.stages)
    r = run_suite(cascade, suite, a.output, per_category=a.per_category, images_per_prompt=a.images_per_prompt,
                  seed=a.seed, settings=stage_settings(cascade.stages[:n], **_overrides(a)), num_stages=n,
                  batch_size=a.batch_size, progress=not a.quiet)
    for cat, path in r["sheets"].items():
        print(f"{cat}: {path}")
    return 0


def cmd_eval_emoji(a) -> int:
    from ..eval.emoji import evaluate_emoji
    from ..pipeline import stage_settings
    if a.features == str(EMOJI_FEATURES) and not EMOJI_FEATURES.is_file():
        raise UserError("--features: no emoji feature extractor is shipped with this install; make one with "
                        "`pixelcascade data emoji-features -o emoji_features.safetensors` and pass --features "
                        "emoji_features.safetensors")
    ex = _emoji_extractor(a.features)
    cascade = _eval_cascade(a)
    n = a.stages or len(cascade.stages)
    r = evaluate_emoji(cascade, ex, per_split=a.per_split, batch_size=a.batch_size, num_stages=n,
                       settings=stage_settings(cascade.stages[:n], **_overrides(a)), out_dir=a.output,
                       progress=not a.quiet)
    for split in ("heldout", "train"):
        x = r[split]
        print(f"{split:8s} captions: retrieval top-1 {x['top1']:.3f}  top-5 {x['top5']:.3f}  (chance "
              f"{x['chance_top1']:.4f})  FID {x['fid']:.2f}  KID {x['kid']:.4f}  n={x['n']}")
    print(f"report: {Path(a.output) / 'report.json'}")
    return 0
