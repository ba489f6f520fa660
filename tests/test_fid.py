"""FID / KID: equal to clean-fid (run on the same files and extractor) and to torchmetrics; analytic oracles."""

import json
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from pixelcascade.eval.fid import Stats, compute_stats, fid_kid, folder_features, frechet_distance, kernel_distance
from pixelcascade.features.base import FIDError, clean_resize
from pixelcascade.features.inception import RandomConvExtractor


def _stub_torchvision(monkeypatch):
    """clean-fid imports torchvision only for ToTensor; torchvision cannot be installed beside our torch."""
    tv = types.ModuleType("torchvision")
    tr = types.ModuleType("torchvision.transforms")

    class ToTensor:
        def __call__(self, a):
            t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)
            return t.float() / 255 if t.dtype == torch.uint8 else t

    tr.ToTensor = ToTensor
    tv.transforms = tr
    # cleanfid.inception_pytorch subclasses torchvision's Inception blocks at import (a path we never use)
    models = types.ModuleType("torchvision.models")
    models.inception = types.SimpleNamespace(**{k: torch.nn.Module for k in ("InceptionA", "InceptionC",
                                                                              "InceptionE", "Inception3")})
    tv.models = models
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.transforms", tr)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    for name in [m for m in sys.modules if m.startswith("cleanfid")]:
        monkeypatch.delitem(sys.modules, name)


def _folder(path, n, seed, tint):
    path.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = np.clip(rng.normal(128 + tint, 40, (24 + (i % 3) * 4, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(path / f"{i:03d}.png")
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid")
    return _folder(root / "a", 40, 0, 0), _folder(root / "b", 36, 1, 30)


def test_fid_and_kid_equal_clean_fid(folders, monkeypatch):
    _stub_torchvision(monkeypatch)
    from cleanfid import fid as cfid
    a, b = folders
    ex = RandomConvExtractor(seed=3, dim=16)
    ours = fid_kid(a, b, ex, batch_size=8)
    theirs = cfid.compute_fid(str(a), str(b), mode="clean", custom_feat_extractor=ex, num_workers=0, batch_size=8,
                              device=torch.device("cpu"), verbose=False)
    assert ours["fid"] > 0.01
    assert abs(ours["fid"] - theirs) < 1e-3
    f1 = cfid.get_folder_features(str(a), ex, num_workers=0, batch_size=8, device=torch.device("cpu"),
                                  mode="clean", verbose=False)
    f2 = cfid.get_folder_features(str(b), ex, num_workers=0, batch_size=8, device=torch.device("cpu"),
                                  mode="clean", verbose=False)
    np.testing.assert_allclose(folder_features(a, ex, batch_size=8), f1, rtol=1e-5, atol=1e-6)
    np.random.seed(0)
    kid_theirs = cfid.kernel_distance(f1, f2)
    assert abs(ours["kid"] - kid_theirs) < 1e-6
    assert ours["kid"] > 0


def test_clean_resize_equals_clean_fid(monkeypatch):
    _stub_torchvision(monkeypatch)
    from cleanfid.resize import build_resizer
    img = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    np.testing.assert_array_equal(clean_resize(img), build_resizer("clean")(img))


def test_fid_matches_torchmetrics_on_same_features(folders):
    from torchmetrics.image.fid import FrechetInceptionDistance
    a, b = folders
    ex = RandomConvExtractor(seed=3, dim=16)
    tm = FrechetInceptionDistance(feature=ex, normalize=False)
    for folder, real in ((b, True), (a, False)):
        from pixelcascade.images import list_images, read_rgb
        x = torch.from_numpy(np.stack([clean_resize(read_rgb(p)) for p in list_images(folder)])).permute(0, 3, 1, 2)
        tm.update(x, real=real)
    ours = fid_kid(a, b, ex, kid=False)["fid"]
    assert abs(float(tm.compute()) - ours) < 1e-3 * max(1.0, ours)


def test_fid_oracles():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 8))
    s = Stats.from_features(x, "x")
    assert abs(frechet_distance(s.mu, s.sigma, s.mu, s.sigma)) < 1e-8  # FID(x, x) = 0
    # two Gaussians with diagonal covariances: ||mu||^2 + sum (sqrt(s1) - sqrt(s2))^2
    mu1, mu2, v1, v2 = np.zeros(3), np.array([1.0, 2.0, 0.0]), np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expect = 5.0 + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert abs(frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) - expect) < 1e-9
    # KID of a set with itself is ~0; of shifted sets clearly positive
    assert abs(kernel_distance(x, x, num_subsets=5, max_subset_size=200)) < 0.05
    assert kernel_distance(x, x + 1.0, num_subsets=5, max_subset_size=200) > 0.5


def test_stats_roundtrip_and_errors(folders, tmp_path):
    a, b = folders
    ex = RandomConvExtractor(seed=1, dim=8)
    st = compute_stats(b, ex)
    path = st.save(tmp_path / "ref.npz")
    again = compute_stats(path, ex)
    np.testing.assert_array_equal(again.sigma, st.sigma)
    assert fid_kid(b, path, ex)["fid"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(FIDError, match="different|computed with"):
        compute_stats(path, RandomConvExtractor(seed=2, dim=8))
    with pytest.raises(FIDError, match="no such folder"):
        compute_stats(tmp_path / "nope", ex)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FIDError, match="holds no images"):
        compute_stats(tmp_path / "empty", ex)
    with pytest.raises(FIDError, match="Inception weights not found.*--inception"):
        from pixelcascade.features.inception import InceptionExtractor
        InceptionExtractor(tmp_path)


def test_pixelstats_ranks_real_blurred_and_noise_images_as_a_person_would(tmp_path):
    """The no-download feature space: two halves of one image set are close, blurring one half moves it away,
    noise lands far away (FID and KID agree), and the features are a fixed function of the pixels."""
    from PIL import ImageFilter

    from pixelcascade.data.shapes import make_dataset
    from pixelcascade.features.base import extract_features
    from pixelcascade.features.load import load_extractor
    ex = load_extractor("pixelstats")
    images, _ = make_dataset(800, 64, 0, progress=False)  # 400 a side: over twice the 180 features
    a, b = extract_features(list(images[:400]), ex), extract_features(list(images[400:]), ex)
    assert a.shape == (400, ex.dim) and ex.name == "pixelstats-v1"
    np.testing.assert_array_equal(extract_features(list(images[:400]), ex), a)
    blurred = extract_features([np.asarray(Image.fromarray(i).filter(ImageFilter.GaussianBlur(1.5)))
                                for i in images[400:]], ex)
    noise = extract_features(list(np.random.default_rng(0).integers(0, 256, (400, 64, 64, 3), dtype=np.uint8)), ex)

    def fid(x, y):
        return frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert fid(a, b) * 3 < fid(a, blurred) and fid(a, blurred) * 10 < fid(a, noise)
    kid = [kernel_distance(a, y, num_subsets=20, max_subset_size=100, seed=0) for y in (b, blurred, noise)]
    assert kid[0] < kid[1] < kid[2]


def test_fid_warns_for_random_features_and_few_images(folders, capsys):
    """`eval fid --features random` on a handful of images: the numbers come with two warnings (a random net
    measures little; too few images for the feature width), on stderr and in the JSON."""
    from pixelcascade.cli import main
    a, b = folders
    assert main(["eval", "fid", str(a), str(b), "--features", "random", "-q"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert len(out["warnings"]) == 2 and "random network" in out["warnings"][0]
    assert "biased high" in out["warnings"][1] and captured.err.count("warning:") == 2
    assert main(["eval", "fid", str(a), str(b), "--features", "pixelstats", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["extractor"] == "pixelstats-v1" and len(out["warnings"]) == 1 and out["fid"] > 0
