"""Retries: when a failed attempt is sent again, and the bounds on count and time.

Every upstream here is a real misbehaving server on a real socket; the attempts are counted
where they land, at the upstream, not inside the proxy.
"""

from __future__ import annotations

import asyncio

from proxy.routing import RetryPolicy
from tests.support.net import free_port, raw_exchange
from tests.support.upstreams import Handler, RawUpstreams

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def hang_up_on_first(count: list[int], answers_from: int = 2) -> Handler:
    """A handler that reads each request head and closes without answering before attempt
    `answers_from` (1-based), then answers 200."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        count[0] += 1
        await reader.readuntil(b"\r\n\r\n")
        if count[0] < answers_from:
            writer.close()
            return
        writer.write(OK)
        await writer.drain()
        writer.close()

    return handle


async def test_an_idempotent_request_closed_unanswered_is_sent_again(
    raw_upstreams: RawUpstreams,
) -> None:
    attempts = [0]
    proxy = await raw_upstreams.proxy_to(await raw_upstreams.start(hang_up_on_first(attempts)))
    raw = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 OK") and raw.endswith(b"ok")
    assert attempts[0] == 2
    assert proxy.server.stats.retries == {("blue", "closed"): 1}


async def test_a_request_with_a_body_is_not_sent_twice_once_it_went_out(
    raw_upstreams: RawUpstreams,
) -> None:
    """The body streamed to the first upstream is not kept, and the request may have been
    processed: a 502 is the honest answer, not a second POST."""
    attempts = [0]
    handler = hang_up_on_first(attempts, answers_from=100)
    proxy = await raw_upstreams.proxy_to(await raw_upstreams.start(handler))
    raw = await raw_exchange(
        proxy.port, b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
    )
    assert raw.startswith(b"HTTP/1.1 502 Bad Gateway")
    assert attempts[0] == 1
    raw = await raw_exchange(proxy.port, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 502 Bad Gateway")  # POST is never idempotent
    assert attempts[0] == 2
    assert proxy.server.stats.retries == {}


async def test_retries_stop_at_the_configured_count(raw_upstreams: RawUpstreams) -> None:
    attempts = [0]
    port = await raw_upstreams.start(hang_up_on_first(attempts, answers_from=100))
    proxy = await raw_upstreams.proxy_to(port, RetryPolicy(max_retries=2))
    raw = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 502 Bad Gateway")
    assert attempts[0] == 3  # the first attempt and two retries
    off = await raw_upstreams.proxy_to(port, RetryPolicy(max_retries=0))
    raw = await raw_exchange(off.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 502 Bad Gateway")
    assert attempts[0] == 4


async def test_no_retry_starts_after_the_retry_timeout(raw_upstreams: RawUpstreams) -> None:
    attempts = [0]

    async def slow_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        attempts[0] += 1
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.3)
        writer.close()

    port = await raw_upstreams.start(slow_hang_up)
    proxy = await raw_upstreams.proxy_to(port, RetryPolicy(max_retries=5, timeout=0.5))
    loop = asyncio.get_running_loop()
    started = loop.time()
    raw = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 502 Bad Gateway")
    # Attempts at 0 s and 0.3 s; at 0.6 s the budget of 0.5 s is spent, so no third attempt.
    assert attempts[0] == 2
    assert loop.time() - started < 1.5


async def test_no_retry_once_response_bytes_reached_the_client(raw_upstreams: RawUpstreams) -> None:
    attempts = [0]

    async def half_response(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        attempts[0] += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        writer.transport.abort()

    proxy = await raw_upstreams.proxy_to(await raw_upstreams.start(half_response))
    raw = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 OK")
    assert raw.endswith(b"\r\n\r\nabc")  # cut short: never a complete response
    assert attempts[0] == 1


async def test_a_refused_connection_is_retried_for_any_method_then_502(
    raw_upstreams: RawUpstreams,
) -> None:
    """Refused means nothing was sent: even a POST with a body may go again, within bounds."""
    dead = free_port()
    proxy = await raw_upstreams.proxy_to(dead, RetryPolicy(max_retries=2))
    raw = await raw_exchange(
        proxy.port, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    )
    assert raw.startswith(b"HTTP/1.1 502 Bad Gateway")
    assert b"refused" in raw
    stats = proxy.server.stats
    assert stats.retries == {("blue", "connect"): 2}
    assert stats.upstream_errors == {("blue", "connect"): 1}  # one request, one failure


async def test_a_refused_post_reaches_the_colour_once_it_listens(
    raw_upstreams: RawUpstreams,
) -> None:
    """A colour whose pods are restarting refuses for a moment; the retry carries the body."""
    received = bytearray()
    got_all = asyncio.Event()

    async def keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.extend(await reader.readuntil(b"\r\n\r\n"))
        received.extend(await reader.readexactly(5))
        got_all.set()
        writer.write(OK)
        await writer.drain()
        writer.close()

    port = free_port()
    proxy = await raw_upstreams.proxy_to(port, RetryPolicy(max_retries=1000, timeout=10))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
    stats = proxy.server.stats
    async with asyncio.timeout(5):
        while not stats.retries:  # noqa: ASYNC110 - polls the proxy's counter, set by no event
            await asyncio.sleep(0)  # the colour has refused at least once
    server = await asyncio.start_server(keep, "127.0.0.1", port)
    raw_upstreams.servers.append(server)
    answer = await asyncio.wait_for(reader.readuntil(b"ok"), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK")
    await asyncio.wait_for(got_all.wait(), 1)
    assert received.startswith(b"POST /p HTTP/1.1\r\n")
    assert received.endswith(b"\r\n\r\nhello")
    assert stats.retries[("blue", "connect")] >= 1
