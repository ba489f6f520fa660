"""bench/speed.py, the CPU benchmark against the peers, run at a tiny size: stage I and the cascade end to end
against diffusers' IF pipelines on the same weights, states and noise; it checks the images agree before timing
and writes its rows with the machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import load_bench

pytest.importorskip("diffusers")
BENCH = Path(__file__).resolve().parent.parent / "bench"


def _bench():
    return load_bench("speed")


TINY = ["--dtypes", "fp32", "--runs", "1", "--e2e-batch", "2", "--batch", "2", "--stage1-preset", "tiny",
        "--cascade-presets", "tiny,tiny-sr", "--flops-preset", "tiny"]


@pytest.mark.slow  # minutes on an AVX2-only CI machine; `pytest -m slow` runs it
def test_the_speed_benchmark_times_both_pipelines_on_the_same_work(tmp_path):
    out = tmp_path / "rows.jsonl"
    rows = _bench().main(["--sections", "stage1,cascade,flops", *TINY, "--out", str(out)])
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows
    assert [r["section"] for r in rows] == ["stage1", "cascade", "flops", "flops"]
    for r in rows[2:]:  # FLOPs counted (a training step is about three forwards), a fraction of a measured peak
        assert r["flops"] > 0 and r["gemm_peak_flops"] > 0 and 0 < r["fraction_of_peak"]
    assert 2 < rows[3]["flops"] / rows[2]["flops"] < 4
    for r in rows[:2]:
        assert set(r["seconds"]) == {"ours", "diffusers"} and r["ours_speedup"]["diffusers"] > 0
        assert r["threads"] == torch.get_num_threads() and "avx512_bf16" in r and r["cpu"]


def test_pipelines_that_disagree_are_not_timed(tmp_path, monkeypatch):
    bench = _bench()
    make = bench._if_pipeline

    def off(*args, **kwargs):  # diffusers' UNet given other weights than ours
        pipe = make(*args, **kwargs)
        with torch.no_grad():
            next(pipe.unet.parameters()).add_(0.5)
        return pipe
    monkeypatch.setattr(bench, "_if_pipeline", off)
    with pytest.raises(SystemExit, match="disagree"):
        bench.main(["--sections", "stage1,cascade", *TINY, "--out", str(tmp_path / "rows.jsonl")])
