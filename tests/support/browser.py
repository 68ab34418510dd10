"""Debian's Chromium, driven by Playwright, for tests that load the server's pages.

Playwright's own browser download is never used (the network may be closed to
it): `.ci/run` installs Debian's `chromium`. `TIDELOG_CHROMIUM` points
elsewhere. A missing or broken browser is `service_missing` (a failure in CI).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from support.services import service_missing

if TYPE_CHECKING:
    from playwright.async_api import Browser

CHROMIUM = os.environ.get("TIDELOG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def have_chromium() -> bool:
    return Path(CHROMIUM).exists()


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless Chromium for one test, closed after it."""
    if not have_chromium():
        service_missing(f"chromium not installed at {CHROMIUM} (apt-get install chromium)")
    from playwright.async_api import Error as PlaywrightError
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        try:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except PlaywrightError as exc:
            service_missing(f"chromium does not start: {exc}")
        try:
            yield browser
        finally:
            await browser.close()
