"""CLIP score: a tiny random CLIP saved to disk gives torchmetrics' CLIPScore / 100 on the same inputs."""

import json

import numpy as np
import pytest
import torch

from pixelcascade.eval.clip_score import clip_score_folder
from pixelcascade.features.clip import CLIPScoreError, CLIPScorer


def _bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
    try:
        from transformers import CLIPImageProcessorPil as Proc
    except ImportError:
        from transformers import CLIPImageProcessor as Proc
    d = tmp_path_factory.mktemp("clip")
    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(vocab=str(d / "vocab.json"), merges=str(d / "merges.txt"))
    torch.manual_seed(17)  # a seed whose mean cosine on the test inputs is positive (torchmetrics clamps at 0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    CLIPModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    Proc(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d)
    return d


def _images(n):
    return [np.random.default_rng(i).integers(0, 256, (40 + 8 * (i % 2), 48, 3), dtype=np.uint8) for i in range(n)]


def test_clip_score_equals_torchmetrics(tiny_clip):
    from torchmetrics.multimodal.clip_score import CLIPScore
    ours = CLIPScorer(tiny_clip)
    imgs = _images(5)
    caps = ["a red circle", "two blue squares", "a cat", "a triangle above a square", "x" * 300]
    per_image = ours.scores(imgs, caps, batch_size=2)

    class _Adapter(torch.nn.Module):  # torchmetrics expects tensors from get_*_features (transformers < 5)
        def __init__(self, m):
            super().__init__()
            self.m, self.config = m, m.config

        def get_image_features(self, *a, **k):
            return CLIPScorer._features(self.m.get_image_features(*a, **k))

        def get_text_features(self, *a, **k):
            return CLIPScorer._features(self.m.get_text_features(*a, **k))

    class _Processor:  # torchmetrics' processor call, with truncation at 77 tokens as IF's protocol does
        def __call__(self, text=None, images=None, **kw):
            if images is not None:
                return ours.image_processor(images=[i.permute(1, 2, 0).numpy() for i in images], return_tensors="pt")
            return ours.tokenizer(text, padding=True, truncation=True, max_length=77, return_tensors="pt")

    tm = CLIPScore(model_name_or_path=lambda: (_Adapter(ours.model), _Processor()))
    tm.update([torch.from_numpy(i).permute(2, 0, 1) for i in imgs], caps)
    expect = float(tm.compute()) / 100
    assert per_image.mean() > 0.05  # else torchmetrics' clamp at 0 would hide a difference
    assert abs(float(per_image.mean()) - expect) < 1e-5
    assert len(set(np.round(per_image, 6))) == 5  # the captions and images really differ


def test_clip_score_folder_and_errors(tiny_clip, tmp_path):
    from PIL import Image
    ours = CLIPScorer(tiny_clip)
    for i, (img, cap) in enumerate(zip(_images(3), ["a", "b b", "c c c"])):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.json").write_text(json.dumps({"prompt": cap}))
    r = clip_score_folder(tmp_path, ours)
    assert r["n"] == 3 and -1 <= r["clip_score"] <= 1
    assert r["clip_score"] == pytest.approx(float(ours.scores(_images(3), ["a", "b b", "c c c"]).mean()), abs=1e-6)
    import contextlib
    import io

    from pixelcascade.cli import main  # the command prints the same report as JSON
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["eval", "clip", str(tmp_path), "--clip", str(tiny_clip), "-q"]) == 0
    assert json.loads(buf.getvalue())["clip_score"] == pytest.approx(r["clip_score"], abs=1e-6)
    with pytest.raises(CLIPScoreError, match="no CLIP model folder"):
        CLIPScorer(tmp_path)
