"""Headless Chromium for the browser-view tests: the system package (Debian's `chromium`),
driven by Playwright pointed at that binary (never `playwright install`). Tests skip, saying
why, where either is missing."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str | None:
    """The system Chromium: $OPENCHAT_CHROMIUM, else the first candidate on PATH."""
    given = os.environ.get("OPENCHAT_CHROMIUM")
    if given:
        return given
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


@contextlib.contextmanager
def browser_page(width: int = 1280, height: int = 800) -> Iterator[tuple[object, list[str]]]:
    """A fresh page and the list its console errors and uncaught exceptions are appended to."""
    path = chromium_path()
    if path is None:
        pytest.skip("no system Chromium (apt-get install chromium, or set $OPENCHAT_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e .[dev])")
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=path,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
            timeout=180_000,
        )
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            # Playwright's default 30 s per wait is short for a loaded CI machine; each wait still
            # ends as soon as its condition holds.
            page.set_default_timeout(120_000)
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page, errors
        finally:
            browser.close()
