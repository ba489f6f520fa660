"""The command line: parse -> config -> call. argparse lives only here.

    pixelcascade generate "three red circles left of a blue square" -o out.png
    pixelcascade train shapes32 -o runs/shapes32 train.lr=2e-4
    pixelcascade eval shapes -o eval/shapes
"""

from __future__ import annotations

import argparse
import sys

from .commands import (  # noqa: F401  (load_cascade, load_image: used by scripts and tests)
    UserError,
    cmd_curate,
    cmd_data_emoji,
    cmd_data_emoji_features,
    cmd_data_encode,
    cmd_data_shapes_shards,
    cmd_eval_clip,
    cmd_eval_coco,
    cmd_eval_emoji,
    cmd_eval_fid,
    cmd_eval_shapes,
    cmd_eval_suite,
    cmd_eval_sweep,
    cmd_export,
    cmd_generate,
    cmd_img2img,
    cmd_train,
    cmd_upscale,
    load_cascade,
    load_image,
)
from .config import SAMPLER_NAMES
from .errors import PixelcascadeError
from .inputs import DEFAULT_MAX_PIXELS
from .shipped import DEFAULT_MODEL, EMOJI_FEATURES, WEIGHTS_DIR, ModelError, shipped_models, stage_paths  # noqa: F401
from .version import __version__

# --------------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, its errors on one line with where to read more (not the usage block above them)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(text: str, kind: type):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}") \
            from None


def _at_least_1(text: str) -> int:
    """argparse type: a whole number >= 1 (batch sizes, image counts, stage counts)."""
    v = _number(text, int)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return v


def _whole(text: str) -> int:
    """argparse type: a whole number >= 0 (radii, counts that may be zero)."""
    v = _number(text, int)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return v


def _finite(text: str) -> float:
    """argparse type: any finite number (thresholds on a score)."""
    v = _number(text, float)
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return v


def _non_negative(text: str) -> float:
    """argparse type: a finite number >= 0 (guidance scales, thresholding limits, time limits)."""
    v = _number(text, float)
    if not 0 <= v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number, 0 or more, got {text}")
    return v


def _seed(text: str) -> int:
    """argparse type: a seed torch's generators take (0 to 2**63 - 1)."""
    v = _number(text, int)
    if not 0 <= v < 2 ** 63:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to 2**63 - 1, got {text}")
    return v


def _threads(text: str) -> int:
    """argparse type: CPU threads, 0 for torch's default."""
    v = _number(text, int)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (torch's default) or more, got {text}")
    return v


def _fraction(text: str) -> float:
    """argparse type: a number in [0, 1] (noise augmentation levels)."""
    v = _number(text, float)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return v


def _positive(text: str) -> float:
    """argparse type: a finite number > 0 (upscaling factors)."""
    v = _number(text, float)
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return v


def _sampler(text: str) -> str:
    """argparse type: one of the samplers."""
    if text not in SAMPLER_NAMES:
        raise argparse.ArgumentTypeError(f"{text}: unknown; choose one of {', '.join(SAMPLER_NAMES)}")
    return text


def _model_flags(g: argparse.ArgumentParser, default: str = "shapes") -> None:
    """Which model, on what: every command that loads a cascade."""
    g.add_argument("--model", default=default,
                   help=f"a shipped model by name ({', '.join(shipped_models()) or 'none installed'}), a "
                        ".safetensors stage, a folder of stage*.safetensors, comma-separated stage files, or an "
                        f"official IF / diffusers model folder (default: {default})")
    g.add_argument("--text-encoder", help="override the text encoder: 'minilm' or a local HF/T5 folder")
    g.add_argument("--lora", action="append", metavar="PATH[:SCALE]",
                   help="a LoRA adapter (a LoRA run's lora.safetensors) merged into the stage it was trained on, "
                        "at SCALE (default 1; 0.5 half its effect); repeat the flag for several")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    g.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16 (UNet weights)")
    g.add_argument("--threads", type=_threads, default=0, help="CPU threads (0: torch's default)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _sampling_flags(g: argparse.ArgumentParser) -> None:
    """How each stage samples: every command that makes images (generate, edit, upscale, eval)."""
    g.add_argument("--stages", type=_at_least_1, help="how many cascade stages to run (default: all the model has)")
    g.add_argument("--steps", help="stage I steps: a count or preset (smart27, smart50, smart100, fast27, ...)")
    g.add_argument("--steps-ii", help="steps of the later stages")
    g.add_argument("--guidance", type=_non_negative, help="stage I classifier-free guidance scale (1 = none)")
    g.add_argument("--guidance-ii", type=_non_negative, help="guidance of the later stages")
    g.add_argument("--layout-guidance", type=_non_negative,
                   help="stage I layout guidance for prompts with a spatial relation ('a cat to the left of a dog'): "
                        "steers the two nouns' cross-attention to the stated sides (0 = off; default: the model's, "
                        "500 for the shipped shapes model)")
    g.add_argument("--aug-level", type=_fraction, help="noise augmentation of the super-resolution stages' input")
    g.add_argument("--sampler", type=_sampler, help="ddpm (IF's), ddim or dpmpp_2m (every stage, unless --sampler-ii)")


def _sampling_args(g: argparse.ArgumentParser) -> None:
    """The options of the commands that write images (generate, img2img, inpaint, upscale)."""
    g.add_argument("-o", "--output", default="out.png", help="a .png path for one image, a folder for several")
    g.add_argument("--seed", type=_seed, default=0, help="seed of the first image; image i gets seed+i")
    g.add_argument("--num-images", type=_at_least_1, default=1, help="images per prompt")
    g.add_argument("--negative-prompt", default="",
                   help="what guidance steers away from, for every prompt, in stages I and II (default: nothing, "
                        "the empty prompt; an SD x4 --stage3 keeps its own); needs guidance > 1")
    _sampling_flags(g)
    g.add_argument("--sampler-ii", type=_sampler, help="the later stages' sampler")
    g.add_argument("--thresh-max", type=_non_negative, help="stage I dynamic-thresholding limit (IF: 1.5)")
    g.add_argument("--thresh-max-ii", type=_non_negative, help="the later stages' limit (IF: 1.0)")
    g.add_argument("--batch-size", type=_at_least_1, default=8, help="images sampled together")
    g.add_argument("--height", type=_at_least_1, help="stage I height in px (default: the model's size; later stages "
                                              "scale it by their own ratio)")
    g.add_argument("--width", type=_at_least_1, help="stage I width in px (non-square images: give both)")
    g.add_argument("--save-stages", action="store_true", help="also save every earlier stage's image")
    _model_flags(g)
    g.add_argument("--stage3", help="append a third stage: a local stable-diffusion-x4-upscaler folder (IF's "
                                    "stage III) or one of our super-resolution .safetensors")
    g.add_argument("--offload", action="store_true",
                   help="small GPUs: keep the models on the CPU and move each to --device only while it runs")
    g.add_argument("--max-pixels", type=_at_least_1, default=DEFAULT_MAX_PIXELS,
                   help=f"the largest image read or made, in pixels (default {DEFAULT_MAX_PIXELS:,}): input images "
                        "are checked from their header before decoding (a small PNG can declare a huge image), "
                        "output sizes before sampling")


def _model_args(g: argparse.ArgumentParser, model: str = "shapes") -> None:
    """Which model and how to sample it: the eval commands (``model``: the default shipped model)."""
    _model_flags(g, default=model)
    _sampling_flags(g)


def _feature_args(g: argparse.ArgumentParser) -> None:
    g.add_argument("--inception", help="clean-fid's inception-2015-12-05.pt (a local file)")
    g.add_argument("--features", help="another feature extractor instead: random[:SEED] (tests, no weights) or "
                                      "emoji:PATH (the emoji model's); numbers are only comparable within one")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="pixelcascade",
        description="Cascaded pixel-space text-to-image diffusion (DeepFloyd IF design): generate, train, evaluate.",
        epilog="Run `pixelcascade COMMAND --help` for each command's options and examples.")
    ap.add_argument("--version", action="version", version=f"pixelcascade {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="text -> image with the shipped model or your own",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Generate images from prompts. Each PNG gets a JSON sidecar with its prompt, "
                                   "seed and every setting.",
                       epilog="examples:\n"
                              '  pixelcascade generate "three red circles left of a blue square" -o out.png\n'
                              '  pixelcascade generate "a green triangle" "two squares" -o outs/ --seed 7\n'
                              "  pixelcascade generate --prompts-file prompts.txt -o outs/ --batch-size 16\n"
                              '  pixelcascade generate "a red circle" --negative-prompt "a blue square" -o out.png\n'
                              '  pixelcascade generate "a cat" --model /models/IF-I-XL --text-encoder /models/t5 '
                              "--device cuda --dtype fp16 -o cat.png")
    g.add_argument("prompts", nargs="*", help="one or more prompts")
    g.add_argument("--prompts-file", help="a text file with one prompt a line")
    _sampling_args(g)
    g.set_defaults(fn=cmd_generate)

    i2i = sub.add_parser("img2img", help="image-to-image: noise an image part-way, denoise under a new prompt",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="IF's image-to-image: the image is resized to each stage's size, noised to "
                                     "timestep ~strength*999 of the respaced chain and denoised under the prompt.",
                         epilog='example:\n  pixelcascade img2img in.png "a blue square" --strength 0.6 -o out.png')
    i2i.add_argument("image", help="an RGB image")
    i2i.add_argument("prompts", nargs="+", help="the new prompt(s)")
    i2i.add_argument("--strength", type=float, default=0.7, help="how much to change: (0, 1], 1 = from noise")
    _sampling_args(i2i)
    i2i.set_defaults(fn=cmd_img2img)

    inp = sub.add_parser("inpaint", help="repaint the white part of a mask, keep the rest",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="IF's inpainting: pixels where the mask is white are generated under the "
                                     "prompt, the others are re-imposed (clean) at every step. DDPM sampler.",
                         epilog='example:\n  pixelcascade inpaint in.png mask.png "a red circle" -o out.png')
    inp.add_argument("image", help="an RGB image")
    inp.add_argument("mask", help="a mask image of the same size: white = repaint, black = keep")
    inp.add_argument("prompts", nargs="+")
    inp.add_argument("--strength", type=float, default=1.0, help="(0, 1]: how noisy the masked area starts")
    _sampling_args(inp)
    inp.set_defaults(fn=cmd_img2img)

    up = sub.add_parser("upscale", help="super-resolution of your image with a stage II model",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Runs the super-resolution stage of --model (stage2 of a cascade folder, or a "
                                    "stage II file) on an image, optionally guided by a prompt.",
                        epilog='example:\n  pixelcascade upscale small.png --prompt "two red circles" -o big.png')
    up.add_argument("image", help="an RGB image (the low-res input)")
    up.add_argument("--prompt", default="a picture", help="what the image shows (guides the upscaler)")
    up.add_argument("--scale", type=_positive, default=2.0, help="output size / input size")
    _sampling_args(up)
    up.set_defaults(fn=cmd_upscale)

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
                              "presets: shapes32 (stage I, 32 px), shapes64-sr (stage II, 32 -> 64), shapes128-sr "
                              "(a third stage, 64 -> 128),\n  emoji64 (emoji stage I, 64 px), emoji128-sr (emoji "
                              "stage II, 64 -> 128),\n  files64 / files128-sr (the same two networks on your data: "
                              "data.path= a folder of images with .txt\n  captions or a manifest.csv, parquet, "
                              "or webdataset .tar shards, e.g. `pixelcascade curate`'s output;\n  decoded and "
                              "resized once into the cache, 5% held out for validation), tiny (a smoke test)\n"
                              "overrides: any field of the run config, "
                              "e.g. data.task_weights=position=4 unet.text_layers=2 train.device=cuda")
    t.add_argument("preset")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=1e-4")
    t.add_argument("-o", "--output", required=True, help="run folder (checkpoint, EMA weights, logs, samples)")
    t.add_argument("--max-steps", type=_at_least_1, help="stop after this many steps (overrides train.max_steps)")
    t.add_argument("--time-limit", type=_non_negative, help="stop (and checkpoint) after this many seconds")
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

    d = sub.add_parser("data", help="make datasets")
    dsub = d.add_subparsers(dest="dataset", required=True)
    de = dsub.add_parser("emoji", help="render every emoji of Noto Color Emoji -> webdataset shards + manifest",
                         description="Every fully-qualified emoji the font draws (blank glyphs dropped and counted), "
                                     "captioned with its English name; aliases and its names in 13 other "
                                     "languages go into the metadata. A seeded 5%% of the emoji are held out.",
                         epilog="example: pixelcascade data emoji -o data/emoji128 --size 128")
    de.add_argument("-o", "--output", required=True)
    de.add_argument("--size", type=_at_least_1, default=128)
    de.add_argument("--font", help="NotoColorEmoji.ttf (default: the Debian package's, or setup.sh's copy)")
    de.add_argument("--per-shard", type=_at_least_1, default=1000)
    de.add_argument("--heldout", type=_fraction, default=0.05, help="fraction of emoji whose captions are held out")
    de.add_argument("--seed", type=_seed, default=0)
    de.add_argument("--basic-layout", action="store_true",
                    help="draw without text shaping, for a Pillow without libraqm/FriBiDi: keeps only the "
                         "single-code-point emoji (about 40%%)")
    de.add_argument("-q", "--quiet", action="store_true")
    de.set_defaults(fn=cmd_data_emoji)

    df = dsub.add_parser("emoji-features", help="train the emoji feature extractor (FID/KID and retrieval for "
                                                "emoji models, offline)",
                         description="A small conv net trained to tell every emoji picture apart under shifts, "
                                     "rescaling, blur, noise and colour drift. Its features give FID/KID and its "
                                     "embedding a retrieval accuracy for emoji models; not comparable with "
                                     "Inception numbers.",
                         epilog="example: pixelcascade data emoji-features -o weights/emoji_features.safetensors")
    df.add_argument("-o", "--output", required=True)
    df.add_argument("--steps", type=_at_least_1, default=3000)
    df.add_argument("--seed", type=_seed, default=0)
    df.add_argument("--threads", type=_threads, default=0)
    df.add_argument("--device", default="cpu", help="where the net trains: cpu, cuda, auto (batches are drawn on "
                                                    "the CPU either way)")
    df.add_argument("-q", "--quiet", action="store_true")
    df.set_defaults(fn=cmd_data_emoji_features)

    dn = dsub.add_parser("encode", help="compute every caption's text states once (T5 or any encoder) -> shards",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Encodes the caption of every record of webdataset shards with the text "
                                     "encoder and writes one states shard per image shard (bf16, the real tokens "
                                     "only, keyed by the record's key), which `train ... data.text_states=STATES` "
                                     "reads in the stream instead of running the encoder. Shards already encoded "
                                     "are skipped, so a stopped run resumes; under torchrun each process takes "
                                     "its share of the shards.",
                         epilog="examples:\n"
                                "  pixelcascade data encode data/shards -o data/states --text-encoder "
                                "/models/t5-v1_1-xxl --device cuda\n"
                                "  torchrun --nproc_per_node 8 -m pixelcascade.cli data encode 'data/*.tar' -o "
                                "data/states --text-encoder /models/t5-v1_1-xxl --device cuda\n"
                                "  pixelcascade train files64 -o runs/mine data.path=data/shards "
                                "data.text_states=data/states")
    dn.add_argument("dataset", help="webdataset shards: a .tar, a folder of them, or a glob ('data/*.tar')")
    dn.add_argument("-o", "--output", required=True, help="folder for the states shards")
    dn.add_argument("--text-encoder", default="minilm",
                    help="minilm (the offline default) or a local folder (T5: IF's 77-token window)")
    dn.add_argument("--max-length", type=_whole, default=0,
                    help="the encoder's window in tokens (default: 77 for T5, 32 otherwise; the run's "
                         "data.text_max_length must match)")
    dn.add_argument("--batch-size", type=_at_least_1, default=64)
    dn.add_argument("--device", default="cpu", help="cpu, cuda or auto; under torchrun, cuda means each process's GPU")
    dn.add_argument("-q", "--quiet", action="store_true")
    dn.set_defaults(fn=cmd_data_encode)

    dz = dsub.add_parser("shapes-shards", help="a synthetic dataset of any size: shapes scenes as webdataset shards",
                         description="Shapes-world scenes with varied captions, PNG + .txt + .json per record, in "
                                     "shards rendered from (seed, shard) alone: streaming, encoding and curation at "
                                     "scale, measurable offline. Shards already there are kept.",
                         epilog="example: pixelcascade data shapes-shards -o data/shapes200k --num 200000 --size 64")
    dz.add_argument("-o", "--output", required=True)
    dz.add_argument("--num", type=_at_least_1, required=True, help="number of scenes")
    dz.add_argument("--size", type=_at_least_1, default=64, help="image size in px (32 or more)")
    dz.add_argument("--per-shard", type=_at_least_1, default=1000)
    dz.add_argument("--seed", type=_seed, default=0)
    dz.add_argument("--workers", type=_at_least_1, default=1, help="processes rendering shards")
    dz.add_argument("-q", "--quiet", action="store_true")
    dz.set_defaults(fn=cmd_data_shapes_shards)

    cu = sub.add_parser("curate", help="remove exact and near duplicates, filter by size / aspect / aesthetics",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="One streaming pass per shard (decode, pixel hash, perceptual hash, thumbnail, "
                                    "score), a global duplicate search (faiss: pHash radius + thumbnail kNN, each "
                                    "candidate verified by aligned block differences), then the kept data as "
                                    "webdataset shards and report.json, clusters.png, scores.png. INPUT: a folder "
                                    "of images with .txt captions or a manifest, parquet, or webdataset shards.",
                        epilog="examples:\n  pixelcascade curate data/emoji128 -o data/emoji128-curated\n"
                               "  pixelcascade curate laion/ -o laion-clean --aesthetic-threshold 4.5 --workers 16\n"
                               "  pixelcascade curate s3shards/ -o out --ray auto")
    cu.add_argument("input")
    cu.add_argument("-o", "--output", required=True, help="a new or empty folder: shards in data/, report.json")
    cu.add_argument("--overwrite", action="store_true", help="replace an earlier curate's output in -o")
    cu.add_argument("--near-threshold", type=_non_negative, default=6.5,
                    help="largest aligned 8x8-block difference (0-255) of a near duplicate; 0 = exact only")
    cu.add_argument("--phash-radius", type=_whole, default=10, help="candidate pairs: pHash Hamming radius")
    cu.add_argument("--knn", type=_whole, default=8, help="candidate pairs: nearest thumbnails per image")
    cu.add_argument("--index", choices=("auto", "exact", "hnsw", "ivf"), default="auto",
                    help="nearest-neighbour search: exact (quadratic), ivf (exact within k-means cells, linear) or "
                         "hnsw (a graph); auto: exact below 20,000 images, ivf above")
    cu.add_argument("--compare-size", type=_at_least_1, default=128, help="side of the thumbnails compared, px")
    cu.add_argument("--max-shift", type=_whole, default=3, help="alignment search, px at --compare-size")
    cu.add_argument("--min-size", type=_whole, default=0, help="drop images with a shorter side below this")
    cu.add_argument("--max-aspect", type=_non_negative, default=0.0, help="drop images more elongated than this")
    cu.add_argument("--aesthetic-threshold", type=_finite, help="keep images scoring at least this (IF: 4.5)")
    cu.add_argument("--aesthetic-model", help="scorer folder (clip/ + mlp.safetensors) when the data has no score")
    cu.add_argument("--workers", type=_at_least_1, default=1, help="local processes for the per-shard work")
    cu.add_argument("--ray", help="a Ray cluster address (or 'auto'): the per-shard work as Ray tasks")
    cu.add_argument("--per-shard", type=_at_least_1, default=1000, help="records per output shard")
    cu.add_argument("-q", "--quiet", action="store_true")
    cu.set_defaults(fn=cmd_curate)

    e = sub.add_parser("eval", help="evaluate a model")
    esub = e.add_subparsers(dest="suite", required=True)
    es = esub.add_parser("shapes", help="the shapes-world compositional benchmark (GenEval tasks)",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Sample the benchmark suite (64 prompts per task x 4 seeds) and score it "
                                     "with the classical-vision scorer; prints per-task accuracy with 95% "
                                     "intervals, seen and unseen apart, and writes report.json and a contact sheet.",
                         epilog="examples:\n  pixelcascade eval shapes -o eval/shapes --stages 1\n"
                                "  pixelcascade eval shapes -o eval/position --stages 1 --tasks position")
    _model_args(es)
    es.add_argument("-o", "--output", default="eval/shapes")
    es.add_argument("--per-task", type=_at_least_1, default=64, help="prompts per task (all when a task has fewer)")
    es.add_argument("--seeds", type=_at_least_1, default=4, help="images per prompt")
    es.add_argument("--tasks", default=None,
                    help="only these tasks, comma-separated (e.g. position,counting): the same prompts and seeds "
                         "as in the full suite; overall then averages the GenEval tasks given")
    es.add_argument("--batch-size", type=_at_least_1, default=64)
    es.add_argument("--language", default="en", choices=["en", "de", "fr", "es"],
                    help="the prompts in another language (same specs): measures the text encoder")
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
                                "  pixelcascade eval fid a/ b/ --features random   # no weights: a seeded random net")
    ef.add_argument("images", help="a folder of images (generated ones, or the real set with --save-stats)")
    ef.add_argument("reference", nargs="?", help="a folder of real images or a .npz of saved statistics")
    _feature_args(ef)
    ef.add_argument("--save-stats", help="write the statistics of IMAGES to this .npz (reference sets: once)")
    ef.add_argument("--ref-size", type=_at_least_1, help="centre-crop + resize IMAGES to this size first (real photos)")
    ef.add_argument("--batch-size", type=_at_least_1, default=64)
    ef.add_argument("-q", "--quiet", action="store_true")
    ef.set_defaults(fn=cmd_eval_fid)

    ec = esub.add_parser("clip", help="CLIP score of generated images (their sidecars hold the prompts)",
                         description="Mean cosine between CLIP image and caption embeddings, as IF reports it "
                                     "(ViT-B/32, not x100). Needs a local CLIP folder in the Hugging Face layout.",
                         epilog="example: pixelcascade eval clip out/coco/images --clip /models/clip-vit-base-patch32")
    ec.add_argument("images", help="a folder of PNGs with JSON sidecars (what generate writes)")
    ec.add_argument("--clip", required=True, help="local CLIP model folder (openai/clip-vit-base-patch32)")
    ec.add_argument("--batch-size", type=_at_least_1, default=64)
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
    _model_args(eo)
    eo.add_argument("--captions", help="COCO captions (.json annotations, or TSV/CSV with image_id, caption); "
                                       "default: val2017's from ../shared/prompts")
    eo.add_argument("--num", type=_at_least_1, default=30000, help="captions drawn, one per image (default 30000)")
    eo.add_argument("--seed", type=_seed, default=0, help="seeds the caption draw; image of row r gets seed+r")
    eo.add_argument("-o", "--output", default="eval/coco")
    eo.add_argument("--ref", help="real-image statistics (.npz) or folder; without it only generation runs")
    _feature_args(eo)
    eo.add_argument("--clip", help="local CLIP folder: also report the CLIP score")
    eo.add_argument("--batch-size", type=_at_least_1, default=16)
    eo.set_defaults(fn=cmd_eval_coco)

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
    ew.add_argument("--random", type=_at_least_1, help="random search with this many points instead of the grid")
    ew.add_argument("--search-seed", type=_seed, default=0)
    _model_args(ew)
    ew.add_argument("-o", "--output", default="eval/sweep")
    ew.add_argument("--per-task", type=_at_least_1, default=16, help="shapes: prompts per task at each point")
    ew.add_argument("--seeds", type=_at_least_1, default=2, help="shapes: images per prompt at each point")
    ew.add_argument("--captions", help="coco: captions file")
    ew.add_argument("--num", type=_at_least_1, default=1000, help="coco: captions per point (FID-1K by default)")
    ew.add_argument("--ref", help="coco: real-image statistics")
    _feature_args(ew)
    ew.add_argument("--clip", help="coco: local CLIP folder")
    ew.add_argument("--batch-size", type=_at_least_1, default=64)
    ew.set_defaults(fn=cmd_eval_sweep)

    em = esub.add_parser("emoji", help="emoji model: retrieval accuracy and FID/KID with the emoji extractor",
                         description="Generate the English names of held-out and of training emoji and ask the "
                                     "emoji feature extractor which real emoji each image is closest to.",
                         epilog="example: pixelcascade eval emoji --model emoji -o eval/emoji")
    em.add_argument("--features", default=str(EMOJI_FEATURES),
                    help="the extractor made by `pixelcascade data emoji-features` (default: the one shipped "
                         "with the emoji model)")
    _model_args(em, model="emoji")
    em.add_argument("--per-split", type=_at_least_1, default=100, help="captions per split (held-out, training)")
    em.add_argument("-o", "--output", default="eval/emoji")
    em.add_argument("--batch-size", type=_at_least_1, default=32)
    em.set_defaults(fn=cmd_eval_emoji)

    eu = esub.add_parser("suite", help="DrawBench / PartiPrompts / GenEval prompts -> contact sheets per category",
                         description="Generate a seeded pick of each category's prompts and write one captioned "
                                     "contact sheet per category, for judging by eye.",
                         epilog="example: pixelcascade eval suite drawbench --per-category 8 -o eval/drawbench")
    eu.add_argument("name", help="drawbench, parti, geneval, or a suite file (CSV/TSV with Prompt[, Category], "
                                 "or GenEval-style JSONL)")
    eu.add_argument("--prompts-dir", help="folder holding the suite files (default: ../shared/prompts)")
    eu.add_argument("--per-category", type=_at_least_1, default=8)
    eu.add_argument("--images-per-prompt", type=_at_least_1, default=1)
    eu.add_argument("--seed", type=_seed, default=0)
    _model_args(eu)
    eu.add_argument("-o", "--output", default="eval/suite")
    eu.add_argument("--batch-size", type=_at_least_1, default=16)
    eu.set_defaults(fn=cmd_eval_suite)
    return ap


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    # dotted overrides may also come after the options: train shapes32 -o runs/x train.lr=1e-4
    if extra and getattr(args, "command", None) == "train" and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.fn(args)
    except PixelcascadeError as e:  # every error a user can fix (UserError and each loader's own): one line
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
