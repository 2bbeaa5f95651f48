"""The proxy's protocol objects over in-memory transports: ordering, gating and recovery rules.

The real `ProxyServer`, `ClientConnection`, `Exchange` and `UpstreamConnection` run on the test's
event loop; only the sockets are memory (tests/support/memory_transport.py), with the test
playing both the client and the colour's Service byte by byte. So each rule is checked at the
exact moment that matters (a read arriving mid-response, a pooled connection closing under a
request) and each test runs in milliseconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from proxy.downstream import ClientConnection
from proxy.metrics import TrafficStats
from proxy.routing import ProxyTimeouts, RoutingTable, Upstream
from proxy.server import ProxyServer
from proxy.upstream import UpstreamConnection
from tests.support.memory_transport import MemoryNetwork, MemoryTransport

UPSTREAMS = {
    "blue": Upstream("blue", "http://blue.test:80", "blue.test", 80),
    "green": Upstream("green", "http://green.test:80", "green.test", 80),
}


def table(active: str = "blue", *, drain: float = 30.0, version: str = "v1") -> RoutingTable:
    idle = "green" if active == "blue" else "blue"
    return RoutingTable(version, active, idle, UPSTREAMS, timeouts=ProxyTimeouts(drain=drain))


def get(path: str, *extra: bytes) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: shop.test\r\n%s\r\n" % (path.encode(), b"".join(extra))


def ok(body: bytes, *extra: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body),
        b"".join(extra),
        body,
    )


WEBSOCKET_UPGRADE = get(
    "/ws",
    b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
)
SWITCHING = (
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)
SMUGGLED = get("/admin/smuggled")


class MemoryProxy:
    """A real ProxyServer whose client and upstream connections are in memory."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, routing: RoutingTable) -> None:
        loop = asyncio.get_running_loop()
        self.network = MemoryNetwork()
        monkeypatch.setattr(loop, "create_connection", self.network.create_connection)
        self.server = ProxyServer(TrafficStats(), routing, loop=loop)

    def client(self) -> MemoryTransport:
        return MemoryTransport().connect(ClientConnection(self.server))

    async def upstream(self, index: int) -> MemoryTransport:
        """The `index`th upstream connection opened, once the proxy has opened it."""
        await until(lambda: len(self.network.transports) > index)
        return self.network.transports[index]


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Let the loop run until `condition` holds (bounded: fails after `timeout` seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0 if loop.time() + 0.01 > deadline else 0.001)


def upstream_protocol(transport: MemoryTransport) -> UpstreamConnection:
    assert isinstance(transport.protocol, UpstreamConnection)
    return transport.protocol


def client_protocol(transport: MemoryTransport) -> ClientConnection:
    assert isinstance(transport.protocol, ClientConnection)
    return transport.protocol


# --- pipelining ---------------------------------------------------------------------------------


async def test_pipelined_requests_go_upstream_one_at_a_time_and_are_answered_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = MemoryProxy(monkeypatch, table())
    client = proxy.client()
    client.feed(get("/first") + get("/second") + get("/third"))
    upstream = await proxy.upstream(0)
    assert upstream.take().startswith(b"GET /first HTTP/1.1\r\n")
    assert client.take() == b""

    upstream.feed(ok(b"one"))
    # Only once the first response is complete does the second request go out, on the same
    # pooled connection.
    assert upstream.take().startswith(b"GET /second HTTP/1.1\r\n")
    assert client.take().endswith(b"\r\n\r\none")

    upstream.feed(ok(b"two"))
    assert upstream.take().startswith(b"GET /third HTTP/1.1\r\n")
    upstream.feed(ok(b"three"))
    answered = client.take()
    assert answered.index(b"\r\n\r\ntwo") < answered.index(b"\r\n\r\nthree")
    assert len(proxy.network.transports) == 1
    assert proxy.server.stats.request_count("blue") == 3


async def test_pipelined_responses_never_overtake_each_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = MemoryProxy(monkeypatch, table())
    client = proxy.client()
    client.feed(get("/a") + get("/b"))
    upstream = await proxy.upstream(0)
    # The first response arrives in pieces; the second request must wait for its last byte.
    upstream.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\naaa")
    assert b"GET /b" not in upstream.data
    upstream.feed(b"aaa")
    assert b"GET /b" in upstream.data
    upstream.feed(ok(b"bbb"))
    answered = client.take()
    # The bodies follow their heads' blank line: a random X-Request-Id may contain "bbb" too.
    assert answered.index(b"\r\n\r\naaaaaa") < answered.index(b"\r\n\r\nbbb")
    assert answered.count(b"HTTP/1.1 200 OK\r\n") == 2


# --- upgrades -----------------------------------------------------------------------------------


async def test_bytes_behind_a_declined_upgrade_never_reach_the_upstream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = MemoryProxy(monkeypatch, table())
    client = proxy.client()
    client.feed(WEBSOCKET_UPGRADE + SMUGGLED)
    upstream = await proxy.upstream(0)
    assert upstream.take().startswith(b"GET /ws HTTP/1.1\r\n")

    # The colour declines: a plain response, its body in two reads. The client sends more
    # bytes meant for the tunnel in between; none of them may go upstream.
    upstream.feed(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 4\r\n\r\nno")
    client.feed(SMUGGLED)
    upstream.feed(b"pe")
    assert b"smuggled" not in upstream.data
    answered = client.take()
    assert answered.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    assert b"Connection: close\r\n" in answered
    assert answered.endswith(b"\r\n\r\nnope")
    assert client.closing
    await until(lambda: client.lost)
    assert b"smuggled" not in upstream.data
    assert len(proxy.network.transports) == 1


async def test_bytes_behind_an_accepted_upgrade_follow_the_101(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = MemoryProxy(monkeypatch, table())
    client = proxy.client()
    mask = b"\x01\x02\x03\x04"
    frame = b"\x81\x85" + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(b"hello"))
    client.feed(WEBSOCKET_UPGRADE + frame)
    upstream = await proxy.upstream(0)
    assert upstream.take().startswith(b"GET /ws HTTP/1.1\r\n")  # the frame is held back

    upstream.feed(SWITCHING)
    assert client.take().startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert upstream.take() == frame
    upstream.feed(b"\x81\x02hi")
    assert client.take() == b"\x81\x02hi"


# --- flow control -------------------------------------------------------------------------------


async def test_a_body_waiting_for_its_connection_stops_reading_past_its_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = MemoryProxy(monkeypatch, table())
    proxy.network.hold = True  # the colour's connect is slow
    client = proxy.client()
    size = 600 * 1024
    client.feed(b"POST /upload HTTP/1.1\r\nHost: shop.test\r\nContent-Length: %d\r\n\r\n" % size)
    client.feed(b"a" * (100 * 1024))
    await until(lambda: proxy.network.connecting == 1)
    assert client.reading  # 100 KiB held: within the bound
    client.feed(b"b" * (200 * 1024))
    assert not client.reading  # 300 KiB held: the client waits

    proxy.network.release()
    upstream = await proxy.upstream(0)
    sent = upstream.take()
    assert sent.endswith(b"\r\n\r\n" + b"a" * (100 * 1024) + b"b" * (200 * 1024))
    assert client.reading
    client.feed(b"c" * (300 * 1024))
    assert upstream.take() == b"c" * (300 * 1024)
    upstream.feed(ok(b"stored"))
    assert client.take().endswith(b"\r\n\r\nstored")


async def test_each_side_stops_reading_while_the_other_cannot_take_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = MemoryProxy(monkeypatch, table())
    client = proxy.client()
    client.feed(b"POST /upload HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 10\r\n\r\nabc")
    upstream = await proxy.upstream(0)

    # The colour reads the body slowly: the client is not read meanwhile.
    upstream_protocol(upstream).pause_writing()
    assert not client.reading
    upstream_protocol(upstream).resume_writing()
    assert client.reading

    client.feed(b"defghij")
    upstream.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nfour")
    # The client reads the response slowly: the colour is not read meanwhile.
    client_protocol(client).pause_writing()
    assert not upstream.reading
    client_protocol(client).resume_writing()
    assert upstream.reading
    upstream.feed(b"more")
    assert client.take().endswith(b"\r\n\r\nfourmore")


# --- switching ----------------------------------------------------------------------------------


async def test_after_a_swap_long_live_responses_on_the_old_colour_are_drained(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = MemoryProxy(monkeypatch, table("blue", drain=0.02))
    streaming = proxy.client()
    streaming.feed(get("/stream"))
    settled = proxy.client()
    settled.feed(get("/done"))
    stream_upstream = await proxy.upstream(0)
    done_upstream = await proxy.upstream(1)
    stream_upstream.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
    done_upstream.feed(ok(b"done"))

    proxy.server.swap_table(table("green", drain=0.02, version="v2"))
    fresh = proxy.client()
    fresh.feed(get("/new"))
    green = await proxy.upstream(2)
    assert green.peer == ("green.test", 80)
    green.feed(ok(b"green"))
    assert fresh.take().endswith(b"\r\n\r\ngreen")

    # The stream on blue may go on until drain.timeout, then it is cut so that its client
    # reconnects to green; the connection that was idle on blue is left alone.
    stream_upstream.feed(b"6\r\nsecond\r\n")
    assert streaming.take().endswith(b"second\r\n")
    await until(lambda: streaming.aborted)
    # The upstream side is closed once the client's connection_lost has run (the next loop
    # turn, later under load): wait for it rather than assume the order of callbacks.
    await until(lambda: stream_upstream.closing)  # mid-response: never reused
    assert not settled.closing
    assert proxy.server.stats.request_count("blue") == 2


async def test_after_a_swap_a_websocket_on_the_old_colour_gets_going_away_at_both_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = MemoryProxy(monkeypatch, table("blue", drain=0.02))
    client = proxy.client()
    client.feed(WEBSOCKET_UPGRADE)
    upstream = await proxy.upstream(0)
    upstream.feed(SWITCHING)
    upstream.take()
    client.take()

    proxy.server.swap_table(table("green", drain=0.02, version="v2"))
    await until(lambda: client.closing)
    to_client = client.take()
    assert to_client[:1] == b"\x88" and to_client[2:4] == (1001).to_bytes(2, "big")
    to_upstream = upstream.take()
    assert to_upstream[:1] == b"\x88" and to_upstream[1] & 0x80  # masked, as a client must
    assert not client.aborted  # a clean close, not a cut


# --- retries ------------------------------------------------------------------------------------


async def warm_connection(proxy: MemoryProxy) -> tuple[MemoryTransport, MemoryTransport]:
    """A client whose first request left its upstream connection idle in the pool."""
    client = proxy.client()
    client.feed(get("/warm"))
    pooled = await proxy.upstream(0)
    pooled.feed(ok(b"warm"))
    pooled.take()
    client.take()
    return client, pooled


async def test_a_pooled_connection_closed_under_a_request_is_retried_on_a_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = MemoryProxy(monkeypatch, table())
    client, pooled = await warm_connection(proxy)

    # The next request is sent on the pooled connection, which the colour had just closed.
    client.feed(get("/again"))
    assert pooled.take().startswith(b"GET /again HTTP/1.1\r\n")
    pooled.peer_closes()
    fresh = await proxy.upstream(1)
    assert fresh.take().startswith(b"GET /again HTTP/1.1\r\n")
    fresh.feed(ok(b"again"))
    assert client.take().endswith(b"\r\n\r\nagain")
    assert proxy.server.stats.retries == {("blue", "closed"): 1}
    assert proxy.server.stats.upstream_errors == {}


async def test_a_request_with_a_body_is_not_retried_after_it_went_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = MemoryProxy(monkeypatch, table())
    client, pooled = await warm_connection(proxy)

    client.feed(b"POST /order HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 2\r\n\r\nhi")
    assert pooled.take().endswith(b"\r\n\r\nhi")
    pooled.peer_closes()
    answered = client.take()
    assert answered.startswith(b"HTTP/1.1 502 ")
    assert len(proxy.network.transports) == 1
    assert proxy.server.stats.retries == {}
    assert proxy.server.stats.upstream_errors == {("blue", "closed"): 1}
