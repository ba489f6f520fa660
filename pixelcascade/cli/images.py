"""The image commands: generate, img2img, inpaint, upscale. Each parses, calls the API (a cascade call per
batch) and writes every image through the one PNG + settings-record writer."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..inputs import DEFAULT_MAX_PIXELS, read_image, read_mask, read_prompt_lines
from .common import UserError, check_writable, device_and_dtype, device_arg, load_cascade, out_of_memory, slug
from .flags import (
    encoder_flags,
    image_args,
    positive,
)


def add_commands(sub) -> None:
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
    prompt_flags(g)
    g.add_argument("--prompt-states", metavar="FILE",
                   help="text states from `pixelcascade encode` instead of the text encoder, which is then never "
                        "loaded: the file's prompts (or those given, which it must hold)")
    image_args(g)
    g.set_defaults(fn=cmd_generate)

    enc = sub.add_parser("encode", help="prompts -> a text-states file, so generate needs no text encoder",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Encode prompts once with the text encoder a model reads (T5-XXL for IF) and "
                                     "write their states, the empty prompt's (for guidance) and the token spans "
                                     "(for layout guidance) to one .safetensors. `generate --prompt-states FILE` "
                                     "then runs the UNets without the encoder in memory (diffusers' prompt_embeds).",
                         epilog="examples:\n"
                                '  pixelcascade encode "a red circle" "two blue squares" -o states.safetensors\n'
                                "  pixelcascade generate --prompt-states states.safetensors -o outs/\n"
                                '  pixelcascade encode --prompts-file prompts.txt --model /models/IF-I-XL '
                                "--text-encoder-dtype int8 -o states.safetensors")
    prompt_flags(enc)
    enc.add_argument("--negative-prompt", default="", help="also encode this negative prompt (generate's flag)")
    enc.add_argument("-o", "--output", default="states.safetensors", help="the states file to write")
    enc.add_argument("--model", default="shapes", help="the model the states are for: its text encoder and window "
                                                       "(what `generate --model` takes; default: shapes)")
    encoder_flags(enc)
    enc.add_argument("--device", default="cpu", help="where the encoder runs: cpu, cuda, cuda:1 or auto")
    enc.add_argument("-q", "--quiet", action="store_true", help="no summary line")
    enc.set_defaults(fn=cmd_encode)

    i2i = sub.add_parser("img2img", help="image-to-image: noise an image part-way, denoise under a new prompt",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="IF's image-to-image: the image is resized to each stage's size, noised to "
                                     "timestep ~strength*999 of the respaced chain and denoised under the prompt.",
                         epilog='example:\n  pixelcascade img2img in.png "a blue square" --strength 0.6 -o out.png')
    i2i.add_argument("image", help="a square RGB image (edits make square images; another shape is refused)")
    i2i.add_argument("prompts", nargs="+", help="the new prompt(s)")
    i2i.add_argument("--strength", type=float, default=0.7, help="how much to change: (0, 1], 1 = from noise")
    image_args(i2i)
    i2i.set_defaults(fn=cmd_img2img)

    inp = sub.add_parser("inpaint", help="repaint the white part of a mask, keep the rest",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="IF's inpainting: pixels where the mask is white are generated under the "
                                     "prompt, the others are re-imposed (clean) at every step. DDPM sampler.",
                         epilog='example:\n  pixelcascade inpaint in.png mask.png "a red circle" -o out.png')
    inp.add_argument("image", help="a square RGB image (edits make square images; another shape is refused)")
    inp.add_argument("mask", help="a mask image of the same size: white = repaint, black = keep")
    inp.add_argument("prompts", nargs="+")
    inp.add_argument("--strength", type=float, default=1.0, help="(0, 1]: how noisy the masked area starts")
    image_args(inp)
    inp.set_defaults(fn=cmd_img2img)

    up = sub.add_parser("upscale", help="super-resolution of your image with a stage II model",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Runs the super-resolution stage of --model (stage2 of a cascade folder, or a "
                                    "stage II file) on an image, optionally guided by a prompt.",
                        epilog='example:\n  pixelcascade upscale small.png --prompt "two red circles" -o big.png')
    up.add_argument("image", help="an RGB image (the low-res input)")
    up.add_argument("--prompt", default="a picture", help="what the image shows (guides the upscaler)")
    up.add_argument("--scale", type=positive, default=2.0, help="output size / input size")
    image_args(up)
    up.set_defaults(fn=cmd_upscale)


def prompt_flags(g: argparse.ArgumentParser) -> None:
    """Prompts on the command line and from a file: what :func:`_read_prompts` reads (generate, encode)."""
    g.add_argument("prompts", nargs="*", help="one or more prompts")
    g.add_argument("--prompts-file", help="a text file with one prompt a line")


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


@dataclass(frozen=True)
class ImageRequest:
    """What an image command asks the cascade for, typed: filled from the parsed flags (``from_args``), then run
    batch by batch (:func:`_run_and_save`)."""

    prompts: list[str]
    output: Path
    seed: int = 0
    num_images: int = 1
    batch_size: int = 8
    stages: int | None = None
    settings: dict = field(default_factory=dict)  # stage_settings' keywords: sampler, steps, guidance, ..._ii
    negative_prompt: str = ""
    height: int | None = None
    width: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    save_stages: bool = False
    quiet: bool = False
    device: str = "cpu"
    image: object = None  # img2img / inpaint: the start image ([-1, 1]); upscale: the low-res input
    mask: object = None
    strength: float = 1.0
    size: tuple | None = None  # the first stage's output size, when the command fixes it (upscale)
    inputs: dict = field(default_factory=dict)  # the input files, recorded beside each image

    @classmethod
    def from_args(cls, a, prompts: list[str], **kw) -> ImageRequest:
        settings = dict(sampler=a.sampler, sampler_ii=a.sampler_ii, steps=a.steps, steps_ii=a.steps_ii,
                        guidance=a.guidance, guidance_ii=a.guidance_ii, aug_level=a.aug_level,
                        dyn_thresh_max=a.thresh_max, dyn_thresh_max_ii=a.thresh_max_ii,
                        layout_guidance=a.layout_guidance)
        return cls(prompts=prompts, output=Path(a.output), seed=a.seed, num_images=a.num_images,
                   batch_size=a.batch_size, stages=a.stages, settings=settings, negative_prompt=a.negative_prompt,
                   height=a.height, width=a.width, max_pixels=a.max_pixels, save_stages=a.save_stages,
                   quiet=a.quiet, device=a.device, **kw)


def _run_and_save(req: ImageRequest, cascade) -> int:
    """The image commands' one loop: call the cascade batch by batch, write each image as PNG + its settings
    record (the API's own, plus the input files), print the paths."""
    import numpy as np

    from ..images import save_png
    from ..pipeline import stage_settings
    n_images = len(req.prompts) * req.num_images
    out = req.output
    if out.suffix and out.suffix.lower() != ".png" and not out.is_dir():
        raise UserError(f"-o {out}: images are written as PNG with a JSON sidecar; give a .png path, or a folder "
                        "(a name without an extension)")
    single = out.suffix.lower() == ".png"
    if single and n_images > 1:
        raise UserError(f"-o {out} is one PNG but {n_images} images will be made: pass a folder instead")
    check_writable(out)
    t0 = time.time()
    settings = stage_settings(cascade.stages, **req.settings)
    all_prompts = [p for p in req.prompts for _ in range(req.num_images)]
    seeds = [req.seed + i for i in range(len(all_prompts))]
    size = req.size
    if size is None and (req.height or req.width):
        size = (req.height or cascade.stages[0].cfg.image_size, req.width or cascade.stages[0].cfg.image_size)
    paths = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for start in range(0, len(all_prompts), req.batch_size):
            ps, ss = all_prompts[start:start + req.batch_size], seeds[start:start + req.batch_size]
            try:
                result = cascade(ps, seed=ss, settings=settings, num_stages=req.stages, progress=not req.quiet,
                                 negative_prompt=req.negative_prompt, image=req.image, mask_image=req.mask,
                                 strength=req.strength, max_pixels=req.max_pixels,
                                 height=None if size is None else size[0], width=None if size is None else size[1],
                                 return_stages=req.save_stages)
            except RuntimeError as e:  # torch's allocation failures (CPU or CUDA): the size asked for, not a bug
                if not out_of_memory(e):
                    raise
                more = ", or add --offload (or --offload sequential)" if "cuda" in req.device else ""
                raise UserError(f"out of memory sampling {len(ps)} image(s): lower --batch-size or --height/--width"
                                f"{more}") from None
            for j, image in enumerate(result.images):
                path = out if single else out / f"{start + j:04d}-{slug(ps[j])}.png"
                record = {**result.settings[j], **req.inputs}
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
    if not req.quiet:
        print(f"{len(paths)} image(s) in {time.time() - t0:.1f} s", file=sys.stderr)
    return 0


def cmd_generate(a) -> int:
    import torch
    prompts = _read_prompts(a) if a.prompts or a.prompts_file or not a.prompt_states else []
    check_writable(Path(a.output))
    if a.threads:
        torch.set_num_threads(a.threads)
    cascade = load_cascade(a.model, *device_and_dtype(a), a.text_encoder, max_stages=a.stages,
                           offload=a.offload, stage3=a.stage3, lora=a.lora, text_encoder_dtype=a.text_encoder_dtype,
                           prompt_states=a.prompt_states)
    prompts = prompts or cascade.encoder.prompts  # --prompt-states alone: every prompt it holds
    return _run_and_save(ImageRequest.from_args(a, prompts), cascade)


def cmd_encode(a) -> int:
    from ..api import load_text_encoder  # its errors are one `error:` line like every PixelcascadeError
    from ..prompt_states import write_prompt_states
    prompts = _read_prompts(a)
    out = Path(a.output)
    if out.suffix != ".safetensors":
        raise UserError(f"-o {out}: states files are .safetensors; give a name ending in .safetensors")
    check_writable(out)
    t0 = time.time()
    encoder = load_text_encoder(a.model, text_encoder=a.text_encoder, device=device_arg(a.device),
                                text_encoder_dtype=a.text_encoder_dtype)
    write_prompt_states(encoder, prompts, out, negative_prompts=[a.negative_prompt])
    print(out)
    if not a.quiet:
        print(f"{len(prompts)} prompt(s) encoded with {encoder.name} in {time.time() - t0:.1f} s", file=sys.stderr)
    return 0


def cmd_img2img(a) -> int:
    if not 0.0 < a.strength <= 1.0:
        raise UserError(f"--strength {a.strength}: must be in (0, 1]; 0.3 keeps most of the image, 1.0 none")
    img = load_image(a.image, max_pixels=a.max_pixels)
    mask = load_image(a.mask, "mask", a.max_pixels) if a.command == "inpaint" else None
    if mask is not None and mask.shape[:2] != img.shape[:2]:
        raise UserError(f"mask {a.mask} is {mask.shape[1]}x{mask.shape[0]} but image {a.image} is "
                        f"{img.shape[1]}x{img.shape[0]}: the mask must have the image's size (white = repaint)")
    prompts = _read_prompts(a)
    check_writable(Path(a.output))
    cascade = load_cascade(a.model, *device_and_dtype(a), a.text_encoder, max_stages=a.stages,
                           lora=a.lora, text_encoder_dtype=a.text_encoder_dtype, offload=a.offload)
    init, mask_t = cascade.edit_inputs(img, mask, a.stages)
    inputs = {"init_image": a.image, **({"mask": a.mask} if mask is not None else {})}
    return _run_and_save(ImageRequest.from_args(a, prompts, image=init, mask=mask_t, strength=a.strength,
                                                inputs=inputs), cascade)


def cmd_upscale(a) -> int:
    from ..pipeline import from_uint8
    img = from_uint8(load_image(a.image, max_pixels=a.max_pixels))
    from ..api import load_upscaler  # its ModelError is one `error:` line like every PixelcascadeError
    device, dtype = device_and_dtype(a)
    cascade = load_upscaler(a.model, device=device, dtype=dtype, text_encoder=a.text_encoder, lora=a.lora,
                            text_encoder_dtype=a.text_encoder_dtype, offload=a.offload or False)
    size = cascade.upscaled_size(a.image, img.shape[2], img.shape[3], a.scale, a.max_pixels)
    check_writable(Path(a.output))
    req = ImageRequest.from_args(a, [a.prompt], image=img, size=size, inputs={"input_image": a.image})
    return _run_and_save(replace(req, num_images=1, stages=1), cascade)
