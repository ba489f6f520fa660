"""The model shipped in the package: it loads offline, generates, and (slow) scores on the benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pixelcascade.cli import DEFAULT_MODEL, load_cascade, main

pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL / "stage1.safetensors").exists(), reason="no shipped model")


def test_shipped_model_generates(tmp_path):
    out = tmp_path / "a.png"
    assert main(["generate", "two red circles", "-o", str(out), "-q"]) == 0
    from PIL import Image
    img = np.asarray(Image.open(out))
    assert img.shape[2] == 3 and img.std() > 5  # not a blank canvas
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["prompt"] == "two red circles"


def test_shipped_metadata_carries_its_recipe():
    cascade = load_cascade(DEFAULT_MODEL, max_stages=1)
    meta = cascade.stages[0].meta
    assert "pixelcascade train shapes32" in meta["command"] and "seed" in meta["data_recipe"]
    assert json.loads(meta["run_config"])["train"]["seed"] == 0


@pytest.mark.slow
def test_shipped_model_scores_on_a_quarter_suite():
    from pixelcascade.eval.shapes_eval import evaluate_shapes
    cascade = load_cascade(DEFAULT_MODEL, max_stages=1)
    rep = evaluate_shapes(cascade, num_stages=1, per_task=16, seeds=1, progress=False)
    assert rep["summary"]["all"]["overall"]["accuracy"] >= 0.3
