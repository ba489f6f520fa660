"""The web page's latency against the command line, for the same image, and a screenshot of every tab.

    python bench/serve_latency.py [--repeats 5] [--screenshots docs/]

Starts `pixelcascade serve` on a free port, drives it with a headless Chromium (Debian's chromium and
chromium-driver through Selenium): types the prompt and presses Generate; the page's own clock times the click to
the result's image loaded (the harness does not poll the page meanwhile). That is set against the time
`pixelcascade generate` reports for the same image (model loaded, sampling and writing the PNG; "1 image(s) in
X s") and against the server driven by Gradio's API client (no browser). The three run interleaved, --repeats
rounds, seeds varied; ratios are medians of each round's ratio. With --screenshots, a PNG of each tab.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import cpu_name  # noqa: E402
from page import browser, click, fill, free_port, open_tab, paint, start_server, upload, wait  # noqa: E402

PROMPT = "two red circles to the left of a blue square"


# Timed inside the page: the click and the new result's image having loaded, both by the page's own clock, so
# the measurement does not poll the browser while it works (a WebDriver poll costs the page CPU time).
WATCH_RESULT = """
const before = new Set([...document.querySelectorAll('#gallery img')].map(e => e.src));
window.__pixelcascade_done = null;
const seen = e => {
  const img = e.target;
  if (img.tagName === 'IMG' && img.closest('#gallery') && !before.has(img.src) && window.__pixelcascade_done === null)
    window.__pixelcascade_done = performance.now() - window.__pixelcascade_t0;
};
document.addEventListener('load', seen, true);
window.__pixelcascade_t0 = performance.now();
document.querySelector('#generate').click();
"""


def page_time(driver, seed: int, timeout: float = 300.0) -> float:
    fill(driver, "prompt", PROMPT)
    fill(driver, "seed", str(seed))
    driver.execute_script(WATCH_RESULT)
    end = time.time() + timeout
    while time.time() < end:
        time.sleep(0.5)
        done = driver.execute_script("return window.__pixelcascade_done")
        if done is not None:
            return done / 1000
    raise SystemExit("no image on the page")


def client_time(port: int, seed: int) -> float:
    """The same job through Gradio's API client: the server's time without a browser on this machine."""
    from gradio_client import Client
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    t0 = time.perf_counter()
    client.predict(PROMPT, "", seed, 1, "smart27", "", 6, "ddpm", 0.25, 500, api_name="/handler")
    return time.perf_counter() - t0


def cli_time(seed: int, out: Path) -> float:
    r = subprocess.run([sys.executable, "-m", "pixelcascade.cli", "generate", PROMPT, "--seed", str(seed),
                        "-o", str(out / f"{seed}.png")], capture_output=True, text=True, check=True)
    return float(re.search(r"image\(s\) in ([0-9.]+) s", r.stderr).group(1))


def screenshots(driver, url: str, folder: Path, picture: Path) -> None:
    """Each tab after it made an image (``picture``: a 64 px image the Generate tab made, as the edits' input)."""
    from PIL import Image
    driver.set_window_size(1400, 1500)
    driver.get(url)
    wait(driver, "#generate")
    page_time(driver, 3)
    driver.save_screenshot(str(folder / "serve_generate.png"))
    open_tab(driver, url, "Image to image")
    upload(driver, "i2i-image", picture)
    fill(driver, "i2i-prompt", "two blue circles to the left of a blue square")
    click(driver, "i2i-generate")
    wait(driver, "#i2i-gallery img", 300)
    driver.save_screenshot(str(folder / "serve_image_to_image.png"))
    open_tab(driver, url, "Inpaint")
    upload(driver, "inp-image", picture)
    time.sleep(1.0)
    paint(driver, "inp-image", 64, 0.55, 1.0)
    fill(driver, "inp-prompt", "a green triangle")
    click(driver, "inp-generate")
    wait(driver, "#inp-gallery img", 300)
    driver.save_screenshot(str(folder / "serve_inpaint.png"))
    small = picture.with_name("small.png")
    Image.open(picture).resize((32, 32), Image.BICUBIC).save(small)
    open_tab(driver, url, "Upscale")
    upload(driver, "up-image", small)
    click(driver, "up-generate")
    wait(driver, "#up-gallery img", 300)
    driver.save_screenshot(str(folder / "serve_upscale.png"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--screenshots", type=Path, help="save a PNG of every tab here")
    a = ap.parse_args()
    port = free_port()
    server = start_server(port)
    driver = browser()
    url = f"http://127.0.0.1:{port}/"
    rounds = []
    try:
        driver.get(url)
        wait(driver, "#generate")
        page_time(driver, 999)  # the first call compiles nothing but warms the caches; not counted
        with tempfile.TemporaryDirectory() as tmp:
            for seed in range(a.repeats):  # interleaved, so a machine that slows down mid-run slows each path alike
                driver.get("about:blank")  # the page closed while the CLI and the API client run alone
                cli, client = cli_time(seed, Path(tmp)), client_time(port, seed)
                driver.get(url)
                wait(driver, "#generate")
                rounds.append({"cli": cli, "client": client, "page": page_time(driver, seed)})
                print(json.dumps({k: round(v, 3) for k, v in rounds[-1].items()}), file=sys.stderr, flush=True)
            if a.screenshots:
                screenshots(driver, url, a.screenshots, Path(tmp) / "0.png")
    finally:
        driver.quit()
        server.terminate()

    def median(key: str, over: str | None = None) -> float:
        return round(statistics.median(r[key] / (r[over] if over else 1) for r in rounds), 3)
    print(json.dumps({"page_s": median("page"), "server_without_browser_s": median("client"), "cli_s": median("cli"),
                      "page_over_cli": median("page", "cli"), "server_over_cli": median("client", "cli"),
                      "repeats": a.repeats, "cpu": cpu_name(), "cores": os.cpu_count(),
                      "date": time.strftime("%Y-%m-%d")}, indent=2))


if __name__ == "__main__":
    main()
