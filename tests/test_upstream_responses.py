"""Responses the proxy writes itself (issue 13 item 4): raw upstream bytes over real sockets.

Each upstream here answers every request on a connection with the same raw bytes and counts its
connections, so a test sees both what the client got and whether the upstream connection was
used again.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.net import RunningProxy
from tests.support.upstreams import RawUpstreams


class Scripted:
    """An upstream answering each request head with `answer`, closing after when `close`."""

    def __init__(self, answer: bytes, *, close: bool = False) -> None:
        self.answer = answer
        self.close = close
        self.connections = 0
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer request heads until the proxy closes the connection."""
        self.connections += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                writer.write(self.answer)
                await writer.drain()
                if self.close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


async def start(raw_upstreams: RawUpstreams, scripted: Scripted) -> RunningProxy:
    """A proxy whose live colour is `scripted`."""
    return await raw_upstreams.proxy_to(await raw_upstreams.start(scripted.handle))


async def one_response(port: int, request: bytes) -> tuple[bytes, asyncio.StreamReader]:
    """Send `request` on a new connection and read one response head (and a 2-byte body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    if b"HTTP/1.1 1" in head[:10]:
        head += await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    reader.writer = writer  # type: ignore[attr-defined]
    return head, reader


GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


@pytest.mark.parametrize(
    ("answer", "status_line"),
    [
        # An extra CRLF after 100 Continue (one popular Python server sends it).
        (b"HTTP/1.1 100 Continue\r\n\r\n\r\nHTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK"),
        (b"HTTP/1.1 100 Continue\r\n\r\n\r\n\r\nHTTP/1.1 201 Created\r\n", b"HTTP/1.1 201 Created"),
        (b"HTTP/1.1 100 Continue\r\n\r\n\nHTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK"),
        (b"ICE/1.1 200 OK\r\n", b"HTTP/1.1 200 OK"),
        (b"HTTP/1.0 202 Accepted\r\n", b"HTTP/1.1 202 Accepted"),
        (b"HTTP/1.0 200 \r\n", b"HTTP/1.1 200 OK"),
    ],
)
async def test_the_status_line_is_built_from_the_parsed_version_and_code(
    raw_upstreams: RawUpstreams, answer: bytes, status_line: bytes
) -> None:
    scripted = Scripted(answer + b"Content-Length: 2\r\n\r\nok")
    proxy = await start(raw_upstreams, scripted)
    head, reader = await one_response(proxy.port, GET)
    heads = head.split(b"\r\n\r\n")[:-1]  # the 100 Continue, if any, then the final head
    assert all(h.startswith(b"HTTP/1.1 ") and h.count(b"HTTP/1.1") == 1 for h in heads), head
    assert heads[-1].startswith(status_line + b"\r\n"), head
    assert await reader.readexactly(2) == b"ok"
    reader.writer.close()  # type: ignore[attr-defined]


async def test_an_unsolicited_101_is_a_502(raw_upstreams: RawUpstreams) -> None:
    scripted = Scripted(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nxx")
    proxy = await start(raw_upstreams, scripted)
    head, reader = await one_response(proxy.port, GET)
    assert head.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), head
    body = await asyncio.wait_for(reader.read(), 5)
    assert b"101 Switching Protocols to a request that asked for none" in body
    reader.writer.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "coding", [b"chunked, gzip", b"gzip", b"gzip, chunked", b"xchunked", b"chunkedchunked"]
)
async def test_a_response_transfer_coding_other_than_chunked_is_a_502(
    raw_upstreams: RawUpstreams, coding: bytes
) -> None:
    scripted = Scripted(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + coding + b"\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        close=True,
    )
    proxy = await start(raw_upstreams, scripted)
    head, reader = await one_response(proxy.port, GET)
    assert head.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), head
    assert b"only chunked, once, is implemented" in await asyncio.wait_for(reader.read(), 5)
    reader.writer.close()  # type: ignore[attr-defined]


async def test_chunked_in_any_case_is_relayed(raw_upstreams: RawUpstreams) -> None:
    scripted = Scripted(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    )
    proxy = await start(raw_upstreams, scripted)
    head, reader = await one_response(proxy.port, GET)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Transfer-Encoding: chunked" in head
    assert await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5) == b"2\r\nok\r\n0\r\n\r\n"
    reader.writer.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("answer", "status_line"),
    [
        (b"HTTP/1.1 204 No Content\r\n\r\nsurplus body", b"HTTP/1.1 204 No Content"),
        (
            b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 304 Not Modified",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nokEXTRA",
            b"HTTP/1.1 200 OK",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond",
            b"HTTP/1.1 200 OK",
        ),
    ],
)
async def test_bytes_after_a_complete_response_are_dropped_and_the_connection_not_reused(
    raw_upstreams: RawUpstreams, answer: bytes, status_line: bytes
) -> None:
    """The client gets the head (and the body the framing allows), never a reset; the next
    request on the same client connection goes out on a new upstream connection."""
    scripted = Scripted(answer)
    proxy = await start(raw_upstreams, scripted)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        for _ in range(2):
            writer.write(GET)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(status_line + b"\r\n"), head
            if status_line.endswith(b"200 OK"):
                assert await reader.readexactly(2) == b"ok"
        assert scripted.requests == 2
        assert scripted.connections == 2
    finally:
        writer.close()
