"""Strict request parsing at the edge: real bytes over a real socket, 400 and close.

What reaches the upstream is re-parsed with h11, an independent parser, and must be exactly one
well-formed request.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import h11
import httptools
import pytest

from proxy.metrics import TrafficStats
from proxy.routing import ClientLimits, RoutingTable, Upstream
from proxy.server import ProxyServer
from tests.support.net import RunningProxy, raw_exchange
from tests.support.upstreams import RecordingUpstream

SMUGGLING = [
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3x\r\n\r\nabc",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Nul: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Cr: a\rb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    b"GET /\nHTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x2e\r\n" + b"a" * 46,
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0_2e\r\n" + b"a" * 46,
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a:80x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
    b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
]


@pytest.fixture
async def recorded() -> AsyncIterator[tuple[RunningProxy, RecordingUpstream]]:
    upstream = RecordingUpstream()
    raw = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    port = int(raw.sockets[0].getsockname()[1])
    upstreams = {
        "blue": Upstream("blue", f"http://127.0.0.1:{port}", "127.0.0.1", port),
        "green": Upstream("green", f"http://127.0.0.1:{port}", "127.0.0.1", port),
    }
    server = ProxyServer(TrafficStats(), RoutingTable("v", "blue", "green", upstreams))
    listener = await server.listen("127.0.0.1", 0)
    yield RunningProxy(server, int(listener.sockets[0].getsockname()[1])), upstream
    await server.shutdown(0.5)
    raw.close()


def test_the_c_parser_is_in_use() -> None:
    assert httptools.HttpRequestParser.__module__ == "httptools.parser.parser"
    assert httptools.parser.parser.__file__.endswith(".so")


@pytest.mark.parametrize("payload", SMUGGLING, ids=range(len(SMUGGLING)))
async def test_ambiguous_requests_get_400_and_never_reach_upstream(
    recorded: tuple[RunningProxy, RecordingUpstream], payload: bytes
) -> None:
    proxy, upstream = recorded
    raw = await raw_exchange(proxy.port, payload)
    assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n"), raw
    assert b"Connection: close" in raw
    assert upstream.received == b""


async def test_forwarded_chunked_request_is_one_well_formed_request(
    recorded: tuple[RunningProxy, RecordingUpstream],
) -> None:
    proxy, upstream = recorded
    raw = await raw_exchange(
        proxy.port,
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n",
    )
    assert raw.startswith(b"HTTP/1.1 200 OK")
    server = h11.Connection(h11.SERVER)
    server.receive_data(bytes(upstream.received))
    request = server.next_event()
    assert isinstance(request, h11.Request)
    assert request.target == b"/up"
    body = b""
    while isinstance(event := server.next_event(), h11.Data):
        body += event.data
    assert body == b"abcde"
    assert isinstance(event, h11.EndOfMessage)
    assert server.next_event() is h11.NEED_DATA  # nothing smuggled behind it


async def test_oversized_request_head_gets_431(
    recorded: tuple[RunningProxy, RecordingUpstream],
) -> None:
    proxy, upstream = recorded
    filler = b"X-Filler: " + b"f" * 1000 + b"\r\n"
    raw = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n" + filler * 80)
    assert raw.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert upstream.received == b""


async def test_slow_request_head_gets_408_within_the_deadline(
    recorded: tuple[RunningProxy, RecordingUpstream],
) -> None:
    """Slowloris: one byte at a time never completes a head; the proxy answers 408 and closes."""
    _, upstream = recorded
    table = recorded[0].server.table
    assert table is not None
    server = ProxyServer(
        TrafficStats(),
        dataclasses.replace(table, limits=ClientLimits(head_timeout=0.5, keepalive_timeout=0.5)),
    )
    listener = await server.listen("127.0.0.1", 0)
    port = int(listener.sockets[0].getsockname()[1])
    loop = asyncio.get_running_loop()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = loop.time()
        answer = b""
        for byte in b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"z" * 100:
            writer.write(bytes([byte]))
            try:
                answer = await asyncio.wait_for(reader.read(4096), 0.05)
            except TimeoutError:
                continue
            break
        elapsed = loop.time() - started
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert await reader.read() == b""  # and the connection is closed
        assert 0.5 <= elapsed < 1.5
        writer.close()

        # An idle keep-alive connection is closed after keepalive_timeout.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200 OK")
        started = loop.time()
        assert await asyncio.wait_for(reader.read(), 3) == b""
        assert loop.time() - started < 1.5
        writer.close()
        assert upstream.received.count(b"GET / HTTP/1.1") == 1
    finally:
        await server.shutdown(0.5)


async def test_a_declined_upgrade_never_smuggles_the_bytes_after_it(
    recorded: tuple[RunningProxy, RecordingUpstream],
) -> None:
    """Bytes sent after an upgrade request are held until the upstream answers 101. When it
    declines (here: 200), they are dropped, so a request hidden behind the upgrade never
    reaches the upstream unparsed (the WebSocket smuggling of Varnish and Envoy advisories)."""
    proxy, upstream = recorded
    raw = await raw_exchange(
        proxy.port,
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"GET /internal HTTP/1.1\r\nHost: internal\r\nX-Bluegreen-Preview: 1\r\n\r\n",
    )
    assert raw.startswith(b"HTTP/1.1 200 OK")
    assert b"Connection: close" in raw
    await asyncio.sleep(0.1)
    assert b"/internal" not in upstream.received
    server = h11.Connection(h11.SERVER)
    server.receive_data(bytes(upstream.received))
    request = server.next_event()
    assert isinstance(request, h11.Request) and request.target == b"/ws"
    assert isinstance(server.next_event(), h11.EndOfMessage)
    assert server.trailing_data == (b"", False)


@pytest.mark.parametrize("length", [b"010", b"000000000005", b"05"])
async def test_content_length_goes_upstream_as_the_integer_parsed(
    recorded: tuple[RunningProxy, RecordingUpstream], length: bytes
) -> None:
    proxy, upstream = recorded
    size = int(length)
    raw = await raw_exchange(
        proxy.port,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: " + length + b"\r\n"
        b"Connection: close\r\n\r\n" + b"x" * size,
    )
    assert raw.startswith(b"HTTP/1.1 200 OK")
    assert b"\r\nContent-Length: %d\r\n" % size in bytes(upstream.received)
    assert b"Content-Length: " + length + b"\r\n" not in bytes(upstream.received)


@pytest.mark.parametrize(
    "request_line", [b"GET * HTTP/1.1", b"OPTIONS */test HTTP/1.1", b"POST *x HTTP/1.1"]
)
async def test_asterisk_form_is_only_options_star(
    recorded: tuple[RunningProxy, RecordingUpstream], request_line: bytes
) -> None:
    proxy, upstream = recorded
    raw = await raw_exchange(proxy.port, request_line + b"\r\nHost: a\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n"), raw
    assert upstream.received == b""
    raw = await raw_exchange(
        proxy.port, b"OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    assert raw.startswith(b"HTTP/1.1 200 OK")
    assert bytes(upstream.received).startswith(b"OPTIONS * HTTP/1.1\r\n")


@pytest.mark.parametrize(
    ("target", "host"),
    [
        (b"http://evil.example/admin", b"example.com"),
        (b"http://a:8080/", b"a"),
        (b"http://a/", b"a:8080"),
        (b"http://u@a/x", b"a"),
        (b"http://u:p@a/x", b"u:p@a"),
        (b"ftp://a/x", b"a"),
        (b"http:/x", b"a"),
        (b"/a#b", b"a"),
        (b"/a?x#", b"a"),
        (b"http://a/#frag", b"a"),
    ],
)
async def test_targets_the_upstream_could_read_otherwise_get_400(
    recorded: tuple[RunningProxy, RecordingUpstream], target: bytes, host: bytes
) -> None:
    """An absolute-form authority that disagrees with Host (the upstream must use the target's,
    RFC 9112 3.2.2; HAProxy's h1_host_normalization), userinfo, a raw '#' (a fragment is never
    sent, RFC 9110 4.2.5), a scheme other than http(s)."""
    proxy, upstream = recorded
    raw = await raw_exchange(
        proxy.port, b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
    )
    assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n"), raw
    assert b"Connection: close" in raw
    assert upstream.received == b""


@pytest.mark.parametrize(
    ("target", "host", "sent"),
    [
        (b"http://a/x?y=1", b"a", b"/x?y=1"),
        (b"HTTP://A:80", b"a", b"/"),
        (b"http://a?q", b"a:80", b"/?q"),
        (b"https://shop.example:443/p", b"shop.example", b"/p"),
        (b"http://[::1]:8080/v", b"[::1]:8080", b"/v"),
    ],
)
async def test_an_absolute_form_target_goes_upstream_in_origin_form(
    recorded: tuple[RunningProxy, RecordingUpstream], target: bytes, host: bytes, sent: bytes
) -> None:
    proxy, upstream = recorded
    raw = await raw_exchange(
        proxy.port,
        b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n",
    )
    assert raw.startswith(b"HTTP/1.1 200 OK"), raw
    assert bytes(upstream.received).startswith(b"GET " + sent + b" HTTP/1.1\r\nHost: " + host)


async def test_http10_with_transfer_encoding_gets_400_and_close(
    recorded: tuple[RunningProxy, RecordingUpstream],
) -> None:
    """RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing; for a
    request that is 400 and a close (6.3), even with `Connection: keep-alive`."""
    proxy, upstream = recorded
    raw = await raw_exchange(
        proxy.port,
        b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n"
        b"\r\n3\r\nabc\r\n0\r\n\r\nGET /second HTTP/1.0\r\nHost: a\r\n\r\n",
    )
    assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n"), raw
    assert raw.count(b"HTTP/1.1") == 1 and b"Connection: close" in raw
    assert upstream.received == b""


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
@pytest.mark.parametrize(
    "framing",
    [b"Content-Length: 3\r\n\r\nabc", b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"],
)
async def test_get_or_head_with_a_body_never_reuses_its_upstream_connection(
    recorded: tuple[RunningProxy, RecordingUpstream], method: bytes, framing: bytes
) -> None:
    """Forwarded, as nginx does, but the upstream connection is closed after it: an upstream
    that ignores a GET body would read it as the next request on a pooled connection."""
    proxy, upstream = recorded
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(method + b" /one HTTP/1.1\r\nHost: a\r\n" + framing)
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(
            b"HTTP/1.1 200 OK\r\n"
        )
        if method == b"GET":
            assert await reader.readexactly(2) == b"ok"
        writer.write(b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"ok"), 5)).startswith(b"HTTP/1.1 200")
        assert upstream.connections == 2
    finally:
        writer.close()
    assert bytes(upstream.received).count(b" HTTP/1.1\r\n") == 2


@pytest.mark.parametrize(
    "request_line",
    [
        b"ANNOUNCE / RTSP/1.0",
        b"SOURCE / ICE/1.0",
        b"GET / RTSP/1.1",
        b"GET / RTSP/2.0",
        b"SOURCE / ICE/1.1",
        b"GET / HTTP/2.0",
        b"POST / HTTP/0.9",
    ],
)
async def test_protocols_other_than_http_10_and_11_get_505(
    recorded: tuple[RunningProxy, RecordingUpstream], request_line: bytes
) -> None:
    """Never relabelled HTTP/1.1 and forwarded: 505, also pipelined or with the request line
    cut across reads."""
    proxy, upstream = recorded
    head = request_line + b"\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
    for payload in (head, b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n" + head):
        raw = await raw_exchange(proxy.port, payload)
        assert b"HTTP/1.1 505 HTTP Version Not Supported\r\n" in raw, raw
        assert b"Connection: close" in raw
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        cut = len(request_line) - 3
        for piece in (head[:4], head[4:cut], head[cut:]):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.02)
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n"), answer
    finally:
        writer.close()
    # The request before it in the same read is abandoned with it: nothing reached a colour.
    assert upstream.received == b""


@pytest.mark.parametrize(
    "codings",
    [
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Transfer-Encoding: deflate,chunked\r\n",
        b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
    ],
)
async def test_a_transfer_coding_the_proxy_does_not_implement_gets_501(
    recorded: tuple[RunningProxy, RecordingUpstream], codings: bytes
) -> None:
    """`gzip, chunked` would go upstream as `chunked` with gzip bytes (HAProxy answers 422)."""
    proxy, upstream = recorded
    raw = await raw_exchange(
        proxy.port, b"POST / HTTP/1.1\r\nHost: a\r\n" + codings + b"\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    assert raw.startswith(b"HTTP/1.1 501 Not Implemented\r\n"), raw
    assert b"Connection: close" in raw
    assert upstream.received == b""


@pytest.mark.parametrize(
    ("upgrade", "forwarded"),
    [(b"h2c", None), (b"H2C", None), (b"h2c, websocket", b"websocket")],
)
async def test_h2c_is_dropped_from_upgrade(
    recorded: tuple[RunningProxy, RecordingUpstream], upgrade: bytes, forwarded: bytes | None
) -> None:
    """An h2c upgrade through a proxy reaches the application unparsed (Envoy drops it): the
    request goes on without it, a WebSocket upgrade offered with it is kept."""
    proxy, upstream = recorded
    raw = await raw_exchange(
        proxy.port,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: "
        + upgrade
        + b"\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    assert raw.startswith(b"HTTP/1.1 200 OK"), raw
    received = bytes(upstream.received).lower()
    assert b"h2c" not in received and b"http2-settings" not in received
    if forwarded is None:
        assert b"upgrade" not in received
    else:
        assert b"\r\nupgrade: " + forwarded + b"\r\n" in received
        assert b"\r\nconnection: upgrade\r\n" in received
