"""WebSocket (HTTP Upgrade) tunnelled through the proxy, and drained after a switch."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct

import aiohttp
import pytest
from aiohttp import WSMsgType

from proxy.routing import ProxyTimeouts, Upstream
from proxy.websocket import GOING_AWAY
from tests.support.colours import ColourApp
from tests.support.net import RunningProxy, TableFactory

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def test_websocket_echo_through_the_proxy(proxy: RunningProxy) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(proxy.url + "/ws") as ws:
        for i in range(20):
            await ws.send_str(f"message {i}")
            reply = await ws.receive(timeout=5)
            assert reply.type == WSMsgType.TEXT
            assert reply.data == f"blue: message {i}"
    assert proxy.server.stats.requests[("blue", "live", 101)] == 1


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


async def test_drained_websocket_gets_close_1001_at_both_ends(
    proxy: RunningProxy, make_table: TableFactory, colours: dict[str, ColourApp]
) -> None:
    drain = ProxyTimeouts(drain=0.3)
    proxy.server.swap_table(make_table(timeouts=drain))
    async with aiohttp.ClientSession() as session, session.ws_connect(proxy.url + "/ws") as old:
        await old.send_str("hi")
        assert (await old.receive(timeout=5)).data == "blue: hi"
        proxy.server.swap_table(make_table("green", version="v2", timeouts=drain))
        closing = await old.receive(timeout=5)
        assert closing.type == WSMsgType.CLOSE
        assert closing.data == GOING_AWAY
        assert closing.extra == "bluegreen: switched to green"
    async with asyncio.timeout(5):
        while not colours["blue"].ws_close_codes:  # noqa: ASYNC110 - the app's own record
            await asyncio.sleep(0.01)
    assert colours["blue"].ws_close_codes == [GOING_AWAY]


async def test_shutdown_sends_websockets_close_1001_at_once(proxy: RunningProxy) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(proxy.url + "/ws") as ws:
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == "blue: hi"
        shutdown = asyncio.create_task(proxy.server.shutdown(10))
        closing = await ws.receive(timeout=2)  # long before the 10 s grace
        assert (closing.type, closing.data) == (WSMsgType.CLOSE, GOING_AWAY)
        assert closing.extra == "bluegreen: shutting down"
        await asyncio.wait_for(shutdown, 2)


def handshake_answer(request: bytes) -> bytes:
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


async def test_close_1001_waits_for_the_frame_in_progress(
    proxy: RunningProxy, make_table: TableFactory
) -> None:
    """The drain fires while a frame is half sent: the Close frame follows that frame's end,
    so the client receives the whole message and then a clean close, never a corrupt frame."""
    upstream_got = bytearray()

    async def slow_frame(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(handshake_answer(await reader.readuntil(b"\r\n\r\n")))
        payload = bytes(range(256)) * 4  # 1024 bytes: 126 + 16-bit length
        writer.write(b"\x82\x7e" + struct.pack("!H", len(payload)) + payload[:500])
        await writer.drain()
        await asyncio.sleep(0.8)  # the 0.3 s drain fires in here
        writer.write(payload[500:])
        await writer.drain()
        upstream_got.extend(await reader.read(4096))
        writer.close()

    raw = await asyncio.start_server(slow_frame, "127.0.0.1", 0)
    port = int(raw.sockets[0].getsockname()[1])
    drain = ProxyTimeouts(drain=0.3)
    ups = {"blue": Upstream("blue", f"http://127.0.0.1:{port}", "127.0.0.1", port)}
    ups["green"] = make_table().upstreams["green"]
    try:
        proxy.server.swap_table(make_table(timeouts=drain, upstreams=ups))
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(proxy.url + "/ws")
            proxy.server.swap_table(
                make_table("green", version="v2", timeouts=drain, upstreams=ups)
            )
            message = await ws.receive(timeout=5)
            assert message.type == WSMsgType.BINARY
            assert message.data == bytes(range(256)) * 4
            closing = await ws.receive(timeout=5)
            assert (closing.type, closing.data) == (WSMsgType.CLOSE, GOING_AWAY)
            await ws.close()
        # The upstream got a masked Close frame with code 1001.
        assert upstream_got[:1] == b"\x88"
        length = upstream_got[1] & 0x7F
        assert upstream_got[1] & 0x80
        mask, body = upstream_got[2:6], upstream_got[6 : 6 + length]
        unmasked = bytes(b ^ mask[i % 4] for i, b in enumerate(body))
        assert struct.unpack("!H", unmasked[:2])[0] == GOING_AWAY
    finally:
        raw.close()


async def test_streaming_response_on_old_colour_lives_until_drain_timeout(
    proxy: RunningProxy, make_table: TableFactory
) -> None:
    """A long response keeps flowing through the drain window, then is cut (never looking
    complete), and the client's next request lands on the new colour."""
    drain = ProxyTimeouts(drain=0.5)
    proxy.server.swap_table(make_table(timeouts=drain))
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/ticks") as stream:
            assert stream.headers["X-Bluegreen-Colour"] == "blue"
            assert (await stream.content.readline()).startswith(b"blue tick 0")
            proxy.server.swap_table(make_table("green", version="v2", timeouts=drain))
            switched = loop.time()
            after_switch = 0
            with pytest.raises(aiohttp.ClientPayloadError):
                while line := await asyncio.wait_for(stream.content.readline(), 5):
                    assert line.startswith(b"blue tick")
                    after_switch += 1
            cut_after = loop.time() - switched
        assert after_switch >= 3  # still flowing during the drain window
        assert 0.4 <= cut_after < 2.0
        async with session.get(proxy.url + "/") as response:
            assert response.headers["X-Bluegreen-Colour"] == "green"
