"""What each command does, given its parsed arguments (``cli.py`` builds the parser and calls these).

Every bad input becomes a :class:`UserError`: one line on stderr, exit status 2, never a stack trace.
"""

from __future__ import annotations

import json
import re
import sys
import time
import warnings
from pathlib import Path

from .errors import PixelcascadeError
from .inputs import DEFAULT_MAX_PIXELS, read_image, read_mask, read_prompt_lines
from .shipped import EMOJI_FEATURES, ModelError, stage_paths


class UserError(PixelcascadeError):
    """Bad input from the command line: printed as one line, exit status 2."""


# --------------------------------------------------------------------------------------------------
# helpers


def _device(name: str) -> str:
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise UserError(f"--device {name}: not a device pixelcascade runs on; use cpu, cuda, cuda:N or auto")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device here; use --device cpu")
    from .utils import resolve_device
    return str(resolve_device(name))  # under torchrun, plain cuda is each process's own GPU


def _dtype(name: str):
    import torch
    try:
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    except KeyError:
        raise UserError(f"--dtype {name}: choose fp32, bf16 or fp16") from None


def load_cascade(model: str | Path, device: str = "cpu", dtype=None, text_encoder: str | None = None,
                 max_stages: int | None = None, allow_sr_first: bool = False, offload: bool = False,
                 stage3: str | None = None, lora: list[str] | None = None):
    """:func:`pixelcascade.api.load`, its errors as one line for the command line."""
    from .api import load
    try:
        return load(model, device=device, dtype=dtype, text_encoder=text_encoder, max_stages=max_stages,
                    allow_sr_first=allow_sr_first, offload=offload, stage3=stage3, lora=lora)
    except ModelError as e:
        raise UserError(str(e)) from None


def _slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:n] or "image"


def _out_of_memory(e: RuntimeError) -> bool:
    import torch
    return isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e)


def _check_writable(path: Path) -> None:
    """Fail before any work if the output cannot be written (tries to create a file there)."""
    import tempfile
    folder = path.parent if path.suffix else path
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".pixelcascade-write-test-"):
            pass
    except OSError as e:
        raise UserError(f"-o {path}: cannot write to {folder} ({e.strerror}); choose an output path you can "
                        "write to") from None


# --------------------------------------------------------------------------------------------------
# generate


def _read_prompts(a) -> list[str]:
    prompts = list(a.prompts)
    if getattr(a, "prompts_file", None):
        prompts += read_prompt_lines(a.prompts_file)
    if not prompts:
        raise UserError("no prompt: give one or more prompts, or --prompts-file FILE (one prompt a line)")
    if any(not p.strip() for p in prompts):
        raise UserError("empty prompt: every prompt must describe something (e.g. \"a red circle\")")
    return prompts


def load_image(path: str, what: str = "image", max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """An RGB image (uint8 [H, W, 3]) or, for ``what="mask"``, a greyscale mask (uint8 [H, W])."""
    return read_mask(path, what, max_pixels) if what == "mask" else read_image(path, what, max_pixels)


def _run_and_save(a, cascade, prompts: list[str], *, init=None, mask=None, strength: float = 1.0,
                  low_res=None, size=None, extra_sidecar: dict | None = None) -> int:
    """The image commands' one loop: call the cascade batch by batch, write each image as PNG + its settings
    record (the API's own, plus the input paths), print the paths."""
    import numpy as np

    from .images import save_png
    from .pipeline import stage_settings
    n_images = len(prompts) * a.num_images
    out = Path(a.output)
    if out.suffix and out.suffix.lower() != ".png" and not out.is_dir():
        raise UserError(f"-o {out}: images are written as PNG with a JSON sidecar; give a .png path, or a folder "
                        "(a name without an extension)")
    single = out.suffix.lower() == ".png"
    if single and n_images > 1:
        raise UserError(f"-o {out} is one PNG but {n_images} images will be made: pass a folder instead")
    _check_writable(out)
    t0 = time.time()
    settings = stage_settings(cascade.stages, sampler=a.sampler, sampler_ii=a.sampler_ii, steps=a.steps,
                              steps_ii=a.steps_ii, guidance=a.guidance, guidance_ii=a.guidance_ii,
                              aug_level=a.aug_level, dyn_thresh_max=a.thresh_max, dyn_thresh_max_ii=a.thresh_max_ii,
                              layout_guidance=a.layout_guidance)
    all_prompts = [p for p in prompts for _ in range(a.num_images)]
    seeds = [a.seed + i for i in range(len(all_prompts))]
    if size is None and (getattr(a, "height", None) or getattr(a, "width", None)):
        size = (a.height or cascade.stages[0].cfg.image_size, a.width or cascade.stages[0].cfg.image_size)
    paths = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for start in range(0, len(all_prompts), a.batch_size):
            ps, ss = all_prompts[start:start + a.batch_size], seeds[start:start + a.batch_size]
            try:
                result = cascade(ps, seed=ss, settings=settings, num_stages=a.stages, progress=not a.quiet,
                                 negative_prompt=a.negative_prompt, image=init if low_res is None else low_res,
                                 mask_image=mask, strength=strength, max_pixels=a.max_pixels,
                                 height=None if size is None else size[0], width=None if size is None else size[1],
                                 return_stages=bool(getattr(a, "save_stages", False)))
            except RuntimeError as e:  # torch's allocation failures (CPU or CUDA): the size asked for, not a bug
                if not _out_of_memory(e):
                    raise
                raise UserError(f"out of memory sampling {len(ps)} image(s): lower --batch-size or --height/--width"
                                f"{', or add --offload' if 'cuda' in str(a.device) else ''}") from None
            for j, image in enumerate(result.images):
                path = out if single else out / f"{start + j:04d}-{_slug(ps[j])}.png"
                record = {**result.settings[j], **(extra_sidecar or {})}
                save_png(np.asarray(image), path, record)
                for si, earlier in enumerate((result.stage_images or [])[:-1]):
                    save_png(np.asarray(earlier[j]), path.with_name(f"{path.stem}-stage{si + 1}.png"),
                             {**record, "stage": si + 1})
                paths.append(path)
    for w in caught:
        if "truncated" in str(w.message):
            print(f"warning: {w.message}", file=sys.stderr)
    for p in paths:
        print(p)
    if not a.quiet:
        print(f"{len(paths)} image(s) in {time.time() - t0:.1f} s", file=sys.stderr)
    return 0


def cmd_generate(a) -> int:
    import torch
    prompts = _read_prompts(a)
    _check_writable(Path(a.output))
    if a.threads:
        torch.set_num_threads(a.threads)
    cascade = load_cascade(a.model, _device(a.device), _dtype(a.dtype), a.text_encoder, max_stages=a.stages,
                           offload=a.offload, stage3=a.stage3, lora=a.lora)
    return _run_and_save(a, cascade, prompts)


def cmd_img2img(a) -> int:
    from .pipeline import from_uint8
    if not 0.0 < a.strength <= 1.0:
        raise UserError(f"--strength {a.strength}: must be in (0, 1]; 0.3 keeps most of the image, 1.0 none")
    img = from_uint8(load_image(a.image, max_pixels=a.max_pixels))
    mask = None
    if a.command == "inpaint":
        m = load_image(a.mask, "mask", a.max_pixels)
        if m.shape[:2] != tuple(img.shape[-2:]):
            raise UserError(f"mask {a.mask} is {m.shape[1]}x{m.shape[0]} but image {a.image} is "
                            f"{img.shape[3]}x{img.shape[2]}: the mask must have the image's size (white = repaint)")
        import torch
        mask = torch.from_numpy((m > 127).astype("float32"))[None, None]
    prompts = _read_prompts(a)
    _check_writable(Path(a.output))
    cascade = load_cascade(a.model, _device(a.device), _dtype(a.dtype), a.text_encoder, max_stages=a.stages,
                           lora=a.lora)
    size = cascade.stages[-1].cfg.image_size if a.stages is None else cascade.stages[a.stages - 1].cfg.image_size
    from .pipeline import resize
    init = resize(img, (size, size))
    if mask is not None:
        mask = (resize(mask, (size, size), "nearest") > 0.5).float()
    return _run_and_save(a, cascade, prompts, init=init, mask=mask, strength=a.strength,
                         extra_sidecar={"init_image": a.image, "strength": a.strength,
                                        **({"mask": a.mask} if mask is not None else {})})


def _check_upscaled_size(path: str, h: int, w: int, scale: float, div: int, max_pixels: int) -> None:
    """The output size (the input's times --scale) must be a multiple of what the stage's UNet halves to, said in
    terms of the input the user gave, and within --max-pixels."""
    oh, ow = round(h * scale), round(w * scale)
    if oh * ow > max_pixels:
        raise UserError(f"image {path} is {w}x{h}: upscaled x{scale:g} it would be {ow}x{oh} ({oh * ow / 1e6:.1f} "
                        f"MP), over the limit of {max_pixels / 1e6:.1f} MP: lower --scale (or raise --max-pixels)")
    if oh < div or ow < div or oh % div or ow % div:
        def fit(n: int) -> int:  # the nearest input side at or above n whose output is a whole multiple of div
            return round(max(div, -(-n * scale // div) * div) / scale)
        raise UserError(f"image {path} is {w}x{h}: upscaled x{scale:g} it would be {ow}x{oh}, but this stage makes "
                        f"sides that are multiples of {div}; resize the input so its sides times {scale:g} are "
                        f"(e.g. {fit(w)}x{fit(h)}), or change --scale")


def cmd_upscale(a) -> int:
    from .pipeline import from_uint8
    img = from_uint8(load_image(a.image, max_pixels=a.max_pixels))
    paths = stage_paths(a.model)
    sr_path = next((p for p in paths if "stage1" not in p.name), None) if len(paths) > 1 else paths[0]
    cascade_like = load_cascade(sr_path, _device(a.device), _dtype(a.dtype), a.text_encoder, allow_sr_first=True,
                                lora=a.lora)
    if not cascade_like.stages[0].is_super_res:
        raise UserError(f"{sr_path} is a text-to-image model, not a super-resolution stage: pass a stage II model")
    _check_upscaled_size(a.image, img.shape[2], img.shape[3], a.scale, cascade_like.stages[0].cfg.min_divisor,
                         a.max_pixels)
    a.prompts = [a.prompt]
    a.num_images, a.stages = 1, 1
    _check_writable(Path(a.output))
    size = (round(img.shape[2] * a.scale), round(img.shape[3] * a.scale))
    return _run_and_save(a, cascade_like, [a.prompt], low_res=img, size=size, extra_sidecar={"input_image": a.image})


def _version() -> str:
    from . import __version__
    return __version__


# --------------------------------------------------------------------------------------------------
# train


def cmd_train(a) -> int:
    from .config import ConfigError
    from .presets import RUN_PRESETS
    from .training.fine_tune import run_config
    from .training.run import train
    if a.preset not in RUN_PRESETS:
        raise UserError(f"unknown training preset {a.preset!r}; known: {', '.join(RUN_PRESETS)}")
    try:
        cfg = run_config(a.preset, a.overrides)
    except ConfigError as e:
        raise UserError(str(e)) from None
    from .data.emoji import EmojiError
    from .data.text_states import StatesError
    from .data.worlds import DatasetError
    from .training.checkpoint import ResumeError
    from .training.data import ConfigMismatch
    from .training.run_folder import FolderBusy
    from .utils import resolve_device
    try:
        resolve_device(cfg.train.device)
    except RuntimeError as e:
        raise UserError(str(e)) from None
    _check_writable(Path(a.output))
    command = "pixelcascade train " + " ".join([a.preset, "-o", a.output] + list(a.overrides))
    try:
        trainer = train(cfg, a.output, progress=not a.quiet, max_steps=a.max_steps, time_limit_s=a.time_limit,
                        command=command)
    except (ResumeError, ConfigMismatch, EmojiError, DatasetError, StatesError, FolderBusy) as e:
        raise UserError(str(e)) from None
    if trainer.stopped_by is not None:
        import signal
        print(f"stopped by {signal.Signals(trainer.stopped_by).name} at step {trainer.step}: checkpoint and EMA "
              f"weights in {a.output}; rerun the same command to resume", file=sys.stderr)
        return 128 + trainer.stopped_by
    print(f"checkpoint and EMA weights in {a.output}")
    return 0


def cmd_export(a) -> int:
    import torch

    from .config import ConfigError
    from .convert import CheckpointError
    from .lora import LoraError
    from .training import lora_export
    from .training.checkpoint import ResumeError
    from .weights import export_weights
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype]
    _check_writable(Path(a.output))
    adapter = lora_export.run_adapter(Path(a.run))
    if Path(a.run).is_dir():
        from .training.run_folder import refresh_stale_ema
        note = refresh_stale_ema(Path(a.run))
        if note:
            print(f"note: {note}", file=sys.stderr)
    try:
        if a.format == "diffusers":
            from .diffusers_export import export_diffusers
            stage = lora_export.run_stage(Path(a.run), a.merge_lora)
            folder = export_diffusers(stage, a.output, a.text_encoder)
            print(f"{folder}: a diffusers {json.loads((folder / 'model_index.json').read_text())['_class_name']} "
                  "folder (model card: README.md)")
            return 0
        if adapter and a.merge_lora is not None:
            if a.merge_lora:
                raise UserError(f"{a.run} is a LoRA run: --merge-lora takes no files there (it merges the run's "
                                "adapter into its base); give adapter files with a model .safetensors instead")
            path = lora_export.merge_run(adapter, Path(a.output), dtype, a.sample)
        elif adapter:
            path = lora_export.export_adapter(adapter, Path(a.output), dtype)
        elif a.merge_lora:
            path = lora_export.merge_files(Path(a.run), a.merge_lora, Path(a.output), dtype, a.sample)
        elif a.merge_lora is not None:
            raise UserError(f"--merge-lora without files: {a.run} is not a LoRA run; give the adapters to merge "
                            "(--merge-lora a.safetensors b.safetensors:0.5)")
        else:
            path = export_weights(a.run, a.output, dtype, a.sample)
    except (CheckpointError, ConfigError, LoraError, ResumeError) as e:
        raise UserError(str(e)) from None
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB), model card {path.with_suffix('.md')}")
    return 0


# --------------------------------------------------------------------------------------------------
# eval


def _overrides(a) -> dict:
    return dict(guidance=a.guidance, guidance_ii=a.guidance_ii, steps=a.steps, steps_ii=a.steps_ii,
                aug_level=a.aug_level, sampler=a.sampler, layout_guidance=a.layout_guidance)


def _eval_cascade(a):
    import torch

    from .samplers import SAMPLERS
    if a.sampler and a.sampler not in SAMPLERS:
        raise UserError(f"--sampler {a.sampler}: unknown; choose one of {', '.join(SAMPLERS)}")
    if a.threads:
        torch.set_num_threads(a.threads)
    _check_writable(Path(a.output))
    return load_cascade(a.model, _device(a.device), _dtype(a.dtype), a.text_encoder, max_stages=a.stages,
                        lora=a.lora)


def _extractor(a, required: bool = True):
    from .features.base import FIDError
    from .features.inception import InceptionExtractor
    from .features.load import load_extractor
    try:
        if a.features:
            return load_extractor(a.features)
        if a.inception:
            return InceptionExtractor(a.inception)
    except FIDError as e:
        raise UserError(str(e)) from None
    if required:
        raise UserError("FID needs features: pass --inception inception-2015-12-05.pt (clean-fid's Inception, a "
                        "local file) or --features random for a weight-free check")
    return None


def _emoji_extractor(path: str):
    """The emoji feature extractor from PATH or emoji:PATH, a bad file as one clear line."""
    from .features.base import FIDError
    from .features.load import load_extractor
    try:
        return load_extractor(path if path.startswith("emoji:") else f"emoji:{path}")
    except FIDError as e:
        raise UserError(str(e)) from None


def cmd_eval_shapes(a) -> int:
    from .eval.shapes_eval import check_tasks, evaluate_shapes, format_table
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
                             language=a.language, tasks=tasks, **_overrides(a))
    print(format_table(report))
    print(f"report: {out / 'report.json'}  contact sheet: {out / 'contact_sheet.png'}")
    return 0


def cmd_eval_fid(a) -> int:
    from .eval.fid import compute_stats, fid_from_stats, kernel_distance
    from .features.base import FIDError
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
        elif not a.save_stats:
            raise UserError("give a REFERENCE (folder or .npz) to compare with, or --save-stats FILE.npz")
    except FIDError as e:
        raise UserError(str(e)) from None
    print(json.dumps(out, indent=2))
    return 0


def cmd_eval_clip(a) -> int:
    from .eval.clip_score import clip_score_folder
    from .features.base import FIDError
    from .features.clip import CLIPScoreError
    scorer = _clip(a)
    try:
        r = clip_score_folder(a.images, scorer, a.batch_size, progress=not a.quiet)
    except (CLIPScoreError, FIDError) as e:
        raise UserError(str(e)) from None
    print(json.dumps(r, indent=2))
    return 0


def _default_captions() -> str:
    from .eval.suites import default_prompts_dir
    d = default_prompts_dir()
    if d is None or not (d / "coco_captions_val2017.tsv").is_file():
        raise UserError("--captions: no default captions file here; pass COCO's captions_val2014.json")
    return str(d / "coco_captions_val2017.tsv")


def _clip(a):
    if not a.clip:
        return None
    from .features.clip import CLIPScoreError, CLIPScorer
    try:
        return CLIPScorer(a.clip, _device(a.device))
    except CLIPScoreError as e:
        raise UserError(str(e)) from None


def cmd_eval_coco(a) -> int:
    from .eval.coco import run_coco
    from .features.base import FIDError
    from .pipeline import stage_settings
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
    from .utils import dist_info
    if dist_info()[0] == 0:
        print(json.dumps(r, indent=2))
    return 0


def cmd_eval_sweep(a) -> int:
    from .eval import sweep as sw
    try:
        space = sw.parse_space(a.space)
        points = sw.random_points(space, a.random, a.search_seed) if a.random else sw.grid_points(space)
    except sw.SweepError as e:
        raise UserError(str(e)) from None
    base = {k: v for k, v in _overrides(a).items() if v is not None}
    cascade = _eval_cascade(a)
    n = a.stages or len(cascade.stages)
    if a.metric == "shapes":
        inner = sw.shapes_metric(cascade, num_stages=n, per_task=a.per_task, seeds=a.seeds,
                                 batch_size=a.batch_size)
        metrics = ["overall", "single_object", "two_object", "counting", "colors", "position", "color_attr"]
    elif a.metric == "emoji":
        from .eval.emoji import evaluate_emoji
        from .pipeline import stage_settings
        if not a.features:
            raise UserError("--metric emoji needs --features emoji:PATH (made by `pixelcascade data emoji-features`)")
        ex = _emoji_extractor(a.features)

        def inner(p):
            r = evaluate_emoji(cascade, ex, per_split=a.per_task, batch_size=a.batch_size, num_stages=n,
                               settings=stage_settings(cascade.stages[:n], **p), progress=not a.quiet)
            return {"retrieval": r["heldout"]["top1"], "retrieval_train": r["train"]["top1"],
                    "fid": r["heldout"]["fid"]}
        metrics = ["retrieval", "retrieval_train"]
    else:
        from .eval.coco import run_coco
        from .pipeline import stage_settings
        ex, clip = _extractor(a, required=a.ref is not None), _clip(a)
        if ex is None and clip is None:
            raise UserError("--metric coco needs --ref with --inception (FID) and/or --clip (CLIP score)")
        captions = a.captions or _default_captions()

        def inner(p):
            tag = "_".join(f"{k}{v}" for k, v in p.items())
            r = run_coco(cascade, captions=captions, out_dir=Path(a.output) / tag, num=a.num,
                         settings=stage_settings(cascade.stages[:n], **p), num_stages=n, batch_size=a.batch_size,
                         ref=a.ref, extractor=ex, clip=clip, progress=not a.quiet)
            return {k: r[k] for k in ("fid", "kid", "clip_score") if k in r}
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
    from .eval.suites import load_suite, run_suite
    from .features.base import FIDError
    from .pipeline import stage_settings
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


def cmd_data_encode(a) -> int:
    from .data.formats import DataFormatError
    from .data.shard_index import index_dataset
    from .data.text_states import encode_dataset
    from .text.encoder import TextEncoderError, is_t5, load_encoder
    from .utils import barrier, default_cache_dir, dist_info, resolve_device
    _check_writable(Path(a.output))
    if a.batch_size < 1 or a.max_length < 0:
        raise UserError("--batch-size must be >= 1 and --max-length >= 0")
    rank, world = dist_info()
    try:
        device = str(resolve_device(a.device, rank))
        index = index_dataset(a.dataset, default_cache_dir(), progress=not a.quiet and rank == 0)
        length = a.max_length or (77 if is_t5(a.text_encoder) else 32)
        encoder = load_encoder(a.text_encoder, length, device=device)
    except (DataFormatError, TextEncoderError, RuntimeError) as e:
        raise UserError(str(e)) from None
    r = encode_dataset(index, a.output, encoder, a.text_encoder, batch_size=a.batch_size, rank=rank, world=world,
                       progress=not a.quiet)
    barrier()
    if rank == 0:
        print(f"states of {len(index)} records in {len(index.shards)} shards -> {a.output} ({r['encoded']} shards "
              f"encoded by this process, {r['skipped']} already there); train with data.text_states={a.output} "
              f"text_encoder={a.text_encoder} data.text_max_length={length}")
    return 0


def cmd_data_shapes_shards(a) -> int:
    from .data.synthetic import write_shapes_shards
    if a.num < 1 or a.per_shard < 1 or a.size < 32:
        raise UserError("--num and --per-shard must be >= 1 and --size >= 32 (the shapes world's smallest size)")
    _check_writable(Path(a.output))
    shards = write_shapes_shards(a.output, a.num, a.size, a.per_shard, a.seed, a.workers, progress=not a.quiet)
    print(f"{a.num} scenes in {len(shards)} shards -> {a.output}")
    return 0


def cmd_data_emoji(a) -> int:
    from .data.emoji import EmojiError, build_emoji_dataset
    _check_writable(Path(a.output))
    try:
        r = build_emoji_dataset(a.output, size=a.size, font=a.font, per_shard=a.per_shard,
                                heldout_fraction=a.heldout, seed=a.seed, progress=not a.quiet,
                                basic_layout=a.basic_layout)
    except EmojiError as e:
        raise UserError(str(e)) from None
    print(json.dumps(r, indent=2, ensure_ascii=False))
    return 0


def cmd_data_emoji_features(a) -> int:
    from .data.emoji import EmojiError
    from .eval.emoji import reference_emoji
    from .training.emoji_features import check_feature_steps, train_emoji_features
    _check_writable(Path(a.output))
    try:  # before the data loads
        check_feature_steps(a.steps)
    except ValueError as e:
        raise UserError(f"--steps: {e}") from None
    device = _device(a.device)
    if a.threads:
        import torch
        torch.set_num_threads(a.threads)
    try:
        images, tr_caps, ho_caps = reference_emoji(progress=not a.quiet)
    except EmojiError as e:
        raise UserError(str(e)) from None
    r = train_emoji_features(images, [c[0] for c in tr_caps] + [c[0] for c in ho_caps],
                             a.output, steps=a.steps, seed=a.seed, progress=not a.quiet, device=device)
    print(json.dumps(r, indent=2))
    return 0


def cmd_eval_emoji(a) -> int:
    from .eval.emoji import evaluate_emoji
    from .pipeline import stage_settings
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


def cmd_curate(a) -> int:
    from .data.curate import CurateConfig, CurateError, curate
    from .data.formats import DataFormatError
    _check_writable(Path(a.output))
    cfg = CurateConfig(phash_radius=a.phash_radius, knn=a.knn, index=a.index, near_threshold=a.near_threshold,
                       compare_size=a.compare_size, max_shift=a.max_shift, min_size=a.min_size,
                       max_aspect=a.max_aspect, aesthetic_threshold=a.aesthetic_threshold,
                       aesthetic_model=a.aesthetic_model, workers=a.workers, ray_address=a.ray,
                       per_shard=a.per_shard)
    try:
        r = curate(a.input, a.output, cfg, progress=not a.quiet, overwrite=a.overwrite)
    except (CurateError, DataFormatError) as e:
        raise UserError(str(e)) from None
    rd = r["read"]
    print(f"{r['images']} images read ({rd['corrupt_images']} corrupt, {rd['truncated_shards']} truncated shards, "
          f"{rd['unreadable_files']} unreadable files skipped); {r['exact_duplicates']} exact duplicates, "
          f"{r['near_duplicate_pairs']} near-duplicate pairs in {r['duplicate_clusters']} clusters; "
          f"dropped by filters: {r['dropped_by_filter'] or 'none'}; kept {r['kept']}")
    for v in r["valley_check"]:
        print(f"warning: caption {v['caption']!r} is one image repeated {v['count']} times ({v['share']:.2%})")
    print(f"data: {Path(a.output) / 'data'}  report: {Path(a.output) / 'report.json'}")
    return 0
