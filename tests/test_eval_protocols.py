"""COCO protocol (resumes without losing or redoing images), sweeps, prompt suites, FID from the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pixelcascade.cli import load_cascade, main
from pixelcascade.eval import sweep as sw
from pixelcascade.eval.coco import run_coco, sample_captions
from pixelcascade.eval.fid import FIDError


@pytest.fixture()
def captions(tmp_path):
    p = tmp_path / "caps.tsv"
    rows = ["image_id\tfile_name\tcaption"]
    for i in range(8):
        for k in range(2):
            rows.append(f"{100 + i}\tx.jpg\t{'a red circle' if k else 'two blue squares'} number {i}")
    p.write_text("\n".join(rows) + "\n")
    return p


def test_caption_sampling_is_seeded_distinct_and_bounded():
    caps = {i: [f"c{i}-{k}" for k in range(5)] for i in range(50)}
    a, b = sample_captions(caps, 20, seed=1), sample_captions(caps, 20, seed=1)
    assert a == b and len({r["image_id"] for r in a}) == 20
    assert a != sample_captions(caps, 20, seed=2)
    assert {r["caption_idx"] for r in a} != {0}  # the caption is drawn too, not always the first
    with pytest.raises(FIDError, match="only 50 images.*30K"):
        sample_captions(caps, 51)


class _StopAfter:
    """A cascade that is interrupted (like Ctrl-C) after its first ``n`` batches."""

    def __init__(self, cascade, n):
        self.c, self.n, self.stages = cascade, n, cascade.stages

    def record(self, *a, **k):
        return self.c.record(*a, **k)

    def run(self, *a, **k):
        if self.n == 0:
            raise KeyboardInterrupt
        self.n -= 1
        return self.c.run(*a, **k)


def test_interrupted_coco_generation_resumes_exactly(tiny_model, captions, tmp_path):
    from pixelcascade.pipeline import stage_settings
    cascade = load_cascade(tiny_model)
    st = stage_settings(cascade.stages, steps="3")
    kw = dict(captions=captions, num=7, seed=5, settings=st, batch_size=3, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_coco(_StopAfter(cascade, 1), out_dir=tmp_path / "run", **kw)
    done = sorted((tmp_path / "run" / "images").glob("*.png"))
    assert len(done) == 3
    mtimes = {p.name: p.stat().st_mtime_ns for p in done}
    r = run_coco(cascade, out_dir=tmp_path / "run", **kw)
    assert r["generation"] == {"total": 7, "skipped": 3, "generated": 4, "processes": 1}
    assert {p.name: p.stat().st_mtime_ns for p in done} == mtimes  # finished images untouched
    fresh = run_coco(cascade, out_dir=tmp_path / "fresh", **kw)
    assert fresh["generation"]["generated"] == 7
    for p in sorted((tmp_path / "fresh" / "images").glob("*.png")):
        assert Image.open(p).tobytes() == Image.open(tmp_path / "run" / "images" / p.name).tobytes()
    assert not list((tmp_path / "run" / "images").glob(".*tmp"))  # no partial files left behind
    with pytest.raises(FIDError, match="another caption list"):
        run_coco(cascade, out_dir=tmp_path / "run", **{**kw, "seed": 6})


def test_eval_coco_and_fid_commands(tiny_model, captions, tmp_path, capsys):
    out = tmp_path / "coco"
    assert main(["eval", "coco", "--model", str(tiny_model), "--captions", str(captions), "--num", "4",
                 "--steps", "2", "-o", str(out), "-q"]) == 0
    side = json.loads((out / "images" / "00000.json").read_text())
    assert side["prompt"] and side["seed"] == 0
    capsys.readouterr()
    # real-set statistics once, then FID against them
    real = tmp_path / "real"
    real.mkdir()
    for i in range(6):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(real / f"{i}.png")
    assert main(["eval", "fid", str(real), "--features", "random", "--ref-size", "16",
                 "--save-stats", str(tmp_path / "ref.npz"), "-q"]) == 0
    capsys.readouterr()
    assert main(["eval", "fid", str(out / "images"), str(tmp_path / "ref.npz"), "--features", "random", "-q"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n"] == 4 and r["n_ref"] == 6 and r["fid"] > 0 and "kid" in r
    assert main(["eval", "fid", str(real), str(tmp_path / "ref.npz"), "--features", "random", "--ref-size", "16",
                 "-q"]) == 0
    assert abs(json.loads(capsys.readouterr().out)["fid"]) < 1e-6  # FID(x, x) = 0 through the saved statistics


@pytest.mark.parametrize("args,msg", [
    (["eval", "fid", "a", "b"], "FID needs features: pass --inception"),
    (["eval", "fid", "a", "--inception", "/nope/i.pt"], "Inception weights not found"),
    (["eval", "fid", "/nope", "b", "--features", "random"], "no such folder"),
    (["eval", "clip", ".", "--clip", "/nope"], "no CLIP model folder"),
    (["eval", "sweep", "guidance"], "write NAME=v1,v2"),
    (["eval", "sweep", "guidance=1:4"], "needs --random"),
    (["eval", "suite", "nosuch"], "unknown suite"),
])
def test_eval_errors_are_one_line(args, msg, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0], err


def test_sweep_resumes_and_plots(tmp_path):
    calls = []

    def metric(p):
        calls.append(p)
        return {"overall": 1.0 / (1 + abs(p["guidance"] - 3)), "colors": 0.5}
    pts = sw.grid_points(sw.parse_space(["guidance=1,3,5"]))
    sw.run_sweep(pts, metric, tmp_path, progress=False)
    res = sw.run_sweep(sw.grid_points(sw.parse_space(["guidance=1,3,5,7"])), metric, tmp_path, progress=False)
    assert [c["guidance"] for c in calls] == [1.0, 3.0, 5.0, 7.0]  # the second run only computed the new point
    assert [r["metrics"]["overall"] for r in res] == [pytest.approx(v) for v in (1 / 3, 1.0, 1 / 3, 0.2)]
    assert sw.plot_sweep(res, tmp_path / "s.png", ["overall", "colors"]).stat().st_size > 1000
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert len(saved["points"]) == 4


def test_pareto_front_and_random_points():
    res = [{"params": {"g": i}, "metrics": {"fid": f, "clip_score": c}}
           for i, (f, c) in enumerate([(10, 0.30), (8, 0.28), (12, 0.29), (9, 0.31), (8, 0.27)])]
    front = sw.pareto_front(res, "fid", "clip_score")
    assert [r["params"]["g"] for r in front] == [1, 3]  # (8, .28) and (9, .31); the rest are dominated
    space = sw.parse_space(["guidance=1:10", "aug_level=0,0.25"])
    pts = sw.random_points(space, 20, seed=3)
    assert pts == sw.random_points(space, 20, seed=3) and all(1 <= p["guidance"] <= 10 for p in pts)
    assert {p["aug_level"] for p in pts} == {0.0, 0.25}


def test_eval_sweep_and_suite_commands(tiny_model, tmp_path, capsys):
    assert main(["eval", "sweep", "guidance=1,3", "--model", str(tiny_model), "--per-task", "1", "--seeds", "1",
                 "--steps", "2", "-o", str(tmp_path / "sw"), "-q"]) == 0
    assert (tmp_path / "sw" / "sweep.png").is_file()
    assert len(json.loads((tmp_path / "sw" / "sweep.json").read_text())["points"]) == 2
    suite = tmp_path / "suite.csv"
    suite.write_text("Prompts,Category\na red circle,Colors\na blue square,Colors\nthree circles,Counting\n")
    assert main(["eval", "suite", str(suite), "--model", str(tiny_model), "--steps", "2", "--per-category", "2",
                 "-o", str(tmp_path / "su"), "-q"]) == 0
    sheets = sorted((tmp_path / "su").glob("sheet_*.png"))
    assert [p.name for p in sheets] == ["sheet_00_colors.png", "sheet_01_counting.png"]
    assert "Counting" in capsys.readouterr().out


def test_shared_suites_load():
    from pixelcascade.eval.suites import default_prompts_dir, load_suite
    if default_prompts_dir() is None:
        pytest.skip("../shared/prompts not beside this checkout")
    db, parti, gen = load_suite("drawbench"), load_suite("parti"), load_suite("geneval")
    assert sum(map(len, db.values())) == 200 and len(db) == 11
    assert sum(map(len, parti.values())) == 1632 and len(parti) == 12
    assert sum(map(len, gen.values())) == 553 and set(gen) >= {"counting", "position", "color_attr"}


def _jobs():
    from pixelcascade.eval.batch import Job
    prompts = ["a red circle", "two blue squares", "a green triangle above a red circle", "a yellow square"]
    return [Job(f"{i:03d}", prompts[i % 4], 100 + i) for i in range(7)]


def test_generation_split_across_processes_equals_one_process(tiny_model, tmp_path):
    """2 processes (gloo, as torchrun starts them) each take every other job into one folder: the folder holds every
    image once, equal to a single process's image by image; a rerun at any process count regenerates nothing."""
    import socket

    import torch.multiprocessing as mp
    from ddp_worker import run_generate

    import pixelcascade
    from pixelcascade.eval.batch import generate_jobs
    one = generate_jobs(pixelcascade.load(str(tiny_model)), _jobs(), tmp_path / "one", batch_size=4, progress=False)
    assert one["generated"] == 7
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(run_generate, args=(2, port, str(tiny_model), str(tmp_path / "two" / "images")), nprocs=2, join=True)
    counts = [json.loads((tmp_path / "two" / f"counts{r}.json").read_text()) for r in (0, 1)]
    assert counts[0]["generated"] == counts[1]["generated"] == 7 and counts[0]["processes"] == 2
    names = sorted(p.name for p in (tmp_path / "two" / "images").glob("*.png"))
    assert names == sorted(p.name for p in (tmp_path / "one").glob("*.png")) and len(names) == 7
    for n in names:
        a = np.asarray(Image.open(tmp_path / "one" / n), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "two" / "images" / n), dtype=np.int16)
        assert np.abs(a - b).max() <= 1, n  # batches of 3 and 4: the same image up to float rounding
    again = generate_jobs(pixelcascade.load(str(tiny_model)), _jobs(), tmp_path / "two" / "images", progress=False)
    assert again["generated"] == 0 and again["skipped"] == 7
