"""The architecture's layers: a lower layer never imports a higher one; importing loads nothing heavy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "pixelcascade"
LAYERS = {
    "config": 0, "utils": 0, "nn": 1, "diffusion.schedule": 1, "text.captions": 1,
    "models": 2, "text.encoder": 2, "diffusion.denoiser": 2, "diffusion.losses": 2, "diffusion.guidance": 2,
    "diffusion.layout": 2,
    "samplers": 3, "pipeline": 4, "training": 5, "data": 5, "eval": 5, "convert": 5, "api": 5, "commands": 6, "cli": 6,
}


def layer_of(mod: str) -> int | None:
    best = None
    for key, lv in LAYERS.items():
        if mod == key or mod.startswith(key + "."):
            if best is None or len(key) > len(best[0]):
                best = (key, lv)
    return None if best is None else best[1]


def _imports(path: Path, mod: str) -> set[str]:
    out = set()
    pkg_parts = mod.split(".")[:-1] if path.name != "__init__.py" else mod.split(".")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = pkg_parts[: len(pkg_parts) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            out.add(target)
            for alias in node.names:
                out.add(f"{target}.{alias.name}" if target else alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pixelcascade."):
            out.add(node.module[len("pixelcascade."):])
    return out


def test_no_upward_imports():
    breaches = []
    for path in PKG.rglob("*.py"):
        mod = ".".join(path.relative_to(PKG).with_suffix("").parts)
        mine = layer_of(mod)
        if mine is None:
            continue
        for imp in _imports(path, mod):
            theirs = layer_of(imp)
            if theirs is not None and theirs > mine:
                breaches.append(f"{mod} (layer {mine}) imports {imp} (layer {theirs})")
    assert not breaches, "\n".join(breaches)


def test_models_never_import_diffusion_or_text():
    for path in (PKG / "models").rglob("*.py"):
        imps = _imports(path, "models." + path.stem)
        assert not any(i.startswith(("diffusion", "text")) for i in imps), path


def test_import_is_light():
    code = ("import sys, pixelcascade, pixelcascade.pipeline, pixelcascade.samplers;"
            "print(','.join(m for m in ('transformers','diffusers','matplotlib','deepfloyd_if') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
