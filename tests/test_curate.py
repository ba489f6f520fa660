"""Data formats, the emoji dataset, and curation: planted duplicates are all found, distinct emoji never merged,
corrupt images and truncated shards counted and skipped."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from pixelcascade.data.formats import ReadStats, Record, ShardWriter, read_records, write_folder, write_parquet

HARD = ["person in bed", "supervillain", "slightly frowning face", "slightly smiling face", "white medium square",
        "white large square", "white medium-small square", "Romania", "Chad", "red heart", "orange heart",
        "thumbs up", "woman supervillain", "man supervillain", "black medium square", "black large square"]


@pytest.fixture(scope="module")
def emoji128(tmp_path_factory):
    from pixelcascade.data.emoji import EmojiError, build_emoji_dataset
    out = tmp_path_factory.mktemp("emoji")
    try:
        rep = build_emoji_dataset(out / "all", size=128, progress=False, per_shard=500)
    except EmojiError as e:
        pytest.skip(str(e))
    return out / "all", rep


def test_emoji_dataset(emoji128):
    path, rep = emoji128
    assert rep["rendered"] > 3500 and rep["blank_dropped"] < 300 and rep["heldout"] > 100
    recs = {r.caption: r for r in read_records(path)}
    tone = recs["thumbs up medium skin tone"]  # skin-tone variants kept as their own emoji
    assert tone.meta["name_de"] == "daumen hoch mittlere hautfarbe" and recs["thumbs up"].meta["split"] in (
        "train", "heldout")
    assert "grinning" in recs["grinning face"].meta["aliases"]
    img = tone.decode()
    assert img.shape == (128, 128, 3) and (img < 250).any(axis=-1).mean() > 0.2  # something drawn, on white


def _jpeg(img, q=90):
    b = io.BytesIO()
    Image.fromarray(img).save(b, "JPEG", quality=q)
    return b.getvalue()


def _png(img, level=9):
    b = io.BytesIO()
    Image.fromarray(img).save(b, "PNG", compress_level=level)
    return b.getvalue()


def _shift(img, dx, dy):
    out = np.full_like(img, 255)
    h, w = img.shape[:2]
    src = img[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = src
    return out


@pytest.mark.parametrize("search", ["faiss", "numpy", "hnsw", "ivf"])
def test_planted_duplicates_found_without_false_merges(emoji128, tmp_path, monkeypatch, search):
    """Planted copies (exact, re-encoded, resized, shifted) are found and merged, and distinct emoji never are: with
    faiss's exact index, NumPy's exact search, and the approximate HNSW and IVF indexes used at scale."""
    from pixelcascade.data import curate as curate_mod
    from pixelcascade.data.curate import CurateConfig, curate, pixel_hash
    if search == "numpy":  # as on a machine without faiss
        monkeypatch.setattr(curate_mod, "_faiss", lambda: None)
    else:
        pytest.importorskip("faiss")
    path, _ = emoji128
    allrecs = list(read_records(path))
    rng = np.random.default_rng(0)
    hard = [r for r in allrecs if any(r.caption.startswith(h) for h in HARD)]
    rest = [allrecs[i] for i in rng.choice(len(allrecs), 300, replace=False)]
    originals, seen = [], set()
    for r in hard + rest:  # distinct emoji whose renders differ (some emoji share one picture: those are exact dups)
        h = pixel_hash(r.decode())
        if h not in seen and r.key not in {o.key for o in originals}:
            seen.add(h)
            originals.append(r)
    planted = {}
    kinds = [("exact", lambda im, raw: raw), ("png-reencoded", lambda im, raw: _png(im, 1)),
             ("jpeg90", lambda im, raw: _jpeg(im, 90)),
             ("resized96", lambda im, raw: _png(np.asarray(Image.fromarray(im).resize((96, 96), Image.BICUBIC)))),
             ("resized160", lambda im, raw: _png(np.asarray(Image.fromarray(im).resize((160, 160), Image.BICUBIC)))),
             ("shifted", lambda im, raw: _png(_shift(im, 3, -2))),
             ("shifted-jpeg", lambda im, raw: _jpeg(_shift(im, -2, 2)))]
    src = tmp_path / "planted"
    with ShardWriter(src, per_shard=150) as w:
        for r in originals:
            w.write(Record(r.key, r.image, r.caption, {}))
        for k, r in enumerate(originals[::4]):
            kind, fn = kinds[k % len(kinds)]
            key = f"dup{k:04d}"
            planted[key] = (r.key, kind)
            w.write(Record(key, fn(r.decode(), r.image), f"copy of {r.caption}", {}))
        w.write(Record("broken", b"\x89PNG\r\n\x1a\nnot really a png", "corrupt", {}))
    # truncate the last shard in the middle of a member
    last = sorted(src.glob("*.tar"))[-1]
    (src / "99999.tar").write_bytes(sorted(src.glob("*.tar"))[0].read_bytes()[:5000])
    assert last.exists()
    index = search if search in ("hnsw", "ivf") else "exact"
    if search == "ivf":  # cells of 40 images, so that this small set is split as a million would be
        import functools
        monkeypatch.setattr(curate_mod, "cell_knn", functools.partial(curate_mod.cell_knn, cell=40))
    rep = curate(src, tmp_path / "out", CurateConfig(workers=2, index=index), progress=False)
    clusters = json.loads((tmp_path / "out" / "report.json").read_text())
    assert clusters["read"]["corrupt_images"] == 1 and clusters["read"]["truncated_shards"] == 1
    # the clusters, from the written data: each kept record carries the captions merged into it
    kept = list(read_records(tmp_path / "out" / "data"))
    cluster_of = {}
    for i, r in enumerate(kept):
        for c in [r.caption] + [c for c in r.meta.get("dup_captions", "").split("|") if c]:
            cluster_of[c] = i
    caption_of = {r.key: r.caption for r in originals}
    assert all(cluster_of[r.caption] is not None for r in originals)  # every original is kept or represented
    missed = [(k, kind) for k, (o, kind) in planted.items()
              if cluster_of.get(f"copy of {caption_of[o]}") != cluster_of[caption_of[o]]]
    assert not missed, missed
    per_cluster = {}
    for r in originals:  # no two distinct originals in one cluster
        assert cluster_of[r.caption] not in per_cluster, (r.caption, per_cluster.get(cluster_of[r.caption]))
        per_cluster[cluster_of[r.caption]] = r.caption
    assert rep["removed_as_duplicates"] >= len(planted)
    assert (tmp_path / "out" / "clusters.png").is_file()


def test_pillow_without_text_shaping_is_refused_with_the_fix(tmp_path, monkeypatch, capsys):
    """Without libraqm, emoji sequences render as several glyphs and would be dropped (60% of the set, silently):
    refused with the fix, unless --basic-layout asks for the single-code-point emoji only."""
    from PIL import features

    from pixelcascade.cli import main
    from pixelcascade.data import emoji as emoji_mod
    try:
        emoji_mod.find_font()
    except emoji_mod.EmojiError as e:
        pytest.skip(str(e))
    real = features.check
    monkeypatch.setattr(features, "check", lambda name: False if name == "raqm" else real(name))
    with pytest.raises(emoji_mod.EmojiError, match="apt install libfribidi0.*--basic-layout"):
        emoji_mod.build_emoji_dataset(tmp_path / "a", limit=5, progress=False)
    assert main(["data", "emoji", "-o", str(tmp_path / "b"), "-q"]) == 2
    assert "libfribidi0" in capsys.readouterr().err
    rep = emoji_mod.build_emoji_dataset(tmp_path / "c", limit=40, progress=False, basic_layout=True)
    assert rep["layout"] == "basic" and rep["rendered"] + rep["blank_dropped"] == 40


def test_exact_numpy_search_matches_faiss(monkeypatch):
    """Without faiss, curation's candidate search (pHash radius, thumbnail kNN) is an exact NumPy search that
    returns what faiss returns."""
    pytest.importorskip("faiss")
    from pixelcascade.data import curate as curate_mod
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (300, 8), dtype=np.uint8)
    flips = (rng.random((50, 8)) < 0.05).astype(np.uint8) << rng.integers(0, 8, (50, 8)).astype(np.uint8)
    codes[100:150] = codes[:50] ^ flips  # a few bits off the first 50
    thumbs = rng.normal(size=(300, 48)).astype(np.float32)
    thumbs[200:260] = thumbs[:60] + 0.01 * rng.normal(size=(60, 48)).astype(np.float32)
    with_faiss = curate_mod.hamming_within(codes, 6), curate_mod.nearest_l2(thumbs, 5)
    monkeypatch.setattr(curate_mod, "_faiss", lambda: None)
    without = curate_mod.hamming_within(codes, 6, block=64), curate_mod.nearest_l2(thumbs, 5, block=64)
    assert [sorted(a.tolist()) for a in with_faiss[0]] == [sorted(b.tolist()) for b in without[0]]
    assert sum(len(a) > 1 for a in without[0]) >= 50  # the planted near codes are found
    assert np.array_equal(with_faiss[1], without[1])
    assert (without[1][200:260, 1] == np.arange(60)).all() and (without[1][:, 0] == np.arange(300)).all()


def test_formats_roundtrip(tmp_path):
    imgs = [np.full((8, 8, 3), i * 20, np.uint8) for i in range(5)]
    recs = [Record(f"k{i}", _png(im), f"caption {i}", {"aesthetic": 4.0 + i}) for i, im in enumerate(imgs)]
    with ShardWriter(tmp_path / "wds", per_shard=2) as w:
        for r in recs:
            w.write(r)
    assert len(list((tmp_path / "wds").glob("*.tar"))) == 3
    back = list(read_records(tmp_path / "wds"))
    assert [r.caption for r in back] == [r.caption for r in recs] and back[3].meta["aesthetic"] == 7.0
    write_folder(back, tmp_path / "folder")
    assert [r.caption for r in read_records(tmp_path / "folder")] == [r.caption for r in recs]
    rows = [{"key": r.key, "image": r.image, "caption": r.caption, "aesthetic": 4.0 + i} for i, r in enumerate(recs)]
    write_parquet(rows, tmp_path / "pq" / "a.parquet")
    pq = list(read_records(tmp_path / "pq"))
    assert [r.caption for r in pq] == [r.caption for r in recs] and np.array_equal(pq[2].decode(), imgs[2])


def test_aesthetic_threshold_and_caption_stats(tmp_path, capsys):
    from pixelcascade.data.curate import CurateConfig, CurateError, curate
    rng = np.random.default_rng(1)
    valley = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    rows = []
    for i in range(40):
        img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        rows.append({"key": f"r{i}", "image": _png(img), "caption": f"photo {i}", "aesthetic": 3.0 + i * 0.05})
    for i in range(6):  # "Valley 002": one picture under one caption, many times
        rows.append({"key": f"v{i}", "image": _png(valley), "caption": "Valley 002", "aesthetic": 6.0})
    write_parquet(rows, tmp_path / "laion.parquet")
    rep = curate(tmp_path / "laion.parquet", tmp_path / "out", CurateConfig(aesthetic_threshold=4.5), progress=False)
    assert rep["valley_check"][0]["caption"] == "Valley 002" and rep["valley_check"][0]["count"] == 6
    assert rep["removed_as_duplicates"] == 5 and rep["dropped_by_filter"]["aesthetic"] == 30
    assert rep["kept"] == 40 - 30 + 1
    assert (tmp_path / "out" / "scores.png").is_file()
    write_parquet([{k: v for k, v in r.items() if k != "aesthetic"} for r in rows], tmp_path / "noscore.parquet")
    with pytest.raises(CurateError, match="needs scores"):
        curate(tmp_path / "noscore.parquet", tmp_path / "out2", CurateConfig(aesthetic_threshold=4.5), progress=False)
    # the command: the same counts in its summary and report, the warning, and the scoreless input as one line
    from pixelcascade.cli import main
    assert main(["curate", str(tmp_path / "laion.parquet"), "-o", str(tmp_path / "cli"), "--aesthetic-threshold",
                 "4.5", "-q"]) == 0
    out = capsys.readouterr().out
    assert "kept 11" in out and "caption 'Valley 002' is one image repeated 6 times" in out
    assert json.loads((tmp_path / "cli" / "report.json").read_text())["kept"] == 11
    assert main(["curate", str(tmp_path / "noscore.parquet"), "-o", str(tmp_path / "cli2"), "--aesthetic-threshold",
                 "4.5", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs scores" in err[0]


def test_truncated_shard_keeps_earlier_records(tmp_path):
    with ShardWriter(tmp_path / "w", per_shard=100) as w:
        for i in range(10):
            w.write(Record(f"k{i}", _png(np.full((16, 16, 3), i, np.uint8)), f"c{i}", {}))
    tar = tmp_path / "w" / "00000.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])
    stats = ReadStats()
    recs = list(read_records(tmp_path / "w", stats))
    assert 0 < len(recs) < 10 and stats.truncated_shards == 1 and stats.problems[0]["kind"] == "truncated_shards"


def test_cell_knn_finds_planted_copies_across_cells():
    """The linear index: 20 cells of ~100 vectors, each searched in its two nearest cells, finds every planted copy
    (as the exact index does) and the true nearest neighbour of nearly every vector."""
    pytest.importorskip("faiss")
    from pixelcascade.data.curate import cell_knn, nearest_l2
    rng = np.random.default_rng(0)
    x = (rng.random((40, 48), dtype=np.float32)[rng.integers(0, 40, 2000)]
         + rng.normal(0, 0.2, (2000, 48)).astype(np.float32))
    src = rng.choice(2000, 100, replace=False)
    x = np.concatenate([x, x[src] + rng.normal(0, 0.01, (100, 48)).astype(np.float32)])
    labels, dist = cell_knn(x, 5, cell=100)
    assert labels.shape == (2100, 5) and (np.diff(dist, axis=1) >= 0).all()
    assert all(2000 + i in labels[s] or s in labels[2000 + i] for i, s in enumerate(src))
    exact = nearest_l2(x, 5, index="exact")
    assert (labels[:, :2] == exact[:, :2]).all(1).mean() > 0.95


def _pictures(folder, n=6):
    from PIL import Image
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    names = []
    for i in range(n):
        name = f"pic{i}.png"
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / name)
        names.append(name)
    return names


def test_captions_from_hf_metadata_and_a_named_column(tmp_path, capsys):
    """Captions where users keep them: Hugging Face imagefolder's metadata.jsonl (file_name + text), a parquet
    whose caption column has another name (--caption-column / data.caption_column); a table without one is
    counted and named in curate's summary, and a column that is not there is one error listing those that are."""
    pytest.importorskip("pyarrow")
    import json as _json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pixelcascade.cli import main
    from pixelcascade.data.formats import DataFormatError, ReadStats, read_records
    hf = tmp_path / "hf"
    names = _pictures(hf)
    (hf / "metadata.jsonl").write_text("".join(_json.dumps({"file_name": n, "text": f"picture {i}"}) + "\n"
                                               for i, n in enumerate(names)))
    recs = list(read_records(hf))
    assert [r.caption for r in recs] == [f"picture {i}" for i in range(6)]
    table = tmp_path / "described.parquet"
    pq.write_table(pa.table({"image": [(hf / n).read_bytes() for n in names],
                             "description": [f"thing {i}" for i in range(6)]}), table)
    stats = ReadStats()
    assert all(r.caption == "" for r in read_records(table, stats)) and stats.missing_captions == 6
    assert [r.caption for r in read_records(table, caption_column="description")][0] == "thing 0"
    with pytest.raises(DataFormatError, match="no column 'caption_text'.*its columns: image, description"):
        list(read_records(table, caption_column="caption_text"))
    assert main(["curate", str(table), "-o", str(tmp_path / "out1"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "6 without a caption" in out and "data.caption_column=NAME" in out
    assert main(["curate", str(table), "-o", str(tmp_path / "out2"), "--caption-column", "description", "-q"]) == 0
    assert "0 without a caption" in capsys.readouterr().out


def test_mixed_formats_are_refused_with_a_list_and_curate_outputs_merge(tmp_path):
    """A folder holding images, a parquet file and shards is one clear error that counts each; a curate output
    folder reads as its data/ (not its report pictures); two curate outputs' shards have distinct names."""
    pytest.importorskip("pyarrow")
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pixelcascade.cli import main
    from pixelcascade.data.formats import DataFormatError, read_records
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        for i, name in enumerate(_pictures(folder, 4)):
            (folder / name).with_suffix(".txt").write_text(f"{folder.name} picture {i}")
    assert main(["curate", str(a), "-o", str(tmp_path / "ca"), "-q"]) == 0
    assert main(["curate", str(b), "-o", str(tmp_path / "cb"), "-q"]) == 0
    assert len(list(read_records(tmp_path / "ca"))) == 4  # the output folder itself: its data/
    merged = tmp_path / "merged"
    merged.mkdir()
    for out in ("ca", "cb"):
        for shard in (tmp_path / out / "data").glob("*.tar"):
            assert not (merged / shard.name).exists()  # no renaming needed
            shutil.copy(shard, merged / shard.name)
    assert len(list(read_records(merged))) == 8
    mixed = tmp_path / "mixed"
    shutil.copytree(a, mixed)
    pq.write_table(pa.table({"image": [(a / "pic0.png").read_bytes()], "caption": ["x"]}), mixed / "more.parquet")
    shutil.copy(next((tmp_path / "ca" / "data").glob("*.tar")), mixed / "s.tar")
    with pytest.raises(DataFormatError, match=r"mixes dataset formats \(1 .tar shards, 1 parquet files, 4 images"):
        list(read_records(mixed))
