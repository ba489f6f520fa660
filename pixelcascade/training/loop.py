"""The training loop: AdamW, EMA, bf16 autocast, clipping, CFG text dropout, hybrid loss, exact resume.

Every random draw of step k (batch indices, t, noise, text dropout) comes from a generator seeded by
(seed, k), so a run stopped and resumed from a checkpoint repeats the uninterrupted run exactly: the
checkpoint holds the weights, EMA, optimizer and step, nothing else is needed.

Data-parallel: launched with ``torchrun --nproc_per_node N`` (any number of processes, CPUs or GPUs), every
process draws the whole global batch from the same generator and takes rows rank, rank + N, ...; DDP averages
the gradients. So N processes train the same model as one process with the same batch size (up to the order
of float sums), and a run can resume on another number of processes. Rank 0 logs, validates and saves.
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from ..config import ConfigError, RunConfig, TrainConfig, from_dict, to_dict, to_json
from ..data.augment import flippable, random_flip
from ..diffusion.guidance import noise_augment
from ..diffusion.losses import diffusion_loss, fixed_timesteps_loss
from ..diffusion.schedule import make_schedule
from ..models import text_adapter
from ..models.unet import build_unet
from ..tensorfiles import write_safetensors
from ..utils import atomic_write_text, bf16_autocast_pays, dist_info, resolve_device
from .checkpoint import ResumeError, load_checkpoint, save_checkpoint
from .data import ConfigMismatch, TrainData  # noqa: F401  (ConfigMismatch: raised here too)
from .ema import EMA
from .sr import degrade

VAL_TIMESTEPS = (50, 250, 500, 750, 950)


def make_optimizer(params: list, tc: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """train.optimizer over the trainable parameters."""
    if tc.optimizer == "adafactor":  # factored second moments, no first moment: O(rows + cols) per matrix
        return torch.optim.Adafactor(params, lr=tc.lr, weight_decay=tc.weight_decay)
    if tc.optimizer == "adamw8bit":
        return _adamw8bit(params, tc, device)
    return torch.optim.AdamW(params, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)


def _adamw8bit(params: list, tc: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with 8-bit block-quantised moments: torchao's (CPU and CUDA), else bitsandbytes' (CUDA)."""
    try:
        from torchao.optim import AdamW8bit
        return AdamW8bit(params, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    except ImportError:
        pass
    if device.type == "cuda":
        try:
            import bitsandbytes as bnb
            return bnb.optim.AdamW8bit(params, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
        except ImportError:
            pass
    raise ConfigError("train.optimizer=adamw8bit needs torchao (pip install torchao; CPU and CUDA) or, on CUDA, "
                      "bitsandbytes; or use train.optimizer=adafactor (built into torch)")


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warm-up, then constant or a cosine decay that reaches ``lr_min`` at ``max_steps``."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / max(1, tc.warmup_steps)
    if tc.lr_schedule == "cosine":
        frac = min(1.0, (step - tc.warmup_steps) / max(1, tc.max_steps - tc.warmup_steps))
        return tc.lr_min + 0.5 * (tc.lr - tc.lr_min) * (1 + math.cos(math.pi * frac))
    return tc.lr


def check_resumable_config(ckpt_path: Path, saved: str, cfg: RunConfig, step: int = 0) -> None:
    """Refuse to resume a checkpoint written under another config (``saved``: its JSON). Fields added since it was
    written take their defaults; the train settings a resume may change (``_train_free``) and the number of
    stream workers (a machine's choice) are free."""
    if saved == to_json(cfg):
        return
    old = json.loads(saved)
    try:
        old = json.loads(to_json(from_dict(RunConfig, old)))
    except Exception:
        pass
    new = json.loads(to_json(cfg))  # JSON on both sides: tuples and lists compare equal
    for d in (old, new):
        if isinstance(d.get("data"), dict):
            d["data"].pop("workers", None)
    free = _train_free(new["train"])
    if new["train"].get("lr_schedule", "constant") == "constant" and \
            max(old.get("train", {}).get("warmup_steps", 0), new["train"]["warmup_steps"]) <= step:
        free.add("warmup_steps")  # both warm-ups are over (a longer run's, scaled with max_steps): no lr changes
    diffs = [(key, a, b) for key, a, b in _leaf_diffs(old, new) if not (key.startswith("train.") and key[6:] in free)]
    if diffs:
        shown = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, a, b in diffs[:6])
        more = f" (+{len(diffs) - 6} more)" if len(diffs) > 6 else ""
        init = cfg.train.init_from
        if init and not Path(init).expanduser().exists():  # the fine-tune's config came from that file
            raise ConfigMismatch(f"{ckpt_path} was written by a run with another config ({shown}{more}): "
                                 f"train.init_from={init} no longer exists, and a fine-tune takes its UNet, diffusion "
                                 "and text settings from that file; put it back to resume (the weights come from "
                                 "the checkpoint), or pass those values as overrides")
        raise ConfigMismatch(f"{ckpt_path} was written by a run with another config ({shown}{more}); pass the same "
                             "values to resume (e.g. the overrides the run was started with), or use a new output "
                             "folder")


def _leaf_diffs(old, new, prefix: str = "") -> list[tuple[str, object, object]]:
    """Each dotted field whose value differs between two config dicts: (field, old value, new value)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += _leaf_diffs(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [(prefix.rstrip("."), old, new)]


class Trainer:
    def __init__(self, cfg: RunConfig, data: TrainData, out_dir: str | Path, val_data: TrainData | None = None,
                 progress: bool = True, sample_fn=None, meta: dict | None = None):
        self.cfg, self.data, self.val = cfg, data, val_data or data
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.progress, self.sample_fn, self.meta = progress, sample_fn, meta or {}
        tc = cfg.train
        if tc.num_threads:
            torch.set_num_threads(tc.num_threads)
        torch.manual_seed(tc.seed)
        self.rank, self.world = dist_info()
        self.streaming = not isinstance(data, TrainData)
        self._batches = None  # the stream's iterator, from the step fit starts at
        if tc.batch_size % self.world:
            raise ValueError(f"train.batch_size={tc.batch_size} does not split over {self.world} processes: use a "
                             "multiple of the process count")
        self.device = resolve_device(tc.device, self.rank)
        # train.bf16: autocast where the hardware multiplies bf16 natively; fp32 where it would be emulated
        self.bf16 = tc.bf16 and bf16_autocast_pays(self.device)
        self.model = build_unet(cfg.unet).to(self.device)
        if self.bf16 and self.device.type == "cpu":
            self.model.set_layout(channels_last=False)  # half-precision training on a CPU runs faster NCHW
        self.adapter = None  # train.lora: the adapter's shape; the base weights stay frozen
        if tc.lora.rank:
            self.adapter = self._lora_base()
        self.ema = EMA(self.model, tc.ema_decay)
        self.stopped_by: int | None = None  # the signal that stopped the last fit, if one did
        self.trackers: list = []  # TensorBoard, W&B: opened by fit on rank 0
        self.model.gradient_checkpointing = tc.grad_checkpointing
        if (tc.batch_size // self.world) % tc.grad_accum:
            raise ValueError(f"train.grad_accum={tc.grad_accum} does not split this process's "
                             f"{tc.batch_size // self.world} rows: use a divisor of it")
        # train.sharding=fsdp on several processes: weights, gradients, moments and EMA sharded (.sharding)
        self.sharded = self.world > 1 and tc.sharding == "fsdp"
        self.schedule = make_schedule(cfg.diffusion.schedule, cfg.diffusion.num_timesteps)
        self.step = 0
        self.ckpt_path = self.out / "checkpoint.pt"
        src, reset, opt_state = None, [], None
        if self.ckpt_path.exists():
            opt_state = self._resume()
        elif tc.init_from and not self.adapter:
            src, reset = self._init_from(Path(tc.init_from))
        if self.step == 0:  # a new run or a fine-tune: the text adapter's statistics and folds (text_adapter)
            self._start_text_adapter(src, reset)
        self._trainable = [n for n, p in self.model.named_parameters() if p.requires_grad]
        if self.sharded:
            from .sharding import shard_model
            for net in (self.model, self.ema.model):
                shard_model(net, self.device)
        self.opt = make_optimizer([p for p in self.model.parameters() if p.requires_grad], tc, self.device)
        if opt_state is not None:
            self._load_optimizer(opt_state)
        self.ddp = None
        if self.world > 1 and not self.sharded:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        # what a training step calls: the (DDP-wrapped) model, through torch.compile with train.compile; weights,
        # checkpoints and the EMA stay the plain module's, so a compiled run saves and resumes as any other
        self.net = self.ddp or self.model
        if tc.compile:
            self.net = torch.compile(self.net)
        g = torch.Generator().manual_seed(10_000 + tc.seed)  # the fixed validation batch and noise
        n_val = min(64, len(self.val))
        self.val_idx = torch.randperm(len(self.val), generator=g)[:n_val]
        self.val_noise = torch.randn((n_val, 3, *self.val.images.shape[1:3]), generator=g)

    def _start_text_adapter(self, src: dict | None, reset: list[str]) -> None:
        """unet.text_whiten: the statistics of this run's captions (unless the weights came with them); a fine-tune
        that adds unet.text_whiten_attn folds the old path into encoder_proj, so it starts as the old model."""
        adapter, tc = self.cfg.unet.adapter, self.cfg.train
        fine_tune, src = src is not None, src or {}  # src: the init_from file's unet config ({}: not recorded)
        if (fine_tune and adapter.whiten_pool and not src.get("text_whiten_pool", False)
                and not any(k.startswith("encoder_pooling.") for k in reset)):
            raise ConfigMismatch(f"unet.text_whiten_pool=true changes what the pooled text vector reads, so a "
                                 f"fine-tune from {tc.init_from} (trained without it) cannot add it: train "
                                 "a new run, leave it out, or retrain the text pathway (train.init_reset=text)")
        if adapter.whiten and not self.model.text_white_map.any():
            self.set_whitening()
        if fine_tune and adapter.whiten_attn and not src.get("text_whiten_attn", False) \
                and not any(k.startswith("encoder_proj.") for k in reset):
            for net in (self.model, self.ema.model):
                text_adapter.fold_white_attn(net, adapter)

    def set_whitening(self, states: torch.Tensor | None = None, eps: float = text_adapter.WHITEN_EPS) -> None:
        """unet.text_whiten: the ZCA statistics of every token state in the caption table (the empty caption
        included), or of ``states`` when given, into the model and its EMA (``eps``: the eigenvalue floor)."""
        table = self.data.text_table if isinstance(self.data, TrainData) else self.val.text_table
        text_adapter.set_whitening((self.model, self.ema.model), table if states is None else states, eps)

    def _lora_base(self):
        """train.lora: the frozen base from train.init_from (its EMA weights: the model one samples), wrapped with a
        new adapter (B = 0, so the run starts as the base model). Returns the adapter's spec."""
        from ..lora import AdapterSpec, add_adapter, target_modules
        lc = self.cfg.train.lora
        self._init_from(Path(self.cfg.train.init_from), nets=(self.model,), use_ema=True)
        spec = AdapterSpec(lc.rank, lc.alpha or float(lc.rank), tuple(target_modules(self.model, lc.targets)),
                           lc.dropout)
        self.model.requires_grad_(False)
        add_adapter(self.model, spec)  # peft leaves only the adapter's weights trainable
        return spec

    # -- state ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Weights, EMA, optimizer and step; a LoRA run's frozen base is left out (train.init_from has it). A
        sharded run gathers full tensors (every process calls this) and keys the optimizer state by name."""
        if self.sharded:
            from .sharding import full_model_state, named_optimizer_state
            model, opt = full_model_state(self.model), named_optimizer_state(self.model, self.opt)
            ema = {**self.ema.state_dict(), "model": full_model_state(self.ema.model)}
        else:
            model, opt, ema = self.model.state_dict(), self.opt.state_dict(), self.ema.state_dict()
        model = {k: v for k, v in model.items() if k not in self.ema.frozen}
        state = {"model": model, "ema": ema, "opt": opt, "opt_by_name": self.sharded,
                 "step": self.step, "config": to_json(self.cfg)}
        if self.streaming:  # the stream's position is the step; it must continue over the same shards
            state["data_fingerprint"] = self.data.fingerprint
        return state

    def _resume(self) -> tuple[dict, bool]:
        """Weights, EMA and step from the run's checkpoint; returns its optimizer state (and whether it is keyed
        by parameter name), loaded once the optimizer exists."""
        state = load_checkpoint(self.ckpt_path)
        check_resumable_config(self.ckpt_path, state.get("config", "{}"), self.cfg, int(state.get("step", 0)))
        if self.streaming and state.get("data_fingerprint", self.data.fingerprint) != self.data.fingerprint:
            raise ConfigMismatch(f"{self.ckpt_path} was trained on other shards than {self.cfg.data.path} holds now "
                                 "(names, sizes or record counts differ): the stream could not continue where it "
                                 "stopped; use the same shards, or a new output folder")
        missing, unexpected = self.model.load_state_dict(state["model"], strict=not self.ema.frozen)
        if unexpected or set(missing) - self.ema.frozen:
            raise ConfigMismatch(f"{self.ckpt_path} holds other weights than this run trains (missing "
                                 f"{sorted(set(missing) - self.ema.frozen)[:3]}, unexpected {unexpected[:3]}): "
                                 "use a new output folder")
        self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])
        return state["opt"], bool(state.get("opt_by_name"))

    def _load_optimizer(self, saved: tuple[dict, bool]) -> None:
        """The checkpoint's optimizer state, written by this or another number of processes, sharded or not."""
        state, by_name_ = saved
        if not by_name_ and not self.sharded:
            self.opt.load_state_dict(state)
            return
        from .sharding import by_name, load_named_optimizer_state
        load_named_optimizer_state(self.model, self.opt, state if by_name_ else by_name(state, self._trainable))

    def _init_from(self, path: Path, nets: tuple | None = None, use_ema: bool = False) -> tuple[dict, list[str]]:
        """Fine-tuning: model and EMA weights from another run (optimizer and step start fresh), except the
        names train.init_reset picks, which keep this run's initialisation. Returns the source's unet config as
        a dict ({} when the file does not record it) and the names reset. ``nets``: load into these modules
        (default: the model and its EMA) the source's EMA weights if ``use_ema``."""
        model_sd, ema_sd, src = read_init_weights(path)
        reset = reset_names(self.cfg.train.init_reset, list(self.model.state_dict()) + list(model_sd))
        pairs = ((self.model, model_sd), (self.ema.model, ema_sd)) if nets is None else \
            [(net, ema_sd if use_ema else model_sd) for net in nets]
        for net, sd in pairs:
            try:
                missing, unexpected = net.load_state_dict(
                    {k: v.float() for k, v in sd.items() if k not in reset}, strict=False)
            except RuntimeError as e:
                first = str(e).strip().splitlines()[1:2] or [str(e)[:200]]
                raise ResumeError(f"train.init_from={path}: its weights do not fit this run's unet config "
                                  f"({first[0].strip()}); fine-tune with the config that made them") from None
            # only layers that start as the identity may be new (unet.text_layers, unet.attention_position,
            # unet.text_position, unet.text_context, unet.text_whiten): the model starts as the old one
            new = [k for k in missing if k not in reset and not (
                text_adapter.adapter_keys(k) or ".pos_proj." in k)]
            if new or unexpected:
                raise ResumeError(f"train.init_from={path}: its weights do not fit this run's unet config "
                                  f"(missing {new[:3]}, unexpected {unexpected[:3]}); fine-tune with the config "
                                  "that made them")
        # reset whitening buffers stay zero, as built, so __init__ computes them from this run's captions
        if self.progress and self.rank == 0:
            what = "its EMA weights into the frozen base" if nets is not None else "its weights into the model and EMA"
            print(f"fine-tuning from {path}: {what}" + (f", {len(reset)} tensors reset (train.init_reset)"
                                                       if reset else ""), file=sys.stderr)
        return src, sorted(reset)

    def save(self) -> None:
        """The checkpoint and the EMA weights (or a LoRA run's adapter), written by rank 0. Every process calls
        it when the run is sharded (the tensors are gathered from all)."""
        state = self.state_dict()
        if self.rank != 0:
            return
        # the weights users export first, the checkpoint second: a stop between the two leaves the EMA ahead of
        # the checkpoint (the weights the resumed run makes again, exactly), never behind it
        weights = self.out / ("lora.safetensors" if self.adapter else "ema.safetensors")
        if self.adapter:
            self.export_adapter(weights)
        else:
            self.export_ema(weights, state["ema"]["model"])
        save_checkpoint(self.ckpt_path, state)
        keep_history(self.out, self.ckpt_path, weights, self.step, self.cfg.train.keep_last)

    def export_adapter(self, path: Path) -> None:
        """A LoRA run's EMA adapter alone, with its spec, the base it adapts and the run's settings."""
        from ..lora import save_adapter
        meta = {"diffusion_config": to_json(self.cfg.diffusion), "sample_config": to_json(self.cfg.sample),
                "run_config": to_json(self.cfg), "step": str(self.step), "base": self.cfg.train.init_from,
                **{k: str(v) for k, v in self.meta.items()}}
        save_adapter(path, self.ema.model, self.adapter, self.cfg.unet, meta=meta)

    def export_ema(self, path: Path, weights: dict | None = None) -> None:
        meta = {"unet_config": to_json(self.cfg.unet), "diffusion_config": to_json(self.cfg.diffusion),
                "sample_config": to_json(self.cfg.sample), "run_config": to_json(self.cfg), "step": str(self.step),
                **{k: str(v) for k, v in self.meta.items()}}
        weights = self.ema.model.state_dict() if weights is None else weights
        write_safetensors(path, {k: v.float().cpu() for k, v in weights.items()}, meta)

    # -- one step ---------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        tc, dc = self.cfg.train, self.cfg.diffusion
        g = step_generator(tc.seed, self.step)
        b = tc.batch_size  # the global batch: every process draws all of it and keeps its rows
        mine = slice(self.rank, None, self.world)
        idx = None if self.streaming else self.data.draw(g, b)[mine]
        drop = (torch.rand(b, generator=g) < tc.cfg_dropout)[mine]
        t = torch.randint(0, dc.num_timesteps, (b,), generator=g)[mine]
        replaced = 0
        if self.streaming:  # the stream's batch for this step: this process's rows of the global batch
            batch = next(self._batches)
            if batch["step"] != self.step:
                raise RuntimeError(f"the data stream gave step {batch['step']}'s batch at step {self.step}")
            x0 = batch["images"].permute(0, 3, 1, 2).float() / 127.5 - 1  # [B, 3, H, W]
            text, replaced = self.data.text(batch, drop), batch["replaced"]
        else:
            x0, text = self.data.batch(idx, drop)
        noise = torch.randn((b, *x0.shape[1:]), generator=g)[mine]
        flipped = None
        if self.cfg.data.flip:  # drawn only when on: runs without it keep their random stream
            allowed = torch.from_numpy(flippable(batch["captions"]) if self.streaming else self.data.flippable[idx])
            x0, flipped = random_flip(x0, allowed, g, b, mine)
        low_res_kw = {}
        if self.cfg.unet.super_res:
            low_res_kw = self._sr_inputs(x0, g, b, mine, idx, flipped)
        dev = self.device
        x0, text, noise, t = x0.to(dev), text.to(dev), noise.to(dev), t.to(dev)
        low_res_kw = {k: v.to(dev) for k, v in low_res_kw.items()}
        x_t = self.schedule.q_sample(x0, t, noise)
        for group in self.opt.param_groups:
            if isinstance(group["lr"], torch.Tensor):  # torchao's optimizers keep lr as a tensor (compiled step)
                group["lr"].fill_(lr_at(self.step, tc))
            else:
                group["lr"] = lr_at(self.step, tc)
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        terms = self._backward(x0, x_t, t, noise, text, low_res_kw)
        loss = terms["loss"].mean()
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.opt.step()
        self.ema.update(self.model)
        self.step += 1
        out = {"loss": float(loss.detach()), "mse": float(terms["mse"].mean()),
               "vb": float(terms["vb"].mean()) if "vb" in terms else 0.0, "grad_norm": float(gnorm),
               "lr": float(self.opt.param_groups[0]["lr"])}
        if self.streaming:  # records replaced in this batch (corrupt images, empty captions): summed in the log
            out["replaced"] = float(replaced)
        return out

    def _backward(self, x0, x_t, t, noise, text, low_res_kw: dict) -> dict[str, torch.Tensor]:
        """Forward and backward over the step's rows in train.grad_accum micro-batches (gradients summed, each
        weighed by its share of the rows: the gradient of the whole batch's mean loss). Returns the per-row loss
        terms, detached."""
        dc, n = self.cfg.diffusion, x0.shape[0]
        net = self.net
        parts = self.cfg.train.grad_accum
        bounds = [n * i // parts for i in range(parts + 1)]
        collected: dict[str, list] = {}
        for i in range(parts):
            rows = slice(bounds[i], bounds[i + 1])
            last = i == parts - 1
            if self.sharded:  # reduce-scatter the gradients once, after the last micro-batch
                self.model.set_requires_gradient_sync(last)
            sync = contextlib.nullcontext() if last or self.ddp is None else self.ddp.no_sync()  # all-reduce once
            with sync:
                with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    out = net(x_t[rows], t[rows].float(), text[rows], **{k: v[rows] for k, v in low_res_kw.items()})
                terms = diffusion_loss(out.float(), x0[rows], x_t[rows], t[rows], noise[rows], self.schedule, dc)
                (terms["loss"].mean() * ((bounds[i + 1] - bounds[i]) / n)).backward()
            for k, v in terms.items():
                collected.setdefault(k, []).append(v.detach())
        return {k: torch.cat(v) for k, v in collected.items()}

    def _sr_inputs(self, x0: torch.Tensor, g: torch.Generator, b: int | None = None, mine: slice = slice(None),
                   idx: torch.Tensor | None = None, flipped: torch.Tensor | None = None) -> dict:
        """Super-resolution conditioning that matches inference: down-sample the target, up-sample it again
        (bilinear, align_corners=True as IF), noise it to a random aug timestep, feed that timestep.
        ``b``, ``mine``: draw for the global batch of ``b`` and keep this process's rows. With
        ``data.paired_low_res`` and ``idx`` (the examples' rows), that share of examples takes the scene's own
        low-res render instead of the down-sampled target (mirrored where ``flipped``, as the target was)."""
        b = b or x0.shape[0]
        low = degrade(x0, self.cfg.data.low_res_size, self.cfg.data.image_size)
        aug_t = torch.randint(0, self.cfg.diffusion.num_timesteps, (b,), generator=g)[mine]
        aug_noise = torch.randn((b, *x0.shape[1:]), generator=g)[mine]
        share = self.cfg.data.paired_low_res
        if share > 0 and idx is not None and self.data.low_images is not None:  # no draw otherwise: same stream
            paired = (torch.rand(b, generator=g) < share)[mine]
            own = self.data.low_res(idx).to(low.dtype)
            if flipped is not None:
                own = torch.where(flipped[:, None, None, None], own.flip(-1), own)
            low = torch.where(paired[:, None, None, None], own, low)
        return {"low_res": noise_augment(low, tuple(x0.shape[-2:]), aug_t, self.schedule, aug_noise), "aug_t": aug_t}

    # -- validation -------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[int, float]:
        x0, text = self.val.batch(self.val_idx, torch.zeros(len(self.val_idx), dtype=torch.bool))
        model = self.ema.model
        sr_kw = {}
        if self.cfg.unet.super_res:
            sr_kw = self._sr_inputs(x0, torch.Generator().manual_seed(77))
        dev = self.device
        x0, text = x0.to(dev), text.to(dev)
        sr_kw = {k: v.to(dev) for k, v in sr_kw.items()}

        def fn(x_t, t):
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.bf16):
                return model(x_t, t.to(dev).float(), text, **sr_kw).float()
        return fixed_timesteps_loss(fn, x0, self.val_noise.to(dev), self.schedule, self.cfg.diffusion, VAL_TIMESTEPS)

    # -- the loop ---------------------------------------------------------------------------------------
    def fit(self, max_steps: int | None = None, time_limit_s: float | None = None) -> None:
        """Train to ``max_steps`` (or the time limit, or a signal), holding the run folder's lock on rank 0."""
        from .run_folder import exclusive, remove_leftovers, trim_log
        if self.rank != 0:
            return self._fit(max_steps, time_limit_s)
        with exclusive(self.out):
            remove_leftovers(self.out)
            for log in ("train_log.csv", "val_loss.csv"):
                trim_log(self.out / log, self.step)
            return self._fit(max_steps, time_limit_s)

    def _fit(self, max_steps: int | None = None, time_limit_s: float | None = None) -> None:
        tc = self.cfg.train
        max_steps = max_steps or tc.max_steps
        self.fit_start = self.step  # a finished run resumed: fit takes no step (the command line says so)
        log_path, val_path = self.out / "train_log.csv", self.out / "val_loss.csv"
        main = self.rank == 0  # the one process that logs, validates and writes
        from .trackers import open_trackers
        self.trackers = open_trackers(self.out, self.cfg, self.meta.get("data_recipe", "")) if main else []
        t0 = time.time()
        bar = None
        if self.progress and main:
            from tqdm import tqdm
            bar = tqdm(total=max_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        acc: dict[str, float] = {}
        n = 0  # steps in the current log window (fewer than log_every in the first one after a resume)
        last = time.time()
        self.stopped_by = None
        loader = None
        if self.streaming and self.step < max_steps:
            loader = self.data.batches(self.step, self.rank, self.world)
            self._batches = iter(loader)
        replaced_total = 0
        with _GracefulStop() as stop:
            while self.step < max_steps:
                m = self.train_step()
                if self.world > 1:  # the logged losses are the global batch's, not this process's rows
                    import torch.distributed as dist
                    keys = ("loss", "mse", "vb")
                    v = torch.tensor([m[k] for k in keys], dtype=torch.float64)
                    dist.all_reduce(v)
                    m.update({k: float(x) / self.world for k, x in zip(keys, v)})
                for k, v in m.items():
                    acc[k] = acc.get(k, 0.0) + v
                n += 1
                replaced_total += int(m.get("replaced", 0))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{m['loss']:.4f}")
                if self.step % tc.log_every == 0 and main:
                    row = {"step": self.step, **{k: (v if k == "replaced" else v / n) for k, v in acc.items()},
                           "img_per_s": n * tc.batch_size / max(1e-9, time.time() - last), "time": time.time()}
                    _append_csv(log_path, row)
                    for tracker in self.trackers:
                        tracker.scalars({f"train/{k}": v for k, v in row.items() if k not in ("step", "time")},
                                        self.step)
                    acc, n, last = {}, 0, time.time()
                busy = main or self.sharded  # a sharded model's forward and gathering need every process
                if (self.step % tc.val_every == 0 or self.step == max_steps) and busy:
                    val = self.validate()
                    if main:
                        _append_csv(val_path, {"step": self.step, **{f"t{k}": v for k, v in val.items()}})
                    for tracker in self.trackers:
                        tracker.scalars({f"val/mse_t{k}": v for k, v in val.items()}, self.step)
                saved = False
                if (self.step % tc.ckpt_every == 0 or self.step == max_steps) and busy:
                    self.save()
                    saved = True
                    if main:
                        plot_val_loss(self.out / "val_loss.csv", self.out / "val_loss.png")
                if busy and self._grid_due(saved, max_steps):
                    self._sample_grid(bar)
                timed_out = bool(time_limit_s) and time.time() - t0 > time_limit_s
                if self._agree(timed_out or stop.signum is not None):
                    if busy and not saved:
                        self.save()
                    self.stopped_by = stop.signum
                    break
        if bar is not None:
            bar.close()
        self._batches = None
        del loader  # stops the DataLoader's workers
        if replaced_total and main:
            print(f"note: {replaced_total} streamed records were replaced by the next in the stream (images that "
                  "could not be decoded, empty captions); train_log.csv has the count per log window", file=sys.stderr)
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []
        if self.world > 1:  # nobody leaves while rank 0 still writes the last checkpoint: a gloo peer that
            import torch.distributed as dist  # exits mid-way aborts the others
            dist.barrier()

    def _agree(self, flag: bool) -> bool:
        """True on every process when it is true on any (so all stop at the same step)."""
        if self.world == 1:
            return flag
        import torch.distributed as dist
        v = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(v, op=dist.ReduceOp.MAX)
        return bool(v.item() > 0)

    def _grid_due(self, saved: bool, max_steps: int) -> bool:
        """train.sample_every: -1 never, 0 with every checkpoint, N every N steps (and at the end)."""
        every = self.cfg.train.sample_every
        if self.sample_fn is None or every < 0:
            return False
        return saved if every == 0 else self.step % every == 0 or self.step == max_steps

    def _sample_grid(self, bar=None) -> None:
        """The sample grid (rank 0 writes; a sharded run samples on every process), the bar saying so meanwhile."""
        if bar is not None:
            bar.set_postfix_str("rendering the sample grid", refresh=True)
        grid = self.out / "samples" / f"step{self.step:07d}.png"
        self.sample_fn(self, grid if self.rank == 0 else None)
        for tracker in self.trackers:
            if grid.is_file():
                tracker.image("samples", grid, self.step)
        if bar is not None:
            bar.set_postfix_str("", refresh=True)


def keep_history(out: Path, ckpt: Path, weights: Path, step: int, keep_last: int) -> None:
    """After a checkpoint: the last ``keep_last`` checkpoints kept as checkpoints/stepNNNNNNN.pt (hard links where
    the file system allows: no second copy), and the EMA weights of the step with the lowest mean validation loss
    so far kept as best.safetensors (with best.json: its step and loss), read from val_loss.csv, so a resumed run
    goes on judging from the same record."""
    import shutil
    if keep_last > 0:
        folder = out / "checkpoints"
        folder.mkdir(exist_ok=True)
        dest = folder / f"step{step:07d}.pt"
        dest.unlink(missing_ok=True)
        try:
            os.link(ckpt, dest)
        except OSError:
            shutil.copyfile(ckpt, dest)
        for old in sorted(folder.glob("step*.pt"))[:-keep_last]:
            old.unlink()
    losses = mean_val_losses(out / "val_loss.csv")
    if step in losses and losses[step] <= min(losses.values()):
        from ..utils import atomic_path
        with atomic_path(out / f"best{weights.suffix}") as tmp:
            shutil.copyfile(weights, tmp)
        atomic_write_text(out / "best.json", json.dumps({"step": step, "val_loss": losses[step],
                                                         "weights": f"best{weights.suffix}"}))


def mean_val_losses(path: Path) -> dict[int, float]:
    """step -> the mean of the validation losses at the fixed timesteps (val_loss.csv)."""
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for row in rows:
        vals = [float(v) for k, v in row.items() if k.startswith("t") and v not in ("", None)]
        if vals:
            out[int(row["step"])] = sum(vals) / len(vals)
    return out


def read_init_weights(path: Path) -> tuple[dict, dict, dict]:
    """train.init_from's weights: (model state, EMA state, the source's unet config as a dict, {} when the file does
    not record it) from a run's checkpoint.pt, an EMA .safetensors, or a released IF folder."""
    if not path.exists():
        raise ResumeError(f"train.init_from={path}: no such file or folder; give a run's checkpoint.pt, an EMA "
                          ".safetensors, or an IF model folder (official or diffusers layout)")
    if path.is_dir():  # released IF weights: official config.yml + .bin, or a diffusers folder
        from ..model_files import CheckpointError, read_unet
        try:
            weights, src_cfg, _ = read_unet(path)
        except CheckpointError as e:
            raise ResumeError(f"train.init_from={path}: {e}") from None
        return weights, weights, json.loads(to_json(src_cfg))
    if path.suffix == ".safetensors":
        from ..tensorfiles import read_tensors
        weights, meta = read_tensors(path)
        return weights, weights, json.loads(meta.get("unet_config", "{}"))
    state = load_checkpoint(path)
    ema = state["ema"]["model"] if "ema" in state else state["model"]
    return state["model"], ema, json.loads(state.get("config", "{}")).get("unet", {})


class _GracefulStop:
    """Ctrl-C (SIGINT) or SIGTERM (a scheduler's preemption, ``kill``) during :meth:`Trainer.fit`: the step under
    way finishes, a checkpoint is written and fit returns, with the signal in ``Trainer.stopped_by``. A second
    signal stops at once (KeyboardInterrupt). A signal the process ignores (SIGINT in a shell's background job)
    stays ignored; outside the main thread nothing is installed."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> _GracefulStop:
        if threading.current_thread() is not threading.main_thread():
            return self
        for s in (signal.SIGINT, signal.SIGTERM):
            old = signal.getsignal(s)
            if old is signal.SIG_IGN:
                continue
            self._old[s] = old
            signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step and writing a checkpoint "
              "(send it again to stop at once)", file=sys.stderr)

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


# train.init_reset=text: everything between the text encoder's states and the UNet's attention and embedding
TEXT_PATHWAY = ("encoder_proj.*", "encoder_pooling.*", "*.encoder_kv.*", "*.norm_encoder.*", "text_*")


def reset_names(spec: str, names: list[str]) -> set[str]:
    """The state-dict names that train.init_reset picks among ``names`` (comma-separated globs, or "text").
    A glob that picks nothing is an error (a typo would otherwise load everything silently)."""
    picked: set[str] = set()
    for item in filter(None, (x.strip() for x in spec.split(","))):
        globs = TEXT_PATHWAY if item == "text" else (item,)
        hits = {n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs)}
        if not hits:
            raise ConfigError(f"train.init_reset: {item!r} names no parameter of this model; give globs over "
                              "state-dict names (e.g. 'encoder_pooling.*') or 'text'")
        picked |= hits
    return picked


def _train_free(new: dict) -> set[str]:
    """The train fields a resume may change: schedule-extending ones (max_steps unless it shapes the lr decay,
    cadences) and how this machine computes a step (threads, device, bf16 autocast: a run moved to a CPU without
    native bf16 goes on in fp32)."""
    free = {"ckpt_every", "val_every", "log_every", "num_threads", "device", "bf16", "grad_checkpointing", "compile",
            "grad_accum", "sharding", "wandb", "wandb_project", "text_encoder_device", "sample_every", "keep_last",
            "sample_steps", "sample_guidance", "validation_prompts"}
    if new.get("lr_schedule", "constant") == "constant":
        free.add("max_steps")
    return free


def _append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def plot_val_loss(csv_path: Path, png_path: Path) -> None:
    """One line per fixed timestep: validation MSE against training step. Redrawn only when the log is newer than
    the plot (checkpoints may come more often than validations; a plot costs ~0.2 s)."""
    if not csv_path.exists() or (png_path.exists() and png_path.stat().st_mtime_ns >= csv_path.stat().st_mtime_ns):
        return
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in rows[0]:
        if key.startswith("t"):
            ax.plot(steps, [float(r[key]) for r in rows], label=f"t={key[1:]}")
    ax.set_xlabel("step")
    ax.set_ylabel("validation MSE (fixed t, noise, batch)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def write_recipe(out_dir: Path, cfg: RunConfig, command: str) -> None:
    atomic_write_text(out_dir / "recipe.json", json.dumps({"command": command, "config": to_dict(cfg)}, indent=2))

