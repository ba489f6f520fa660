"""The shapes world: the spec's sanity figures for the scorer, the held-out split, the renderer."""

from __future__ import annotations

import random

import numpy as np
import pytest

from pixelcascade.data.shapes import (
    TASKS,
    all_prompts,
    benchmark_prompts,
    diameter,
    is_unseen_text,
    make_dataset,
    render,
    scene_for_prompt,
    training_scene,
)
from pixelcascade.eval.shapes_score import score_image, summarize, wilson_interval


def _suite(size):
    rng = random.Random(1)
    ps = benchmark_prompts(size, 64, 0)
    return ps, [render(scene_for_prompt(p, size, rng).objects, size) for p in ps]


@pytest.mark.parametrize("size", [32, 64])
def test_sanity_figures(size):
    ps, imgs = _suite(size)
    noise = np.random.default_rng(0)
    perfect = summarize([(p, score_image(im, p)) for p, im in zip(ps, imgs)])["all"]
    noisy = summarize([(p, score_image(np.clip(im + noise.normal(0, 16, im.shape), 0, 255).astype(np.uint8), p))
                       for p, im in zip(ps, imgs)])["all"]
    blank = summarize([(p, score_image(np.full_like(im, 128), p)) for p, im in zip(ps, imgs)])["all"]
    rng = random.Random(2)
    cross = summarize([(p, score_image(im, rng.choice([q for q in ps if q.task == p.task])))
                       for p, im in zip(ps, imgs)])["all"]
    assert all(v["accuracy"] == 1.0 for v in perfect.values())
    assert all(v["accuracy"] == 1.0 for v in noisy.values())
    assert all(v["accuracy"] == 0.0 for v in blank.values())
    assert 0.06 <= cross["overall"]["accuracy"] <= 0.22  # spec: "about 13%"


def test_geometry_and_prompts():
    assert diameter(32, 1) == 8 and diameter(64, 2) == 14 and diameter(64, 4) == 12 and diameter(64, 5) == 10
    assert all_prompts("counting", 32)[-1].text == "four triangles"
    assert all_prompts("counting", 64)[-1].text == "five triangles"
    assert [p.text for p in all_prompts("single_object")] == ["a circle", "a square", "a triangle"]
    assert {len(all_prompts(t)) for t in TASKS} >= {3, 6, 9}
    assert len(benchmark_prompts(32, 64, 0)) == 3 + 6 + 9 + 18 + 36 + 64 + 64


def test_render_colours_and_background():
    from pixelcascade.data.shapes import Obj
    img = render([Obj("square", "red", 8, 4, 4)], 32)
    assert tuple(img[0, 0]) == (128, 128, 128) and tuple(img[8, 8]) == (220, 30, 30)


def test_training_data_never_shows_the_held_out_split():
    rng = random.Random(0)
    for _ in range(1500):
        scene, caption = training_scene(rng, 32)
        assert not is_unseen_text(caption)
        assert not any(o.shape == "triangle" and o.color == "purple" for o in scene.objects)
        rel = [g.relation[0] for g in scene.prompt.include if g.relation]
        if rel and rel[0] in ("above", "below"):
            assert not any(o.color == "cyan" for o in scene.objects)


def test_unseen_split_is_reported_apart():
    ps = benchmark_prompts(32, 64, 0)
    assert any(p.unseen for p in ps) and any(not p.unseen for p in ps)
    s = summarize([(p, True) for p in ps])
    assert s["unseen"] and s["seen"]


def test_dataset_is_deterministic():
    a_img, a_cap = make_dataset(20, 32, seed=5)
    b_img, b_cap = make_dataset(20, 32, seed=5)
    assert np.array_equal(a_img, b_img) and a_cap == b_cap


def test_wilson_interval():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.490, abs=1e-3) and hi == pytest.approx(0.943, abs=1e-3)


def test_translated_prompts_keep_their_spec():
    from pixelcascade.data.shapes import TASKS, all_prompts
    from pixelcascade.data.shapes_i18n import translate
    for task in TASKS:
        for p in all_prompts(task)[:40]:
            for lang in ("de", "fr", "es"):
                t = translate(p, lang)
                assert t.include == p.include and t.exclude == p.exclude and t.unseen == p.unseen
                assert t.text != p.text and t.english == p.text
    pos = next(p for p in all_prompts("composite") if p.text == "two red squares left of a blue circle")
    assert translate(pos, "de").text == "zwei rote Quadrate links von einem blauen Kreis"
    assert translate(pos, "fr").text == "deux carrés rouges à gauche d'un cercle bleu"
    assert translate(pos, "es").text == "dos cuadrados rojos a la izquierda de un círculo azul"
    purple = next(p for p in all_prompts("colors") if p.text == "a purple triangle")
    assert translate(purple, "de").text == "ein lila Dreieck" and translate(purple, "de").unseen


def test_task_weights_change_the_training_mix():
    from pixelcascade.data.shapes import TASK_WEIGHTS, parse_task_weights
    assert parse_task_weights("") == TASK_WEIGHTS
    w = parse_task_weights("position=4, composite=0")
    assert w["position"] == 4 and w["composite"] == 0 and w["counting"] == TASK_WEIGHTS["counting"]
    for bad, msg in (("size=2", "unknown task"), ("position=x", "not task=number"), ("position=-1", "negative")):
        with pytest.raises(ValueError, match=msg):
            parse_task_weights(bad)
    only = {t: 0.0 for t in TASK_WEIGHTS} | {"position": 1.0}
    _, caps = make_dataset(40, 32, seed=3, weights=only)
    rel = ("left", "right", "above", "below", "over", "under", "beneath", "on top of")
    assert all(any(r in c for r in rel) for c in caps)  # every caption states a relation
    _, mixed = make_dataset(40, 32, seed=3)
    assert sum(any(r in c for r in rel) for c in mixed) < 30  # the default mix has far fewer


def test_template_share_sets_how_many_captions_are_the_benchmark_template():
    from pixelcascade.config import ConfigError, DataConfig
    from pixelcascade.data.shapes import TASKS, all_prompts
    from pixelcascade.data.worlds import _shapes_key
    templates = {p.text for t in TASKS for p in all_prompts(t, 32)}
    n = 400
    shares = {}
    for share in (0.0, 0.4, 1.0):
        _, caps = make_dataset(n, 32, seed=4, template_share=share)
        shares[share] = sum(c in templates for c in caps) / n
    assert shares[1.0] == 1.0
    assert shares[0.0] < 0.55  # some varied wordings equal a template ("a circle")
    assert abs(shares[0.4] - (0.4 + 0.6 * shares[0.0])) < 0.08
    default = make_dataset(30, 32, seed=4)
    assert default[1] == make_dataset(30, 32, seed=4, template_share=0.4)[1]  # the default is 0.4
    assert _shapes_key(DataConfig()) == "shapes32-n60000-seed0"  # cached data of the default keeps its name
    assert _shapes_key(DataConfig(template_share=0.9)).endswith("-t0.9")
    with pytest.raises(ConfigError, match="template_share"):
        DataConfig(template_share=1.5)


def test_count_to_five_draws_five_objects_at_32_px_and_the_scorer_counts_them():
    from pixelcascade.config import ConfigError, DataConfig
    from pixelcascade.data.worlds import _shapes_key
    only = {t: 0.0 for t in TASKS} | {"counting": 1.0}
    imgs, caps = make_dataset(60, 32, seed=5, weights=only, count_to=5)
    fives = [i for i, c in enumerate(caps) if c.startswith(("five ", "5 "))]
    assert 5 <= len(fives) <= 30  # one of the four counts (2..5) per shape
    spec = {p.text: p for p in all_prompts("counting", 32, count_to=5)}
    for i in fives:
        shape = caps[i].split()[-1][:-1]  # "five circles", "five red circles"
        assert score_image(imgs[i], spec[f"five {shape}s"])  # five at 32 px, and the scorer sees five
        assert not score_image(imgs[i], spec[f"four {shape}s"])  # four excludes five
    assert not any(c.startswith(("five", "5 ")) for c in make_dataset(60, 32, seed=5, weights=only)[1])  # spec: 4
    assert all_prompts("counting", 32)[-1].text == "four triangles"  # the benchmark's 32-px suite is unchanged
    assert _shapes_key(DataConfig(count_to=5)).endswith("-c5") and _shapes_key(DataConfig()).endswith("seed0")
    with pytest.raises(ConfigError, match="count_to=6"):
        DataConfig(count_to=6)


def test_relation_outcomes_say_why_a_relation_failed():
    from pixelcascade.data.shapes import Obj
    from pixelcascade.eval.shapes_score import relation_outcome
    p = next(q for q in all_prompts("position", 32) if q.text == "a circle left of a square")

    def img(*objs):
        return render([Obj(s, "red" if s == "circle" else "blue", 8, x, y) for s, x, y in objs], 32)
    assert relation_outcome(img(("circle", 2, 12), ("square", 22, 12)), p) == "pass"
    assert relation_outcome(img(("circle", 22, 12), ("square", 2, 12)), p) == "swapped"
    assert relation_outcome(img(("circle", 12, 2), ("square", 12, 22)), p) == "misplaced"
    assert relation_outcome(img(("circle", 2, 12)), p) == "objects"
    assert relation_outcome(img(("circle", 2, 12)), next(iter(all_prompts("single_object", 32)))) is None


def test_a_concept_colour_is_rendered_and_scored_apart_without_touching_the_benchmark():
    """Orange (data.shapes.CONCEPT_COLORS, the LoRA study's new colour) is never in the benchmark's prompts or
    training data; perfect orange renders pass their prompts, and red or yellow objects do not pass for it. The
    benchmark's prompts keep the spec's palette: there an orange object is 81 from yellow (within the spec's 90)
    and reads as yellow, 104 from red and reads as nothing."""
    from pixelcascade.data.shapes import COLORS, CONCEPT_COLORS, Obj
    assert "orange" in CONCEPT_COLORS and "orange" not in COLORS
    assert not any("orange" in p.text for p in benchmark_prompts(32, 64, 0))
    assert not any("orange" in training_scene(random.Random(i), 32)[1] for i in range(200))
    concept = [p for t in ("colors", "color_attr") for p in all_prompts(t, 32, colors=COLORS + ("orange",))
               if "orange" in p.text]
    assert len(concept) == 3 + 72
    rng = random.Random(0)
    for p in concept:
        scene = scene_for_prompt(p, 32, rng)
        img = render(scene.objects, 32)
        assert score_image(img, p), p.text
        noisy = np.clip(img + np.random.default_rng(0).normal(0, 16, img.shape), 0, 255).astype(np.uint8)
        assert score_image(noisy, p), p.text
    for shape in ("circle", "square"):
        orange = render([Obj(shape, "orange", 10, 10, 10)], 32)
        red, yellow = (render([Obj(shape, c, 10, 10, 10)], 32) for c in ("red", "yellow"))
        p_orange = next(p for p in concept if p.text == f"an orange {shape}")
        p_red = next(p for p in all_prompts("colors", 32) if p.text == f"a red {shape}")
        p_yellow = next(p for p in all_prompts("colors", 32) if p.text == f"a yellow {shape}")
        assert not score_image(red, p_orange) and not score_image(yellow, p_orange)
        assert not score_image(orange, p_red) and score_image(orange, p_yellow)
