"""Drive the dashboard in headless Chromium: load every page, upload a query, save screenshots.

    python -m latentsight.dashboard.shoot --home /tmp/demo-home --out docs/screenshots --query IMAGE

Uses Debian's /usr/bin/chromium and /usr/bin/chromedriver through Selenium
(nothing is downloaded). The browser test in tests/dashboard uses the same code.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ROOT = Path(importlib.util.find_spec("latentsight").origin).resolve().parents[1]  # on PYTHONPATH
PAGES = [  # url path (the default page is at the root), title, the file name of its screenshot
    ("", "Search", "search.png"),
    ("anomalies", "Anomalies", "anomalies.png"),
    ("latent_map", "Latent map", "latent-map.png"),
    ("classes", "Classes & synthesis", "classes.png"),
    ("status", "Status", "status.png"),
]


def browser_available() -> bool:
    return CHROMIUM.is_file() and CHROMEDRIVER.is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(home: Path, *, port: int | None = None, log: Path | None = None,
          timeout: float = 180, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run `latentsight dashboard` on a loopback port; yields its URL, stops it afterwards.

    `env`: extra environment variables for the server (LATENTSIGHT_DATA_ROOTS, ...).
    """
    port = port or free_port()
    env = dict(os.environ, **(env or {}), PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    cmd = [sys.executable, "-m", "latentsight", "dashboard", "--home", str(home),
           "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                msg = f"`latentsight dashboard` exited with status {proc.returncode}"
                raise RuntimeError(msg)
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                msg = f"the dashboard did not answer on {url} within {timeout:.0f}s"
                raise RuntimeError(msg)
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if log:
            out.close()


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[object]:
    """A headless Chromium driven by chromedriver, with a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="ls-chromium-") as profile:
        opts = webdriver.ChromeOptions()
        opts.binary_location = str(CHROMIUM)
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                     f"--window-size={width},{height}"):
            opts.add_argument(flag)
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
        try:
            driver.set_page_load_timeout(120)
            yield driver
        finally:
            driver.quit()


def settle(driver, timeout: float = 120) -> None:
    """Wait until the Streamlit script run has finished (no running indicator for a moment)."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    quiet = 0
    while time.monotonic() < deadline:
        running = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]')
        stale = driver.find_elements(By.CSS_SELECTOR, '[data-stale="true"]')
        quiet = quiet + 1 if not running and not stale else 0
        if quiet >= 4:
            return
        time.sleep(0.5)
    msg = f"the page was still running after {timeout:.0f}s"
    raise TimeoutError(msg)


def wait_for(driver, css: str, count: int = 1, timeout: float = 120) -> list:
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        if len(found) >= count:
            return found
        time.sleep(0.5)
    msg = f"fewer than {count} elements matched {css!r} after {timeout:.0f}s"
    raise TimeoutError(msg)


def page_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def save_png(driver, path: Path, max_colors: int = 256) -> Path:
    """A screenshot reduced to a palette PNG (a few hundred KB at most)."""
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    img.quantize(colors=max_colors, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path


def lasso(driver, frac: float = 0.35) -> None:
    """Draw a lasso (a square loop) over the middle of the latent map's plot area."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    drag = driver.find_element(By.CSS_SELECTOR, '[data-testid="stPlotlyChart"] .nsewdrag')
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", drag)
    w, h = drag.size["width"], drag.size["height"]
    dx, dy = int(w * frac), int(h * frac)
    chain = ActionChains(driver).move_to_element_with_offset(drag, -dx, -dy).click_and_hold()
    for mx, my in ((2 * dx, 0), (0, 2 * dy), (-2 * dx, 0), (0, -2 * dy)):
        for _ in range(6):  # plotly samples the path from mouse moves
            chain = chain.move_by_offset(mx // 6, my // 6).pause(0.05)
    chain.release().perform()


def wait_text(driver, pattern: str, timeout: float = 120) -> str:
    """Wait until the page text matches the regular expression; returns the match."""
    import re

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, page_text(driver))
        if m:
            return m.group(0)
        time.sleep(0.5)
    return ""


def click_button(driver, label: str, index: int = 0) -> bool:
    from selenium.webdriver.common.by import By

    found = [b for b in driver.find_elements(By.XPATH, f"//button[normalize-space(.)='{label}']")
             if b.is_displayed()]
    if len(found) <= index:
        return False
    _click(driver, found[index])
    return True


def _click(driver, element) -> None:
    """Scroll an element to the middle of the view and click it (by script when the
    browser says another element would get the click)."""
    from selenium.common.exceptions import WebDriverException

    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    try:
        element.click()
    except WebDriverException:
        driver.execute_script("arguments[0].click()", element)


def drag_box(driver, chart=None, start: tuple[float, float] = (0.2, 0.2),
             end: tuple[float, float] = (0.7, 0.7)) -> None:
    """Drag a box (fractions of the plot area) on a plotly chart in select mode."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    root = chart or driver.find_element(By.CSS_SELECTOR, '[data-testid="stPlotlyChart"]')
    drag = root.find_element(By.CSS_SELECTOR, ".nsewdrag")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", drag)
    w, h = drag.size["width"], drag.size["height"]
    x0, y0 = int(w * (start[0] - 0.5)), int(h * (start[1] - 0.5))
    dx, dy = int(w * (end[0] - start[0])), int(h * (end[1] - start[1]))
    chain = ActionChains(driver).move_to_element_with_offset(drag, x0, y0).click_and_hold()
    for _ in range(6):
        chain = chain.move_by_offset(dx // 6, dy // 6).pause(0.05)
    chain.release().perform()


def field(driver, label: str, kind: str = "stTextInput", timeout: float = 30):
    """The input of a Streamlit text or number field by its label (waits for it)."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while True:
        for box in driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{kind}"]'):
            labels = box.find_elements(By.TAG_NAME, "label")
            if labels and labels[0].text.strip() == label and box.is_displayed():
                return box.find_element(By.TAG_NAME, "input")
        if time.monotonic() > deadline:
            break
        time.sleep(0.3)
    msg = f"no {kind} labelled {label!r}"
    raise LookupError(msg)


def choose(driver, label: str, option: str, timeout: float = 60) -> None:
    """Pick `option` (its shown text, or the start of it) in the selectbox labelled `label`."""
    from selenium.webdriver.common.by import By

    for box in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stSelectbox"]'):
        if box.find_element(By.TAG_NAME, "label").text.strip() != label:
            continue
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", box)
        opener = next(iter(box.find_elements(By.CSS_SELECTOR, '[data-baseweb="select"]')
                           or box.find_elements(By.CSS_SELECTOR, '[role="combobox"]')
                           or box.find_elements(By.TAG_NAME, "input")))
        _click(driver, opener)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for opt in driver.find_elements(By.CSS_SELECTOR, '[role="option"]'):
                if opt.text.strip().startswith(option):
                    opt.click()
                    return
            time.sleep(0.3)
        msg = f"no option {option!r} in {label!r}"
        raise LookupError(msg)
    msg = f"no selectbox labelled {label!r}"
    raise LookupError(msg)


def click_text(driver, css: str, text: str, index: int = 0) -> bool:
    """Click the `index`-th element matching css whose text is `text` (checkbox labels,
    expander headers, segmented-control buttons)."""
    from selenium.webdriver.common.by import By

    found = [e for e in driver.find_elements(By.CSS_SELECTOR, css)
             if e.is_displayed() and text in e.text.strip().splitlines()]  # icons: own line
    if len(found) <= index:
        return False
    _click(driver, found[index])
    return True


def tour(url: str, out: Path, query_image: Path, *, height: int = 1800) -> dict[str, object]:
    """Visit every page, upload `query_image` on Search, lasso points on the latent map and
    open one in the sample view; returns what was seen per page."""
    from selenium.webdriver.common.by import By

    out.mkdir(parents=True, exist_ok=True)
    seen: dict[str, object] = {}
    with chromium(height=height) as driver:
        for slug, title, name in PAGES:
            t0 = time.monotonic()
            driver.get(f"{url}/{slug}")
            wait_for(driver, "h1")
            settle(driver)
            loaded = time.monotonic() - t0
            if title == "Search":
                upload = wait_for(driver, 'input[type="file"]')[0]
                upload.send_keys(str(query_image))
                wait_for(driver, '[data-testid="stDownloadButton"]')
                settle(driver)
                driver.execute_script("window.scrollTo(0, 0)")
            if slug == "latent_map":
                wait_for(driver, '[data-testid="stPlotlyChart"] .nsewdrag')
                settle(driver)
            text = page_text(driver)
            seen[title] = {
                "title": driver.find_element(By.TAG_NAME, "h1").text.strip() == title
                and "Page not found" not in text,
                "exception": bool(driver.find_elements(By.CSS_SELECTOR,
                                                       '[data-testid="stException"]')),
                "images": len(driver.find_elements(By.CSS_SELECTOR,
                                                   '[data-testid="stImage"] img')),
                "text": text,
                "seconds": round(loaded, 2),
                "screenshot": str(save_png(driver, out / name)),
            }
            if slug == "latent_map":  # lasso points: the grid below shows them; open one
                lasso(driver)
                selected = wait_text(driver, r"\d+ selected", timeout=60)
                settle(driver)
                info: dict[str, object] = {"selected": int(selected.split()[0]) if selected
                                           else 0, "sample": ""}
                if selected:
                    save_png(driver, out / "latent-map-selection.png")
                    if click_button(driver, "Open"):
                        wait_text(driver, r"Nearest normal images", timeout=120)
                        settle(driver)
                        info["sample"] = driver.find_element(By.TAG_NAME, "h1").text
                        info["sample_text"] = page_text(driver)
                        save_png(driver, out / "sample.png")
                seen["map lasso"] = info
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--query", type=Path, required=True, help="image to upload on Search")
    args = ap.parse_args()
    with serve(args.home) as url:
        for title, info in tour(url, args.out, args.query).items():
            if "screenshot" in info:
                print(f"{title}: title {info['title']}, images {info['images']}, "
                      f"exception {info['exception']}, {info['seconds']}s "
                      f"-> {info['screenshot']}")
            else:
                print(f"{title}: {info['selected']} points selected, opened {info['sample']!r}")

if __name__ == "__main__":
    main()
