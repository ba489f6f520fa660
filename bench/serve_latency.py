"""The web page's latency against the command line, for the same image, and a screenshot of every tab.

    python bench/serve_latency.py [--repeats 5] [--screenshots docs/]

Starts `pixelcascade serve` on a free port, drives it with a headless Chromium (Debian's chromium and
chromium-driver through Selenium): types the prompt, presses Generate and waits for the image; the time from the
click to the image on the page is set against the time `pixelcascade generate` reports for making the same image
(model loaded, sampling and writing the PNG; printed as "1 image(s) in X s"). Medians of --repeats runs, seeds
varied. With --screenshots, one PNG of each tab after it made an image.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PROMPT = "two red circles to the left of a blue square"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "pixelcascade.cli", "serve", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(240):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not start in 2 minutes")


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    opts = Options()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def wait(driver, css: str, timeout: float = 300.0, avoid: set = frozenset()):
    from selenium.webdriver.common.by import By
    end = time.time() + timeout
    while time.time() < end:
        found = [e for e in driver.find_elements(By.CSS_SELECTOR, css) if e.get_attribute("src") not in avoid]
        if found:
            return found[0]
        time.sleep(0.1)
    raise SystemExit(f"nothing matched {css}")


def fill(driver, elem_id: str, text: str) -> None:
    from selenium.webdriver.common.by import By
    box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input")
    box.clear()
    box.send_keys(text)


def page_time(driver, seed: int) -> float:
    from selenium.webdriver.common.by import By
    before = {e.get_attribute("src") for e in driver.find_elements(By.CSS_SELECTOR, "#gallery img")}
    fill(driver, "prompt", PROMPT)
    fill(driver, "seed", str(seed))
    t0 = time.perf_counter()
    driver.find_element(By.CSS_SELECTOR, "#generate").click()
    wait(driver, "#gallery img", avoid=before)
    return time.perf_counter() - t0


def client_time(port: int, seed: int) -> float:
    """The same job through Gradio's API client: the server's time without a browser on this machine."""
    from gradio_client import Client
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    t0 = time.perf_counter()
    client.predict(PROMPT, "", seed, 1, "smart27", "", 6, "ddpm", 0.25, 500, api_name="/wrapped")
    return time.perf_counter() - t0


def cli_time(seed: int, out: Path) -> float:
    r = subprocess.run([sys.executable, "-m", "pixelcascade.cli", "generate", PROMPT, "--seed", str(seed),
                        "-o", str(out / f"{seed}.png")], capture_output=True, text=True, check=True)
    return float(re.search(r"image\(s\) in ([0-9.]+) s", r.stderr).group(1))


def screenshots(driver, folder: Path) -> None:
    from selenium.webdriver.common.by import By
    driver.save_screenshot(str(folder / "serve_generate.png"))
    for tab in ("Image to image", "Inpaint", "Upscale"):
        driver.find_element(By.XPATH, f"//button[@role='tab' and contains(., '{tab}')]").click()
        time.sleep(0.5)
        driver.save_screenshot(str(folder / f"serve_{tab.lower().replace(' ', '_')}.png"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--screenshots", type=Path, help="save a PNG of every tab here")
    a = ap.parse_args()
    port = free_port()
    server = start_server(port)
    driver = browser()
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait(driver, "#generate")
        page_time(driver, 999)  # the first call compiles nothing but warms the caches; not counted
        page = [page_time(driver, s) for s in range(a.repeats)]
        client = [client_time(port, s) for s in range(a.repeats)]
        with tempfile.TemporaryDirectory() as tmp:
            cli = [cli_time(s, Path(tmp)) for s in range(a.repeats)]
        if a.screenshots:
            screenshots(driver, a.screenshots)
    finally:
        driver.quit()
        server.terminate()
    p, c, k = statistics.median(page), statistics.median(cli), statistics.median(client)
    print(json.dumps({"page_s": round(p, 3), "server_without_browser_s": round(k, 3), "cli_s": round(c, 3),
                      "page_over_cli": round(p / c, 3), "server_over_cli": round(k / c, 3),
                      "repeats": a.repeats, "cpu": platform.processor() or platform.machine(),
                      "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}, indent=2))


if __name__ == "__main__":
    main()
