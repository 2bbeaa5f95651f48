"""Preview from a real browser: Debian's Chromium opens the preview link, sees the idle colour,
turns preview off and sees the live colour again, through a real bluegreen process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser

from tests.support.colours import breakable_config
from tests.support.in_process import breakable_colours, in_process_proxy

WAIT_MS = 5000


@pytest.fixture
async def proxy_port(tmp_path: Path) -> AsyncIterator[int]:
    """A bluegreen process (blue live, green idle, a preview token) in front of two apps."""
    async with breakable_colours() as colours:
        config = tmp_path / "bluegreen.yaml"
        config.write_text(breakable_config(colours, "blue", "preview.token: t0k\n"))
        async with in_process_proxy(config, healthy=()) as running:
            yield running.proxy_port


async def test_preview_link_on_and_off_in_a_browser(proxy_port: int, browser: Browser) -> None:
    base = f"http://127.0.0.1:{proxy_port}"
    context = await browser.new_context()
    page = await context.new_page()

    response = await page.goto(f"{base}/shop", timeout=WAIT_MS)
    assert response is not None and response.status == 200
    assert (await page.inner_text("body")).strip() == "blue"

    # The link redirects to `next` with the cookie set: the page shown is green's.
    link = f"{base}/.well-known/bluegreen/preview?token=t0k&next=/shop%3Fq%3D1"
    response = await page.goto(link, timeout=WAIT_MS)
    assert response is not None and response.status == 200
    assert page.url == f"{base}/shop?q=1"
    assert (await page.inner_text("body")).strip() == "green"
    cookies = await context.cookies(base)
    [cookie] = [c for c in cookies if c["name"] == "bluegreen_preview"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    # Script cannot read it (HttpOnly), and later navigations keep going to green.
    assert "bluegreen_preview" not in await page.evaluate("document.cookie")
    await page.goto(f"{base}/other", timeout=WAIT_MS)
    assert (await page.inner_text("body")).strip() == "green"

    # A fresh browser without the cookie is live.
    other = await browser.new_context()
    other_page = await other.new_page()
    await other_page.goto(f"{base}/shop", timeout=WAIT_MS)
    assert (await other_page.inner_text("body")).strip() == "blue"
    await other.close()

    # Off: back to blue, and the cookie is gone.
    await page.goto(f"{base}/.well-known/bluegreen/preview/off", timeout=WAIT_MS)
    assert page.url == f"{base}/"
    assert (await page.inner_text("body")).strip() == "blue"
    assert not [c for c in await context.cookies(base) if c["name"] == "bluegreen_preview"]
    await context.close()
