"""Ship a trained emoji cascade into the package (issue 5's last step).

    python scripts/ship_emoji.py RUNS [--dest pixelcascade/weights/emoji] [--docs docs/emoji_eval]

RUNS is what `scripts/device_emoji.sh` returns (unpacked) or `scripts/train_emoji_cascade.sh` makes:
model/stage1.safetensors, model/stage2.safetensors, emoji_features.safetensors, eval/ and the stage1/, stage2/
run folders. Copies the three weight files to DEST (then `--model emoji` and `eval emoji` find them), the eval
report, contact sheets and both stages' validation CSVs to DOCS, and writes DEST/README.md from the files'
metadata (command, step, data recipe, sampling defaults), the validation MSE and the scores. Checks first and
refuses in one line: a missing file, a stage I that is not 64 px text-to-image, a stage II that is not a 64 -> 128
super-resolution stage, an extractor that is not one.
"""
import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pixelcascade.convert import read_tensors  # noqa: E402


def fail(msg: str) -> None:
    sys.exit(f"error: {msg}")


def val_rows(run: Path) -> list[dict]:
    p = run / "val_loss.csv"
    return list(csv.DictReader(p.open())) if p.is_file() else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs")
    ap.add_argument("--dest", default=str(ROOT / "pixelcascade" / "weights" / "emoji"))
    ap.add_argument("--docs", default=str(ROOT / "docs" / "emoji_eval"))
    a = ap.parse_args()
    runs, dest, docs = Path(a.runs), Path(a.dest), Path(a.docs)
    files = {"stage1": runs / "model" / "stage1.safetensors", "stage2": runs / "model" / "stage2.safetensors",
             "features": runs / "emoji_features.safetensors", "report": runs / "eval" / "report.json"}
    for name, p in files.items():
        if not p.is_file():
            fail(f"{p}: missing ({name}); run scripts/device_emoji.sh (or train_emoji_cascade.sh with the extractor)")
    meta = {k: read_tensors(files[k])[1] for k in ("stage1", "stage2", "features")}
    u1, u2 = (json.loads(meta[k]["unet_config"]) for k in ("stage1", "stage2"))
    if u1.get("super_res") or u1["image_size"] != 64:
        fail(f"{files['stage1']} is not a 64-px text-to-image stage (image_size {u1['image_size']})")
    if not u2.get("super_res") or u2["image_size"] != 128:
        fail(f"{files['stage2']} is not a 64 -> 128 super-resolution stage (image_size {u2['image_size']})")
    if meta["features"].get("kind") != "emoji-features":
        fail(f"{files['features']} is not an emoji feature extractor (pixelcascade data emoji-features)")
    report = json.loads(files["report"].read_text())

    dest.mkdir(parents=True, exist_ok=True)
    docs.mkdir(parents=True, exist_ok=True)
    shutil.copy2(files["stage1"], dest / "stage1.safetensors")
    shutil.copy2(files["stage2"], dest / "stage2.safetensors")
    shutil.copy2(files["features"], dest / "emoji_features.safetensors")
    shutil.copy2(files["report"], docs / "report.json")
    for png in sorted((runs / "eval").glob("contact_sheet_*.png")):
        shutil.copy2(png, docs / png.name)
    lines = ["# The shipped emoji cascade", "",
             "Made by `scripts/device_emoji.sh` / `scripts/train_emoji_cascade.sh` (docs/emoji.md); "
             "shipped with `python scripts/ship_emoji.py RUNS`.", ""]
    for k, title, run in (("stage1", "Stage I (64 px)", runs / "stage1"), ("stage2", "Stage II (64 -> 128)",
                                                                           runs / "stage2")):
        m = meta[k]
        lines += [f"## {title}: `{k}.safetensors`", "", "```bash", m.get("command", "?"), "```", "",
                  f"- step {m.get('step', '?')}; data: {m.get('data_recipe', '?')}",
                  f"- sampling defaults: `{m.get('sample_config', '?')}`"]
        rows = val_rows(run)
        if rows:
            shutil.copy2(run / "val_loss.csv", docs / f"{k}_val_loss.csv")
            first, last = rows[0], rows[-1]
            ts = [c for c in first if c != "step"]
            lines.append(f"- validation MSE ({' / '.join(ts)}), step {first['step']} -> {last['step']}: "
                         + ", ".join(f"{float(first[t]):.4f} -> {float(last[t]):.4f}" for t in ts))
        lines.append("")
    lines += ["## Extractor: `emoji_features.safetensors`", "", f"- {meta['features'].get('recipe', '?')}",
              f"- name in reports: `{report.get('extractor', '?')}`", "", "## Scores (`pixelcascade eval emoji`)", ""]
    table = ["| captions | n | retrieval top-1 | top-5 | chance | FID | KID |", "|---|---|---|---|---|---|---|"]
    for split in ("heldout", "train"):
        r = report[split]
        table.append(f"| {split} | {r['n']} | {r['top1']:.3f} | {r['top5']:.3f} | {r['chance_top1']:.4f} | "
                     f"{r['fid']:.2f} | {r['kid']:.4f} |")
    shown = docs.relative_to(ROOT) if docs.is_relative_to(ROOT) else docs
    lines += table + ["", f"Contact sheets and the report: `{shown}`."]
    (dest / "README.md").write_text("\n".join(lines) + "\n")
    sizes = sum((dest / f).stat().st_size for f in ("stage1.safetensors", "stage2.safetensors",
                                                    "emoji_features.safetensors"))
    print(f"shipped to {dest} ({sizes / 1e6:.1f} MB), docs in {docs}; model card: {dest / 'README.md'}")
    print("\n".join(table))


if __name__ == "__main__":
    main()
