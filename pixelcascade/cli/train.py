"""Training and shipping: train (a preset plus dotted overrides) and export (a run's EMA as a model file)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import UserError, check_writable
from .flags import (
    at_least_1,
    non_negative,
)


def add_commands(sub) -> None:
    t = sub.add_parser("train", help="train a stage from a preset plus dotted overrides",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train from a named preset. Stops and resumes exactly: rerun the same command "
                                   "to continue from the last checkpoint in the output folder. Ctrl-C or SIGTERM "
                                   "finishes the step under way and writes a checkpoint first (a second one stops "
                                   "at once).",
                       epilog="examples:\n  pixelcascade train shapes32 -o runs/shapes32\n"
                              "  pixelcascade train shapes32 -o runs/lr1e-4 train.lr=1e-4 train.batch_size=32\n"
                              "  pixelcascade train shapes32 -o runs/ft train.init_from=runs/shapes32/checkpoint.pt "
                              "train.lr=1e-4   # fine-tune\n"
                              "  (train.init_reset=text with init_from: the text pathway starts fresh, e.g. for "
                              "another text encoder)\n"
                              "  pixelcascade train files64 -o runs/mine data.path=my_data/   # your own data\n"
                              "  pixelcascade train files128-sr -o runs/mine-sr data.path=my_data/   # its stage II\n"
                              "  pixelcascade train files64 -o runs/mix data.path=photos/,logos/ data.repeats=1,4 "
                              "data.buckets=auto data.flip=true\n"
                              "    # two datasets, logos seen 4x; aspect-ratio buckets; mirrored unless the caption "
                              "says left/right\n"
                              "presets: shapes32 (stage I, 32 px), shapes64-sr (stage II, 32 -> 64), shapes128-sr "
                              "(a third stage, 64 -> 128),\n  emoji64 (emoji stage I, 64 px), emoji128-sr (emoji "
                              "stage II, 64 -> 128),\n  files64 / files128-sr (the same two networks on your data: "
                              "data.path= a folder of images with .txt\n  captions or a manifest.csv, parquet, "
                              "or webdataset .tar shards, e.g. `pixelcascade curate`'s output;\n  decoded and "
                              "resized once into the cache, 5% held out for validation), tiny (a smoke test)\n"
                              "overrides: any field of the run config (`--print-config` lists them with their "
                              "values and meanings),\n  e.g. data.task_weights=position=4 unet.text_layers=2 "
                              "train.device=cuda\n"
                              "  pixelcascade train files64 data.path=my_data/ --dry-run   # data found, time per "
                              "step, the run's length")
    t.add_argument("preset")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=1e-4")
    t.add_argument("-o", "--output", help="run folder (checkpoint, EMA weights, logs, samples); needed to train")
    t.add_argument("--max-steps", type=at_least_1, help="stop after this many steps (= train.max_steps, recorded "
                                                         "with the run)")
    t.add_argument("--time-limit", type=non_negative, help="stop (and checkpoint) after this many seconds")
    t.add_argument("--print-config", action="store_true",
                   help="print the resolved config (preset + overrides + what train.init_from adopts): every field "
                        "with its value, its default and what it means; then stop")
    t.add_argument("--dry-run", action="store_true",
                   help="find and read the data, time three training steps here, say how long the run would take; "
                        "write nothing to the run folder")
    t.add_argument("-q", "--quiet", action="store_true")
    t.set_defaults(fn=cmd_train)

    x = sub.add_parser("export", help="ship a run's EMA weights as one small .safetensors file",
                       description="Cast a run folder's ema.safetensors (config and recipe in its metadata) to "
                                   "fp16 and write it where `generate --model` can load it. Given a model file "
                                   "instead, rewrite it (e.g. new default sampling settings, same weights). A LoRA "
                                   "run exports its adapter (for --lora), or with --merge-lora a full model.",
                       epilog="examples:\n  pixelcascade export runs/shapes32 -o pixelcascade/weights/shapes/"
                              "stage1.safetensors\n  pixelcascade export model.safetensors -o model.safetensors "
                              "--sample layout_guidance=0\n  pixelcascade export runs/lora-star --merge-lora "
                              "-o star.safetensors\n  pixelcascade export stage1.safetensors --merge-lora "
                              "star.safetensors:0.8 -o m.safetensors",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    x.add_argument("run", help="a training run folder (holds ema.safetensors), or a model .safetensors file")
    x.add_argument("-o", "--output", required=True)
    x.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    x.add_argument("--sample", nargs="*", default=[], metavar="KEY=VALUE",
                   help="default sampling settings stored with the weights, e.g. guidance_scale=4 num_steps=smart50")
    x.add_argument("--merge-lora", nargs="*", metavar="PATH[:SCALE]",
                   help="a LoRA run: merge its adapter into the base it trained on (no files); a model file: merge "
                        "these adapters into it, each at SCALE (default 1). Without the flag a LoRA run exports "
                        "its adapter alone (small)")
    x.add_argument("--format", choices=["pixelcascade", "diffusers"], default="pixelcascade",
                   help="diffusers: a folder that diffusers' IFPipeline / IFSuperResolutionPipeline loads "
                        "(model_index.json, unet/, scheduler/); -o names the folder")
    x.add_argument("--text-encoder", help="with --format diffusers: a local T5 folder copied into the export "
                                          "(default: none; pass prompt_embeds or text_encoder= when loading)")
    x.set_defaults(fn=cmd_export)


def cmd_train(a) -> int:
    from ..config import ConfigError
    from ..presets import RUN_PRESETS
    from ..training.fine_tune import run_config
    from ..training.run import train
    if a.preset not in RUN_PRESETS:
        raise UserError(f"unknown training preset {a.preset!r}; known: {', '.join(RUN_PRESETS)}")
    overrides = list(a.overrides) + ([f"train.max_steps={a.max_steps}"] if a.max_steps else [])
    try:  # --max-steps is train.max_steps: the config, the recipe and the exported file record the run as run
        cfg = run_config(a.preset, overrides)
    except ConfigError as e:
        raise UserError(str(e)) from None
    from ..data.emoji import EmojiError
    from ..data.text_states import StatesError
    from ..data.worlds import DatasetError
    from ..training.checkpoint import ResumeError
    from ..training.data import ConfigMismatch
    from ..training.run_folder import FolderBusy
    from ..utils import resolve_device
    try:
        resolve_device(cfg.train.device)
    except RuntimeError as e:
        raise UserError(str(e)) from None
    if a.print_config:
        return _print_config(cfg)
    if a.dry_run:
        return _dry_run(cfg, a.quiet)
    if not a.output:
        raise UserError("train needs -o RUN_FOLDER (where the checkpoint, EMA weights and logs go); "
                        "--print-config and --dry-run need none")
    check_writable(Path(a.output))
    command = "pixelcascade train " + " ".join([a.preset, "-o", a.output] + overrides)
    new_folder = not Path(a.output).exists()
    try:
        trainer = train(cfg, a.output, progress=not a.quiet, time_limit_s=a.time_limit, command=command)
    except (ResumeError, ConfigMismatch, EmojiError, DatasetError, StatesError, FolderBusy, ConfigError) as e:
        if new_folder:  # a run that never started leaves no empty folder behind (only its lock file is there)
            _remove_if_unused(Path(a.output))
        raise UserError(str(e)) from None
    if trainer.stopped_by is not None:
        import signal
        print(f"stopped by {signal.Signals(trainer.stopped_by).name} at step {trainer.step}: checkpoint and EMA "
              f"weights in {a.output}; rerun the same command to resume", file=sys.stderr)
        return 128 + trainer.stopped_by
    if trainer.step == getattr(trainer, "fit_start", None):
        print(f"{a.output} already finished at step {trainer.step} (train.max_steps={cfg.train.max_steps}): nothing "
              "to do; raise train.max_steps (or --max-steps) to train on, or export it", file=sys.stderr)
    print(f"checkpoint and EMA weights in {a.output}")
    return 0


def _remove_if_unused(folder: Path) -> None:
    if folder.is_dir() and {p.name for p in folder.iterdir()} <= {".lock"}:
        (folder / ".lock").unlink(missing_ok=True)
        folder.rmdir()


def _print_config(cfg) -> int:
    from ..config import describe
    rows = describe(cfg)
    width = max(len(name) for name, *_ in rows)
    for name, value, default, doc in rows:
        same = "" if value == default else f"  (default {default!r})"
        print(f"{name:<{width}} = {value!r}{same}" + (f"  # {doc}" if doc else ""))
    return 0


def _dry_run(cfg, quiet: bool) -> int:
    from ..training.run import dry_run
    r = dry_run(cfg, progress=not quiet)
    found = f"{r['examples']:,} examples" if r["examples"] is not None else "a stream of examples"
    print(f"data: {found} ({r['data']})")
    print(f"steps: {r['max_steps']:,} of {r['batch_size']} images on {r['device']}"
          f"{' with bf16 autocast' if r['bf16'] else ' in fp32'}")
    total = r["seconds"]
    span = f"{total / 3600:.1f} h" if total >= 3600 else f"{total / 60:.0f} min" if total >= 60 else f"{total:.0f} s"
    print(f"time: {r['seconds_per_step']:.2f} s a step here (median of 3), about {span} for the run")
    return 0


def cmd_export(a) -> int:
    import torch

    from ..config import ConfigError
    from ..lora import LoraError
    from ..tensorfiles import CheckpointError
    from ..training import lora_export
    from ..training.checkpoint import ResumeError
    from ..weights import export_weights
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype]
    check_writable(Path(a.output))
    adapter = lora_export.run_adapter(Path(a.run))
    if Path(a.run).is_dir():
        from ..training.run_folder import refresh_stale_ema
        note = refresh_stale_ema(Path(a.run))
        if note:
            print(f"note: {note}", file=sys.stderr)
    try:
        if a.format == "diffusers":
            from ..diffusers_export import export_diffusers
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
