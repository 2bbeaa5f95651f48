"""The `/status` page for people, in real headless Chromium (Debian's), driven by Playwright.

A real ProxyProcess runs from a local config file in front of two real colour apps. The page is
loaded once; every later change (a switch, an automatic rollback, a rejected config, the process
going away) must appear on it without a reload.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, expect

from controller.process import ProxyProcess
from tests.support.colours import BreakableColour as Colour
from tests.support.colours import breakable_config
from tests.support.files import atomic_write
from tests.support.in_process import breakable_colours, in_process_proxy, in_process_run

WAIT_MS = 5000  # every wait for the page to show something is bounded by this
XSS = "<img src=x onerror=window.__xss=1>"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
async def colours() -> AsyncIterator[dict[str, Colour]]:
    """Blue and green apps on loopback."""
    async with breakable_colours() as apps:
        yield apps


@pytest.fixture
async def process(
    colours: dict[str, Colour], tmp_path: Path
) -> AsyncIterator[tuple[ProxyProcess, Path, asyncio.Task[None]]]:
    """A ProxyProcess serving from a config file, with both colours already healthy."""
    config = tmp_path / "bluegreen.yaml"
    config.write_text(breakable_config(colours, "blue"))
    async with in_process_run(config, healthy=tuple(colours)) as (running, task):
        yield running, config, task


def keep(screenshot: Path) -> None:
    """Check a screenshot and copy it to $BLUEGREEN_ARTIFACTS when that is set."""
    check_png(screenshot)
    artifacts = os.environ.get("BLUEGREEN_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        check_png(Path(shutil.copy(screenshot, Path(artifacts) / screenshot.name)))


def check_png(path: Path) -> tuple[int, int]:
    """Assert `path` is a non-trivial PNG and return its width and height."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 800 and height >= 600, (width, height)
    assert len(data) > 20_000, f"{path} is only {len(data)} bytes"
    return width, height


async def test_status_page_follows_switch_rollback_error_and_lost_connection(
    process: tuple[ProxyProcess, Path, asyncio.Task[None]],
    colours: dict[str, Colour],
    browser: Browser,
    tmp_path: Path,
) -> None:
    running, config, task = process
    page: Page = await browser.new_page(viewport={"width": 1280, "height": 900})
    console_errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            console_errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: console_errors.append(f"page error: {error}"))

    url = f"http://127.0.0.1:{running.admin_port}/status"
    response = await page.goto(url, timeout=WAIT_MS)
    assert response is not None and response.status == 200
    headers = response.headers
    assert headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in headers["content-security-policy"]
    assert "Accept" in headers["vary"]
    # A marker that a reload would wipe: every later check must still find it.
    await page.evaluate("window.__loadedOnce = true")

    # Blue live, both colours healthy, each with its upstream.
    await expect(page.locator("#active")).to_have_text("blue", timeout=WAIT_MS)
    await expect(page.locator("#connection")).to_contain_text("Live", timeout=WAIT_MS)
    blue = page.locator('#colours tbody tr[data-colour="blue"]')
    green = page.locator('#colours tbody tr[data-colour="green"]')
    await expect(blue).to_contain_text("active (live)", timeout=WAIT_MS)
    await expect(blue).to_contain_text("healthy", timeout=WAIT_MS)
    await expect(blue).to_contain_text(colours["blue"].url, timeout=WAIT_MS)
    await expect(green).to_contain_text("idle (preview)", timeout=WAIT_MS)
    await expect(green).to_contain_text("healthy", timeout=WAIT_MS)
    await expect(green).to_contain_text(colours["green"].url, timeout=WAIT_MS)
    await expect(page.locator("#preview")).to_contain_text("X-Bluegreen-Preview")
    await expect(page.locator("#switches tbody")).to_contain_text("no switch")

    # A person switches to green by editing the file: the open page follows.
    atomic_write(config, breakable_config(colours, "green"))
    await expect(page.locator("#active")).to_have_text("green", timeout=WAIT_MS)
    latest = page.locator("#switches tbody tr").first
    await expect(latest).to_contain_text("blue", timeout=WAIT_MS)
    await expect(latest).to_contain_text("green")
    await expect(latest).to_contain_text("manual")
    await expect(green).to_contain_text("active (live)")

    # Green turns bad: the process rolls back by itself, and the page says why.
    colours["green"].healthy = False
    await expect(page.locator("#active")).to_have_text("blue", timeout=WAIT_MS)
    rollback = page.locator("#switches tbody tr").first
    reason = "rollback: green unhealthy (active health check)"
    await expect(rollback).to_contain_text(reason, timeout=WAIT_MS)
    await expect(rollback).to_have_class("rollback")
    await expect(page.locator("#switches tbody tr")).to_have_count(2)
    await expect(green).to_contain_text("unhealthy", timeout=WAIT_MS)
    await expect(green).to_contain_text("marked failed")
    await expect(green).to_contain_text("answered 503", timeout=WAIT_MS)
    # The file is the desired state, never rewritten: the page says green is held back.
    assert "active: green" in config.read_text()
    desired = page.locator("#desired")
    await expect(desired).to_contain_text("green", timeout=WAIT_MS)
    await expect(desired).to_contain_text(f"not served: {reason}")
    colours["green"].healthy = True
    await expect(green).not_to_contain_text("last probe", timeout=WAIT_MS)

    # An invalid edit, with markup in it: rejected, shown as text, never as markup.
    atomic_write(config, breakable_config(colours, XSS) + "drain.timeout: soon\n")
    error = page.locator("#last-error pre")
    await expect(error).to_contain_text(f"'{XSS}' is not one of the colours", timeout=WAIT_MS)
    await expect(error).to_contain_text("drain.timeout: 'soon' is not a duration")
    assert await page.locator("#last-error img").count() == 0
    assert await page.evaluate("document.images.length") == 0
    assert await page.evaluate("window.__xss === undefined")
    await expect(page.locator("#active")).to_have_text("blue")  # the last good config stays

    assert await page.evaluate("window.__loadedOnce === true"), "the page was reloaded"
    assert console_errors == []

    screenshot = tmp_path / "status-page.png"
    await page.screenshot(path=str(screenshot), full_page=True)
    keep(screenshot)

    # The process goes away: the page says its data is stale instead of showing it as current.
    running.stop()
    await asyncio.wait_for(task, 15)
    stale = page.locator("#stale")
    await expect(stale).to_be_visible(timeout=WAIT_MS)
    await expect(stale).to_contain_text("Connection lost")
    await expect(stale).to_contain_text("stale")
    await expect(page.locator("#connection")).to_contain_text("Connection lost")
    await expect(page.locator("#active")).to_have_text("blue")  # the last known state remains
    lost = tmp_path / "status-page-connection-lost.png"
    await page.screenshot(path=str(lost), full_page=True)
    keep(lost)
    await page.close()


async def test_status_page_shows_the_shadow_comparison(
    colours: dict[str, Colour], browser: Browser, tmp_path: Path
) -> None:
    config = tmp_path / "bluegreen.yaml"
    config.write_text(breakable_config(colours, "blue", "shadow.percent: 100\n"))
    colours["green"].failing_under = "/api"
    async with in_process_proxy(config, healthy=()) as running:
        async with aiohttp.ClientSession() as session:
            for path in ("/", "/api/cart", "/", "/api/cart"):
                async with session.get(f"http://127.0.0.1:{running.proxy_port}{path}") as r:
                    assert r.headers["X-Bluegreen-Colour"] == "blue"
        page: Page = await browser.new_page(viewport={"width": 1280, "height": 900})
        await page.goto(f"http://127.0.0.1:{running.admin_port}/status", timeout=WAIT_MS)
        green = page.locator('#shadow tbody tr[data-colour="green"]')
        await expect(green).to_contain_text("0.50", timeout=WAIT_MS)
        await expect(green).to_contain_text("2 x /api/cart: live 200, green 500 (500)")
        await expect(page.locator("#shadow-summary")).to_contain_text("100% of the live requests")
