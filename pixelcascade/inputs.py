"""What users hand in, read in one place: prompt files, captions, images and masks.

Every way such an input can be wrong ends in one :class:`InputError` naming the file and the fix: text that is not
UTF-8, a file that is not an image, an image too large to decode safely (a 300 KB PNG can declare 10000 x 10000
pixels, 4 GB once decoded), a mode the command cannot use. Bit depths are scaled, never clipped: a 16-bit mask's
mid-grey stays mid-grey.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np

from .errors import PixelcascadeError

# Images larger than this are refused before they are decoded (a 45-megapixel camera photo passes; --max-pixels
# raises it). Decoded, an image costs 3 bytes a pixel and ~12 once in float: 50 MP is ~0.6 GB.
DEFAULT_MAX_PIXELS = 50_000_000


class InputError(PixelcascadeError, ValueError):
    """An input file that cannot be used as given, with the fix in the message."""


def read_prompt_lines(path: str | Path, flag: str = "--prompts-file") -> list[str]:
    """The non-blank lines of a UTF-8 text file, stripped: one prompt a line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{flag} {path}: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise InputError(f"{flag} {path}: line {line} is not UTF-8 text; save the file as UTF-8 (one prompt a "
                         "line)") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def decode_caption(data: bytes) -> str:
    """A caption file's bytes as text: what is not UTF-8 becomes U+FFFD (a dataset keeps going; never a
    traceback), surrounding whitespace dropped."""
    return data.decode("utf-8", "replace").strip()


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.1f} MP"


@contextlib.contextmanager
def _pil_limit_lifted():
    """PIL's own decompression-bomb check off for one open: the size was checked against ``max_pixels``."""
    from PIL import Image
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def open_image(path: str | Path, what: str = "image", max_pixels: int | None = DEFAULT_MAX_PIXELS,
               fix: str = "pass --max-pixels N to accept it, or downscale it first"):
    """A decoded PIL image; its size is checked from the header, before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError
    path = Path(path)
    try:
        with _pil_limit_lifted():
            img = Image.open(path)
            w, h = img.size
            if max_pixels is not None and w * h > max_pixels:
                img.close()
                raise InputError(f"{what} {path} is {w}x{h} ({_megapixels(w * h)}), over the limit of "
                                 f"{_megapixels(max_pixels)} an image may have here: {fix}")
            img.load()
    except FileNotFoundError:
        raise InputError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{what} {path} is a folder: give an image file") from None
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise InputError(f"{what} {path}: not a readable image ({reason}); give a PNG, JPEG or WebP file") from None
    return img


def read_image(path: str | Path, what: str = "image", max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An RGB image file as uint8 [H, W, 3]. Other modes are refused with the conversion to make (a silent
    conversion would choose a background for transparency, or colours for a palette, the user did not)."""
    img = open_image(path, what, max_pixels)
    if img.mode != "RGB":
        raise InputError(f"{what} {path} is {img.mode}, not RGB: convert it first (e.g. PIL's "
                         f"Image.open(p).convert('RGB').save(...))")
    return np.asarray(img)


def read_mask(path: str | Path, what: str = "mask", max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A mask as uint8 [H, W] greyscale (white = repaint); 16- and 32-bit greyscale scaled to 8 bits, not
    clipped."""
    img = open_image(path, what, max_pixels)
    if img.mode.startswith("I;16") or img.mode == "I":  # 16-bit greyscale (PIL may open it as I): 0..65535
        return np.clip(np.round(np.asarray(img, dtype=np.float64) / 257), 0, 255).astype(np.uint8)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0  # float masks are 0..1 or 0..255
        return np.clip(np.round(arr * scale), 0, 255).astype(np.uint8)
    return np.asarray(img.convert("L"))
