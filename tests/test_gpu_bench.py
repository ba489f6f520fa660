"""bench/gpu_speed.py, the GPU benchmark, run on the CPU at a tiny size: it times ours and diffusers' UNet on the
same weights, stage I and stage II kinds, writes its rows, and refuses to time implementations that disagree."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_bench

pytest.importorskip("diffusers")


def _bench():
    return load_bench("gpu_speed")


def test_the_gpu_benchmark_runs_at_a_tiny_size_on_the_cpu(tmp_path):
    out = tmp_path / "rows.jsonl"
    rows = _bench().main(["--presets", "tiny,tiny-sr", "--device", "cpu", "--dtypes", "fp32", "--batches", "1,2",
                          "--modes", "eager", "--runs", "2", "--out", str(out)])
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows
    assert {(r["preset"], r["batch"], r["impl"]) for r in rows} == {
        (p, b, i) for p in ("tiny", "tiny-sr") for b in (1, 2) for i in ("ours", "diffusers")}
    for r in rows:
        assert r["images_per_s"] > 0 and r["max_rel_diff"] < 1e-3 and r["weights_gb"] > 0
        # a batch and its double give the guided-sampling estimate: batch / (27 forwards at twice the batch)
        assert (r["sampling_images_per_s"] is None) == (r["batch"] == 2)
    ours = next(r for r in rows if r["impl"] == "ours" and r["batch"] == 1 and r["preset"] == "tiny")
    doubled = next(r for r in rows if r["impl"] == "ours" and r["batch"] == 2 and r["preset"] == "tiny")
    assert ours["sampling_images_per_s"] == pytest.approx(1 / (27 * doubled["median_s"]))


def test_implementations_that_disagree_are_not_timed(tmp_path, monkeypatch):
    bench = _bench()
    build = bench.build_pair

    def broken(*args, **kwargs):
        models = build(*args, **kwargs)
        with torch.no_grad():
            next(models["diffusers"].parameters()).add_(1.0)
        return models
    monkeypatch.setattr(bench, "build_pair", broken)
    with pytest.raises(SystemExit, match="disagree"):
        bench.main(["--presets", "tiny", "--device", "cpu", "--dtypes", "fp32", "--batches", "1", "--modes", "eager",
                    "--runs", "1", "--out", str(tmp_path / "rows.jsonl")])
