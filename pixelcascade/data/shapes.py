"""The shapes world (../shared/specs/shapes-world.md): scenes, an anti-aliased renderer, prompts, captions.

A ``Scene`` is a list of ``Obj`` (shape, colour, integer diameter, integer top-left corner) on a grey
canvas, plus the prompt that describes it. ``benchmark_prompts`` gives the exact templates of the
benchmark; ``training_caption`` gives varied wording of the same content for training.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from dataclasses import dataclass, field

import numpy as np

from ..config import DataConfig

BACKGROUND = (128, 128, 128)
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220),
    "yellow": (235, 210, 30), "purple": (150, 40, 190), "cyan": (30, 200, 210),
}
COLORS = tuple(PALETTE)
# colours outside the benchmark: never in the shapes world's training data or suite, for teaching a model a new
# concept (a LoRA study: scripts/lora_concept.py). Rendered and scored like the palette's; the benchmark's
# prompts and scores do not change (a prompt is scored against the palette plus the colours it names).
CONCEPT_COLORS: dict[str, tuple[int, int, int]] = {"orange": (245, 130, 20)}
COLOR_RGB = {**PALETTE, **CONCEPT_COLORS}
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("left of", "right of", "above", "below")
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr", "composite")
GENEVAL_TASKS = TASKS[:6]
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    d: int  # diameter (px)
    x: int  # top-left corner (px)
    y: int

    @property
    def cx(self) -> float:
        return self.x + self.d / 2

    @property
    def cy(self) -> float:
        return self.y + self.d / 2


@dataclass(frozen=True)
class Prompt:
    """A benchmark prompt: its text, task and the include / exclude groups the scorer checks."""

    text: str
    task: str
    include: tuple  # of Group
    exclude: tuple = ()
    english: str | None = None  # the English template, for translated prompts (data/shapes_i18n.py)

    @property
    def unseen(self) -> bool:
        return is_unseen_text(self.english or self.text)


@dataclass(frozen=True)
class Group:
    shape: str
    count: int
    color: str | None = None
    relation: tuple[str, int] | None = None  # (relation, index of the target include group)


@dataclass
class Scene:
    prompt: Prompt
    objects: list[Obj] = field(default_factory=list)


def max_objects(size: int) -> int:
    return 4 if size <= 32 else 5


def diameter(size: int, n_objects: int) -> int:
    """d = max(8, round(2 H f)), f = 0.11 (<= 2 objects), 0.09 (3-4), 0.08 (5)."""
    f = 0.11 if n_objects <= 2 else 0.09 if n_objects <= 4 else 0.08
    return max(8, round(2 * size * f))


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


_VERTICAL = ("above", "below", "over", "under", "beneath", "on top of")


def is_unseen_text(text: str) -> bool:
    """The held-out split: purple triangles, and cyan objects in an 'above' relation.

    "x below y" shows y above x, so every vertical relation that involves a cyan object is held out.
    """
    t = text.lower()
    return ("purple triangle" in t) or ("cyan" in t and any(w in t for w in _VERTICAL))


# --------------------------------------------------------------------------------------------------
# benchmark prompts (the plain templates)


def _noun(shape: str, n: int) -> str:
    return shape if n == 1 else shape + "s"


def _count_word(n: int) -> str:
    return "a" if n == 1 else NUMBERS[n]


def all_prompts(task: str, size: int = 32, colors: tuple[str, ...] = COLORS, count_to: int = 0) -> list[Prompt]:
    """Every distinct benchmark prompt of a task at canvas ``size`` (deterministic order); ``colors``: the colour
    words of the colour tasks (the palette's; add CONCEPT_COLORS for a concept's prompts); ``count_to``: the largest
    count of the counting task (0: the spec's, :func:`max_objects`)."""
    out = []
    if task == "single_object":
        out = [Prompt(f"{article(s)} {s}", task, (Group(s, 1),)) for s in SHAPES]
    elif task == "two_object":
        out = [Prompt(f"{article(a)} {a} and {article(b)} {b}", task, (Group(a, 1), Group(b, 1)))
               for a, b in itertools.permutations(SHAPES, 2)]
    elif task == "counting":
        out = [Prompt(f"{NUMBERS[n]} {s}s", task, (Group(s, n),), (Group(s, n + 1),))
               for s in SHAPES for n in range(2, (count_to or max_objects(size)) + 1)]
    elif task == "colors":
        out = [Prompt(f"{article(c)} {c} {s}", task, (Group(s, 1, c),)) for c in colors for s in SHAPES]
    elif task == "position":
        out = [Prompt(f"{article(a)} {a} {r} {article(b)} {b}", task, (Group(b, 1), Group(a, 1, None, (r, 0))))
               for a, b in itertools.product(SHAPES, SHAPES) for r in RELATIONS]
    elif task == "color_attr":
        out = [Prompt(f"{article(c1)} {c1} {a} and {article(c2)} {c2} {b}", task, (Group(a, 1, c1), Group(b, 1, c2)))
               for a, b in itertools.permutations(SHAPES, 2) for c1, c2 in itertools.permutations(colors, 2)]
    elif task == "composite":
        for n in (1, 2, 3):
            for a, b in itertools.product(SHAPES, SHAPES):
                for c1, c2 in itertools.product(colors, colors):
                    if a == b and c1 == c2:
                        continue
                    for r in RELATIONS:
                        text = f"{_count_word(n)} {c1} {_noun(a, n)} {r} {article(c2)} {c2} {b}"
                        out.append(Prompt(text, task, (Group(b, 1, c2), Group(a, n, c1, (r, 0))),
                                          (Group(a, n + 1, c1),)))
    else:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    return out


def benchmark_prompts(size: int = 32, per_task: int = 64, seed: int = 0) -> list[Prompt]:
    """The evaluation suite's prompts: ``per_task`` of each task (all where fewer), fixed by ``seed``."""
    rng = random.Random(seed)
    out = []
    for task in TASKS:
        ps = all_prompts(task, size)
        out += ps if len(ps) <= per_task else rng.sample(ps, per_task)
    return out


# --------------------------------------------------------------------------------------------------
# scenes


def _place(rng: random.Random, size: int, d: int, placed: list[Obj], shape: str, color: str,
           rel: tuple[str, Obj] | None = None, tries: int = 200, side: str | None = None) -> Obj | None:
    """Rejection-sample a free spot; ``side`` keeps a relation's target on the half that leaves room."""
    r, span = d / 2, size - d
    for _ in range(tries):
        x, y = rng.randint(0, span), rng.randint(0, span)
        if side == "left of":  # the others go left of this one: keep it in the right third
            x = rng.randint(2 * span // 3, span)
        elif side == "right of":
            x = rng.randint(0, span // 3)
        elif side == "above":
            y = rng.randint(2 * span // 3, span)
        elif side == "below":
            y = rng.randint(0, span // 3)
        if rel is not None and rng.random() < 0.9:  # sample inside the relation's half-plane directly
            relation, target = rel
            tx, ty = target.x, target.y
            lo_hi = {"left of": (0, tx - math.floor(2.2 * r) - 1), "right of": (tx + math.floor(2.2 * r) + 1, span),
                     "above": (0, ty - math.floor(2.2 * r) - 1), "below": (ty + math.floor(2.2 * r) + 1, span)}
            lo, hi = lo_hi[relation]
            if lo > hi:
                return None
            if relation in ("left of", "right of"):
                x = rng.randint(lo, hi)
            else:
                y = rng.randint(lo, hi)
        cx, cy = x + r, y + r
        if any(math.hypot(cx - o.cx, cy - o.cy) < 3 * r + 2 for o in placed):
            continue
        if rel is not None:
            relation, target = rel
            dx, dy = cx - target.cx, cy - target.cy
            main, perp = {"left of": (-dx, dy), "right of": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[relation]
            if not (main > 2.2 * r and abs(perp) < main):
                continue
        return Obj(shape, color, d, x, y)
    return None


def scene_for_prompt(prompt: Prompt, size: int, rng: random.Random, colors: dict | None = None,
                     allow_unseen: bool = True, attempts: int = 1000) -> Scene | None:
    """Render-ready objects satisfying ``prompt`` (colours not fixed by the prompt drawn at random).

    The target group of a relation is placed first. Returns None if placement keeps failing.
    """
    n_total = sum(g.count for g in prompt.include)
    d = diameter(size, n_total)
    target_side = {g.relation[1]: g.relation[0] for g in prompt.include if g.relation}
    for _ in range(attempts):
        placed: list[Obj] = []
        by_group: list[list[Obj]] = []
        ok = True
        vertical = any(g.relation and g.relation[0] in ("above", "below") for g in prompt.include)
        for g in prompt.include:
            objs = []
            color = g.color or _free_color(rng, g.shape, allow_unseen, no_cyan=vertical)
            for _k in range(g.count):
                rel = (g.relation[0], by_group[g.relation[1]][0]) if g.relation else None
                side = target_side.get(len(by_group)) if rng.random() < 0.8 else None
                o = _place(rng, size, d, placed, g.shape, color, rel, side=side)
                if o is None:
                    ok = False
                    break
                placed.append(o)
                objs.append(o)
            if not ok:
                break
            by_group.append(objs)
        if ok:
            return Scene(prompt, placed)
    return None


def _free_color(rng: random.Random, shape: str, allow_unseen: bool, no_cyan: bool = False) -> str:
    while True:
        c = rng.choice(COLORS)
        if allow_unseen or not ((c == "purple" and shape == "triangle") or (no_cyan and c == "cyan")):
            return c


# --------------------------------------------------------------------------------------------------
# rendering


def _mask(shape: str, d: int, ss: int = SUPERSAMPLE) -> np.ndarray:
    """Coverage in [0, 1] of a shape inscribed in a d x d box, 4x supersampled. [d, d] float32."""
    n = d * ss
    c = (np.arange(n) + 0.5) / ss  # sub-pixel centres in pixel units
    yy, xx = np.meshgrid(c, c, indexing="ij")
    if shape == "circle":
        inside = (xx - d / 2) ** 2 + (yy - d / 2) ** 2 <= (d / 2) ** 2
    elif shape == "square":
        inside = np.ones((n, n), bool)
    elif shape == "triangle":  # isosceles, apex up: half-width grows linearly from 0 at the top to d/2
        inside = np.abs(xx - d / 2) <= (yy / d) * (d / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return inside.reshape(d, ss, d, ss).mean(axis=(1, 3)).astype(np.float32)


_MASKS: dict[tuple[str, int], np.ndarray] = {}


def render(objects: list[Obj], size: int) -> np.ndarray:
    """uint8 [size, size, 3]: objects composited over the grey background by coverage."""
    img = np.empty((size, size, 3), np.float32)
    img[:] = BACKGROUND
    for o in objects:
        key = (o.shape, o.d)
        if key not in _MASKS:
            _MASKS[key] = _mask(o.shape, o.d)
        m = _MASKS[key][..., None]
        region = img[o.y:o.y + o.d, o.x:o.x + o.d]
        region[:] = region * (1 - m) + np.array(COLOR_RGB[o.color], np.float32) * m
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# training data: scenes with varied captions


_REL_WORDS = {"left of": ["left of", "to the left of", "on the left of"],
              "right of": ["right of", "to the right of", "on the right of"],
              "above": ["above", "over", "on top of"], "below": ["below", "under", "beneath"]}
_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _phrase(rng: random.Random, shape: str, n: int, color: str | None) -> str:
    c = f"{color} " if color else ""
    if n == 1:
        first = c or shape
        return rng.choice([f"{article(first)} {c}{shape}", f"one {c}{shape}", f"a single {c}{shape}"]) \
            if rng.random() < 0.3 else f"{article(first)} {c}{shape}"
    num = NUMBERS[n] if rng.random() < 0.85 else str(n)
    return f"{num} {c}{shape}s"


TEMPLATE_SHARE = DataConfig.template_share  # the share of training captions that are the plain benchmark template


def training_caption(scene: Scene, rng: random.Random, template_share: float = TEMPLATE_SHARE) -> str:
    """Varied wording of a scene's content: optional colours, synonyms, swapped order, inverse relations;
    the plain template (as in the benchmark) with probability ``template_share``."""
    p = scene.prompt
    if rng.random() < template_share:
        return p.text
    groups = list(p.include)
    # colour words for groups whose colour the prompt leaves free (what the image shows), sometimes
    colors = []
    for g in groups:
        objs = [o for o in scene.objects if o.shape == g.shape and (g.color is None or o.color == g.color)]
        shown = objs[0].color if objs else None
        colors.append(g.color or (shown if rng.random() < 0.5 else None))
    rel_group = next((i for i, g in enumerate(groups) if g.relation), None)
    if rel_group is not None:
        g, tgt = groups[rel_group], groups[rel_group].relation[1]
        rel = g.relation[0]
        a = _phrase(rng, g.shape, g.count, colors[rel_group])
        b = _phrase(rng, groups[tgt].shape, 1, colors[tgt])
        if rng.random() < 0.35 and g.count == 1:  # inverse: "b right of a" == "a left of b"
            text = f"{b} {rng.choice(_REL_WORDS[_INVERSE[rel]])} {a}"
        else:
            text = f"{a} {rng.choice(_REL_WORDS[rel])} {b}"
    else:
        parts = [_phrase(rng, g.shape, g.count, c) for g, c in zip(groups, colors)]
        if len(parts) > 1 and rng.random() < 0.5:
            parts = parts[::-1]
        text = " and ".join(parts)
    if rng.random() < 0.1:
        text = rng.choice(["an image of ", "a picture of ", ""]) + text + rng.choice([" on a grey background", ""])
    return text


TASK_WEIGHTS = {"single_object": 1.0, "two_object": 1.0, "counting": 1.5, "colors": 1.0, "position": 1.5,
                "color_attr": 1.5, "composite": 1.5}


def parse_task_weights(spec: str) -> dict[str, float]:
    """``"position=4,composite=2"`` -> TASK_WEIGHTS with those tasks re-weighted ("" -> TASK_WEIGHTS)."""
    weights = dict(TASK_WEIGHTS)
    for item in filter(None, (x.strip() for x in spec.split(","))):
        task, _, value = item.partition("=")
        task = task.strip()
        if task not in weights:
            raise ValueError(f"data.task_weights: unknown task {task!r}; known: {', '.join(weights)}")
        try:
            weights[task] = float(value)
        except ValueError:
            raise ValueError(f"data.task_weights: {item!r} is not task=number (e.g. position=4)") from None
        if weights[task] < 0:
            raise ValueError(f"data.task_weights: {item!r} is negative")
    if not sum(weights.values()) > 0:
        raise ValueError("data.task_weights: every task has weight 0")
    return weights


def training_scene(rng: random.Random, size: int, weights: dict | None = None,
                   template_share: float = TEMPLATE_SHARE, count_to: int = 0) -> tuple[Scene, str]:
    """One training example: a random task's prompt (never from the held-out split), its scene, a caption;
    ``count_to`` as in :func:`all_prompts`."""
    weights = weights or TASK_WEIGHTS
    tasks = list(weights)
    while True:
        task = rng.choices(tasks, [weights[t] for t in tasks])[0]
        key = (task, size, count_to)
        if key not in _PROMPT_CACHE:
            _PROMPT_CACHE[key] = all_prompts(task, size, count_to=count_to)
        prompt = rng.choice(_PROMPT_CACHE[key])
        if prompt.unseen:
            continue
        scene = scene_for_prompt(prompt, size, rng, allow_unseen=False)
        if scene is None:
            continue
        caption = training_caption(scene, rng, template_share)
        if is_unseen_text(caption):
            continue
        return scene, caption


_PROMPT_CACHE: dict = {}


def rescale_objects(objects: list[Obj], size: int, new_size: int) -> list[Obj]:
    """The same scene in the ``new_size`` world: centres scaled, each diameter the world's own
    (:func:`diameter` for that many objects), corners snapped to whole pixels inside the canvas."""
    d = diameter(new_size, len(objects))
    f = new_size / size
    out = []
    for o in objects:
        cx, cy = (o.x + o.d / 2) * f, (o.y + o.d / 2) * f
        x = min(max(round(cx - d / 2), 0), new_size - d)
        y = min(max(round(cy - d / 2), 0), new_size - d)
        out.append(dataclasses.replace(o, x=x, y=y, d=d))
    return out


def make_dataset(n: int, size: int = 32, seed: int = 0, progress: bool = False,
                 weights: dict | None = None, low_res_size: int | None = None,
                 template_share: float = TEMPLATE_SHARE, count_to: int = 0):
    """``n`` rendered training images (uint8 [n, size, size, 3]) and their captions, fully determined by seed
    (and ``weights``, the task mix, TASK_WEIGHTS by default; and ``template_share``, see :func:`training_caption`).
    With ``low_res_size``, also each scene rendered in that world (:func:`rescale_objects`): (images, captions,
    low-res images); the first two are unchanged. ``count_to``: the largest count in counting scenes (0: the spec's;
    5 at 32 px draws the five objects the 64-px suite asks for, at the spec's 8-px floor)."""
    rng = random.Random(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    low = np.empty((n, low_res_size, low_res_size, 3), np.uint8) if low_res_size else None
    captions = []
    it = range(n)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc=f"rendering shapes {size}px", unit="img")
    for i in it:
        scene, cap = training_scene(rng, size, weights, template_share, count_to)
        images[i] = render(scene.objects, size)
        if low is not None:
            low[i] = render(rescale_objects(scene.objects, size, low_res_size), low_res_size)
        captions.append(cap)
    return (images, captions) if low is None else (images, captions, low)
