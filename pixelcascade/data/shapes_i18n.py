"""The shapes benchmark in other languages: the same specs rendered through translated templates.

The scorer reads the spec, not the text, so the accuracy gap between English and another language measures
the text encoder alone (an English-only encoder such as MiniLM is expected to fail; T5 and multilingual
encoders should not). German, French and Spanish, with their articles, genders, adjective agreement and the
dative after a relation.
"""

from __future__ import annotations

import dataclasses

from .shapes import Prompt

LANGUAGES = ("en", "de", "fr", "es")

_DE_NOUN = {"circle": ("Kreis", "Kreise", "m"), "square": ("Quadrat", "Quadrate", "n"),
            "triangle": ("Dreieck", "Dreiecke", "n")}
_DE_COLOR = {"red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb", "purple": "lila", "cyan": "cyan"}
_DE_NUM = {2: "zwei", 3: "drei", 4: "vier", 5: "fünf"}
_DE_REL = {"left of": "links von", "right of": "rechts von", "above": "über", "below": "unter"}

_FR_NOUN = {"circle": "cercle", "square": "carré", "triangle": "triangle"}  # all masculine
_FR_COLOR = {"red": ("rouge", "rouges"), "green": ("vert", "verts"), "blue": ("bleu", "bleus"),
             "yellow": ("jaune", "jaunes"), "purple": ("violet", "violets"), "cyan": ("cyan", "cyan")}
_FR_NUM = {2: "deux", 3: "trois", 4: "quatre", 5: "cinq"}
_FR_REL = {"left of": "à gauche d'", "right of": "à droite d'", "above": "au-dessus d'", "below": "en dessous d'"}

_ES_NOUN = {"circle": ("círculo", "círculos"), "square": ("cuadrado", "cuadrados"),
            "triangle": ("triángulo", "triángulos")}  # all masculine
_ES_COLOR = {"red": ("rojo", "rojos"), "green": ("verde", "verdes"), "blue": ("azul", "azules"),
             "yellow": ("amarillo", "amarillos"), "purple": ("morado", "morados"), "cyan": ("cian", "cian")}
_ES_NUM = {2: "dos", 3: "tres", 4: "cuatro", 5: "cinco"}
_ES_REL = {"left of": "a la izquierda de", "right of": "a la derecha de", "above": "encima de", "below": "debajo de"}


def _de(g, case: str = "nom") -> str:
    sing, plur, gender = _DE_NOUN[g.shape]
    col = _DE_COLOR[g.color] if g.color else None
    inflect = col is not None and col not in ("lila", "cyan")
    if g.count == 1:
        art = {"nom": "ein", "dat": "einem"}[case]
        end = {"nom": "er" if gender == "m" else "es", "dat": "en"}[case]
        adj = f"{col}{end if inflect else ''} " if col else ""
        return f"{art} {adj}{sing}"
    adj = f"{col}{'e' if inflect else ''} " if col else ""
    noun = plur + ("n" if case == "dat" and not plur.endswith("n") else "")
    return f"{_DE_NUM[g.count]} {adj}{noun}"


def _fr(g) -> str:
    noun = _FR_NOUN[g.shape] + ("s" if g.count > 1 else "")
    col = f" {_FR_COLOR[g.color][g.count > 1]}" if g.color else ""
    num = "un" if g.count == 1 else _FR_NUM[g.count]
    return f"{num} {noun}{col}"


def _es(g) -> str:
    noun = _ES_NOUN[g.shape][g.count > 1]
    col = f" {_ES_COLOR[g.color][g.count > 1]}" if g.color else ""
    num = "un" if g.count == 1 else _ES_NUM[g.count]
    return f"{num} {noun}{col}"


def translate(prompt: Prompt, lang: str) -> Prompt:
    """The prompt's spec in ``lang``'s words (same include/exclude groups; ``english`` keeps the original)."""
    if lang == "en":
        return prompt
    if lang not in LANGUAGES:
        raise ValueError(f"language {lang!r}: choose one of {', '.join(LANGUAGES)}")
    groups = list(prompt.include)
    rel = next((g for g in groups if g.relation), None)
    if rel is not None:  # "A rel B": the related group is the subject, its target the object
        tgt = groups[rel.relation[1]]
        r = rel.relation[0]
        if lang == "de":
            text = f"{_de(rel)} {_DE_REL[r]} {_de(tgt, 'dat')}"
        elif lang == "fr":
            text = f"{_fr(rel)} {_FR_REL[r]}{_fr(tgt)}"
        else:
            text = f"{_es(rel)} {_ES_REL[r]} {_es(tgt)}"
    else:
        one = {"de": _de, "fr": _fr, "es": _es}[lang]
        joiner = {"de": " und ", "fr": " et ", "es": " y "}[lang]
        text = joiner.join(one(g) for g in groups)
    return dataclasses.replace(prompt, text=text, english=prompt.english or prompt.text)
