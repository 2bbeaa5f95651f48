"""Forwarding through a real proxy to real upstreams: routing, headers, bodies, reuse."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import AsyncIterator

import aiohttp
import h11

from proxy.routing import PreviewPolicy, RoutingTable
from tests.support.colours import ColourApp
from tests.support.net import RunningProxy, TableFactory, raw_exchange

PREVIEW = "X-Bluegreen-Preview"


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=headers or {}) as response,
    ):
        return response.status, response.headers["X-Bluegreen-Colour"], await response.text()


async def test_live_traffic_goes_to_the_active_colour(proxy: RunningProxy) -> None:
    for _ in range(5):
        status, colour, body = await get(proxy.url + "/")
        assert (status, colour, body) == (200, "blue", "hello from blue\n")


async def test_preview_header_goes_to_the_idle_colour(proxy: RunningProxy) -> None:
    status, colour, body = await get(proxy.url + "/", {PREVIEW: "1"})
    assert (status, colour, body) == (200, "green", "hello from green\n")


async def test_preview_header_is_removed_before_forwarding(
    proxy: RunningProxy, colours: dict[str, ColourApp]
) -> None:
    await get(proxy.url + "/", {PREVIEW: "1"})
    await get(proxy.url + "/", {PREVIEW.lower(): "1"})
    seen = colours["green"].seen_headers
    assert len(seen) == 2
    for headers in seen:
        assert PREVIEW.lower() not in {name.lower() for name in headers}


async def test_a_switch_applies_to_the_next_request(
    proxy: RunningProxy, make_table: TableFactory
) -> None:
    assert (await get(proxy.url + "/"))[1] == "blue"
    proxy.server.swap_table(make_table("green", version="v2"))
    assert (await get(proxy.url + "/"))[1] == "green"
    assert (await get(proxy.url + "/", {PREVIEW: "1"}))[1] == "blue"


async def test_preview_token_must_match(proxy: RunningProxy, make_table: TableFactory) -> None:
    proxy.server.swap_table(make_table(preview=PreviewPolicy(token=b"s3cret")))
    assert (await get(proxy.url + "/", {PREVIEW: "s3cret"}))[1] == "green"
    assert (await get(proxy.url + "/", {PREVIEW: "wrong"}))[1] == "blue"
    assert (await get(proxy.url + "/", {PREVIEW: ""}))[1] == "blue"


async def test_preview_only_from_trusted_networks(
    proxy: RunningProxy, make_table: TableFactory
) -> None:
    elsewhere = PreviewPolicy(trusted_networks=(ipaddress.ip_network("10.0.0.0/8"),))
    proxy.server.swap_table(make_table(preview=elsewhere))
    assert (await get(proxy.url + "/", {PREVIEW: "1"}))[1] == "blue"
    loopback = PreviewPolicy(trusted_networks=(ipaddress.ip_network("127.0.0.0/8"),))
    proxy.server.swap_table(make_table(preview=loopback))
    assert (await get(proxy.url + "/", {PREVIEW: "1"}))[1] == "green"


async def test_forwarded_headers_are_set(proxy: RunningProxy, make_table: TableFactory) -> None:
    sent = {"X-Forwarded-For": "203.0.113.7", "Host": "shop.example"}
    _, _, body = await get(proxy.url + "/headers", sent)
    headers = {k.lower(): v for k, v in json.loads(body)["headers"]}
    # From an untrusted peer a client's own X-Forwarded-For is a forgery: replaced by the peer.
    assert headers["x-forwarded-for"] == "127.0.0.1"
    trusted = make_table()
    trusted = RoutingTable(
        "v2",
        trusted.active,
        trusted.idle,
        trusted.upstreams,
        forwarded_trusted=(ipaddress.ip_network("127.0.0.0/8"),),
    )
    proxy.server.swap_table(trusted)
    _, _, body = await get(proxy.url + "/headers", sent)
    headers = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert headers["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == "shop.example"
    assert headers["host"] == "shop.example"


async def test_hop_by_hop_headers_are_removed_both_ways(proxy: RunningProxy) -> None:
    request = (
        b"GET /headers HTTP/1.1\r\nHost: a\r\nConnection: close, X-Client-Hop\r\n"
        b"X-Client-Hop: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n"
        b"Proxy-Authorization: Basic Zm9v\r\nProxy-Connection: keep-alive\r\n"
        b"Trailer: X-Foo\r\nUpgrade: h2c\r\nX-Kept: yes\r\n\r\n"
    )
    raw = await raw_exchange(proxy.port, request)
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "a")]))
    client.receive_data(raw)
    response = client.next_event()
    assert isinstance(response, h11.Response)
    response_headers = {name.decode().lower() for name, _ in response.headers}
    assert "x-secret-hop" not in response_headers
    assert "keep-alive" not in response_headers
    assert "proxy-authenticate" not in response_headers
    assert "x-kept" in response_headers
    assert "x-bluegreen-colour" in response_headers
    body = b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.Data):
            body += event.data
        else:
            break
    sent = {k.lower() for k, _ in json.loads(body)["headers"]}
    for hop in ("x-client-hop", "keep-alive", "te", "proxy-authorization", "proxy-connection"):
        assert hop not in sent, hop
    assert "trailer" not in sent and "upgrade" not in sent
    assert "x-kept" in sent


async def test_chunked_request_and_response_bodies(proxy: RunningProxy) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for i in range(50):
            yield bytes([65 + i % 26]) * 1000

    async with (
        aiohttp.ClientSession() as session,
        session.post(proxy.url + "/echo", data=pieces()) as response,
    ):
        body = await response.read()
        assert response.headers["Transfer-Encoding"] == "chunked"
    assert len(body) == 50_000
    assert body[:1000] == b"A" * 1000 and body[-1000:] == bytes([65 + 49 % 26]) * 1000


async def test_content_length_bodies_pass_through(proxy: RunningProxy) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy.url + "/count", data=payload) as response:
            assert await response.text() == str(len(payload))
        async with session.get(proxy.url + "/download?size=3000000") as response:
            assert response.headers["Content-Length"] == "3000000"
            assert len(await response.read()) == 3_000_000
        async with session.get(proxy.url + "/download?size=3000000&chunked=1") as response:
            assert len(await response.read()) == 3_000_000


async def test_upstream_connections_are_reused(
    proxy: RunningProxy, colours: dict[str, ColourApp]
) -> None:
    connector = aiohttp.TCPConnector(limit=4)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(100):
            async with session.get(proxy.url + "/") as response:
                await response.read()
    # Sequential requests: one upstream connection serves them all.
    assert len(colours["blue"].requests) == 0  # sanity: the app does not keep request objects
    assert len(colours["blue"].peers) == 1
    pool = next(iter(proxy.server.pools.values()))
    assert pool.opened == 1


async def test_http10_client_gets_a_close_delimited_body(proxy: RunningProxy) -> None:
    raw = await raw_exchange(
        proxy.port, b"GET /download?size=5000&chunked=1 HTTP/1.0\r\nHost: a\r\n\r\n"
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head
    assert b"Connection: close" in head
    assert len(body) == 5000


async def test_head_request_keeps_content_length(proxy: RunningProxy) -> None:
    raw = await raw_exchange(
        proxy.port,
        b"HEAD /download?size=777 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    first, _, rest = raw.partition(b"\r\n\r\n")
    assert b"Content-Length: 777" in first
    assert rest.startswith(b"HTTP/1.1 200 OK")
    assert rest.endswith(b"hello from blue\n")


async def test_pipelined_requests_answer_in_order(proxy: RunningProxy) -> None:
    raw = await raw_exchange(
        proxy.port,
        b"GET /slow?delay=0.2 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /count HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nabcde",
    )
    bodies = [part for part in raw.split(b"HTTP/1.1 200 OK") if part]
    assert len(bodies) == 3
    assert bodies[0].endswith(b"slow blue\n")
    assert bodies[1].endswith(b"hello from blue\n")
    assert bodies[2].endswith(b"\r\n\r\n5")


async def test_expect_100_continue_is_forwarded(proxy: RunningProxy) -> None:
    raw = await raw_exchange(
        proxy.port,
        b"POST /count HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n"
        b"Connection: close\r\n\r\nabc",
    )
    assert raw.startswith(b"HTTP/1.1 100 Continue\r\n")
    assert raw.endswith(b"\r\n\r\n3")
