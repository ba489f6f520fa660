"""Spatial relations in English prompts: "a red circle to the left of a blue square" -> the subject's and the
object's head nouns, the axis and the side; and those nouns' token positions in a text encoder's output.

Layout guidance (``diffusion.layout``) steers sampling with them; the parser is plain English, not part of IF.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

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
             "positioned", "sitting", "standing", "shown", "drawn", "directly", "just", "slightly", "far", "and",
             "there", "here", "while", "then", "also", "some", "both", "of", "picture", "image", "showing", "shows",
             "with", "has", "have", "lies", "sits", "stands", "appears", "can", "see", "you"}


@dataclass(frozen=True)
class Relation:
    """A prompt's spatial relation: character spans of the subject's and the object's head nouns."""

    subject: tuple[int, int]
    object: tuple[int, int]
    axis: int
    sign: int
    same: bool = False  # the two head nouns are one word ("a circle above a circle"): only the axis is stated


@dataclass(frozen=True)
class LayoutTarget:
    """Token positions (in the encoder's output) of the subject's and the object's head nouns, and the relation.
    ``spread``: the nouns are one word, whose states (hence attention maps) cannot tell the two objects apart, so
    guidance asks for the noun's attention spread along the axis instead of an order (``diffusion.layout``)."""

    subject: tuple[int, ...]
    object: tuple[int, ...]
    axis: int
    sign: int
    spread: bool = False


def _head(text: str, start: int, end: int) -> tuple[int, int] | None:
    """The span of the last word of text[start:end] that can be a noun phrase's head (English: the head noun
    ends the phrase)."""
    words = [m for m in _WORD_RE.finditer(text, start, end) if m.group() not in _NOT_HEAD]
    return words[-1].span() if words else None


def parse_relation(text: str) -> Relation | None:
    """The spatial relation a (lower-case) prompt states, in the phrasings people use:

    - a relation between two noun phrases: "a red circle (is) to the left of a blue square", "a dog above a car";
    - the object named by "it" or "its": "a square has a circle above it", "a square with a circle to its left";
    - a side for each: "there is a circle on the left and a square on the right", "a cat at the top, a dog at the
      bottom", "on the left is a circle and on the right a square", "a circle above and a square below".

    The subject is the head noun of its phrase (English: the last word), and so is the object; ``same`` when the
    two are one word (singular and plural alike). None when there is no relation or the sides are not opposite."""
    for parse in (_possessive, _between, _sides):
        rel = parse(text)
        if rel is not None:
            ws, wo = text[slice(*rel.subject)], text[slice(*rel.object)]
            return replace(rel, same=ws.rstrip("s") == wo.rstrip("s"))
    return None


def _between(text: str) -> Relation | None:
    """"X <relation> Y": the first relation whose object is a thing in the picture (not "the image")."""
    for m in _RELATION_RE.finditer(text):
        subj = _head(text, 0, m.start())
        stop = _PHRASE_END.search(text, m.end())
        obj = _head(text, m.end(), stop.start() if stop else len(text))
        if subj is None or obj is None or text[slice(*obj)] in _FRAME:
            continue
        return Relation(subj, obj, *RELATIONS[m.group(1)])
    return None


# "Y has X above it", "Y with X to its left": the relation's object is "it", the noun before has / with
_POSSESSIVE_RE = re.compile(r"\b(?:(above|below|under|underneath|beneath|on top of) (?:it|them)"
                            r"|(?:to|on) (?:its|their) (left|right)(?: side)?)\b")
_HAS_RE = re.compile(r"\b(has|have|having|with)\b")


def _possessive(text: str) -> Relation | None:
    m = _POSSESSIVE_RE.search(text)
    if m is None:
        return None
    has = list(_HAS_RE.finditer(text, 0, m.start()))
    if not has:
        return None
    obj, subj = _head(text, 0, has[-1].start()), _head(text, has[-1].end(), m.start())
    if subj is None or obj is None:
        return None
    phrase = m.group(1) or f"{m.group(2)} of"
    return Relation(subj, obj, *RELATIONS[phrase])


# a side of the picture: "on the left", "at the top", "to the right side", "in the bottom half", "above" at the end
# of a clause; not "on the left of X" (a relation), but "on the left of the image" is a side
_SIDE_RE = re.compile(r"\b(?:(?:on|at|to|in|towards?) (?:the )?(?:far |very )?(left|right|top|bottom)(?:[- ]hand)?"
                      r"(?: side| part| half| edge| corner)?"
                      r"(?!(?: side| part| half| edge| corner)? of (?!the (?:image|picture|frame|scene|canvas|photo)))"
                      r"|on (top)(?! of)|(above|below|underneath|beneath)(?=\s*(?:[,.;]|and\b|while\b|$)))\b")
_SIDES = {"left": (0, -1), "right": (0, 1), "top": (1, -1), "above": (1, -1), "bottom": (1, 1), "below": (1, 1),
          "underneath": (1, 1), "beneath": (1, 1)}  # side -> (axis, which end: -1 the low coordinate)
_LEAD = re.compile(r"[\s,:;]*(?:(?:and|while|with|then)\s+)?(?:(?:there|here)\s+)?(?:(?:is|are|sits|sit|stands|stand|"
                   r"lies|lie)\s+)?")
_FRAME = {"image", "picture", "frame", "scene", "canvas", "photo"}
_SIDE_WORDS = {"left", "right", "top", "bottom", "side", "half", "part", "edge", "corner", "hand"}


def _sides(text: str) -> Relation | None:
    """Two noun phrases, each given a side of the picture: the first is the subject."""
    found = []  # (noun span, side, where the next phrase starts)
    for m in _SIDE_RE.finditer(text):
        side = next(g for g in m.groups() if g)
        before = found[-1][2] if found else 0
        noun = _head(text, before, m.start())
        end = m.end()
        if noun is None or text[slice(*noun)] in _SIDE_WORDS:  # "on the left is a circle": the noun follows
            start = _LEAD.match(text, m.end()).end()
            stop = _PHRASE_END.search(text, start)
            noun = _head(text, start, stop.start() if stop else len(text))
            end = stop.start() if stop else len(text)
        if noun is None:
            return None
        found.append((noun, side, end))
        if len(found) == 2:
            break
    if len(found) < 2:
        return None
    (subj, s1, _), (obj, s2, _) = found
    (axis1, end1), (axis2, end2) = _SIDES[s1], _SIDES[s2]
    if axis1 != axis2 or end1 == end2:
        return None
    return Relation(subj, obj, axis1, 1 if end1 < end2 else -1)


def relation_target(rel: Relation, offsets: list[tuple[int, int]]) -> LayoutTarget | None:
    """Map the relation's character spans to token positions, given each token's character span in the same
    text (special and padding tokens: empty spans). None when a noun was cut off by the encoder's window."""
    def tokens(span):
        return tuple(i for i, (a, b) in enumerate(offsets) if b > a and a < span[1] and b > span[0])
    s, o = tokens(rel.subject), tokens(rel.object)
    if not (s and o):
        return None
    if rel.same:  # one word twice: both nouns' tokens, whose maps show where that shape is drawn
        both = tuple(sorted(set(s + o)))
        return LayoutTarget(both, both, rel.axis, rel.sign, spread=True)
    return LayoutTarget(s, o, rel.axis, rel.sign)
