"""Aspect-ratio buckets: a few fixed image shapes of about the same pixel count, each picture trained at the one
closest to its own aspect ratio instead of centre-cropped to a square (data.buckets).

A batch holds pictures of one shape (the UNet takes any shape its down-sampling divides; the cascade samples
non-square sizes). Shapes are multiples of the UNet's down-sampling factor, and for a super-resolution stage also
of what keeps its low-res input a whole number of pixels.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..errors import PixelcascadeError

# "auto": square, 4:3, 3:2 and 16:9, each both ways
AUTO_RATIOS = (1.0, 4 / 3, 3 / 4, 3 / 2, 2 / 3, 16 / 9, 9 / 16)


class BucketError(PixelcascadeError, ValueError):
    pass


def bucket_shapes(spec: str, size: int, multiple: int) -> list[tuple[int, int]]:
    """The (height, width) shapes ``data.buckets`` names: "auto" (AUTO_RATIOS at about size x size pixels), or
    "HxW,HxW,..." (each checked). Every side is a multiple of ``multiple``."""
    if spec == "auto":
        shapes = []
        for r in AUTO_RATIOS:  # r = width / height
            h = max(multiple, round(size / math.sqrt(r) / multiple) * multiple)
            w = max(multiple, round(size * math.sqrt(r) / multiple) * multiple)
            if (h, w) not in shapes:
                shapes.append((h, w))
        return shapes
    shapes = []
    for part in spec.split(","):
        try:
            h, w = (int(v) for v in part.strip().lower().split("x"))
        except ValueError:
            raise BucketError(f"data.buckets={spec!r}: 'auto' or shapes as HEIGHTxWIDTH, comma-separated "
                              f"(e.g. {size}x{size},{size * 3 // 4}x{size * 4 // 3})") from None
        if h % multiple or w % multiple or h < multiple or w < multiple:
            raise BucketError(f"data.buckets: {h}x{w} is not a multiple of {multiple} on both sides (what the UNet's "
                              "down-sampling and the low-res input need)")
        shapes.append((h, w))
    return shapes


def nearest_bucket(height: int, width: int, shapes: list[tuple[int, int]]) -> int:
    """The shape whose aspect ratio is closest to the picture's (on a log scale, so 2:1 and 1:2 are as far from
    1:1)."""
    ratio = math.log(width / height)
    return min(range(len(shapes)), key=lambda k: abs(math.log(shapes[k][1] / shapes[k][0]) - ratio))


def fit(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] -> [h, w, 3]: scaled (bicubic) to cover the shape, then centre-cropped to it."""
    from PIL import Image
    h, w = shape
    scale = max(h / img.shape[0], w / img.shape[1])
    size = (max(w, round(img.shape[1] * scale)), max(h, round(img.shape[0] * scale)))
    im = Image.fromarray(img).resize(size, Image.BICUBIC)
    left, top = (size[0] - w) // 2, (size[1] - h) // 2
    return np.asarray(im.crop((left, top, left + w, top + h)))


@dataclasses.dataclass
class BucketedImages:
    """Every image of a dataset at its bucket's shape: ``arrays[k]`` [n_k, h_k, w_k, 3] holds bucket k's images;
    image i is ``arrays[bucket_of[i]][row_in_bucket[i]]``."""

    shapes: list[tuple[int, int]]
    arrays: list[np.ndarray]
    bucket_of: np.ndarray  # int [N]
    row_in_bucket: np.ndarray  # int [N]

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """The images of ``rows`` (all of one bucket) as uint8 [n, h, w, 3]."""
        buckets = np.unique(self.bucket_of[rows])
        if len(buckets) != 1:
            raise ValueError(f"a batch mixes buckets {buckets.tolist()}")
        return self.arrays[int(buckets[0])][self.row_in_bucket[rows]]
