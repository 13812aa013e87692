"""Browser fixtures: Debian's headless Chromium driven by Playwright for Python (never `playwright install`)."""
from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@dataclass
class BrowserPage:
    """A fresh page (own storage) and the JavaScript errors it reported."""

    page: Page
    errors: list[str] = field(default_factory=list)


def chromium_executable() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("Debian's chromium is not installed (/usr/bin/chromium); scripts/ensure-chromium.sh installs it")
    return Path(found)


@pytest.fixture
async def browser_page() -> AsyncIterator[BrowserPage]:
    executable = chromium_executable()
    playwright_api = pytest.importorskip("playwright.async_api", reason="playwright (pip) is not installed")
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS, headless=True)
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        opened = BrowserPage(page)
        page.on("pageerror", lambda error: opened.errors.append(f"page error: {error}"))
        page.on("console", lambda message: opened.errors.append(f"console: {message.text}")
                if message.type == "error" else None)
        try:
            yield opened
        finally:
            await context.close()
            await browser.close()
