"""The command line's shared pieces: argparse types that name the flag and the fix, and the flag groups the
commands share (each flag declared once)."""

from __future__ import annotations

import argparse

from ..config import SAMPLER_NAMES
from ..inputs import DEFAULT_MAX_PIXELS
from ..shipped import shipped_models
from ..text.quantize import TEXT_DTYPES


class Parser(argparse.ArgumentParser):
    """argparse, its errors on one line with where to read more (not the usage block above them)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def number(text: str, kind: type):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}") \
            from None


def at_least_1(text: str) -> int:
    """argparse type: a whole number >= 1 (batch sizes, image counts, stage counts)."""
    v = number(text, int)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return v


def whole(text: str) -> int:
    """argparse type: a whole number >= 0 (radii, counts that may be zero)."""
    v = number(text, int)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return v


def finite(text: str) -> float:
    """argparse type: any finite number (thresholds on a score)."""
    v = number(text, float)
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return v


def non_negative(text: str) -> float:
    """argparse type: a finite number >= 0 (guidance scales, thresholding limits, time limits)."""
    v = number(text, float)
    if not 0 <= v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number, 0 or more, got {text}")
    return v


def seed(text: str) -> int:
    """argparse type: a seed torch's generators take (0 to 2**63 - 1)."""
    v = number(text, int)
    if not 0 <= v < 2 ** 63:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to 2**63 - 1, got {text}")
    return v


def threads(text: str) -> int:
    """argparse type: CPU threads, 0 for torch's default."""
    v = number(text, int)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (torch's default) or more, got {text}")
    return v


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1] (noise augmentation levels)."""
    v = number(text, float)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return v


def positive(text: str) -> float:
    """argparse type: a finite number > 0 (upscaling factors)."""
    v = number(text, float)
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return v


def sampler(text: str) -> str:
    """argparse type: one of the samplers."""
    if text not in SAMPLER_NAMES:
        raise argparse.ArgumentTypeError(f"{text}: unknown; choose one of {', '.join(SAMPLER_NAMES)}")
    return text


DTYPE_HELP = "fp32, bf16, fp16 or auto: bf16 on a CPU with AVX512-BF16 or AMX and on a GPU with bf16, else fp32"


def model_flags(g: argparse.ArgumentParser, default: str = "shapes", dtype: str = "auto") -> None:
    """Which model, on what: every command that loads a cascade. ``dtype``: the --dtype default (the eval commands
    keep fp32, so that a score does not depend on the machine's CPU)."""
    shown = default or "ema.safetensors of the run folder"
    g.add_argument("--model", default=default,
                   help=f"a shipped model by name ({', '.join(shipped_models()) or 'none installed'}), a "
                        ".safetensors stage, a folder of stage*.safetensors, comma-separated stage files, or an "
                        f"official IF / diffusers model folder (default: {shown})")
    encoder_flags(g)
    g.add_argument("--lora", action="append", metavar="PATH[:SCALE]",
                   help="a LoRA adapter (a LoRA run's lora.safetensors) merged into the stage it was trained on, "
                        "at SCALE (default 1; 0.5 half its effect); repeat the flag for several")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    g.add_argument("--dtype", default=dtype, help=f"UNet weights: {DTYPE_HELP} (default: {dtype})")
    g.add_argument("--threads", type=threads, default=0, help="CPU threads (0: torch's default)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def encoder_flags(g: argparse.ArgumentParser) -> None:
    """Which text encoder, with what weights: every command that loads a cascade, and encode."""
    g.add_argument("--text-encoder", help="override the text encoder: 'minilm' or a local HF/T5 folder")
    g.add_argument("--text-encoder-dtype", choices=TEXT_DTYPES, metavar="{fp32,bf16,int8,nf4}",
                   help="the text encoder's weights: int8 halves T5-XXL's 9.5 GB, nf4 quarters it (needs torchao); "
                        "default: its own (T5 bf16, MiniLM fp32). docs/memory.md has the states' error")


def offload_flag(g: argparse.ArgumentParser) -> None:
    g.add_argument("--offload", nargs="?", const="model", choices=("model", "sequential"),
                   help="less memory: 'model' (the flag alone) keeps one model at a time where it runs (a GPU: the "
                        "others wait in CPU memory; a CPU: each is read from its file when it runs, then freed); "
                        "'sequential' streams the UNets' weights block by block (slower, least memory). "
                        "`pixelcascade memory` shows what each takes")


def sampling_flags(g: argparse.ArgumentParser) -> None:
    """How each stage samples: every command that makes images (generate, edit, upscale, eval)."""
    g.add_argument("--stages", type=at_least_1, help="how many cascade stages to run (default: all the model has)")
    g.add_argument("--steps", help="stage I steps: a count or preset (smart27, smart50, smart100, fast27, ...)")
    g.add_argument("--steps-ii", help="steps of the later stages")
    g.add_argument("--guidance", type=non_negative, help="stage I classifier-free guidance scale (1 = none)")
    g.add_argument("--guidance-ii", type=non_negative, help="guidance of the later stages")
    g.add_argument("--layout-guidance", type=non_negative,
                   help="stage I layout guidance for prompts with a spatial relation ('a cat to the left of a dog'): "
                        "steers the two nouns' cross-attention to the stated sides (0 = off; default: the model's, "
                        "500 for the shipped shapes model)")
    g.add_argument("--aug-level", type=fraction, help="noise augmentation of the super-resolution stages' input")
    g.add_argument("--sampler", type=sampler, help="ddpm (IF's), ddim or dpmpp_2m (every stage, unless --sampler-ii)")


def image_args(g: argparse.ArgumentParser) -> None:
    """The options of the commands that write images (generate, img2img, inpaint, upscale)."""
    g.add_argument("-o", "--output", default="out.png", help="a .png path for one image, a folder for several")
    g.add_argument("--seed", type=seed, default=0, help="seed of the first image; image i gets seed+i")
    g.add_argument("--num-images", type=at_least_1, default=1, help="images per prompt")
    g.add_argument("--negative-prompt", default="",
                   help="what guidance steers away from, for every prompt, in stages I and II (default: nothing, "
                        "the empty prompt; an SD x4 --stage3 keeps its own); needs guidance > 1")
    sampling_flags(g)
    g.add_argument("--sampler-ii", type=sampler, help="the later stages' sampler")
    g.add_argument("--thresh-max", type=non_negative, help="stage I dynamic-thresholding limit (IF: 1.5)")
    g.add_argument("--thresh-max-ii", type=non_negative, help="the later stages' limit (IF: 1.0)")
    g.add_argument("--batch-size", type=at_least_1, default=8, help="images sampled together")
    g.add_argument("--height", type=at_least_1, help="stage I height in px (default: the model's size; later stages "
                                              "scale it by their own ratio)")
    g.add_argument("--width", type=at_least_1, help="stage I width in px (non-square images: give both)")
    g.add_argument("--save-stages", action="store_true", help="also save every earlier stage's image")
    model_flags(g)
    g.add_argument("--stage3", help="append a third stage: a local stable-diffusion-x4-upscaler folder (IF's "
                                    "stage III) or one of our super-resolution .safetensors")
    offload_flag(g)
    g.add_argument("--max-pixels", type=at_least_1, default=DEFAULT_MAX_PIXELS,
                   help=f"the largest image read or made, in pixels (default {DEFAULT_MAX_PIXELS:,}): input images "
                        "are checked from their header before decoding (a small PNG can declare a huge image), "
                        "output sizes before sampling")


def eval_model_args(g: argparse.ArgumentParser, model: str = "shapes") -> None:
    """Which model and how to sample it: the eval commands (``model``: the default shipped model)."""
    model_flags(g, default=model, dtype="fp32")
    sampling_flags(g)


def feature_args(g: argparse.ArgumentParser) -> None:
    g.add_argument("--inception", help="clean-fid's inception-2015-12-05.pt (a local file)")
    g.add_argument("--features", help="another feature extractor instead: pixelstats (no download: colour, edge "
                                      "and texture statistics, for comparing your own models), emoji:PATH (the "
                                      "emoji model's) or random[:SEED] (tests only); numbers are only comparable "
                                      "within one")
