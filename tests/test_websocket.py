"""WebSocket (HTTP Upgrade) tunnelled through the proxy, and drained after a switch."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import WSMsgType

from proxy.routing import ProxyTimeouts
from tests.conftest import RunningProxy, TableFactory


async def test_websocket_echo_through_the_proxy(proxy: RunningProxy) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(proxy.url + "/ws") as ws:
        for i in range(20):
            await ws.send_str(f"message {i}")
            reply = await ws.receive(timeout=5)
            assert reply.type == WSMsgType.TEXT
            assert reply.data == f"blue: message {i}"
    assert proxy.server.stats.requests[("blue", "live", "1xx")] == 1


async def test_preview_websocket_reaches_the_idle_colour(proxy: RunningProxy) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(proxy.url + "/ws", headers={"X-Bluegreen-Preview": "1"}) as ws,
    ):
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == "green: hi"


async def test_websocket_on_old_colour_is_closed_after_drain_timeout(
    proxy: RunningProxy, make_table: TableFactory
) -> None:
    drain = ProxyTimeouts(drain=0.5)
    proxy.server.swap_table(make_table(timeouts=drain))
    async with aiohttp.ClientSession() as session:
        old = await session.ws_connect(proxy.url + "/ws")
        await old.send_str("before")
        assert (await old.receive(timeout=5)).data == "blue: before"
        proxy.server.swap_table(make_table("green", version="v2", timeouts=drain))
        # Still usable during the drain window...
        await old.send_str("during")
        assert (await old.receive(timeout=5)).data == "blue: during"
        # ...then closed, so the client reconnects and lands on the new colour.
        closed = await old.receive(timeout=5)
        assert closed.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR)
        async with session.ws_connect(proxy.url + "/ws") as new:
            await new.send_str("after")
            assert (await new.receive(timeout=5)).data == "green: after"
        await old.close()
    await asyncio.sleep(0)
