"""Fuzzing the command line and the API (hypothesis): random and adversarial flags, prompts, images, masks, model
files and dataset folders.

The property, for every command: exit status 0 with valid outputs (PNGs that open, sidecars that are strict
JSON), or exit status 2 with one line naming the problem; never a traceback, never a file written outside the
output path. For the API: a result, or a :class:`pixelcascade.PixelcascadeError`.

The examples are derandomized, so CI tries the same ones on every run within a fixed budget. Set
PIXELCASCADE_FUZZ_EXAMPLES to try more (docs/reliability.md records the counts of the longer runs).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from conftest import png_declaring  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.control import currently_in_test_context  # noqa: E402

from pixelcascade.cli import main  # noqa: E402

EXAMPLES = int(os.environ.get("PIXELCASCADE_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=EXAMPLES or 30, deadline=None, derandomize=not EXAMPLES, database=None,
                suppress_health_check=list(HealthCheck))

# numbers as a careless or hostile user types them
NUMBERS = st.sampled_from(["0", "1", "2", "-1", "0.5", "1.5", "7", "nan", "inf", "-inf", "1e400", "abc", "",
                           "99999999999999999999999", " 3", "0x10", "1_0", "٣"])
SMALL = st.sampled_from(["1", "2", "0", "-1", "x", "1.0", "3"])
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=120)


def _workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def _strict_json(path: Path) -> None:
    def no_constants(name):
        raise ValueError(f"{path}: {name} is not JSON")
    json.loads(path.read_text(), parse_constant=no_constants)


def check_cli(argv: list[str], capsys, root: Path, out: Path) -> int:
    """Run the CLI in-process and assert the property; returns the exit status."""
    before = _files(root)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    _, err = capsys.readouterr()
    assert "Traceback" not in err, (argv, err)
    assert code in (0, 2), (argv, code, err)
    if currently_in_test_context():  # the outcome counts of --hypothesis-show-statistics
        hypothesis.event(f"exit {code}")
    if code == 2:
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error:" in ln]
        assert len(errors) == 1, (argv, err)
        assert all(ln in errors or ln.startswith(("warning:", "note:")) for ln in lines), (argv, err)
    new = _files(root) - before
    outside = [p for p in new if out != p and out not in p.parents and p.suffix != ".lock"]
    assert not outside, (argv, outside)
    for p in new:
        if p.suffix == ".json":
            _strict_json(p)
        elif p.suffix == ".png":
            from PIL import Image
            with Image.open(p) as im:
                im.load()
    return code


# -- generate ---------------------------------------------------------------------------------------------

GENERATE_FLAGS = {
    "--seed": NUMBERS | st.integers(0, 2 ** 64).map(str),
    "--num-images": SMALL,
    "--steps": st.sampled_from(["1", "2", "3", "0", "-2", "smart27", "fast27", "bogus", "1,2", "nan", "5000",
                                "ddim3", "2,0"]),
    "--steps-ii": st.sampled_from(["1", "2", "x", "0", "super27"]),
    "--guidance": NUMBERS, "--guidance-ii": NUMBERS, "--layout-guidance": NUMBERS, "--aug-level": NUMBERS,
    "--thresh-max": NUMBERS, "--thresh-max-ii": NUMBERS,
    "--sampler": st.sampled_from(["ddpm", "ddim", "dpmpp_2m", "euler", "", "DDPM"]),
    "--sampler-ii": st.sampled_from(["ddpm", "ddim", "heun"]),
    "--batch-size": SMALL,
    "--height": st.sampled_from(["16", "32", "48", "17", "0", "-16", "x", "4"]),
    "--width": st.sampled_from(["16", "32", "64", "15", "0", "x"]),
    "--stages": st.sampled_from(["1", "2", "3", "0"]),
    "--device": st.sampled_from(["cpu", "cuda", "tpu", "auto", "cuda:0", "", "CPU"]),
    "--dtype": st.sampled_from(["fp32", "bf16", "fp16", "int8", ""]),
    "--threads": st.sampled_from(["0", "1", "-1", "x"]),
    "--negative-prompt": TEXT,
    "--max-pixels": st.sampled_from(["1", "100", "50000000", "0", "x"]),
    "--text-encoder": st.sampled_from(["minilm", "/nonexistent", "", ".", "out"]),
    "--lora": st.sampled_from(["/nonexistent.safetensors", "x:abc", ":", "model.safetensors"]),
    "--stage3": st.sampled_from(["/nonexistent", "model.safetensors", ""]),
    "-o": st.sampled_from(["out/x.png", "out", "out/a/b", "out/x.jpg", "out/x.PNG"]),
}


@st.composite
def generate_argv(draw):
    prompts = draw(st.lists(TEXT, max_size=3))
    flags = draw(st.lists(st.sampled_from(sorted(GENERATE_FLAGS)), max_size=5, unique=True))
    argv = ["generate", *prompts]
    for f in flags:
        argv += [f, draw(GENERATE_FLAGS[f])]
    if draw(st.booleans()):
        argv.append("--save-stages")
    return argv


@FUZZ
@given(argv=generate_argv())
def test_fuzz_generate(argv, tiny_model, capsys, tmp_path_factory, monkeypatch):
    root = _workspace(tmp_path_factory)
    monkeypatch.chdir(root)
    (root / "model.safetensors").symlink_to(tiny_model)
    if "-o" not in argv:
        argv += ["-o", "out/x.png"]
    check_cli(argv + ["--model", str(tiny_model), "-q"], capsys, root, root / "out")


# -- images and masks -------------------------------------------------------------------------------------


@st.composite
def image_bytes(draw):
    """An image file's bytes: valid in many modes, sizes and formats, truncated, declaring a huge size, or noise."""
    from PIL import Image
    kind = draw(st.sampled_from(["png", "png", "jpeg", "truncated", "noise", "huge", "empty"]))
    if kind == "noise":
        return draw(st.binary(max_size=300))
    if kind == "empty":
        return b""
    mode = draw(st.sampled_from(["RGB", "RGBA", "L", "I;16", "I", "F", "P", "1", "LA", "CMYK"]))
    w, h = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    rng = np.random.default_rng(draw(st.integers(0, 9)))
    img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert(mode if mode != "I;16" else "I")
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    buf = io.BytesIO()
    if kind == "jpeg" and mode in ("RGB", "L", "CMYK"):
        img.save(buf, format="JPEG")
    elif mode in ("F", "CMYK", "I"):
        img.save(buf, format="TIFF")
    else:
        img.save(buf, format="PNG")
    data = buf.getvalue()
    if kind == "truncated":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if kind == "huge":
        return png_declaring(draw(st.sampled_from([9000, 20000, 70000])), 20000)
    return data


@st.composite
def image_argv(draw):
    command = draw(st.sampled_from(["img2img", "inpaint", "upscale"]))
    argv = [command, "in.img"]
    if command == "inpaint":
        argv.append(draw(st.sampled_from(["mask.img", "in.img", "missing.png"])))
    if command != "upscale":
        argv.append(draw(TEXT.filter(lambda t: not t.startswith("-"))) or "x")
        argv += ["--strength", draw(NUMBERS)] if draw(st.booleans()) else []
    else:
        argv += ["--scale", draw(NUMBERS | st.sampled_from(["2", "1", "4"]))] if draw(st.booleans()) else []
        argv += ["--prompt", draw(TEXT)] if draw(st.booleans()) else []
    argv += ["--steps", draw(st.sampled_from(["1", "2", "3"]))]
    if draw(st.booleans()):
        argv += ["--max-pixels", draw(st.sampled_from(["1", "500", "50000000"]))]
    return argv


@FUZZ
@given(argv=image_argv(), image=image_bytes(), mask=image_bytes())
def test_fuzz_image_commands(argv, image, mask, tiny_model, capsys, tmp_path_factory, monkeypatch):
    from pixelcascade.api import DEFAULT_MODEL
    root = _workspace(tmp_path_factory)
    monkeypatch.chdir(root)
    (root / "in.img").write_bytes(image)
    (root / "mask.img").write_bytes(mask)
    model = DEFAULT_MODEL / "stage2.safetensors" if argv[0] == "upscale" else tiny_model
    check_cli(argv + ["--model", str(model), "-o", "out/x.png", "-q"], capsys, root, root / "out")


# -- model files ------------------------------------------------------------------------------------------


@st.composite
def model_file(draw, source: Path):
    """The tiny model's file, damaged: noise, cut short, metadata edited, a tensor dropped, reshaped or retyped."""
    import torch
    from safetensors.torch import save

    from pixelcascade.tensorfiles import read_tensors
    data = source.read_bytes()
    kind = draw(st.sampled_from(["noise", "cut", "meta", "config", "drop", "shape", "dtype", "nan"]))
    if kind == "noise":
        return draw(st.binary(max_size=500))
    if kind == "cut":
        return data[: draw(st.integers(0, len(data) - 1))]
    tensors, meta = read_tensors(source)
    names = sorted(tensors)
    if kind == "meta":
        key = draw(st.sampled_from(sorted(meta)))
        meta = {**meta, key: draw(st.sampled_from(["", "{", "null", "[]", "1", '{"x": 1}', "NaN"]))}
        if draw(st.booleans()):
            meta.pop(key)
    elif kind == "config":
        cfg = json.loads(meta["unet_config"])
        field = draw(st.sampled_from(sorted(cfg)))
        cfg[field] = draw(st.sampled_from([-1, 0, 3, 1e9, "x", None, [], [0], {"a": 1}, True, 2.5]))
        meta = {**meta, "unet_config": json.dumps(cfg)}
    elif kind == "drop":
        tensors.pop(draw(st.sampled_from(names)))
    elif kind == "shape":
        k = draw(st.sampled_from(names))
        tensors[k] = torch.zeros(draw(st.integers(1, 5)), 3)
    elif kind == "dtype":
        k = draw(st.sampled_from(names))
        tensors[k] = tensors[k].to(draw(st.sampled_from([torch.int8, torch.bool, torch.float64, torch.int64])))
    elif kind == "nan":
        k = draw(st.sampled_from(names))
        tensors[k] = torch.full_like(tensors[k], float(draw(st.sampled_from(["nan", "inf"]))))
    return save(tensors, metadata=meta)


@FUZZ
@given(data=st.data())
def test_fuzz_model_files(data, tiny_model, capsys, tmp_path_factory, monkeypatch):
    root = _workspace(tmp_path_factory)
    monkeypatch.chdir(root)
    (root / "m.safetensors").write_bytes(data.draw(model_file(tiny_model)))
    command = data.draw(st.sampled_from([["generate", "a red circle"], ["export", "m.safetensors"]]))
    argv = command + ["-o", "out/x.png" if command[0] == "generate" else "out/x.safetensors"]
    if command[0] == "generate":
        argv += ["--model", "m.safetensors", "--steps", "2", "-q"]
    check_cli(argv, capsys, root, root / "out")


# -- dataset folders --------------------------------------------------------------------------------------


@st.composite
def dataset_folder(draw):
    """name -> bytes: images (good and bad), captions in any bytes, a manifest in any state."""
    files = {}
    for i in range(draw(st.integers(0, 6))):
        files[f"{i}.png"] = draw(image_bytes())
        caption = draw(st.sampled_from(["text", "bytes", "none", "empty"]))
        if caption == "text":
            files[f"{i}.txt"] = draw(TEXT).encode()
        elif caption == "bytes":
            files[f"{i}.txt"] = draw(st.binary(max_size=40))
        elif caption == "empty":
            files[f"{i}.txt"] = b""
    if draw(st.booleans()):
        rows = draw(st.lists(st.tuples(st.sampled_from(["0.png", "1.png", "../x.png", "", "nope.png"]), TEXT),
                             max_size=4))
        header = draw(st.sampled_from(["file,caption", "path,text", "x,y", ""]))
        files["manifest.csv"] = (header + "\n" + "\n".join(f"{a},{b!r}" for a, b in rows)).encode()
    if draw(st.booleans()):
        files["junk.tar"] = draw(st.binary(max_size=200))
    return files


@FUZZ
@given(files=dataset_folder(), flags=st.lists(st.sampled_from(
    [["--near-threshold", "nan"], ["--min-size", "-1"], ["--max-aspect", "2"], ["--per-shard", "1"],
     ["--aesthetic-threshold", "4.5"], ["--index", "hnsw"], ["--workers", "0"], ["--overwrite"]]), max_size=3))
def test_fuzz_curate(files, flags, capsys, tmp_path_factory, monkeypatch):
    root = _workspace(tmp_path_factory)
    monkeypatch.chdir(root)
    (root / "src").mkdir()
    for name, data in files.items():
        (root / "src" / name).write_bytes(data)
    check_cli(["curate", "src", "-o", "out", "-q", *[x for f in flags for x in f]], capsys, root, root / "out")


# -- the Python API ---------------------------------------------------------------------------------------

API_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 5), st.floats(allow_nan=True, allow_infinity=True),
                       st.sampled_from(["", "x", "ddim", "smart27", "2"]), st.lists(st.integers(0, 3), max_size=2))


@FUZZ
@given(model=st.sampled_from(["shapes", "nope", "", "/", "model.safetensors", "a,b"]),
       device=st.sampled_from(["cpu", "cuda", "tpu", 3, None]),
       dtype=st.sampled_from([None, "fp32", "bf16", "fp64", "float16", 1]))
def test_fuzz_api_load(model, device, dtype, tmp_path_factory, monkeypatch):
    import pixelcascade
    root = _workspace(tmp_path_factory)
    monkeypatch.chdir(root)
    (root / "model.safetensors").write_bytes(b"not a model")
    try:
        pixelcascade.load(model, device=device, dtype=dtype)
    except pixelcascade.PixelcascadeError as e:
        assert str(e) and "\n" not in str(e).strip()


@FUZZ
@given(prompts=st.one_of(TEXT, st.lists(TEXT, max_size=2), st.integers(), st.none()),
       kwargs=st.dictionaries(st.sampled_from(["seed", "num_images", "steps", "guidance", "sampler",
                                               "negative_prompt", "num_stages", "guidance_ii", "steps_ii",
                                               "aug_level"]), API_VALUES, max_size=4))
def test_fuzz_api_generate(prompts, kwargs, tiny_model):
    import pixelcascade
    cascade = _tiny_cascade(tiny_model)
    kwargs = {"steps": 2, **kwargs}
    try:
        images = cascade.generate(prompts, progress=False, **kwargs)
    except pixelcascade.PixelcascadeError as e:
        assert str(e)
        hypothesis.event("refused")
        return
    hypothesis.event("images made")
    assert images and all(im.size[0] > 0 for im in images)


_CASCADES: dict = {}


def _tiny_cascade(path):
    if path not in _CASCADES:
        import pixelcascade
        _CASCADES[path] = pixelcascade.load(str(path))
    return _CASCADES[path]


def test_the_property_holds_for_a_success_and_catches_a_traceback(tiny_model, capsys, tmp_path, monkeypatch):
    """The harness itself: a plain generate passes it (exit 0, PNG and strict-JSON sidecar in the output path), and
    a command that raises, or writes outside the output path, fails it."""
    import pixelcascade.cli as cli
    monkeypatch.chdir(tmp_path)
    argv = ["generate", "a red circle", "--model", str(tiny_model), "--steps", "2", "-o", "out/x.png", "-q"]
    assert check_cli(argv, capsys, tmp_path, tmp_path / "out") == 0
    assert (tmp_path / "out" / "x.json").is_file()
    with pytest.raises(AssertionError):  # the same run, its output path declared elsewhere: a write outside
        check_cli(argv[:-3] + ["-o", "out/y.png", "-q"], capsys, tmp_path, tmp_path / "elsewhere")

    def broken(_a):
        raise RuntimeError("a bug")
    monkeypatch.setattr(cli, "build_parser", _parser_calling(cli.build_parser, broken))
    with pytest.raises(RuntimeError):
        check_cli(argv, capsys, tmp_path, tmp_path / "out")


def _parser_calling(build, fn):
    def patched():
        ap = build()
        ap._subparsers._group_actions[0].choices["generate"].set_defaults(fn=fn)
        return ap
    return patched
