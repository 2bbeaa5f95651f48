"""Client limits at the edge, each configurable: real bytes over a real socket, the right status.

What reached the upstream is re-parsed with h11: a refused request must never arrive complete.
"""

from __future__ import annotations

import asyncio
import dataclasses
import resource
from collections.abc import AsyncIterator

import h11
import pytest

from controller.config import ConfigError, parse_config
from controller.tuning import raise_open_file_limit
from controller.values import parse_size
from proxy.metrics import TrafficStats
from proxy.routing import ClientLimits, RoutingTable, Upstream
from proxy.server import ProxyServer
from tests.support.net import raw_exchange
from tests.support.upstreams import RecordingUpstream


class PatientUpstream(RecordingUpstream):
    """Records every byte like RecordingUpstream, but answers only once a request is complete.

    So a request refused halfway through its body cannot be confused with one the upstream
    answered early.
    """

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = h11.Connection(h11.SERVER)
        while data := await reader.read(65536):
            self.received += data
            parser.receive_data(data)
            while (event := parser.next_event()) is not h11.NEED_DATA:
                if isinstance(event, h11.EndOfMessage):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    parser = h11.Connection(h11.SERVER)
                    break
        writer.close()


class LimitedProxy:
    """A proxy in front of a recording upstream, with limits the test can change."""

    def __init__(self, server: ProxyServer, port: int, upstream: RecordingUpstream) -> None:
        self.server = server
        self.port = port
        self.upstream = upstream

    def set_limits(self, **limits: float) -> None:
        """Swap in a table with these client limits, as a config reload would."""
        table = self.server.table
        assert table is not None
        self.server.swap_table(dataclasses.replace(table, limits=ClientLimits(**limits)))  # type: ignore[arg-type]

    def first_request(self) -> tuple[h11.Request, bytes, bool] | None:
        """Parse what the upstream got with h11: the first request, its body, and whether the
        request arrived complete (None when nothing arrived)."""
        parser = h11.Connection(h11.SERVER)
        parser.receive_data(bytes(self.upstream.received))
        request: h11.Request | None = None
        body = b""
        while True:
            event = parser.next_event()
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return request, body, True
            else:
                return None if request is None else (request, body, False)

    def request_count(self) -> int:
        """How many request lines reached the upstream."""
        return self.upstream.received.count(b" HTTP/1.1\r\n")


@pytest.fixture
async def limited() -> AsyncIterator[LimitedProxy]:
    upstream = PatientUpstream()
    raw = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    port = int(raw.sockets[0].getsockname()[1])
    ups = {c: Upstream(c, f"http://127.0.0.1:{port}", "127.0.0.1", port) for c in ("blue", "green")}
    server = ProxyServer(TrafficStats(), RoutingTable("v", "blue", "green", ups))
    listener = await server.listen("127.0.0.1", 0)
    yield LimitedProxy(server, int(listener.sockets[0].getsockname()[1]), upstream)
    await server.shutdown(0.5)
    raw.close()


def status_of(raw: bytes) -> int:
    assert raw.startswith(b"HTTP/1.1 "), raw[:80]
    return int(raw[9:12])


async def test_a_long_request_target_gets_414(limited: LimitedProxy) -> None:
    limited.set_limits(max_uri_size=1024)
    ok = await raw_exchange(
        limited.port, b"GET /" + b"a" * 1000 + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    assert status_of(ok) == 200
    raw = await raw_exchange(limited.port, b"GET /" + b"a" * 1100 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status_of(raw) == 414
    assert b"Connection: close" in raw
    assert b"request target larger than 1 KiB" in raw
    assert limited.request_count() == 1  # only the first one


async def test_a_long_target_trickled_in_pieces_gets_414_before_the_head_ends(
    limited: LimitedProxy,
) -> None:
    limited.set_limits(max_uri_size=1024)
    reader, writer = await asyncio.open_connection("127.0.0.1", limited.port)
    writer.write(b"GET /")
    for _ in range(12):
        writer.write(b"b" * 100)
        await writer.drain()
        await asyncio.sleep(0.01)
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert status_of(answer) == 414
    assert limited.upstream.received == b""


async def test_a_head_larger_than_the_limit_gets_431_even_in_one_read(
    limited: LimitedProxy,
) -> None:
    limited.set_limits(max_head_size=2048)
    raw = await raw_exchange(
        limited.port, b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 3000 + b"\r\n\r\n"
    )
    assert status_of(raw) == 431
    assert b"request head larger than 2 KiB" in raw
    assert limited.upstream.received == b""


async def test_too_many_header_fields_get_431(limited: LimitedProxy) -> None:
    limited.set_limits(max_header_count=10)
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(8))
    ok = await raw_exchange(  # Host, 8 fields and Connection: exactly 10
        limited.port, b"GET / HTTP/1.1\r\nHost: a\r\n" + fields + b"Connection: close\r\n\r\n"
    )
    assert status_of(ok) == 200
    raw = await raw_exchange(
        limited.port, b"GET / HTTP/1.1\r\nHost: a\r\nX-A: v\r\nX-B: v\r\n" + fields + b"\r\n"
    )
    assert status_of(raw) == 431
    assert b"more than 10" in raw


async def test_a_declared_body_over_the_limit_gets_413_before_anything_is_sent(
    limited: LimitedProxy,
) -> None:
    limited.set_limits(max_body_size=1000)
    raw = await raw_exchange(
        limited.port,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n" + b"b" * 1001,
    )
    assert status_of(raw) == 413
    assert b"request body larger than 1000 bytes" in raw
    assert limited.upstream.received == b""
    at_limit = await raw_exchange(
        limited.port,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n"
        + b"b" * 1000,
    )
    assert status_of(at_limit) == 200
    request, body, complete = limited.first_request() or (None, b"", False)
    assert request is not None
    assert (request.method, len(body), complete) == (b"POST", 1000, True)


async def test_a_chunked_body_is_counted_while_it_streams(limited: LimitedProxy) -> None:
    """Past the limit mid-stream: 413, and the upstream never sees the request complete."""
    limited.set_limits(max_body_size=4096)
    reader, writer = await asyncio.open_connection("127.0.0.1", limited.port)
    writer.write(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(3):  # 3 KiB: under the limit, forwarded as it arrives
        writer.write(b"400\r\n" + b"c" * 1024 + b"\r\n")
        await writer.drain()
    await asyncio.sleep(0.2)
    request, body, complete = limited.first_request() or (None, b"", False)
    assert request is not None
    assert (request.target, len(body), complete) == (b"/up", 3072, False)
    writer.write(b"800\r\n" + b"d" * 2048 + b"\r\n0\r\n\r\n")  # now 5 KiB: past it
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert status_of(answer) == 413
    assert b"Connection: close" in answer
    _, body, complete = limited.first_request() or (None, b"", True)
    assert not complete
    assert len(body) <= 4096
    assert limited.request_count() == 1


async def test_connections_past_the_limit_get_a_fast_503_with_retry_after(
    limited: LimitedProxy,
) -> None:
    limited.set_limits(max_connections=2)
    held = [await asyncio.open_connection("127.0.0.1", limited.port) for _ in range(2)]
    for reader, writer in held:  # both are served and kept alive
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200 OK")
    raw = await raw_exchange(limited.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status_of(raw) == 503
    assert b"Retry-After: 1\r\n" in raw
    assert b"limits.connections" in raw
    assert limited.server.stats.rejected.get(503) == 1
    held[0][1].close()
    await asyncio.sleep(0.1)  # the proxy sees the close
    raw = await raw_exchange(
        limited.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    assert status_of(raw) == 200
    held[1][1].close()
    assert limited.request_count() == 3


async def test_limits_follow_the_table_without_a_restart(limited: LimitedProxy) -> None:
    payload = b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    assert status_of(await raw_exchange(limited.port, payload)) == 200
    limited.set_limits(max_uri_size=1024)
    assert status_of(await raw_exchange(limited.port, payload)) == 414


def base_config(**extra: str) -> dict[str, str]:
    return {"active": "blue", "upstream.blue": "http://a:80", "upstream.green": "http://b:80"} | {
        k.replace("_", "."): v for k, v in extra.items()
    }


def test_limit_keys_are_parsed_into_the_routing_table() -> None:
    config = parse_config(
        {
            "active": "blue",
            "upstream.blue": "http://a:80",
            "upstream.green": "http://b:80",
            "limits.requestHeadSize": "16Ki",
            "limits.uriSize": "4Ki",
            "limits.headerCount": "50",
            "limits.bodySize": "0",
            "limits.connections": "500",
            "timeout.requestHead": "10s",
            "timeout.keepAlive": "75s",
            "retry.maxRetries": "1",
            "retry.timeout": "3s",
        }
    )
    table = config.to_routing_table("v1")
    assert table.limits == ClientLimits(
        max_head_size=16384,
        max_uri_size=4096,
        max_header_count=50,
        max_body_size=0,
        max_connections=500,
        head_timeout=10.0,
        keepalive_timeout=75.0,
    )
    assert (table.retry.max_retries, table.retry.timeout) == (1, 3.0)
    defaults = parse_config(base_config()).to_routing_table("v1")
    assert defaults.limits == ClientLimits()


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("8192", 8192), ("8Ki", 8192), ("100Mi", 100 * 2**20), ("1Gi", 2**30), ("2k", 2000)],
)
def test_sizes_read_like_kubernetes_quantities(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "8 KB", "-1", "1.5Mi", "8kb", "Ki"])
def test_bad_sizes_are_rejected_with_a_hint(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size; use a whole number of bytes"):
        parse_size(text)


def test_a_bad_limit_rejects_the_whole_config() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {
                "active": "blue",
                "upstream.blue": "http://a:80",
                "upstream.green": "http://b:80",
                "limits.bodySize": "lots",
                "limits.uriSize": "100",
                "limits.headerCount": "0",
            }
        )
    text = str(caught.value)
    assert "limits.bodySize: 'lots' is not a size" in text
    assert "limits.uriSize: 100 bytes is too small" in text
    assert "limits.headerCount: '0' is not a whole number of at least 1" in text


def test_the_open_file_limit_is_raised_to_the_hard_limit() -> None:
    """Two sockets per request: a soft limit of 1024 would fail long before limits.connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        now = raise_open_file_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == now
        assert now == (hard if hard != resource.RLIM_INFINITY else 1048576)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, now), hard))
