"""Fewer steps at the same quality: shapes-benchmark accuracy and seconds per image for each sampler and step count.

    python bench/steps_quality.py run                 # accuracy of every point (resumes; hours on 2 cores)
    python bench/steps_quality.py run --stage 2 --points ddpm:smart27,ddpm:10 --stage1 ddpm:10
    python bench/steps_quality.py time --repeats 5    # seconds per image, batch 1, points interleaved (quiet machine)
    python bench/steps_quality.py report --plot docs/steps_quality.png

A point is SAMPLER:STEPS[:DTYPE] (dtype of the UNet weights, fp32 when left out). ``run`` scores each point with
the shapes benchmark (``pixelcascade eval shapes``: the same prompts and seeds at every point, the shipped model's
other settings, layout guidance included) and appends a row per point to --out. ``--stage 2`` sweeps stage II's
sampler and steps instead, with stage I fixed at --stage1, scored on the 64 px images. ``time`` measures what a
user waits for one image (one prompt, batch 1, through --stages stages) at each point, median of --repeats,
points alternating round by round. ``report`` prints the table: accuracy with its 95% interval, seconds, and
whether the point holds the reference's accuracy (inside the reference's 95% interval: the issue's criterion),
and the fastest such point per sampler; with --plot, accuracy against seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_jsonl, cpu, cpu_name  # noqa: E402

PROMPT = "three red circles to the left of a blue square"  # the README's first command
REFERENCE = "ddpm:smart100"
POINTS = [REFERENCE, "ddpm:smart27", "ddpm:smart50", "ddpm:fast27", "ddpm:20", "ddpm:15", "ddpm:10",
          "ddim:50", "ddim:27", "ddim:15", "ddim:10", "dpmpp_2m:27", "dpmpp_2m:15", "dpmpp_2m:10"]
TASKS = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]  # overall = their mean


def parse_point(text: str) -> dict:
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise SystemExit(f"point {text!r}: expected SAMPLER:STEPS[:DTYPE], e.g. ddpm:smart27 or ddim:15:bf16")
    return {"sampler": parts[0], "steps": parts[1], "dtype": parts[2] if len(parts) == 3 else "fp32"}


def point_name(p: dict) -> str:
    return f"{p['sampler']}:{p['steps']}" + ("" if p["dtype"] == "fp32" else f":{p['dtype']}")


def overall_interval(summary: dict) -> tuple[float, float]:
    """95% normal interval of the overall score (the mean of the six tasks' accuracies, each binomial)."""
    acc = [summary[t]["accuracy"] for t in TASKS]
    var = sum(a * (1 - a) / summary[t]["n"] for a, t in zip(acc, TASKS)) / len(TASKS) ** 2
    m = sum(acc) / len(acc)
    return m - 1.96 * math.sqrt(var), m + 1.96 * math.sqrt(var)


def load_model(dtype: str, stages: int):
    from pixelcascade import api
    return api.load("shapes", max_stages=stages, dtype=dtype)


def overrides(p: dict, stage: int, stage1: dict | None) -> dict:
    if stage == 1:
        return {"sampler": p["sampler"], "steps": p["steps"]}
    return {"sampler": stage1["sampler"], "steps": stage1["steps"], "sampler_ii": p["sampler"], "steps_ii": p["steps"]}


def cmd_run(a) -> None:
    from pixelcascade.eval.shapes_eval import evaluate_shapes
    stage1 = parse_point(a.stage1) if a.stage == 2 else None
    done = {(r["point"], r["stage"], r.get("stage1")) for r in read_rows(a.out) if "summary" in r}
    for text in a.points.split(","):
        p = parse_point(text)
        key = (point_name(p), a.stage, a.stage1 if a.stage == 2 else None)
        if key in done:
            print(f"{key[0]}: done already")
            continue
        cascade = load_model(p["dtype"], a.stage)
        t0 = time.perf_counter()
        rep = evaluate_shapes(cascade, num_stages=a.stage, per_task=a.per_task, seeds=a.seeds, batch_size=a.batch,
                              progress=True, **overrides(p, a.stage, stage1))
        summary = {t: {"accuracy": r["accuracy"], "n": r["n"]} for t, r in rep["summary"]["all"].items()}
        row = {"point": key[0], "stage": a.stage, "stage1": key[2], "per_task": a.per_task, "seeds": a.seeds,
               "summary": summary, "overall": summary["overall"]["accuracy"], "ci95": overall_interval(summary),
               "eval_seconds": time.perf_counter() - t0, **cpu()}
        append_jsonl(a.out, [row])
        print(f"{key[0]}: overall {row['overall']:.3f} [{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}]  "
              f"position {summary['position']['accuracy']:.3f}  ({row['eval_seconds']:.0f} s)")


def one_image_seconds(cascade, p: dict, stages: int, stage1: dict | None, seed: int) -> float:
    from pixelcascade.pipeline import stage_settings
    settings = stage_settings(cascade.stages[:stages], **overrides(p, stages, stage1))
    t0 = time.perf_counter()
    cascade.run([PROMPT], [seed], settings=settings, num_stages=stages)
    return time.perf_counter() - t0


def cmd_time(a) -> None:
    import torch
    torch.set_num_threads(a.threads or torch.get_num_threads())
    stage1 = parse_point(a.stage1) if a.stage == 2 else None
    points = [parse_point(t) for t in a.points.split(",")]
    models = {d: load_model(d, a.stage) for d in sorted({p["dtype"] for p in points})}
    for p in points:  # warm-up
        one_image_seconds(models[p["dtype"]], p, a.stage, stage1, 0)
    times = {point_name(p): [] for p in points}
    for r in range(a.repeats):
        for p in points:
            times[point_name(p)].append(one_image_seconds(models[p["dtype"]], p, a.stage, stage1, r))
    rows = [{"timing": name, "stage": a.stage, "stage1": a.stage1 if a.stage == 2 else None, "prompt": PROMPT,
             "seconds": statistics.median(ts), "runs": ts, "threads": torch.get_num_threads(), **cpu()}
            for name, ts in times.items()]
    append_jsonl(a.out, rows)
    for r in rows:
        print(f"{r['timing']:>20s}  {r['seconds']:.3f} s / image  ({cpu_name()}, {r['threads']} threads)")


def read_rows(path: str) -> list[dict]:
    p = Path(path)
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.is_file() else []


def label(point: str, row: dict) -> str:
    """A row's point; through stage II, with stage I's point first ("ddpm:10 + ddpm:10:bf16")."""
    return f"{row['stage1']} + {point}" if row.get("stage1") else point


def table(rows: list[dict], stage: int, reference: str) -> list[dict]:
    """One entry per scored point of ``stage``: accuracy, interval, latest timing, whether it holds the reference."""
    scored = {label(r["point"], r): r for r in rows if "summary" in r and r["stage"] == stage}
    timed = {label(r["timing"], r): r["seconds"] for r in rows if "timing" in r and r["stage"] == stage}
    if reference not in scored:
        raise SystemExit(f"no stage {stage} row for the reference {reference}: run it first "
                         f"(python bench/steps_quality.py run --points {reference})")
    lo = scored[reference]["ci95"][0]
    out = [{"point": name, "overall": r["overall"], "ci95": r["ci95"], "position": r["summary"]["position"]["accuracy"],
            "seconds": timed.get(name), "holds": r["overall"] >= lo} for name, r in scored.items()]
    return sorted(out, key=lambda e: (e["point"].split(":")[0], e["seconds"] or math.inf))


def cmd_report(a) -> None:
    entries = table(read_rows(a.out), a.stage, a.reference)
    print(f"| point | overall (95% interval) | position | s / image | holds {a.reference} |\n|---|---|---|---|---|")
    for e in entries:
        s = f"{e['seconds']:.2f}" if e["seconds"] else "-"
        print(f"| {e['point']} | {e['overall']:.3f} ({e['ci95'][0]:.3f}-{e['ci95'][1]:.3f}) | {e['position']:.3f} "
              f"| {s} | {'yes' if e['holds'] else 'no'} |")
    best = {}
    for e in entries:
        sampler = e["point"].split(":")[0]
        if e["holds"] and e["seconds"] and (sampler not in best or e["seconds"] < best[sampler]["seconds"]):
            best[sampler] = e
    for sampler, e in best.items():
        print(f"fastest {sampler} point that holds: {e['point']} ({e['seconds']:.2f} s)")
    if a.plot:
        plot(entries, a.plot, a.reference, a.stage)


def plot(entries: list[dict], path: str, reference: str, stage: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ref = next(e for e in entries if e["point"] == reference)
    ax.axhspan(ref["ci95"][0], ref["ci95"][1], color="0.9", label=f"{reference}: 95% interval")
    for sampler in sorted({e["point"].split(":")[0] for e in entries}):
        pts = [e for e in entries if e["point"].split(":")[0] == sampler and e["seconds"]]
        ax.errorbar([e["seconds"] for e in pts], [e["overall"] for e in pts], marker="o", capsize=2,
                    yerr=[[e["overall"] - e["ci95"][0] for e in pts], [e["ci95"][1] - e["overall"] for e in pts]],
                    label=sampler)
        for e in pts:
            ax.annotate(e["point"].split(":", 1)[1], (e["seconds"], e["overall"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")  # from a few steps to IF's 100: the few-step end is where the choice is
    ax.set_xlabel("seconds per image, log scale (batch 1, " + cpu_name() + ")")
    ax.set_ylabel(f"shapes benchmark, overall (stage {'I' if stage == 1 else 'II'})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "time", "report"):
        s = sub.add_parser(name)
        s.add_argument("--points", default=",".join(POINTS), help="SAMPLER:STEPS[:DTYPE],...")
        s.add_argument("--stage", type=int, choices=(1, 2), default=1)
        s.add_argument("--stage1", default="ddpm:smart27", help="stage I's point when --stage 2")
        s.add_argument("--out", default="bench/results/steps_quality.jsonl")
    sub.choices["run"].add_argument("--per-task", type=int, default=16)
    sub.choices["run"].add_argument("--seeds", type=int, default=2)
    sub.choices["run"].add_argument("--batch", type=int, default=32)
    sub.choices["time"].add_argument("--repeats", type=int, default=5)
    sub.choices["time"].add_argument("--threads", type=int, default=0)
    sub.choices["report"].add_argument("--reference", default=REFERENCE)
    sub.choices["report"].add_argument("--plot")
    a = ap.parse_args()
    {"run": cmd_run, "time": cmd_time, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
