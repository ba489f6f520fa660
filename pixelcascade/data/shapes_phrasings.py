"""The shapes benchmark's relation prompts in the other ways people state a layout.

The benchmark says "two red circles left of a blue square"; people also write "there are two red circles on the
left and a blue square on the right", "a blue square with two red circles to its left", and more. Each phrasing
below rewrites a position or composite prompt's text and keeps its spec, so the scorer judges the same layout;
the accuracy per phrasing measures whether layout guidance (and the network) follows the wording.
"""

from __future__ import annotations

import dataclasses

from .shapes import RELATIONS, Prompt

# relation -> (the subject's side, the object's side)
_SIDES = {"left of": ("left", "right"), "right of": ("right", "left"), "above": ("top", "bottom"),
          "below": ("bottom", "top")}


def _on(side: str) -> str:
    return f"at the {side}" if side in ("top", "bottom") else f"on the {side}"


def _its(rel: str, subj: str) -> str:
    """"a blue square with two red circles to its left" / "a blue square has a red circle above it"."""
    if rel in ("left of", "right of"):
        return f"with {subj} to its {rel.split()[0]}"
    return f"has {subj} {rel} it"


PHRASINGS: dict[str, object] = {  # name -> (subject phrase, relation, object phrase) -> text
    "benchmark": lambda s, r, o: f"{s} {r} {o}",
    "to-the-side": lambda s, r, o: (f"{s} to the {r.split()[0]} of {o}" if r in ("left of", "right of")
                                    else f"{s} is directly {r} {o}"),
    "there-is": lambda s, r, o: f"there is {s} {_on(_SIDES[r][0])} and {o} {_on(_SIDES[r][1])}",
    "side-first": lambda s, r, o: f"{_on(_SIDES[r][0])} is {s}, {_on(_SIDES[r][1])} is {o}",
    "its-side": lambda s, r, o: f"{o} {_its(r, s)}",
    "object-first": lambda s, r, o: f"{o} {_on(_SIDES[r][1])} and {s} {_on(_SIDES[r][0])}",
    "of-the-picture": lambda s, r, o: f"{s} {_on(_SIDES[r][0])} of the picture, {o} {_on(_SIDES[r][1])}",
}


def rephrase(prompt: Prompt, phrasing: str) -> Prompt:
    """The prompt in another phrasing (prompts without a relation, and the "benchmark" phrasing, unchanged); the
    spec and the held-out flag stay the benchmark text's."""
    if phrasing not in PHRASINGS:
        raise ValueError(f"unknown phrasing {phrasing!r}; phrasings: {', '.join(PHRASINGS)}")
    rel = next((r for r in RELATIONS if f" {r} " in prompt.text), None)
    if rel is None or phrasing == "benchmark":
        return prompt
    subj, obj = prompt.text.split(f" {rel} ", 1)
    return dataclasses.replace(prompt, text=PHRASINGS[phrasing](subj, rel, obj), english=prompt.english or prompt.text)


def example(phrasing: str) -> str:
    """The phrasing applied to "a red circle left of a blue square" (for --help and docs)."""
    return PHRASINGS[phrasing]("a red circle", "left of", "a blue square")
