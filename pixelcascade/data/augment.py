"""Training-time augmentation that keeps captions true: a horizontal flip only where the caption names no side.

A mirrored picture of "a dog left of a cat" shows the dog on the right, so flipping it teaches the opposite of
the caption; captions that name left or right (in the languages the emoji world's names come in, as a word) are
never flipped. Text drawn in a picture comes out mirrored: leave data.flip off for data full of writing.
"""

from __future__ import annotations

import re

import numpy as np
import torch

SIDE_WORDS = ("left", "right", "leftmost", "rightmost", "lefthand", "righthand", "links", "rechts", "linken",
              "rechten", "gauche", "droite", "izquierda", "derecha", "sinistra", "destra", "esquerda", "direita")
_SIDE = re.compile(r"\b(" + "|".join(SIDE_WORDS) + r")\b", re.IGNORECASE)


def names_a_side(caption: str) -> bool:
    """Whether a caption says left or right (as a word: "bright" and "leftover" are not sides)."""
    return _SIDE.search(caption) is not None


def flippable(captions: list[str]) -> np.ndarray:
    """bool [n]: which captions allow a mirrored picture."""
    return np.array([not names_a_side(c) for c in captions], dtype=bool)


def random_flip(x: torch.Tensor, allowed: torch.Tensor, g: torch.Generator, b: int, mine: slice
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror half of the rows of ``x`` [n, C, H, W] whose ``allowed`` is true. The coin is drawn for the global
    batch of ``b`` from ``g`` and this process's rows kept (as every draw of a step). Returns (x, which flipped)."""
    flip = (torch.rand(b, generator=g) < 0.5)[mine] & allowed
    return torch.where(flip[:, None, None, None], x.flip(-1), x), flip
