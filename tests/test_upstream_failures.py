"""Unreachable, slow and broken upstreams: 502, 504, and never a response that looks complete."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from proxy.routing import PoolSettings, ProxyTimeouts, RoutingTable, Upstream
from tests.support.net import RunningProxy, TableFactory, free_port, raw_exchange
from tests.support.upstreams import RawUpstreams, proxy_to

# Misbehaving upstreams are noticed fast: a read stall is a 504 after half a second.
FAST = ProxyTimeouts(read=0.5)


async def test_unreachable_colour_gets_502_naming_it(
    proxy: RunningProxy, make_table: TableFactory, colours: dict[str, object]
) -> None:
    dead = free_port()
    table = make_table()
    upstreams = dict(table.upstreams)
    upstreams["blue"] = Upstream("blue", f"http://127.0.0.1:{dead}", "127.0.0.1", dead)
    proxy.server.swap_table(make_table(upstreams=upstreams))
    async with aiohttp.ClientSession() as session, session.get(proxy.url + "/") as response:
        text = await response.text()
        assert response.status == 502
        assert response.headers["X-Bluegreen-Colour"] == "blue"
    assert "colour blue" in text and str(dead) in text and "refused" in text
    assert proxy.server.stats.upstream_errors[("blue", "connect")] == 1
    assert proxy.server.stats.requests[("blue", "live", 502)] == 1


async def test_stalled_upstream_gets_504(
    raw_upstreams: RawUpstreams,
) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(5)
        writer.close()

    proxy = await raw_upstreams.proxy_to(await raw_upstreams.start(stall), timeouts=FAST)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        raw = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 504 Gateway Timeout")
        assert b"colour blue" in raw and b"no response within 0.5s" in raw
        assert loop.time() - started < 3
    finally:
        await proxy.server.shutdown(0.5)


async def test_close_without_answer_gets_502(
    raw_upstreams: RawUpstreams,
) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    proxy = await raw_upstreams.proxy_to(await raw_upstreams.start(hang_up), timeouts=FAST)
    try:
        raw = await raw_exchange(proxy.port, b"POST / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 502 Bad Gateway")
        assert b"without a response" in raw
    finally:
        await proxy.server.shutdown(0.5)


async def test_reset_mid_body_cuts_the_client_connection(
    raw_upstreams: RawUpstreams,
) -> None:
    async def half_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000)
        await writer.drain()
        writer.transport.abort()

    proxy = await raw_upstreams.proxy_to(await raw_upstreams.start(half_body), timeouts=FAST)
    try:
        raw = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"Content-Length: 100000" in head
        assert len(body) < 100000  # the client sees a short body, never a complete response
        assert proxy.server.stats.upstream_errors[("blue", "reset")] == 1
    finally:
        await proxy.server.shutdown(0.5)


async def test_conflicting_upstream_framing_becomes_502(
    raw_upstreams: RawUpstreams,
) -> None:
    async def smuggle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"
        )
        await writer.drain()
        await asyncio.sleep(1)
        writer.close()

    proxy = await raw_upstreams.proxy_to(await raw_upstreams.start(smuggle), timeouts=FAST)
    try:
        raw = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 502 Bad Gateway")
        assert b"invalid response" in raw
        assert b"hello" not in raw
    finally:
        await proxy.server.shutdown(0.5)


async def test_close_delimited_upstream_body_is_chunked_to_the_client(
    raw_upstreams: RawUpstreams,
) -> None:
    async def old_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
        await writer.drain()
        writer.close()

    proxy = await raw_upstreams.proxy_to(await raw_upstreams.start(old_server), timeouts=FAST)
    try:
        raw = await raw_exchange(
            proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        assert b"Transfer-Encoding: chunked" in raw
        assert raw.endswith(b"d\r\nuntil the end\r\n0\r\n\r\n")
    finally:
        await proxy.server.shutdown(0.5)


async def test_stale_pooled_connection_is_retried_for_idempotent_requests(
    raw_upstreams: RawUpstreams,
) -> None:
    connections = 0

    async def one_request_then_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # Answers with keep-alive, then closes once the proxy reuses the connection: the race
        # every pool meets when an upstream's keep-alive timeout fires.
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()

    proxy = await raw_upstreams.proxy_to(
        await raw_upstreams.start(one_request_then_close), timeouts=FAST
    )
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                async with session.get(proxy.url + "/") as response:
                    assert response.status == 200
                    assert await response.text() == "ok"
        assert connections >= 3
    finally:
        await proxy.server.shutdown(0.5)


async def test_oversized_response_head_becomes_502(
    raw_upstreams: RawUpstreams,
) -> None:
    async def endless_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(100):
            writer.write(b"X-Filler: " + b"f" * 1000 + b"\r\n")
        await writer.drain()
        await asyncio.sleep(1)
        writer.close()

    proxy = await raw_upstreams.proxy_to(await raw_upstreams.start(endless_head), timeouts=FAST)
    try:
        raw = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 502 Bad Gateway")
        assert b"response head larger than 64 KiB" in raw
    finally:
        await proxy.server.shutdown(0.5)


async def test_upstream_connection_close_is_honoured(
    raw_upstreams: RawUpstreams,
) -> None:
    connections = 0

    async def one_shot(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Answers one request per connection and says so, as HTTP/1.0-era servers do.
        nonlocal connections
        connections += 1
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.3)  # closes late, so a pool ignoring "close" would reuse it
        writer.close()

    proxy = await raw_upstreams.proxy_to(await raw_upstreams.start(one_shot), timeouts=FAST)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                # POST with a body: never retried, so a reused dead connection would be a 502.
                async with session.post(proxy.url + "/", data=b"payload") as response:
                    assert response.status == 200
                    assert await response.text() == "ok"
        assert connections == 3
    finally:
        await proxy.server.shutdown(0.5)


async def test_past_max_inflight_the_answer_is_a_fast_503(
    proxy: RunningProxy, make_table: TableFactory
) -> None:
    table = make_table()
    proxy.server.swap_table(
        RoutingTable(
            "v2", table.active, table.idle, table.upstreams, pool=PoolSettings(max_inflight=2)
        )
    )
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:

        async def one() -> tuple[int, str | None, float]:
            started = loop.time()
            async with session.get(proxy.url + "/slow?delay=1") as response:
                await response.read()
                return response.status, response.headers.get("Retry-After"), loop.time() - started

        results = await asyncio.gather(*(one() for _ in range(5)))
    assert sorted(status for status, _, _ in results) == [200, 200, 503, 503, 503]
    for status, retry_after, took in results:
        if status == 503:
            assert retry_after == "1"
            assert took < 0.5  # answered at once, not queued behind the slow ones
    assert proxy.server.stats.upstream_errors[("blue", "overload")] == 3


STREAMING_UPSTREAM = """
import socket, sys, time
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
request = b""
while b"\\r\\n\\r\\n" not in request:
    request += conn.recv(65536)
conn.sendall(b"HTTP/1.1 200 OK\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n")
while True:
    conn.sendall(b"6\\r\\ntick\\r\\n\\r\\n")
    time.sleep(0.05)
"""


async def test_upstream_killed_mid_stream_closes_the_client_never_completing(
    tmp_path: Path,
) -> None:
    """SIGKILL of the upstream process during a streamed response: the client sees the
    connection end without the last chunk, so it can never take the response as complete."""
    script = tmp_path / "streaming_upstream.py"
    script.write_text(STREAMING_UPSTREAM)
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        port = int(await asyncio.wait_for(process.stdout.readline(), 10))
        proxy = await proxy_to(port, timeouts=ProxyTimeouts(read=5))
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(proxy.url + "/stream") as response,
            ):
                assert response.status == 200
                assert response.headers["Transfer-Encoding"] == "chunked"
                first = await response.content.readexactly(12)
                assert first == b"tick\r\n" * 2
                process.send_signal(signal.SIGKILL)
                with pytest.raises(aiohttp.ClientPayloadError):
                    await asyncio.wait_for(response.read(), 5)
            errors = proxy.server.stats.upstream_errors
            assert errors.get(("blue", "reset"), 0) + errors.get(("blue", "closed"), 0) == 1
            assert proxy.server.stats.retries == {}  # bytes had reached the client
        finally:
            await proxy.server.shutdown(0.5)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
