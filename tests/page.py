"""Driving the web page in a real headless Chromium (Debian's chromium and chromium-driver, through Selenium): the
helpers tests/test_serve.py and bench/serve_latency.py share. Selenium and the browser are imported when used."""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, log: Path | None = None, timeout: float = 120.0) -> subprocess.Popen:
    """`pixelcascade serve` on ``port``, once it answers (its output into ``log``)."""
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115  (the server writes it while it runs)
    proc = subprocess.Popen([sys.executable, "-m", "pixelcascade.cli", "serve", "--port", str(port)],
                            stdout=out, stderr=subprocess.STDOUT)
    end = time.time() + timeout
    while time.time() < end:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"the server stopped: {log.read_text() if log else ''}") from None
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"the server did not answer in {timeout:.0f} s: {log.read_text() if log else ''}")


def browser(width: int = 1400, height: int = 1000):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


def wait(driver, css: str, timeout: float = 120.0):
    """The first element matching ``css`` within ``timeout``."""
    from selenium.webdriver.common.by import By
    end = time.time() + timeout
    while time.time() < end:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"nothing matched {css} in {timeout} s")


def fill(driver, elem_id: str, text: str) -> None:
    """Type ``text`` into the text box or number field with this id."""
    from selenium.webdriver.common.by import By
    box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input")
    box.clear()
    box.send_keys(text)


def upload(driver, elem_id: str, path: str | Path) -> None:
    wait(driver, f"#{elem_id} input[type=file]").send_keys(str(path))


def click(driver, elem_id: str) -> None:
    from selenium.webdriver.common.by import By
    driver.find_element(By.CSS_SELECTOR, f"#{elem_id}").click()


def open_tab(driver, url: str, name: str) -> None:
    """The page afresh, on the tab called ``name``."""
    from selenium.webdriver.common.by import By
    driver.get(url)
    wait(driver, "#generate")
    driver.find_element(By.XPATH, f"//button[@role='tab' and contains(., '{name}')]").click()


def shown(img_element) -> np.ndarray:
    """The pixels of an image on the page, as the browser fetched them."""
    from PIL import Image
    with urllib.request.urlopen(img_element.get_attribute("src")) as r:
        return np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"))


def command(driver, tab: str = "") -> list[str]:
    """The page's "same images from the command line", split into arguments."""
    import shlex

    from selenium.webdriver.common.by import By
    return shlex.split(driver.find_element(By.CSS_SELECTOR, f"#{tab}command textarea").get_attribute("value"))


def message(driver, text: str, timeout: float = 60.0) -> bool:
    """Whether ``text`` shows on the page within ``timeout``."""
    end = time.time() + timeout
    while time.time() < end:
        if text in driver.page_source:
            return True
        time.sleep(0.2)
    return False


def paint(driver, elem_id: str, picture_side: int, x0: float, x1: float) -> None:
    """Brush strokes over the columns [x0, x1) (fractions of the picture's width), top to bottom, on the image
    editor's canvas, where the picture sits centred at the zoom its toolbar shows."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    canvas = driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} canvas")[-1]
    zoom = next(float(e.text[:-1]) / 100 for e in driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} *")
                if e.text.endswith("%") and e.text[:-1].isdigit())
    side = picture_side * zoom
    chain = ActionChains(driver)
    for f in np.linspace(x0, x1, 5):  # one chain of 5 strokes: each WebDriver round trip costs the page time
        chain.move_to_element_with_offset(canvas, int((f - 0.5) * side), int(-side * 0.48)).click_and_hold()
        for _ in range(4):
            chain.move_by_offset(0, int(side * 0.24))
        chain.release()
    chain.perform()
