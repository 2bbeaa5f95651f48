"""Large response bodies spliced socket to socket (proxy/splice.py), over real sockets.

Every test runs with splicing on and off (the ordinary copying path), on uvloop and on
asyncio's loop (tests/conftest.py): the client sees the same bytes and the same failures either
way, and no descriptor outlives its connection.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from proxy import splice
from proxy.routing import ProxyTimeouts
from tests.support.upstreams import Handler, RawUpstreams
from tests.support.waiting import wait_for

LARGE = 3 * 1024 * 1024 + 17  # past SPLICE_MIN_BYTES and several pipes' worth
PIECE = 256 * 1024
REQUEST = b"GET /large HTTP/1.1\r\nHost: a\r\n\r\n"


def body(size: int, seed: int = 0) -> bytes:
    """`size` bytes in which every offset's value depends on its position and on `seed`."""
    pattern = bytes((i * 7 + seed) % 251 for i in range(251 * 4))
    return (pattern * (size // len(pattern) + 1))[:size]


def head(size: int) -> bytes:
    """A 200 response head announcing `size` body bytes."""
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size


async def send_in_pieces(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Write `data` as a server would, 256 KiB at a time, waiting for each to drain."""
    for start in range(0, len(data), PIECE):
        writer.write(data[start : start + PIECE])
        await writer.drain()


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One response: its head and exactly the body its Content-Length announces."""
    raw_head = await reader.readuntil(b"\r\n\r\n")
    match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", raw_head)
    assert match is not None, raw_head
    return raw_head, await reader.readexactly(int(match.group(1)))


async def read_until_closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything the peer sends until it closes (or resets) the connection."""
    chunks = []
    async with asyncio.timeout(timeout):
        while True:
            try:
                data = await reader.read(1 << 20)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def closing(handler: Handler) -> Handler:
    """The handler, ending quietly when the proxy hangs up, its connection closed after it."""

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the proxy closed the connection: what the test is about, or its end
        finally:
            writer.close()

    return run


def open_descriptors() -> tuple[int, int]:
    """This process's open pipes and sockets (event loops' own eventfds and the like aside)."""
    pipes = sockets = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            continue  # the listing's own descriptor, closed by now
        if target.startswith("pipe:"):
            pipes += 1
        elif target.startswith("socket:"):
            sockets += 1
    return pipes, sockets


@pytest.fixture(params=["spliced", "copied"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test with large bodies spliced, then with them copied through the process."""
    if request.param == "spliced" and not splice.splice_available():
        pytest.fail("os.splice is missing: bluegreen's platform is Linux, where it exists")
    monkeypatch.setattr(splice.switch, "enabled", request.param == "spliced")
    yield request.param


@pytest.fixture
async def no_leaks(raw_upstreams: RawUpstreams) -> AsyncIterator[None]:
    """After the test, no socket is left open, nor any pipe but the splice module's spares."""
    pipes_before, sockets_before = open_descriptors()
    yield
    await raw_upstreams.close()
    for _ in range(50):  # transports close on the loop's next iterations
        pipes, sockets = open_descriptors()
        if sockets <= sockets_before:
            break
        await asyncio.sleep(0.02)
    assert sockets <= sockets_before
    assert pipes <= pipes_before + 2 * splice.MAX_SPARE_PIPES


async def test_large_bodies_arrive_whole_on_one_kept_alive_connection(
    mode: str, raw_upstreams: RawUpstreams, no_leaks: None
) -> None:
    """Three large responses in a row: each body byte for byte, one upstream connection."""
    connections = [0]
    served = [0]

    async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        while await reader.readuntil(b"\r\n\r\n"):
            served[0] += 1
            await send_in_pieces(writer, head(LARGE) + body(LARGE, served[0]))

    server = await raw_upstreams.proxy_to(await raw_upstreams.start(closing(large)))
    spliced_before = splice.totals.bodies
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for n in (1, 2, 3):
            writer.write(REQUEST)
            raw_head, got = await read_response(reader)
            assert raw_head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert got == body(LARGE, n)
    finally:
        writer.close()
    assert connections == [1]  # the upstream connection went back to the pool each time
    assert server.server.stats.routes[("blue", "live")].bytes_out == 3 * LARGE
    # Each body past its head's read went socket to socket, or none did.
    assert splice.totals.bodies - spliced_before == (3 if mode == "spliced" else 0)


async def test_pipelined_large_responses_keep_their_order(
    mode: str, raw_upstreams: RawUpstreams, no_leaks: None
) -> None:
    """Two requests in one write: the second body goes out only after the first is whole."""
    served = [0]

    async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            served[0] += 1
            await send_in_pieces(writer, head(LARGE + served[0]) + body(LARGE + served[0], 9))

    server = await raw_upstreams.proxy_to(await raw_upstreams.start(closing(large)))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(REQUEST + REQUEST)
        for n in (1, 2):
            _, got = await read_response(reader)
            assert got == body(LARGE + n, 9)
    finally:
        writer.close()


async def test_a_client_slower_than_the_read_timeout_still_gets_the_whole_body(
    mode: str, raw_upstreams: RawUpstreams, no_leaks: None
) -> None:
    """A client that stops reading for longer than the read timeout is not the upstream's fault."""
    size = 6 * 1024 * 1024

    async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await send_in_pieces(writer, head(size) + body(size, 3))
        await reader.read()

    server = await raw_upstreams.proxy_to(
        await raw_upstreams.start(closing(large)), timeouts=ProxyTimeouts(read=0.5)
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect(("127.0.0.1", server.port))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(REQUEST)
        raw_head = await reader.readuntil(b"\r\n\r\n")
        assert raw_head.startswith(b"HTTP/1.1 200 OK\r\n")
        got = bytearray(await reader.readexactly(256 * 1024))
        await asyncio.sleep(1.2)  # both sides' buffers full, the proxy waits on the client
        while len(got) < size:
            got += await reader.read(64 * 1024)
            await asyncio.sleep(0.001)
        assert bytes(got) == body(size, 3)
    finally:
        writer.close()
    assert server.server.stats.upstream_errors == {}


async def test_an_upstream_that_closes_mid_body_cuts_the_response(
    mode: str, raw_upstreams: RawUpstreams, no_leaks: None
) -> None:
    """Content-Length promised more than came: the client sees a cut response, never a whole."""
    connections = [0]

    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        await reader.readuntil(b"\r\n\r\n")
        if connections[0] == 1:
            await send_in_pieces(writer, head(LARGE) + body(1024 * 1024))
            writer.close()
        else:
            await send_in_pieces(writer, head(LARGE) + body(LARGE))
            await reader.read()

    server = await raw_upstreams.proxy_to(await raw_upstreams.start(closing(short)))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(REQUEST)
        raw = await read_until_closed(reader)
    finally:
        writer.close()
    raw_head, _, got = raw.partition(b"\r\n\r\n")
    assert raw_head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body(LARGE).startswith(got)
    assert len(got) <= 1024 * 1024
    assert server.server.stats.upstream_errors == {("blue", "reset"): 1}
    # The proxy goes on: the next request gets the whole body over a new upstream connection.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(REQUEST)
        assert (await read_response(reader))[1] == body(LARGE)
    finally:
        writer.close()


async def test_an_upstream_that_stalls_mid_body_times_out(
    mode: str, raw_upstreams: RawUpstreams, no_leaks: None
) -> None:
    """Silence mid-body past the read timeout: the response is cut and counted as a timeout."""
    release = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await send_in_pieces(writer, head(LARGE) + body(1024 * 1024))
        await release.wait()

    server = await raw_upstreams.proxy_to(
        await raw_upstreams.start(closing(stall)), timeouts=ProxyTimeouts(read=0.5)
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(REQUEST)
        raw = await read_until_closed(reader)
    finally:
        writer.close()
        release.set()
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert len(raw.partition(b"\r\n\r\n")[2]) == 1024 * 1024
    assert server.server.stats.upstream_errors == {("blue", "timeout"): 1}


async def test_a_client_that_leaves_mid_body_closes_the_upstream_connection(
    mode: str, raw_upstreams: RawUpstreams, no_leaks: None
) -> None:
    """The rest of the body has nowhere to go: its upstream connection is closed, not pooled."""
    upstream_closed = asyncio.Event()
    size = 64 * 1024 * 1024  # far more than the sockets and the pipe hold

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        try:
            await send_in_pieces(writer, head(size) + body(size))
        finally:
            upstream_closed.set()

    server = await raw_upstreams.proxy_to(await raw_upstreams.start(closing(endless)))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(REQUEST)
    await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(512 * 1024)
    writer.transport.abort()
    async with asyncio.timeout(5):
        await upstream_closed.wait()
    stats = server.server.stats
    await wait_for(lambda: bool(stats.requests), 5, "the cut request counted")
    assert stats.requests == {("blue", "live", 200): 1}


async def test_bytes_past_content_length_never_reach_the_client(
    mode: str, raw_upstreams: RawUpstreams, no_leaks: None
) -> None:
    """An upstream that sends more than it announced: the client gets exactly the length."""
    connections = [0]

    async def overlong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(head(LARGE) + body(LARGE) + b"HTTP/1.1 200 OK\r\nX-Smuggled: 1\r\n\r\n")
            await writer.drain()

    server = await raw_upstreams.proxy_to(await raw_upstreams.start(closing(overlong)))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(REQUEST)
        assert (await read_response(reader))[1] == body(LARGE)
        await asyncio.sleep(0.1)  # the proxy reads what follows on the idle connection
        writer.write(REQUEST)
        raw_head, got = await read_response(reader)
        assert b"X-Smuggled" not in raw_head
        assert got == body(LARGE)
    finally:
        writer.close()
    assert connections == [2]  # the connection with the extra bytes was never reused


async def test_where_splice_is_refused_bodies_are_copied_from_then_on(
    raw_upstreams: RawUpstreams,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    no_leaks: None,
) -> None:
    """A seccomp profile that forbids splice(2) answers EPERM: the body arrives whole anyway.

    The kernel's refusal is what is injected here (os.splice raising as under such a profile);
    the proxy's fallback, its one warning and the switch staying off are what is tested.
    """
    calls = [0]

    def refused(*args: object, **kwargs: object) -> int:
        calls[0] += 1
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(splice.switch, "enabled", True)
    monkeypatch.setattr(os, "splice", refused)

    async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            await send_in_pieces(writer, head(LARGE) + body(LARGE, 5))

    server = await raw_upstreams.proxy_to(await raw_upstreams.start(closing(large)))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for _ in range(2):
            writer.write(REQUEST)
            assert (await read_response(reader))[1] == body(LARGE, 5)
    finally:
        writer.close()
    assert calls == [1]  # refused once; the second body was copied without asking again
    assert splice.switch.enabled is False
    warnings = [r for r in caplog.records if "splice(2) refused" in r.getMessage()]
    assert len(warnings) == 1
    assert server.server.stats.upstream_errors == {}
