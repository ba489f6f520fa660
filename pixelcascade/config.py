"""Frozen, typed configuration: the UNet, the diffusion process, sampling and training.

Configs are plain frozen dataclasses (nanoGPT's ``GPTConfig`` style). ``apply_overrides`` takes dotted
``key=value`` strings (``"train.lr=1e-4"``) and checks each value against the field's type, so a typo or
a wrong type is one clear error, never a silent no-op.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Literal

from .errors import PixelcascadeError


class ConfigError(PixelcascadeError, ValueError):
    """A configuration value that does not fit its field."""


@functools.cache
def _choices(cls) -> dict[str, tuple]:
    """A config class's Literal fields and their choices."""
    hints = typing.get_type_hints(cls)
    return {name: typing.get_args(tp) for name, tp in hints.items() if typing.get_origin(tp) is Literal}


def check_choices(cfg, section: str) -> None:
    """Every Literal field of ``cfg`` holds one of its choices, however the config was made."""
    for name, choices in _choices(type(cfg)).items():
        if getattr(cfg, name) not in choices:
            raise ConfigError(f"{section}.{name}={getattr(cfg, name)!r}: choose one of {', '.join(choices)}")




@dataclass(frozen=True)
class TextAdapterConfig:
    """The text adapter (``models/text_adapter.py``): what a UNet may add between a small frozen text encoder and
    its cross-attention. Not in IF; every option starts as the model without it (zero-initialised), so a
    fine-tune may add it. In files and overrides these are ``unet.text_<field>``."""

    dim: int = 4096  # the encoder's state width (unet.encoder_dim)
    # transformer layers over the token states (with a learned token position), residual. For small encoders
    # whose states blur who does what ("a circle left of a square").
    layers: int = 0
    # the token's index in the prompt (sinusoids through a linear map) added to its state. MiniLM barely tells
    # "a circle left of a square" from "a square left of a circle" (cosine 0.96 for "circle" across the two);
    # with the index in each key, one attention layer can prefer the first-named object on the relation's side.
    position: bool = False
    # each token also sees its neighbours in order: exponentially decaying means of the states before and after
    # it (fixed weights, about four tokens), through a linear map added to its state.
    context: bool = False
    # the states ZCA-whitened with the training captions' statistics (buffers set from the data when a run
    # starts, stored with the weights), through a linear map added to the states. A small encoder keeps "which
    # side is this shape on" in low-variance directions the UNet barely learns from (scripts/binding_check.py).
    whiten: bool = False
    # with whiten, cross-attention reads the whitened states themselves (a fine-tune from a model without it
    # folds the old path into encoder_proj: text_adapter.fold_white_attn, so it starts as that model)
    whiten_attn: bool = False
    # with whiten, the attention pooling reads the whitened states too (a LayerNorm comes first, so there is no
    # fold: a new run only)
    whiten_pool: bool = False

    def __post_init__(self):
        for name in ("whiten_attn", "whiten_pool"):  # the two readers of the whitened states
            if getattr(self, name) and not self.whiten:
                raise ConfigError(f"unet.text_{name}=true needs unet.text_whiten=true (its statistics)")
            if getattr(self, name) and (self.layers or self.context):
                raise ConfigError(f"unet.text_{name} reads the whitened states directly: it cannot be combined "
                                  "with unet.text_layers or unet.text_context")

    @property
    def white_sum(self) -> bool:
        """whiten's additive path x + P(w): absent when both cross-attention and the pooling read w."""
        return self.whiten and not (self.whiten_attn and self.whiten_pool)


@dataclass(frozen=True)
class UNetConfig:
    """The IF UNet (guided-diffusion / ADM family with fused text cross-attention).

    ``attention_resolutions`` are feature-map resolutions in the IF sense (``image_size // r`` is the
    downsample factor where attention is used); the middle block always has attention.
    """

    image_size: int = 64  # the side of the images it makes (stage I) or upscales to (stages II/III)
    in_channels: int = 3  # 3 (RGB); 6 for super-resolution (the up-sampled low-res image concatenated)
    out_channels: int = 6  # 3 eps + 3 learned-range variance values
    model_channels: int = 64  # the first level's width; level i has model_channels * channel_mult[i]
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)  # width multiplier per level (one level per entry)
    num_res_blocks: tuple[int, ...] = (2, 2, 2, 2)  # ResBlocks per level
    attention_resolutions: tuple[int, ...] = (32, 16, 8)  # downsample factors image_size // r with attention
    num_head_channels: int = 64  # channels per attention head
    encoder_dim: int = 4096  # width of the text encoder's token states
    encoder_channels: int = 256  # width the text tokens are projected to for cross-attention
    att_pool_heads: int = 64  # heads of the attention pooling of the text into the time embedding
    dropout: float = 0.0  # dropout inside the ResBlocks
    efficient_activation: bool = False  # stage II/III: one GELU on the summed embedding
    scale_skip_connection: bool = False  # stage II/III: ResBlock output * 0.7071
    disable_self_attentions: tuple[int, ...] = ()  # resolutions whose attention is text-only
    super_res: bool = False  # SuperResUNet: low-res image concatenated, aug_level embedding
    # not in IF: a 2-D position signal in every attention block (models/attention_position.py); False: IF exactly
    attention_position: bool = False
    # the text adapter (models/text_adapter.py; not in IF, for small text encoders): layers over the encoder's
    # token states, their index, their neighbours, ZCA whitening. Stored flat, as files have always held them;
    # read together as ``UNetConfig.adapter`` (TextAdapterConfig, whose fields say what each does). 0 / False:
    # IF exactly, key for key.
    text_layers: int = 0
    text_position: bool = False  # text adapter: each token's index added to its state
    text_context: bool = False  # text adapter: each token also sees its neighbours
    text_whiten: bool = False  # text adapter: ZCA-whitened states added through a linear map
    text_whiten_attn: bool = False  # with text_whiten: cross-attention reads the whitened states
    text_whiten_pool: bool = False  # with text_whiten: the attention pooling reads them too

    def __post_init__(self):
        self.adapter  # noqa: B018  (its own checks)
        if self.text_whiten_attn and self.encoder_dim == self.encoder_channels:
            raise ConfigError("unet.text_whiten_attn needs encoder_proj (encoder_channels != encoder_dim)")
        self._check_ranges()
        if len(self.num_res_blocks) != len(self.channel_mult):
            raise ConfigError(
                f"num_res_blocks has {len(self.num_res_blocks)} entries but channel_mult has "
                f"{len(self.channel_mult)}: give one count per level"
            )
        if self.image_size % (2 ** (len(self.channel_mult) - 1)):
            raise ConfigError(
                f"image_size {self.image_size} is not divisible by 2**{len(self.channel_mult) - 1} "
                f"(the UNet's {len(self.channel_mult)} levels)"
            )

    # far beyond IF-I-XL (512 channels, 4 levels, 3 blocks, 4096-d T5): a value outside is an edited or corrupt
    # config, refused before a model of that size is built (it would exhaust memory, not fail cleanly)
    _RANGES = {"image_size": (1, 65536), "in_channels": (1, 64), "out_channels": (1, 64),
               "model_channels": (1, 8192), "num_head_channels": (1, 8192), "encoder_dim": (1, 65536),
               "encoder_channels": (1, 65536), "att_pool_heads": (1, 1024)}

    def _check_ranges(self) -> None:
        for name, (lo, hi) in self._RANGES.items():
            if not lo <= getattr(self, name) <= hi:
                raise ConfigError(f"unet.{name}={getattr(self, name)}: outside what a UNet config can hold "
                                  f"({lo}..{hi})")
        if not 1 <= len(self.channel_mult) <= 10 or not all(1 <= m <= 64 for m in self.channel_mult):
            raise ConfigError(f"unet.channel_mult={self.channel_mult}: 1 to 10 levels of 1..64 x model_channels")
        if not all(0 <= n <= 64 for n in self.num_res_blocks):
            raise ConfigError(f"unet.num_res_blocks={self.num_res_blocks}: 0..64 blocks a level")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"unet.dropout={self.dropout}: must be in [0, 1)")

    @property
    def adapter(self) -> TextAdapterConfig:
        """The text adapter's part of the config (its fields without the ``text_`` prefix)."""
        return TextAdapterConfig(dim=self.encoder_dim, layers=self.text_layers, position=self.text_position,
                                 context=self.text_context, whiten=self.text_whiten,
                                 whiten_attn=self.text_whiten_attn, whiten_pool=self.text_whiten_pool)

    @property
    def time_embed_dim(self) -> int:
        return self.model_channels * max(self.channel_mult)

    @property
    def attention_ds(self) -> tuple[int, ...]:
        """Downsample factors with attention (IF: ``image_size // resolution``)."""
        return tuple(self.image_size // r for r in self.attention_resolutions)

    @property
    def min_divisor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


@dataclass(frozen=True)
class DiffusionConfig:
    num_timesteps: int = 1000  # training timesteps of the noise schedule (IF: 1000)
    schedule: Literal["cosine", "linear"] = "cosine"  # cosine: IF's
    prediction: Literal["eps", "v", "x0"] = "eps"  # eps: IF's
    learned_variance: bool = True  # learned-range interpolation between beta_t and the posterior variance
    vlb_weight: float = 0.001  # hybrid loss: MSE + vlb_weight * VLB (IF: RESCALED_MSE -> T/1000 = 1 ... x 0.001)
    min_snr_gamma: float = 0.0  # > 0 enables min-SNR-gamma weighting of the MSE term
    # > 0: the MSE term weighs each sample as at least ``snr_floor`` x its x0 error (the eps loss alone weighs
    # it SNR x, next to nothing at high noise, where a super-resolution model should copy its low-res input),
    # with the weight on the eps error capped at ``snr_floor_cap``.
    snr_floor: float = 0.0
    snr_floor_cap: float = 100.0  # the cap on the eps-error weight under snr_floor

    def __post_init__(self):
        check_choices(self, "diffusion")


@dataclass(frozen=True)
class SampleConfig:
    sampler: Literal["ddpm", "ddim", "dpmpp_2m"] = "ddpm"  # ddpm: IF's respaced ancestral sampler
    num_steps: str = "smart50"  # a respacing preset or a plain count / section string
    guidance_scale: float = 7.0  # classifier-free guidance (1 = none)
    dyn_thresh_p: float = 0.95  # dynamic thresholding: the quantile of |x0| each image is clipped by
    dyn_thresh_max: float = 1.5  # 1.5 stage I, 1.0 later stages
    aug_level: float = 0.25  # super-resolution stages only
    # layout guidance (text-to-image stages): for a prompt with a spatial relation ("a cat to the left of a dog"),
    # the gradient of a loss on the cross-attention maps of the two nouns steers the early steps (diffusion.layout).
    # 0 = off (IF's sampling); layout_steps: the share of the chain, from the noisy end, where it acts
    layout_guidance: float = 0.0
    layout_steps: float = 0.5  # the share of the chain, from the noisy end, where layout guidance acts

    def __post_init__(self):
        check_choices(self, "sample")
        for name in ("guidance_scale", "dyn_thresh_max", "layout_guidance"):
            v = getattr(self, name)
            if not 0 <= v < float("inf"):
                raise ConfigError(f"sample.{name}={v}: must be a finite number, 0 or more")
        for name in ("dyn_thresh_p", "aug_level", "layout_steps"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"sample.{name}={getattr(self, name)}: a share, from 0 to 1")


SAMPLER_NAMES = typing.get_args(typing.get_type_hints(SampleConfig)["sampler"])  # samplers.SAMPLERS: each


@dataclass(frozen=True)
class DreamBoothConfig:
    """data.world=dreambooth: data.path holds 3 to 20 images of one subject (training.dreambooth)."""

    instance_prompt: str = ""  # what the subject's images are called: "a photo of sks dog"
    # prior preservation: images of the class, drawn by the base model before training; "": none
    class_prompt: str = ""
    class_images: int = 100  # class images generated for prior preservation
    prior_weight: float = 1.0  # class examples : subject examples in the batches
    class_model: str = ""  # a super-resolution stage: the stage I model that draws the class images' low-res input


@dataclass(frozen=True)
class DataConfig:
    # shapes (rendered, specs/shapes-world.md), emoji (the curated emoji set) or files (your data: data.path)
    world: Literal["shapes", "emoji", "files", "dreambooth"] = "shapes"
    # world=files: a dataset in any format data.formats reads (a folder of images with .txt captions or a
    # manifest, parquet, webdataset shards; e.g. what `pixelcascade curate` writes), centre-cropped and resized
    # to image_size once, into the cache; data.seed picks the held-out validation images
    path: str = ""
    # world=files: several datasets in one run, "photos/,logos/" (data.path=A,B); data.repeats="1,4": how many times
    # each is seen per epoch, in the same order ("": once each). The held-out images come from all of them.
    repeats: str = ""
    # the column of your manifest / metadata / parquet that holds the captions ("": caption, text, txt or prompt)
    caption_column: str = ""
    # world=files: records without a caption stop the run before it starts (naming where captions are read from);
    # true leaves them out and counts them in the log and the model's recipe
    skip_uncaptioned: bool = False
    image_size: int = 32  # the training images' side (the UNet's image_size)
    num_images: int = 60000  # images rendered for a synthetic world (shapes); 0: the whole dataset
    seed: int = 0  # seed of the rendered world and of the validation split
    text_max_length: int = 32  # the text encoder's window in tokens (T5: 77)
    low_res_size: int = 32  # super-resolution stages: the size the target is down-sampled to
    # shapes world: the training-task mix, "position=4,composite=2" over data.shapes.TASK_WEIGHTS ("": those)
    task_weights: str = ""
    # shapes super-resolution: the share of examples whose low-res input is the scene's own render at
    # low_res_size (objects at that world's sizes, as stage I draws them) instead of the down-sampled target.
    # The spec's 8-px floor at 32 px makes the two differ for 3+ objects (docs/models.md, "Stage II"). 0: IF's recipe.
    paired_low_res: float = 0.0
    # mirror half of the training images left-right, except those whose caption names a side (data.augment); text
    # in the pictures comes out mirrored, so off by default
    flip: bool = False
    # world=files: aspect-ratio buckets instead of the centre crop to a square: "auto" (1:1, 4:3, 3:2, 16:9 both
    # ways, about image_size^2 pixels) or "HxW,HxW" (data.buckets); each picture trains at the shape nearest its
    # aspect ratio, each batch one shape. Read through the cache (not streamed). "": the centre crop
    buckets: str = ""
    # shapes world: the share of training captions that are the plain benchmark template (the rest: the caption
    # generator's varied wording). Varied wording moves the nouns' token positions, and with MiniLM the order of
    # two shapes did not bind under it (docs/models.md, "Position"); 0.4 before that was known.
    template_share: float = 0.4
    # shapes world: the largest count in the training scenes' counting prompts (0: the spec's, 4 at 32 px and 5 at
    # 64 px). 5 at 32 px teaches a stage I the five objects that the cascade's 64-px suite asks for (at the spec's
    # 8-px floor); the benchmark's 32-px suite still counts to four
    count_to: int = 0
    # world=files with webdataset shards (data.path a .tar, a folder of them or a glob): stream them (decoded in
    # DataLoader workers, read through an index; memory stays flat as the data grows) instead of decoding everything
    # into the cache first. Folders and parquet always go through the cache.
    stream: bool = True
    shuffle_buffer: int = 10000  # streamed: records shuffled together (a window of the shard-permuted sequence)
    workers: int = 1  # streamed: DataLoader worker processes decoding images (0: in the training process)
    # streamed: a folder of text states made by `pixelcascade data encode` (T5 states computed once); "": the run's
    # text encoder encodes each batch's captions as it goes
    text_states: str = ""
    dreambooth: DreamBoothConfig = field(default_factory=DreamBoothConfig)  # subject fine-tuning (train.dreambooth)

    def __post_init__(self):
        if self.world not in ("shapes", "emoji", "files", "dreambooth"):
            raise ConfigError(f"data.world={self.world!r}: choose shapes, emoji, files (your own data, with "
                              "data.path=DATASET) or dreambooth (data.path=SUBJECT_IMAGES)")
        check_choices(self, "data")
        if self.world == "dreambooth":
            self._check_dreambooth()
        if self.path and self.world not in ("files", "dreambooth"):
            raise ConfigError(f"data.path is read only with data.world=files (this run's world is {self.world}); "
                              "add data.world=files")
        self._check_paths()
        if self.buckets and self.world != "files":
            raise ConfigError("data.buckets is for your own pictures: add data.world=files")
        if self.text_states and self.world != "files":
            raise ConfigError("data.text_states is read only with data.world=files and webdataset shards")
        if self.shuffle_buffer < 1 or self.workers < 0:
            raise ConfigError(f"data.shuffle_buffer={self.shuffle_buffer} must be >= 1 and data.workers="
                              f"{self.workers} >= 0")
        if self.count_to not in (0, 2, 3, 4, 5):
            raise ConfigError(f"data.count_to={self.count_to}: 0 (the spec's largest count) or 2 to 5 (six objects "
                              "do not fit the canvas)")
        for name in ("paired_low_res", "template_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"data.{name}={getattr(self, name)}: a share of the examples, from 0 to 1")

    @property
    def paths(self) -> list[str]:
        """The datasets data.path names (several: comma-separated)."""
        return [p.strip() for p in self.path.split(",") if p.strip()] if self.world == "files" else [self.path]

    @property
    def repeat_counts(self) -> list[int]:
        """How many times each of :attr:`paths` is seen per epoch."""
        return [int(r) for r in self.repeats.split(",")] if self.repeats else [1] * len(self.paths)

    def _check_paths(self) -> None:
        paths = self.paths
        if len(set(paths)) < len(paths):
            raise ConfigError(f"data.path={self.path!r} names a dataset twice: name each once and weigh it with "
                              "data.repeats")
        if not self.repeats:
            return
        if self.world != "files":
            raise ConfigError("data.repeats weighs the datasets of data.world=files: add data.world=files")
        try:
            counts = self.repeat_counts
        except ValueError:
            counts = []
        if len(counts) != len(paths) or min(counts, default=0) < 1:
            example = ",".join(["1"] * len(paths))
            raise ConfigError(f"data.repeats={self.repeats!r}: one whole number >= 1 per dataset of data.path "
                              f"({len(paths)} there), comma-separated, e.g. data.repeats={example}")

    def _check_dreambooth(self) -> None:
        db = self.dreambooth
        if not self.path or not db.instance_prompt.strip():
            raise ConfigError("data.world=dreambooth needs data.path=FOLDER (the subject's images) and "
                              "data.dreambooth.instance_prompt='a photo of sks dog'")
        if db.class_prompt and (db.class_images < 1 or db.prior_weight <= 0):
            raise ConfigError("data.dreambooth: class_images must be at least 1 and prior_weight more than 0 (or "
                              "leave class_prompt empty: no prior preservation)")


@dataclass(frozen=True)
class LoraConfig:
    """train.lora: a LoRA fine-tune (rank > 0) of train.init_from's weights, which stay frozen. The adapter is
    saved alone (lora.safetensors, its config in the metadata): `generate --lora`, `export --merge-lora`."""

    rank: int = 0  # 0: no LoRA, every weight trains
    alpha: float = 0.0  # the update is scaled by alpha / rank; 0: alpha = rank (scale 1)
    # which layers get an adapter: "attention" (every attention block's qkv, encoder_kv and proj_out),
    # "attention+resblocks" (and each ResBlock's two convolutions, time projection and skip), or comma-separated
    # globs over module names ("*.qkv,output_blocks.*.proj_out")
    targets: str = "attention"
    dropout: float = 0.0  # dropout on the adapter's input

    def __post_init__(self):
        if self.rank < 0 or self.alpha < 0 or not 0 <= self.dropout < 1:
            raise ConfigError(f"train.lora: rank and alpha must be 0 or more and dropout in [0, 1), got rank="
                              f"{self.rank}, alpha={self.alpha}, dropout={self.dropout}")


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 2e-4  # peak learning rate, after the warm-up
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW's moment decays
    warmup_steps: int = 200  # linear warm-up from 0 (a run shorter than the preset's: at most a tenth of it)
    batch_size: int = 64  # images a step, over all processes
    max_steps: int = 10000  # the run's length in steps (--max-steps sets it)
    grad_clip: float = 1.0  # the largest gradient norm kept
    ema_decay: float = 0.999  # decay of the EMA weights (what is exported and sampled)
    cfg_dropout: float = 0.1  # share of captions dropped to the empty prompt (classifier-free guidance)
    # bf16 autocast where the hardware multiplies bf16 natively (CUDA with bf16, CPUs with AVX512-BF16 / AMX);
    # elsewhere it would be emulated (2-4x slower), so the run keeps fp32 there and says so. false: fp32 always.
    bf16: bool = True
    seed: int = 0  # seed of the initialisation, the batches and the noise
    ckpt_every: int = 500  # steps between checkpoints (and sample grids)
    keep_last: int = 0  # also keep the last N checkpoints in checkpoints/ (0: checkpoint.pt only)
    val_every: int = 250  # steps between validation losses at the fixed timesteps
    log_every: int = 25  # steps between rows of train_log.csv
    num_threads: int = 0  # 0: torch's default
    sample_guidance: float = 3.0  # the checkpoint sample grid's guidance scale
    sample_steps: str = "smart27"  # the checkpoint sample grid's steps (a count or preset)
    sample_every: int = 0  # steps between sample grids: 0 with every checkpoint, -1 never
    # the sample grid's prompts: a text file (one prompt a line) or prompts separated by "|"; "": the world's
    # preview prompts (validation captions)
    validation_prompts: str = ""
    # where the model trains: cpu, cuda, cuda:1, auto. Batches and noise are drawn on the CPU from the step's
    # generator either way, so a run moved between devices keeps its data order and resumes exactly.
    device: str = "cpu"
    # learning rate after warm-up: "constant", or "cosine" from lr down to lr_min at max_steps
    lr_schedule: Literal["constant", "cosine"] = "constant"
    lr_min: float = 0.0  # where the cosine schedule ends
    # fine-tuning: start a new run from these weights (a run's checkpoint.pt: model and EMA; or an EMA
    # .safetensors: both from it). The optimizer starts fresh. Ignored when the run folder resumes.
    init_from: str = ""
    # fine-tuning: parameters and buffers NOT taken from init_from, kept at a new run's initialisation
    # (comma-separated globs over state-dict names, or "text": the whole text pathway, i.e. encoder_proj, the
    # pooling, every block's encoder_kv and norm_encoder, and the text_* options' layers and whitening buffers).
    # For a new text encoder (another width), or to retrain how the UNet reads the text. "": load everything.
    init_reset: str = ""
    lora: LoraConfig = field(default_factory=LoraConfig)  # train.lora.rank > 0: a LoRA adapter, base frozen
    # memory levers (the same model and data order; docs/fine-tuning.md has the measured savings):
    # recompute each UNet block's activations in the backward pass instead of keeping them
    grad_checkpointing: bool = False
    # split each step's batch into this many micro-batches, gradients summed: the same step in 1/N the activations
    grad_accum: int = 1
    # run each step's forward and backward through torch.compile (the first steps pay the compiling: minutes).
    # Measured on 2 CPU cores (shapes32-I, bf16, batch 16): 3.7% faster a step after 150 s of compiling, so off
    # by default; docs/performance.md has the figures. Needs a C++ compiler on a CPU (Inductor)
    compile: bool = False
    # adamw (fp32 moments), adafactor (factored second moments: torch.optim.Adafactor, a few bytes per parameter),
    # adamw8bit (8-bit moments: torchao's AdamW8bit, or bitsandbytes' on CUDA; either must be installed)
    optimizer: Literal["adamw", "adafactor", "adamw8bit"] = "adamw"
    # several processes (torchrun): "ddp" keeps a whole copy of the model on each; "fsdp" shards weights,
    # gradients, optimizer moments and EMA across them (FSDP2 per UNet block), for full fine-tunes too big for one
    sharding: Literal["ddp", "fsdp"] = "ddp"
    # where a run that encodes captions as it goes keeps its text encoder: "auto" (the training device), or "cpu"
    # (off the GPU: T5-XXL's 9.5 GB in bf16 stay in host memory, encoding on the CPU)
    text_encoder_device: Literal["auto", "cpu"] = "auto"
    # log the curves, sample grids and recipe to Weights & Biases too (pip install wandb; WANDB_MODE=offline
    # needs no network). TensorBoard (tb/) and the CSV files are always written.
    wandb: bool = False
    wandb_project: str = "pixelcascade"  # the W&B project with train.wandb

    def __post_init__(self):
        check_choices(self, "train")
        if self.lora.rank and not self.init_from:
            raise ConfigError("train.lora.rank > 0 trains an adapter on top of a model: give train.init_from (a "
                              "run's checkpoint, an EMA .safetensors or an IF model folder)")
        if self.lora.rank and self.init_reset:
            raise ConfigError("train.lora keeps every base weight frozen: it cannot be combined with "
                              "train.init_reset")
        if self.sharding == "fsdp" and self.lora.rank:
            raise ConfigError("train.sharding=fsdp is for full fine-tunes; a LoRA's few weights train with "
                              "train.sharding=ddp")
        if self.grad_accum < 1 or self.batch_size % self.grad_accum:
            raise ConfigError(f"train.grad_accum={self.grad_accum}: must be at least 1 and divide train.batch_size "
                              f"({self.batch_size})")
        ranges = {  # field: (test, what it must be)
            "lr": (lambda v: v > 0, "more than 0"), "lr_min": (lambda v: v >= 0, "0 or more"),
            "weight_decay": (lambda v: v >= 0, "0 or more"), "warmup_steps": (lambda v: v >= 0, "0 or more"),
            "batch_size": (lambda v: v >= 1, "at least 1"), "max_steps": (lambda v: v >= 1, "at least 1"),
            "grad_clip": (lambda v: v > 0, "more than 0 (the largest gradient norm kept)"),
            "ema_decay": (lambda v: 0 <= v < 1, "from 0 up to (not including) 1"),
            "cfg_dropout": (lambda v: 0 <= v < 1, "from 0 up to (not including) 1"),
            "ckpt_every": (lambda v: v >= 1, "at least 1"), "val_every": (lambda v: v >= 1, "at least 1"),
            "log_every": (lambda v: v >= 1, "at least 1"), "num_threads": (lambda v: v >= 0, "0 or more"),
            "keep_last": (lambda v: v >= 0, "0 or more"),
            "sample_every": (lambda v: v >= -1, "-1 (never), 0 (with every checkpoint) or a number of steps"),
        }
        for name, (ok, what) in ranges.items():
            if not ok(getattr(self, name)):
                raise ConfigError(f"train.{name}={getattr(self, name)}: must be {what}")
        if self.init_reset and not self.init_from:
            raise ConfigError("train.init_reset picks what a fine-tune does not load: give train.init_from too")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"train.betas={self.betas}: each must be from 0 up to (not including) 1")


@dataclass(frozen=True)
class RunConfig:
    name: str = "shapes32"  # the preset the run started from
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    text_encoder: str = "minilm"  # "minilm" or a local Hugging Face / T5 folder


# --------------------------------------------------------------------------------------------------
# (de)serialisation and dotted overrides


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def to_json(cfg) -> str:
    return json.dumps(to_dict(cfg), sort_keys=True)


def _coerce(value, tp, where: str):
    """Turn ``value`` (JSON-ish or a string from the command line) into type ``tp``, or raise."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} fits none of {tp}")
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a comma-separated list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if origin is Literal:  # which choice is checked by the config itself (check_choices), with its own words
        choices = typing.get_args(tp)
        if not isinstance(value, str):
            raise ConfigError(f"{where}={value!r}: choose one of {', '.join(map(str, choices))}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if not math.isfinite(f) or f != int(f):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if value is None or isinstance(value, (bool, dict, list, tuple)):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        return str(value)
    raise ConfigError(f"{where}: unsupported field type {tp}")


def from_dict(cls, data: dict, where: str = ""):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping of fields, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown field(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}".lstrip(".")) for k, v in data.items()}
    return cls(**kwargs)


def apply_overrides(cfg, overrides: list[str]):
    """Return a copy of ``cfg`` with dotted ``key=value`` overrides applied (``"train.lr=1e-4"``)."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.lr=1e-4)")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            if not isinstance(node, dict) or p not in node or not isinstance(node[p], dict):
                raise ConfigError(f"override {key!r}: {p!r} is not a config section")
            node = node[p]
        leaf = parts[-1]
        if leaf not in node:
            raise ConfigError(f"override {key!r}: no field {leaf!r} here; known: {sorted(node)}")
        node[leaf] = value.strip()
    return from_dict(type(cfg), data)


def field_docs(cls) -> dict[str, str]:
    """Each field of a config dataclass with its one line of meaning: the comment on its line, else the comment
    block just above it (the source is the documentation: ``train --print-config`` shows it)."""
    import inspect
    import re
    docs: dict[str, str] = {}
    block: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        text = line.strip()
        if text.startswith("def "):
            break
        if text.startswith("#"):
            block.append(text.lstrip("#").strip())
            continue
        m = re.match(r"^ {4}(\w+)\s*:\s*[^#]*?(?:#\s*(.*))?$", line)
        if m and "=" in line:
            docs[m.group(1)] = (m.group(2) or " ".join(block)).strip()
        block = []
    return docs


def describe(cfg, prefix: str = "") -> list[tuple[str, object, object, str]]:
    """Every leaf field of a config as (dotted name, value, the dataclass default, its meaning)."""
    rows = []
    docs = field_docs(type(cfg))
    default = type(cfg)()
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            rows += describe(value, f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", value, getattr(default, f.name), docs.get(f.name, "")))
    return rows
