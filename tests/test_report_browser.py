"""report.html as a person sees it: Debian's Chromium, headless, at 1280×800, driven by selenium through the system
chromedriver (nothing downloads a browser). From the rendered page: the verdict and the trade-off figure are on the
first screen with the gate-separation figure beside the verdict, every image loads, and no table is wider than the
page. `midpo report --screenshot` writes the first screen next to the report (kept with the test's run folder).

Skipped, with the reason, where Chromium, chromedriver or selenium is missing (developer machines); `.ci/run`
installs them.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from midpo_cli.evaluation.report_screenshot import VIEWPORT, find_browser

DRIVER = "/usr/bin/chromedriver"
REPO = Path(__file__).resolve().parents[1]


def _missing() -> str | None:
    if find_browser() is None:
        return "no Chromium on PATH (Debian: apt-get install chromium chromium-driver)"
    if not (os.access(DRIVER, os.X_OK) or shutil.which("chromedriver")):
        return "no chromedriver (Debian: apt-get install chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=f"report in a browser: {_missing()}")


@pytest.fixture(scope="module")
def page(small_run):
    """The run's report redrawn by `midpo report --screenshot`, open in headless Chromium at 1280×800."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    score = small_run.run / "score"
    proc = subprocess.run([sys.executable, "-m", "midpo_cli.cli", "report", str(score), "--screenshot"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    options = webdriver.ChromeOptions()
    options.binary_location = find_browser()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER if os.access(DRIVER, os.X_OK) else shutil.which("chromedriver")),
                              options=options)
    try:  # the viewport itself is 1280×800 (a window of that size has less room inside)
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": VIEWPORT[0], "height": VIEWPORT[1],
                                                                      "deviceScaleFactor": 1, "mobile": False})
        driver.get((score / "report.html").as_uri())
        driver.save_screenshot(str(score / "report-selenium.png"))  # kept for review with the run
        yield driver, score
    finally:
        driver.quit()


def _box(driver, selector: str) -> dict:
    return driver.execute_script(f"const r = document.querySelector({selector!r}).getBoundingClientRect();"
                                 "return {top: r.top, bottom: r.bottom, left: r.left, right: r.right};")


def test_the_verdict_and_the_tradeoff_figure_are_on_the_first_screen(page) -> None:
    driver, _ = page
    assert driver.execute_script("return [innerWidth, innerHeight]") == list(VIEWPORT)
    verdict = _box(driver, ".verdict")
    assert 0 <= verdict["top"] and verdict["bottom"] <= VIEWPORT[1], verdict  # the whole verdict, unscrolled
    assert "ship " in driver.find_element("css selector", ".verdict").text  # its recommendation among its lines
    tradeoff = _box(driver, "img[alt='safety vs helpfulness']")
    assert tradeoff["top"] < VIEWPORT[1] - 300, tradeoff  # the headline figure starts well inside the first screen
    gates = _box(driver, "img[alt='gate separation']")  # beside the verdict: same band, to its right
    assert gates["left"] >= verdict["right"] and gates["top"] < verdict["bottom"] and gates["bottom"] <= VIEWPORT[1]


def test_every_image_loads_and_no_table_overflows_the_page(page) -> None:
    driver, _ = page
    images = driver.execute_script("return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
    assert len(images) >= 4 and all(done and width > 0 for _, done, width in images), images
    width = driver.execute_script("return document.documentElement.clientWidth")
    assert driver.execute_script("return document.documentElement.scrollWidth") <= width
    tables = driver.execute_script("return Array.from(document.querySelectorAll('table')).filter(t => t.offsetParent)"
                                   ".map(t => [t.getBoundingClientRect().right, t.scrollWidth, t.clientWidth])")
    assert tables and all(right <= width and scroll <= client + 1 for right, scroll, client in tables), tables


def test_report_screenshot_writes_the_first_screen_next_to_the_report(page) -> None:
    _, score = page
    png = (score / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == VIEWPORT
