"""A training run: a config in, its data prepared (:mod:`.data`), the loop run (:mod:`.loop`), checkpoints out."""

from __future__ import annotations

import sys
from pathlib import Path

from ..config import RunConfig
from ..utils import dist_info
from .checkpoint import load_checkpoint
from .data import prepare_data
from .loop import Trainer, check_resumable_config, write_recipe
from .run_folder import exclusive
from .samples import grid_prompts, sample_grid_fn


def train(cfg: RunConfig, out_dir: str | Path, *, cache: Path | None = None, progress: bool = True,
          max_steps: int | None = None, time_limit_s: float | None = None, command: str = "",
          grids: bool = True) -> Trainer:
    """Prepare the data, build the Trainer (resuming the folder's checkpoint, if any) and fit; rank 0 holds the
    run folder's lock throughout, so a second process on the same folder stops before any work."""
    out_dir = Path(out_dir)
    if dist_info()[0] != 0:
        return _train(cfg, out_dir, cache, progress, max_steps, time_limit_s, command, grids)
    with exclusive(out_dir):  # before the data is prepared: a busy folder is found at once
        return _train(cfg, out_dir, cache, progress, max_steps, time_limit_s, command, grids)


def _train(cfg: RunConfig, out_dir: Path, cache, progress, max_steps, time_limit_s, command, grids) -> Trainer:
    ckpt = out_dir / "checkpoint.pt"
    if ckpt.is_file():  # a resume under another config is refused before minutes of data preparation
        state = load_checkpoint(ckpt, mmap=True)
        check_resumable_config(ckpt, str(state.get("config", "{}")), cfg, int(state.get("step", 0)))
    data, val, recipe, encoder, prompts = prepare_data(cfg, cache, progress)
    meta = {"text_encoder": cfg.text_encoder, "text_max_length": cfg.data.text_max_length,
            "encoder_name": encoder.name, "command": command, "data_recipe": recipe, "world": cfg.data.world}
    if cfg.data.text_states:  # stored states keep the real tokens only: sampling zeroes the padding likewise
        meta["text_padding"] = "zeros"
    prompts = grid_prompts(cfg.train.validation_prompts) or prompts
    sample_fn = sample_grid_fn(encoder, prompts) if grids else None
    trainer = Trainer(cfg, data, out_dir, val, progress=progress, sample_fn=sample_fn, meta=meta)
    write_recipe(out_dir, cfg, command)
    if cfg.train.bf16 and not trainer.bf16:
        why = "no avx512_bf16 / amx_bf16 flag" if trainer.device.type == "cpu" else "torch says it lacks bf16"
        print(f"note: training in fp32: this {trainer.device.type} has no native bf16 ({why}), where bf16 "
              "autocast would be emulated and 2-4x slower. A run may resume on either kind of machine",
              file=sys.stderr)
    trainer.fit(max_steps=max_steps, time_limit_s=time_limit_s)
    return trainer


def dry_run(cfg: RunConfig, *, cache: Path | None = None, progress: bool = True, steps: int = 3) -> dict:
    """What a run would do, without starting it: the data found (read and cached as the run would), the steps,
    and the time a step takes here, measured on ``steps`` steps (after one warm-up step) of a throwaway Trainer
    in a temporary folder. Nothing is written to a run folder."""
    import statistics
    import tempfile
    import time
    data, val, recipe, _, _ = prepare_data(cfg, cache, progress)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, data, Path(tmp), val, progress=False)
        trainer.train_step()  # the first step pays allocations and kernel choices
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            trainer.train_step()
            times.append(time.perf_counter() - t0)
    per_step = statistics.median(times)
    try:
        examples = len(data)
    except TypeError:  # a stream: counted as it is read
        examples = None
    return {"data": recipe, "examples": examples, "max_steps": cfg.train.max_steps,
            "batch_size": cfg.train.batch_size, "seconds_per_step": per_step,
            "seconds": per_step * cfg.train.max_steps, "device": str(trainer.device), "bf16": trainer.bf16}
