"""Images in and out, for every layer above: list a folder, read any mode as RGB, centre-crop and resize, write a
PNG with its settings sidecar, and contact sheets (a captioned grid as one PNG)."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .errors import PixelcascadeError
from .inputs import open_image
from .utils import atomic_path, atomic_write_text

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".tif", ".tiff", ".npy"}


class ImageInputError(PixelcascadeError, ValueError):
    """Images that cannot be used (a missing folder, a folder without images): one clear message."""


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageInputError(f"{folder}: no such folder of images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise ImageInputError(f"{folder}: holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return files


def read_rgb(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False)
    with open_image(path, fix="downscale it first") as im:
        return np.asarray(im.convert("RGB"))


def center_crop_resize(img, size: int):
    """Centre-crop the long edge, then resize to size x size (PIL bicubic, antialiased): uint8 [H, W, 3] ->
    [size, size, 3]. Reference images for FID, and images of a dataset trained on (data.world=files)."""
    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = Image.fromarray(np.ascontiguousarray(img[top:top + s, left:left + s]))
    return np.asarray(crop.resize((size, size), Image.BICUBIC))


def save_png(img, path: str | Path, sidecar: dict) -> None:
    """uint8 [H, W, 3] -> PNG + a JSON sidecar of the same name (prompt, seed, every setting); both atomic."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")
    atomic_write_text(path.with_suffix(".json"), json.dumps(sidecar, indent=2, default=str))


def _as_uint8(images) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1).cpu().numpy()
    return np.asarray(images, dtype=np.uint8)


def contact_sheet(images, captions: list[str], path: str | Path, scale: int = 2, cols: int | None = None,
                  title: str | None = None, wrap: int = 22) -> Path:
    """Write a grid (images [-1, 1] tensor [B, 3, H, W] or uint8 [B, H, W, 3]) with captions below each."""
    imgs = _as_uint8(images)
    n = len(imgs)
    cols = cols or min(8, n)
    rows = math.ceil(n / cols)
    h, w = imgs.shape[1] * scale, imgs.shape[2] * scale
    cell_w = max(w, 120)
    lines = [textwrap.wrap(c, wrap)[:4] for c in captions] + [[]] * (n - len(captions))
    text_h = 11 * max(1, max(len(ln) for ln in lines)) + 4
    top = 16 if title else 0
    sheet = Image.new("RGB", (cols * (cell_w + 4) + 4, top + rows * (h + text_h + 4) + 4), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    if title:
        draw.text((4, 2), title, fill="black", font=font)
    for i in range(n):
        r, c = divmod(i, cols)
        x0, y0 = 4 + c * (cell_w + 4), top + 4 + r * (h + text_h + 4)
        sheet.paste(Image.fromarray(imgs[i]).resize((w, h), Image.NEAREST), (x0 + (cell_w - w) // 2, y0))
        for k, line in enumerate(lines[i]):
            draw.text((x0, y0 + h + 2 + 11 * k), line, fill="black", font=font)
    path = Path(path)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path
