"""The report as a person first sees it: a PNG of report.html's first screen, 1280×800, taken by headless Chromium
(`midpo report --screenshot`), written next to the report as `report.png`.

Chromium's own `--screenshot` mode is used, so nothing beyond the browser is needed (no driver, no Python package);
the test that checks the rendered page (tests/test_report_browser.py) drives the same browser through selenium.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from midpo_cli.errors import InputError, MidpoError

VIEWPORT = (1280, 800)  # a laptop's first screen: what the verdict and the trade-off figure must fit
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_browser() -> str | None:
    """The first Chromium-family browser on PATH, or None."""
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def screenshot(html: Path, out: Path | None = None, *, timeout: float = 120.0) -> Path:
    """report.html's first screen as a PNG (default: `report.png` beside it); an InputError naming the fix when no
    browser is installed, a MidpoError when the browser fails."""
    browser = find_browser()
    if browser is None:
        raise InputError(f"--screenshot needs Chromium or Chrome on PATH (Debian: apt-get install chromium); the "
                         f"report itself is written: {html}")
    out = out or html.with_name("report.png")
    with tempfile.TemporaryDirectory(prefix="midpo-browser-") as profile:
        shot = Path(profile) / "shot.png"
        argv = [browser, "--headless=new", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                f"--user-data-dir={profile}", f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}", f"--screenshot={shot}",
                html.resolve().as_uri()]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            argv.insert(1, "--no-sandbox")  # Chromium refuses to run as root inside its sandbox
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise MidpoError(f"{browser} took more than {timeout:.0f}s to draw {html}") from None
        if proc.returncode != 0 or not shot.is_file():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise MidpoError(f"{browser} could not draw {html} (exit {proc.returncode}): {last}")
        shutil.move(str(shot), out)
    return out
