"""One entry point for extractors named on the command line: ``inception:PATH``, ``emoji:PATH``, ``pixelstats``,
``random[:SEED]``."""

from __future__ import annotations

from .base import FeatureExtractor
from .emoji import load_emoji_extractor
from .inception import InceptionExtractor, RandomConvExtractor
from .pixelstats import PixelStatsExtractor


def load_extractor(spec: str) -> FeatureExtractor:
    """``inception:PATH`` (or a bare path to the Inception file), ``emoji:PATH``, ``pixelstats`` (no weights),
    ``random[:SEED]``."""
    kind, _, arg = spec.partition(":")
    if kind == "pixelstats":
        return PixelStatsExtractor()
    if kind == "random":
        return RandomConvExtractor(int(arg or 0))
    if kind == "emoji":
        return load_emoji_extractor(arg)
    if kind == "inception":
        return InceptionExtractor(arg)
    return InceptionExtractor(spec)
