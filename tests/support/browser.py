"""A pytest plugin with the `browser` fixture: Debian's Chromium, headless, through Playwright.

Any test that takes `browser` gets the `browser` marker (tests/support/markers.py), so bin/check
leaves it out and bin/test runs it. No browser is downloaded: Playwright drives the Chromium
that tests/tools/fetch_debian_tools.sh installs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, async_playwright

from tests.tools import debian_tool

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Nothing but loopback resolves: the browser cannot reach anything off this machine.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, through Playwright (no browser download)."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(debian_tool("chromium")), args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield launched
        finally:
            await launched.close()
