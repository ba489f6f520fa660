"""The emoji feature extractor: trains to tell pictures apart, retrieval finds the right name, FID(x, x) = 0."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixelcascade.eval.emoji import retrieval_accuracy
from pixelcascade.eval.fid import Stats, fid_from_stats
from pixelcascade.features.base import FIDError, extract_features
from pixelcascade.features.emoji import EmojiExtractor, augment
from pixelcascade.training.emoji_features import train_emoji_features


@pytest.fixture(scope="module")
def pictures():
    from pixelcascade.data.emoji import EmojiError, Renderer, emoji_entries
    try:
        r = Renderer(size=64)
    except EmojiError as e:
        pytest.skip(str(e))
    ents = [e for e in emoji_entries(False) if e["name"] in ("red heart", "blue heart", "grinning face", "cat face",
                                                             "rocket", "pizza", "sun", "thumbs up")]
    return np.stack([r.render(e["char"]) for e in ents]), [e["name"] for e in ents]


def test_extractor_learns_and_retrieves(pictures, tmp_path):
    imgs, names = pictures
    torch.set_num_threads(2)
    train_emoji_features(imgs, names, tmp_path / "f.safetensors", steps=120, batch_size=32, lr=3e-3, width=16,
                         progress=False)
    ex = EmojiExtractor(tmp_path / "f.safetensors")
    g = torch.Generator().manual_seed(1)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
    damaged = ((augment(x, g) + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    r = retrieval_accuracy(ex, damaged, names, imgs, [[n] for n in names])
    assert r["top1"] >= 0.75 and r["chance_top1"] == 1 / len(names)  # damaged copies find their own name
    wrong = retrieval_accuracy(ex, damaged, names[1:] + names[:1], imgs, [[n] for n in names])
    assert wrong["top1"] <= 0.25  # and not another one's
    f = extract_features(list(imgs), ex)
    assert f.shape == (len(imgs), ex.net.feature_dim)
    s = Stats.from_features(f, ex.name)
    assert abs(fid_from_stats(s, s)) < 1e-4  # (8 samples, 256-d: a singular covariance for sqrtm)


def test_extractor_file_errors(tmp_path):
    with pytest.raises(FIDError, match="data emoji-features"):
        EmojiExtractor(tmp_path / "none.safetensors")


def test_eval_emoji_without_a_shipped_extractor(tiny_model, tmp_path, monkeypatch, capsys):
    """With no --features and no extractor shipped, `eval emoji` says how to make one (before loading anything)."""
    from pixelcascade import cli
    from pixelcascade.cli import evaluate
    monkeypatch.setattr(evaluate, "EMOJI_FEATURES", tmp_path / "absent.safetensors")
    assert cli.main(["eval", "emoji", "--model", str(tiny_model), "--features", str(tmp_path / "absent.safetensors"),
                     "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no emoji feature extractor is shipped" in err[0] and "data emoji-features" in err[0]


@pytest.mark.slow
def test_eval_emoji_and_emoji_sweep_commands(tiny_model, tmp_path, monkeypatch, capsys):
    """The whole emoji evaluation from the command line (renders and curates the emoji set: ~1 minute)."""
    import json

    from pixelcascade.cli import main
    monkeypatch.setenv("PIXELCASCADE_CACHE", str(tmp_path / "cache"))
    feats = tmp_path / "f.safetensors"
    assert main(["data", "emoji-features", "-o", str(feats), "--steps", "20", "-q"]) == 0
    assert main(["eval", "emoji", "--model", str(tiny_model), "--features", str(feats), "--per-split", "4",
                 "--steps", "2", "-o", str(tmp_path / "ev"), "-q"]) == 0
    rep = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert rep["heldout"]["n"] == 4 and 0 <= rep["heldout"]["top1"] <= 1 and rep["num_real"] > 3500
    assert (tmp_path / "ev" / "contact_sheet_heldout.png").is_file()
    assert main(["eval", "sweep", "--metric", "emoji", "guidance=1,3", "--features", str(feats), "--model",
                 str(tiny_model), "--per-task", "2", "--steps", "2", "-o", str(tmp_path / "sw"), "-q"]) == 0
    assert len(json.loads((tmp_path / "sw" / "sweep.json").read_text())["points"]) == 2


def test_short_extractor_runs(tmp_path):
    """The shortest allowed run (10 steps: a smoke test) trains; fewer is refused with the minimum named."""
    imgs = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    r = train_emoji_features(imgs, ["a", "b", "c"], tmp_path / "f.safetensors", steps=10, batch_size=4, width=8,
                             progress=False)
    assert (tmp_path / "f.safetensors").is_file() and 0.0 <= r["train_acc_ema"] <= 1.0
    with pytest.raises(ValueError, match="at least 10 steps"):
        train_emoji_features(imgs, ["a", "b", "c"], tmp_path / "g.safetensors", steps=5, progress=False)
