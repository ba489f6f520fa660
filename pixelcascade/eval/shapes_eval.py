"""Sample the shapes-world benchmark with a cascade and score it (specs/shapes-world.md)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ..data.shapes import TASKS, benchmark_prompts
from ..utils import atomic_write_text
from .shapes_score import relation_outcome, score_image, summarize


def check_tasks(tasks) -> tuple[str, ...]:
    """``tasks`` as a tuple of the benchmark's task names, or ValueError naming the unknown ones."""
    tasks = tuple(tasks)
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown or not tasks:
        raise ValueError(f"unknown task {', '.join(unknown) or '(none given)'}; give a comma-separated list of: "
                         f"{', '.join(TASKS)}")
    return tasks


def evaluate_shapes(cascade, *, num_stages: int | None = None, per_task: int = 64, seeds: int = 4,
                    batch_size: int = 64, out_dir: str | Path | None = None, progress: bool = True,
                    prompt_seed: int = 0, language: str = "en", tasks: tuple[str, ...] | None = None,
                    phrasing: str = "benchmark", **overrides) -> dict:
    """Every benchmark prompt x ``seeds`` seeds through the first ``num_stages`` stages, scored at that size.

    ``overrides``: sampling choices as :func:`pixelcascade.pipeline.stage_settings` takes them (guidance,
    guidance_ii, steps, steps_ii, sampler, aug_level, ...). ``tasks``: only these tasks' prompts (the same
    prompts and seeds as in the full suite; the overall score then averages only the GenEval tasks present).
    ``phrasing``: the relation prompts reworded (data.shapes_phrasings), same specs.
    """
    from ..pipeline import stage_settings, to_uint8
    n = num_stages or len(cascade.stages)
    final = cascade.stages[n - 1]
    size = final.cfg.image_size
    prompts = benchmark_prompts(size=size, per_task=per_task, seed=prompt_seed)
    if tasks:
        tasks = check_tasks(tasks)
        prompts = [p for p in prompts if p.task in tasks]
    if phrasing != "benchmark":  # the same layouts stated in other words: does layout guidance follow them?
        from ..data.shapes_phrasings import rephrase
        prompts = [rephrase(p, phrasing) for p in prompts]
    if language != "en":  # the same specs in other words: the gap to English measures the text encoder
        from ..data.shapes_i18n import translate
        prompts = [translate(p, language) for p in prompts]
    jobs = [(p, s) for p in prompts for s in range(seeds)]
    settings = stage_settings(cascade.stages[:n], **overrides)
    results, images, relations, outcomes = [], [], {}, []
    earlier = [[] for _ in range(n - 1)]
    it = range(0, len(jobs), batch_size)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc=f"eval shapes ({len(jobs)} images)", unit="batch")
    for start in it:
        chunk = jobs[start:start + batch_size]
        outs = cascade.run([p.text for p, _ in chunk], [s for _, s in chunk], settings=settings, num_stages=n)
        imgs = [to_uint8(o) for o in outs]
        for j, (p, _s) in enumerate(chunk):
            outcome = relation_outcome(imgs[-1][j], p)  # "pass" exactly when score_image passes
            outcomes.append(outcome)
            results.append((p, outcome == "pass" if outcome is not None else score_image(imgs[-1][j], p)))
            if outcome is not None:
                counts = relations.setdefault(p.task, {"pass": 0, "swapped": 0, "misplaced": 0, "objects": 0})
                counts[outcome] += 1
            for k in range(n - 1):  # earlier stages' images, scored at their own size
                earlier[k].append((p, score_image(imgs[k][j], p)))
            images.append([im[j] for im in imgs])
    report = {"summary": summarize(results), "relations": relations,
              # the same prompts and seeds scored after each earlier stage: what each later stage kept or lost
              "earlier_stages": [{"stage": k + 1, "image_size": int(cascade.stages[k].cfg.image_size),
                                  "summary": summarize(r)} for k, r in enumerate(earlier)],
              "num_images": len(jobs), "image_size": size, "stages": n,
              "language": language, "phrasing": phrasing,
              "settings": [dataclasses.asdict(s) for s in settings], "per_task": per_task, "seeds": seeds,
              "per_prompt": [{"prompt": p.text, "task": p.task, "unseen": p.unseen, "seed": s, "pass": bool(ok),
                              **({"outcome": outcomes[i]} if outcomes[i] is not None else {}),
                              **({"pass_by_stage": [bool(e[i][1]) for e in earlier] + [bool(ok)]} if earlier else {})}
                             for i, ((p, ok), (_, s)) in enumerate(zip(results, jobs))]}
    if earlier:  # images that a later stage turned from pass to fail (lost) or fail to pass (gained)
        report["stage_changes"] = stage_changes(report)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "report.json", json.dumps(report, indent=2))
        _sheet(results, images, out / "contact_sheet.png")
        changed = [i for i, r in enumerate(report["per_prompt"]) if len(set(r.get("pass_by_stage", [True]))) > 1]
        if changed:
            _changed_sheet(report, images, changed, out / "stage_changes.png")
    return report


def stage_changes(report: dict) -> dict:
    """Per task, how many images the last stage lost (an earlier stage passed, the last fails) or gained."""
    out = {}
    for r in report["per_prompt"]:
        first, last = r["pass_by_stage"][0], r["pass_by_stage"][-1]
        if first != last:
            c = out.setdefault(r["task"], {"lost": 0, "gained": 0})
            c["lost" if first else "gained"] += 1
    return out


def _changed_sheet(report: dict, images, idx: list[int], path: Path) -> None:
    """Every image whose verdict changed between stage I and the last stage, all stages side by side."""
    from ..images import contact_sheet
    picks, caps = [], []
    size = images[0][-1].shape[0]
    for i in idx[:64]:
        r = report["per_prompt"][i]
        for k, im in enumerate(images[i]):
            rep = size // im.shape[0]
            picks.append(np.repeat(np.repeat(im, rep, 0), rep, 1))
            verdict = "PASS" if r["pass_by_stage"][k] else "fail"
            caps.append(f"{verdict} [stage {k + 1}] {r['prompt']} (seed {r['seed']})")
    contact_sheet(np.stack(picks), caps, path, scale=max(1, 96 // size), cols=2 * len(images[0]))


def _sheet(results, images, path: Path, per_task: int = 4) -> None:
    """A few images per task (seed 0), every stage side by side, captioned with the prompt and PASS/fail."""
    from ..images import contact_sheet
    picks, caps = [], []
    for task in TASKS:
        idx = [i for i, (p, _) in enumerate(results) if p.task == task][: per_task * 4: 4]
        for i in idx:
            p, ok = results[i]
            stages = images[i]
            size = stages[-1].shape[0]
            for k, im in enumerate(stages):
                if im.shape[0] != size:  # nearest-upscale earlier stages to the final size
                    rep = size // im.shape[0]
                    im = np.repeat(np.repeat(im, rep, 0), rep, 1)
                picks.append(im)
                caps.append(f"{'PASS' if ok else 'fail'} {p.text}" + (f" [stage {k + 1}]" if len(stages) > 1 else ""))
    if picks:
        scale = max(1, 96 // picks[0].shape[0])
        contact_sheet(np.stack(picks), caps, path, scale=scale, cols=8 if len(images[0]) == 1 else 8)


def format_table(report: dict) -> str:
    lines = []
    for split in ("all", "seen", "unseen"):
        rows = report["summary"].get(split, {})
        if not rows:
            continue
        lines.append(f"[{split}]  {'task':14s} {'acc':>6s}  {'95% CI':>15s}  {'n':>5s}")
        for task in list(TASKS) + ["overall"]:
            if task in rows:
                r = rows[task]
                ci = r.get("ci95")
                ci_s = f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
                lines.append(f"{'':8s}{task:14s} {r['accuracy']:6.3f}  {ci_s:>15s}  {r['n']:5d}")
    for e in report.get("earlier_stages", []):  # the cascade against its own earlier stages, same images
        rows, final = e["summary"]["all"], report["summary"]["all"]
        lines.append(f"stage {e['stage']} ({e['image_size']} px) -> stage {report['stages']}: " + ", ".join(
            f"{t} {rows[t]['accuracy']:.3f} -> {final[t]['accuracy']:.3f}"
            for t in list(TASKS) + ["overall"] if t in rows and t in final))
    if "stage_changes" in report:
        ch = report["stage_changes"]
        lost, gained = sum(c["lost"] for c in ch.values()), sum(c["gained"] for c in ch.values())
        per_task = ", ".join(f"{t}: -{c['lost']} +{c['gained']}" for t, c in ch.items())
        lines.append(f"stage 1 -> stage {report['stages']}, image by image: lost {lost}, gained {gained}"
                     + (f" ({per_task}); pictured in stage_changes.png" if ch else ""))
    for task, c in report.get("relations", {}).items():  # why relation prompts fail
        lines.append(f"{task} outcomes: " + ", ".join(f"{k} {v}" for k, v in c.items())
                     + "  (swapped: the objects are there in the opposite relation)")
    return "\n".join(lines)
