"""Spatial relations in English prompts: "a red circle to the left of a blue square" -> the subject's and the
object's head nouns, the axis and the side; and those nouns' token positions in a text encoder's output.

Layout guidance (``diffusion.layout``) steers sampling with them; the parser is plain English, not part of IF.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# phrase -> (axis: 0 = x, 1 = y; sign: +1 when the object's coordinate is the larger); longest phrases match first
RELATIONS: dict[str, tuple[int, int]] = {
    **{p.format("left"): (0, 1) for p in ("to the {} of", "on the {} of", "on the {} side of", "{} of")},
    **{p.format("right"): (0, -1) for p in ("to the {} of", "on the {} of", "on the {} side of", "{} of")},
    "above": (1, 1), "on top of": (1, 1),  # not "over": mostly not spatial ("over the years")
    "below": (1, -1), "under": (1, -1), "underneath": (1, -1), "beneath": (1, -1),
}
_RELATION_RE = re.compile(r"\b(" + "|".join(re.escape(p) for p in sorted(RELATIONS, key=len, reverse=True)) + r")\b")
_WORD_RE = re.compile(r"[a-z0-9]+")
# words that end the object's noun phrase, and words that are never its head or the subject's
_PHRASE_END = re.compile(r"[,.;:!?]|\b(and|with|in|on|at|while|next|near|beside|that|which|who)\b")
_NOT_HEAD = {"a", "an", "the", "is", "are", "be", "that", "which", "who", "it", "its", "one", "placed", "located",
             "positioned", "sitting", "standing", "shown", "drawn", "directly", "just", "slightly", "far"}


@dataclass(frozen=True)
class Relation:
    """A prompt's spatial relation: character spans of the subject's and the object's head nouns."""

    subject: tuple[int, int]
    object: tuple[int, int]
    axis: int
    sign: int


@dataclass(frozen=True)
class LayoutTarget:
    """Token positions (in the encoder's output) of the subject's and the object's head nouns, and the relation."""

    subject: tuple[int, ...]
    object: tuple[int, ...]
    axis: int
    sign: int


def _head(text: str, start: int, end: int) -> tuple[int, int] | None:
    """The span of the last word of text[start:end] that can be a noun phrase's head (English: the head noun
    ends the phrase)."""
    words = [m for m in _WORD_RE.finditer(text, start, end) if m.group() not in _NOT_HEAD]
    return words[-1].span() if words else None


def parse_relation(text: str) -> Relation | None:
    """The first spatial relation in a (lower-case) prompt: "a red circle to the left of a blue square" ->
    subject "circle", object "square", x axis. The subject is the last word before the relation, the object the
    last word of the noun phrase after it (up to a comma, "and", "with", "in", ...). None when there is no
    relation or the two nouns are the same word (singular and plural alike)."""
    m = _RELATION_RE.search(text)
    if m is None:
        return None
    subj = _head(text, 0, m.start())
    stop = _PHRASE_END.search(text, m.end())
    obj = _head(text, m.end(), stop.start() if stop else len(text))
    if subj is None or obj is None:
        return None
    ws, wo = text[slice(*subj)], text[slice(*obj)]
    if ws.rstrip("s") == wo.rstrip("s"):
        return None
    axis, sign = RELATIONS[m.group(1)]
    return Relation(subj, obj, axis, sign)


def relation_target(rel: Relation, offsets: list[tuple[int, int]]) -> LayoutTarget | None:
    """Map the relation's character spans to token positions, given each token's character span in the same
    text (special and padding tokens: empty spans). None when a noun was cut off by the encoder's window."""
    def tokens(span):
        return tuple(i for i, (a, b) in enumerate(offsets) if b > a and a < span[1] and b > span[0])
    s, o = tokens(rel.subject), tokens(rel.object)
    return LayoutTarget(s, o, rel.axis, rel.sign) if s and o else None
