"""The architecture's layers (../shared/specs/architecture.md): a module never imports one of a higher layer, not
even inside a function, no import cycle exists, every module has a stated layer, and importing loads nothing heavy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "pixelcascade"

# The layer of every module (a package name covers the modules inside it unless one is named on its own).
LAYERS = {
    "errors": 0, "version": 0, "inputs": 0, "config": 0, "utils": 0, "images": 0, "tensorfiles": 0,
    "presets": 1, "shipped": 1, "nn": 1, "model_card": 1,
    "diffusion": 1, "diffusion.schedule": 1, "text": 1, "text.captions": 1, "text.bert": 1, "text.word_states": 1,
    "models": 2, "text.encoder": 2, "diffusion.denoiser": 2, "diffusion.losses": 2, "diffusion.guidance": 2,
    "diffusion.layout": 2, "features": 2,
    "samplers": 3, "convert": 3, "model_files": 3, "lora": 3, "offload": 3, "prompt_states": 3,
    "pipeline": 4, "weights": 4, "stage3": 4, "data": 4, "diffusers_export": 4,
    "api": 5, "memory": 5, "__init__": 5, "training": 5,  # the package's __init__ is the public face: pixelcascade.load
    "eval": 6,
    "serve": 7, "cli": 7,
}


def package_modules(pkg: Path) -> dict[str, Path]:
    """Dotted module name (relative to the package; a package's own __init__ is its name) -> file."""
    out = {}
    for path in sorted(pkg.rglob("*.py")):
        parts = path.relative_to(pkg).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported_modules(path: Path, mod: str, known: set[str], pkg_name: str) -> set[str]:
    """The package modules ``path`` imports anywhere in the file (function bodies included), resolved to the
    longest known module name: ``from .data.worlds import get_world`` -> data.worlds."""
    def resolve(name: str) -> str | None:
        while name:
            if name in known:
                return name
            name = name.rpartition(".")[0]
        return None

    is_pkg = path.name == "__init__.py"
    here = mod.split(".") if is_pkg else mod.split(".")[:-1]
    if mod == "__init__":
        here = []
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - node.level + 1] if node.level > 1 else here
            target = ".".join(base + ([node.module] if node.module else []))
            names = [f"{target}.{a.name}" if target else a.name for a in node.names] + [target]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == pkg_name:
            target = node.module[len(pkg_name) + 1:]
            names = [f"{target}.{a.name}" if target else a.name for a in node.names] + [target]
        elif isinstance(node, ast.Import):
            names = [a.name[len(pkg_name) + 1:] for a in node.names if a.name.startswith(pkg_name + ".")]
        for name in names:
            r = resolve(name)
            if r and r != mod:
                found.add(r)
                break  # "from . import x" names x, not the package; the first resolvable name is the import
    return found


def layer_of(mod: str, layers: dict[str, int]) -> int | None:
    best = max((k for k in layers if mod == k or mod.startswith(k + ".")), key=len, default=None)
    return None if best is None else layers[best]


def check_layers(pkg: Path, layers: dict[str, int]) -> list[str]:
    """Every breach: a module without a layer, an upward import, a cycle (each listed once)."""
    mods = package_modules(pkg)
    graph = {m: imported_modules(p, m, set(mods), pkg.name) for m, p in mods.items()}
    problems = [f"{m} has no layer in LAYERS" for m in mods if layer_of(m, layers) is None]
    for m, deps in sorted(graph.items()):
        for d in sorted(deps):
            lm, ld = layer_of(m, layers), layer_of(d, layers)
            if lm is not None and ld is not None and ld > lm:
                problems.append(f"{m} (layer {lm}) imports {d} (layer {ld})")
    problems += [f"import cycle: {' -> '.join(c + [c[0]])}" for c in _cycles(graph)]
    return problems


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_keeps_its_layer_and_no_cycle_exists():
    problems = check_layers(PKG, LAYERS)
    assert not problems, "\n".join(problems)


def test_the_check_finds_a_planted_upward_import_and_cycle(tmp_path):
    """The checker itself: a tiny package with an upward import inside a function, and a cycle."""
    pkg = tmp_path / "fakepkg"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "utils.py").write_text("def f():\n    from .eval import x\n")  # layer 0 -> 6, inside a function
    (pkg / "eval.py").write_text("from .data.curate import y\nx = 1\n")
    (pkg / "data" / "curate.py").write_text("from ..data import formats\ny = 2\n")
    (pkg / "data" / "formats.py").write_text("import fakepkg.data.curate\n")  # curate <-> formats
    (pkg / "orphan.py").write_text("")
    problems = check_layers(pkg, {"__init__": 0, "utils": 0, "data": 4, "eval": 6})
    assert "utils (layer 0) imports eval (layer 6)" in problems
    assert "import cycle: data.curate -> data.formats -> data.curate" in problems
    assert "orphan has no layer in LAYERS" in problems
    assert len(problems) == 3, problems
    (pkg / "utils.py").write_text("")
    (pkg / "data" / "formats.py").write_text("")
    (pkg / "orphan.py").unlink()
    assert check_layers(pkg, {"__init__": 0, "utils": 0, "data": 4, "eval": 6}) == []


def test_models_never_import_diffusion_or_text():
    mods = package_modules(PKG)
    for m, path in mods.items():
        if m.startswith("models"):
            deps = imported_modules(path, m, set(mods), PKG.name)
            assert not any(d.startswith(("diffusion", "text")) for d in deps), (m, deps)


def test_import_is_light():
    code = ("import sys, pixelcascade, pixelcascade.pipeline, pixelcascade.samplers;"
            "print(','.join(m for m in ('transformers','diffusers','matplotlib','deepfloyd_if') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
