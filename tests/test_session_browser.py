"""Sessions across a switch in a real browser: Debian's Chromium loads a page from blue, the
config switches to green, and the page's own fetches keep reaching blue until the drain timeout
(session.affinity: cookie), while a new browser gets green at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page

from controller.process import ProxyProcess
from tests.support.colours import BreakableColour
from tests.support.in_process import breakable_colours, in_process_proxy
from tests.support.waiting import wait_for

WAIT_MS = 5000
DRAIN = 6.0  # session.drainTimeout: long enough to see the session kept, short to see it end
SESSION_KEYS = f"session.affinity: cookie\nsession.drainTimeout: {DRAIN:g}s\n"


def config_text(colours: dict[str, BreakableColour], active: str) -> str:
    """The config: session affinity on, health checks that a loaded machine cannot fail by
    accident (a missed check of blue would end the window early, of green roll back)."""
    return (
        f"active: {active}\nupstream.blue: {colours['blue'].url}\n"
        f"upstream.green: {colours['green'].url}\n"
        "health.interval: 1s\nhealth.timeout: 1s\nrollback.enabled: false\n" + SESSION_KEYS
    )


Running = tuple[ProxyProcess, dict[str, BreakableColour], Path]


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    """A bluegreen process with session affinity (blue live) in front of two apps."""
    async with breakable_colours() as colours:
        config = tmp_path / "bluegreen.yaml"
        config.write_text(config_text(colours, "blue"))
        async with in_process_proxy(config, healthy=()) as process:
            yield process, colours, config


async def fetched_by(page: Page, path: str) -> str:
    """What the page's own script gets from `path` (a fetch, as a single-page app makes)."""
    text: str = await page.evaluate("path => fetch(path).then(r => r.text())", path)
    return text.strip()


async def test_a_page_loaded_before_the_switch_keeps_fetching_from_blue(
    running: Running, browser: Browser
) -> None:
    process, colours, config = running
    base = f"http://127.0.0.1:{process.proxy_port}"
    context = await browser.new_context()
    page = await context.new_page()
    response = await page.goto(f"{base}/app", timeout=WAIT_MS)
    assert response is not None and response.status == 200
    assert (await page.inner_text("body")).strip() == "blue"
    [cookie] = [c for c in await context.cookies(base) if c["name"] == "bluegreen_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert cookie["value"].startswith("blue.")

    config.write_text(config_text(colours, "green"))
    await wait_for(
        lambda: process.state.table is not None and process.state.table.active == "green",
        5,
        "the switch to green",
    )
    switched = asyncio.get_running_loop().time()
    # The page loaded from blue goes on asking blue for its assets and API.
    assert await fetched_by(page, "/assets/app.3f2a.js") == "blue"
    assert await fetched_by(page, "/api/cart") == "blue"
    kept_for = asyncio.get_running_loop().time() - switched
    assert kept_for < DRAIN, "the fetches after the switch took longer than the drain timeout"
    # A browser that arrives now gets green from the first request.
    other = await browser.new_context()
    other_page = await other.new_page()
    await other_page.goto(f"{base}/app", timeout=WAIT_MS)
    assert (await other_page.inner_text("body")).strip() == "green"
    assert await fetched_by(other_page, "/api/cart") == "green"
    await other.close()

    # After the drain timeout the old session moves to green too, and gets green's cookie.
    left = DRAIN - (asyncio.get_running_loop().time() - switched)
    await asyncio.sleep(max(left, 0) + 0.5)
    assert await fetched_by(page, "/api/cart") == "green"
    [cookie] = [c for c in await context.cookies(base) if c["name"] == "bluegreen_session"]
    assert cookie["value"].startswith("green.")
    await context.close()
