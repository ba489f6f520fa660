"""The shapes-world scorer: classical computer vision, no neural judge (specs/shapes-world.md).

1. nearest-colour labelling (background + palette; > 90 RGB distance from all: unknown), kept where >= 2 of
   the 4 neighbours agree; 2. per-colour 4-connected components above a size floor; 3. shape from the
   bounding box (upper-half mass share, corner occupancy); 4. GenEval's relation rule on box centres;
5. include / exclude groups as GenEval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..data.shapes import BACKGROUND, COLOR_RGB, COLORS, GENEVAL_TASKS, Prompt, diameter

UNKNOWN = -1
POSITION_THRESHOLD = 0.1  # GenEval


@dataclass(frozen=True)
class Detection:
    shape: str  # circle / square / triangle / unknown
    color: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    area: int


def label_pixels(img: np.ndarray, colors: tuple[str, ...] = COLORS) -> np.ndarray:
    """[H, W] labels: 0 background, i + 1 for colour ``colors[i]``, -1 unknown; majority-of-neighbours filtered."""
    centres = np.array([BACKGROUND] + [COLOR_RGB[c] for c in colors], np.float32)  # [1 + colours, 3]
    px = img.astype(np.float32)[..., None, :]  # [H, W, 1, 3]
    dist = np.linalg.norm(px - centres, axis=-1)  # [H, W, 1 + colours]
    lab = dist.argmin(-1)
    lab[dist.min(-1) > 90] = UNKNOWN
    pad = np.pad(lab, 1, mode="edge")
    same = ((pad[:-2, 1:-1] == lab).astype(np.int8) + (pad[2:, 1:-1] == lab) + (pad[1:-1, :-2] == lab)
            + (pad[1:-1, 2:] == lab))
    lab = lab.copy()
    lab[same < 2] = UNKNOWN
    return lab


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, as arrays of (y, x) pixel coordinates."""
    h, w = mask.shape
    seen = np.zeros_like(mask)
    comps = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, pix = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            pix.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        comps.append(np.array(pix))
    return comps


def classify_shape(pix: np.ndarray) -> tuple[str, tuple[int, int, int, int]]:
    """Shape of one component from scale-free features of its bounding box."""
    y0, x0 = pix.min(0)
    y1, x1 = pix.max(0) + 1
    h, w = y1 - y0, x1 - x0
    m = np.zeros((h, w), np.float32)
    m[pix[:, 0] - y0, pix[:, 1] - x0] = 1
    box = (int(x0), int(y0), int(x1), int(y1))
    aspect, fill = w / h, m.mean()
    if not 0.5 < aspect < 2 or fill < 0.35:
        return "unknown", box
    rows = m.sum(1)  # mass per row
    half = h / 2
    upper = rows[: int(math.floor(half))].sum() + (rows[int(half)] * 0.5 if h % 2 else 0.0)
    if upper / rows.sum() < 0.40:
        return "triangle", box
    bh, bw = max(1, round(h / 4)), max(1, round(w / 4))
    corners = [m[:bh, :bw], m[:bh, -bw:], m[-bh:, :bw], m[-bh:, -bw:]]
    return ("square" if float(np.mean([c.mean() for c in corners])) >= 0.6 else "circle"), box


def detect(img: np.ndarray, min_area: float = 4, colors: tuple[str, ...] = COLORS) -> list[Detection]:
    """All coloured objects in an RGB uint8 image (``colors``: the colours told apart; the palette's)."""
    lab = label_pixels(img, colors)
    out = []
    for ci, color in enumerate(colors, start=1):
        for pix in _components(lab == ci):
            if len(pix) < max(4, min_area):
                continue
            shape, box = classify_shape(pix)
            out.append(Detection(shape, color, box, len(pix)))
    return out


def relative_position(a: Detection, b: Detection) -> set[str]:
    """GenEval: relations of a relative to b from box centres, offsets shrunk by 0.1 x the summed sizes."""
    ca = np.array([(a.box[0] + a.box[2]) / 2, (a.box[1] + a.box[3]) / 2])
    cb = np.array([(b.box[0] + b.box[2]) / 2, (b.box[1] + b.box[3]) / 2])
    dim = np.array([a.box[2] - a.box[0] + b.box[2] - b.box[0], a.box[3] - a.box[1] + b.box[3] - b.box[1]])
    off = ca - cb
    rev = np.maximum(np.abs(off) - POSITION_THRESHOLD * dim, 0) * np.sign(off)
    if not rev.any():
        return set()
    dx, dy = rev / np.linalg.norm(rev)
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def _min_object_area(prompt: Prompt, size: int) -> float:
    d = diameter(size, sum(g.count for g in prompt.include))
    areas = {"circle": math.pi * d * d / 4, "square": d * d, "triangle": d * d / 2}
    return min(areas[g.shape] for g in prompt.include)


def _groups(img: np.ndarray, prompt: Prompt) -> tuple[list, bool]:
    """Detections matching each include group, and whether the objects are right: every include group found
    often enough and no exclude group present."""
    named = tuple(dict.fromkeys(g.color for g in prompt.include + prompt.exclude if g.color not in (None, *COLORS)))
    dets = detect(img, min_area=_min_object_area(prompt, img.shape[0]) / 4, colors=COLORS + named)

    def match(g):
        return [d for d in dets if d.shape == g.shape and (g.color is None or d.color == g.color)]
    groups = [match(g) for g in prompt.include]
    ok = all(len(found) >= g.count for g, found in zip(prompt.include, groups))
    return groups, ok and not any(len(match(g)) >= g.count for g in prompt.exclude)


def _related(found: list, targets: list, rel: str, count: int) -> bool:
    """``count`` objects of ``found`` stand in ``rel`` to one object of ``targets`` (any of them may serve as
    the target: both groups may share a shape and colour)."""
    return any(sum(1 for d in found if d is not t and rel in relative_position(d, t)) >= count for t in targets)


def score_image(img: np.ndarray, prompt: Prompt) -> bool:
    """Does the image satisfy the prompt? (every include group found with its relation; no exclude group)."""
    groups, ok = _groups(img, prompt)
    return ok and all(_related(found, groups[g.relation[1]], g.relation[0], g.count)
                      for g, found in zip(prompt.include, groups) if g.relation is not None)


_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def relation_outcome(img: np.ndarray, prompt: Prompt) -> str | None:
    """Why a relation prompt passed or failed: "pass" (exactly when ``score_image`` passes); "objects" (the
    objects asked for are not all there, or an excluded one is); "swapped" (they are, in the opposite
    relation: the model mixed up who goes where); "misplaced" (they are, but in neither). None for prompts
    without a relation."""
    related = [(g, i) for i, g in enumerate(prompt.include) if g.relation is not None]
    if not related:
        return None
    groups, ok = _groups(img, prompt)
    if not ok:
        return "objects"
    if all(_related(groups[i], groups[g.relation[1]], g.relation[0], g.count) for g, i in related):
        return "pass"
    if any(_related(groups[i], groups[g.relation[1]], _OPPOSITE[g.relation[0]], g.count) for g, i in related):
        return "swapped"
    return "misplaced"


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion."""
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarize(results: list[tuple[Prompt, bool]]) -> dict:
    """Per-task accuracy with 95% intervals, seen / unseen apart; overall = mean of the six GenEval tasks."""
    out: dict = {}
    for split in ("all", "seen", "unseen"):
        rows = {}
        for task in sorted({p.task for p, _ in results}):
            xs = [ok for p, ok in results if p.task == task and
                  (split == "all" or (split == "unseen") == p.unseen)]
            if xs:
                k, n = sum(xs), len(xs)
                rows[task] = {"accuracy": k / n, "n": n, "ci95": wilson_interval(k, n)}
        tasks = [t for t in GENEVAL_TASKS if t in rows]
        if tasks:
            rows["overall"] = {"accuracy": float(np.mean([rows[t]["accuracy"] for t in tasks])),
                               "n": sum(rows[t]["n"] for t in tasks), "tasks": tasks}
        out[split] = rows
    return out
