"""PROXY protocol on the proxy port (`listen.proxyProtocol`), over real sockets.

The header's client address becomes the peer for X-Forwarded-For and preview checks, but only
from a peer in `forwarded.trustedCIDRs`; a trusted peer without a valid header is closed, and a
header from anyone else is never read as one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import socket
import struct

from controller.config import parse_config
from proxy.proxy_protocol import V2_SIGNATURE
from proxy.routing import ClientLimits, EdgeSettings, IPNetwork, PreviewPolicy, RoutingTable
from tests.support.colours import ColourApp
from tests.support.net import RunningProxy, TableFactory

LOOPBACK: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.0/8"),)
ELSEWHERE: tuple[IPNetwork, ...] = (ipaddress.ip_network("10.0.0.0/8"),)
REQUEST = b"GET /headers HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
V1 = b"PROXY TCP4 203.0.113.9 192.0.2.1 40000 80\r\n"


def v2(command: int, family: int, addresses: bytes, tlvs: bytes = b"") -> bytes:
    """A PROXY protocol v2 header: `command` 0x20 LOCAL / 0x21 PROXY, `family` 0x11 TCP4..."""
    payload = addresses + tlvs
    return V2_SIGNATURE + bytes([command, family]) + struct.pack("!H", len(payload)) + payload


V2_TCP6 = v2(
    0x21,
    0x21,
    socket.inet_pton(socket.AF_INET6, "2001:db8::7")
    + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    + struct.pack("!HH", 40000, 443),
    tlvs=b"\x01\x00\x02h2",  # an ALPN TLV, as HAProxy sends
)
V2_LOCAL = v2(0x20, 0x11, bytes(12))


def with_proxy_protocol(
    table: RoutingTable,
    trusted: tuple[IPNetwork, ...] = LOOPBACK,
    limits: ClientLimits | None = None,
) -> RoutingTable:
    return dataclasses.replace(
        table,
        forwarded_trusted=trusted,
        edge=EdgeSettings(proxy_protocol=True),
        limits=limits or table.limits,
    )


async def exchange(port: int, *pieces: bytes) -> bytes:
    """Send each piece (a pause between them), then read until the proxy closes or resets."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = b""
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.02)
        async with asyncio.timeout(5):
            while data := await reader.read(65536):
                received += data
    except ConnectionResetError:
        pass  # a connection the proxy aborted: what it sent before, if anything, is kept
    finally:
        writer.close()
    return received


def colour_saw(raw: bytes) -> dict[str, str]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), raw
    return {name.lower(): value for name, value in json.loads(body)["headers"]}


async def test_a_v1_header_names_the_client_for_x_forwarded_for(
    proxy: RunningProxy, make_table: TableFactory
) -> None:
    proxy.server.swap_table(with_proxy_protocol(make_table()))
    assert colour_saw(await exchange(proxy.port, V1 + REQUEST))["x-forwarded-for"] == "203.0.113.9"
    # The header and the request in separate reads, the header itself cut in two.
    raw = await exchange(proxy.port, V1[:9], V1[9:], REQUEST)
    assert colour_saw(raw)["x-forwarded-for"] == "203.0.113.9"


async def test_a_v2_header_with_tlvs_names_the_client_for_preview_checks(
    proxy: RunningProxy, make_table: TableFactory
) -> None:
    clients = PreviewPolicy(trusted_networks=(ipaddress.ip_network("2001:db8::/32"),))
    proxy.server.swap_table(with_proxy_protocol(make_table(preview=clients)))
    preview = REQUEST.replace(b"Host: app\r\n", b"Host: app\r\nX-Bluegreen-Preview: 1\r\n")
    raw = await exchange(proxy.port, V2_TCP6 + preview)
    assert b"X-Bluegreen-Colour: green\r\n" in raw
    assert colour_saw(raw)["x-forwarded-for"] == "2001:db8::7"
    # Without the header's address the balancer itself (127.0.0.1) is no trusted preview client.
    raw = await exchange(proxy.port, V2_LOCAL + preview)
    assert b"X-Bluegreen-Colour: blue\r\n" in raw
    assert colour_saw(raw)["x-forwarded-for"] == "127.0.0.1"  # LOCAL: the peer stands


async def test_a_trusted_peer_without_a_valid_header_is_closed(
    proxy: RunningProxy, make_table: TableFactory, colours: dict[str, ColourApp]
) -> None:
    proxy.server.swap_table(with_proxy_protocol(make_table()))
    for payload in (
        REQUEST,  # no header at all
        b"PROXY TCP4 203.0.113.9 192.0.2.1 40000 080\r\n" + REQUEST,  # a leading zero
        b"PROXY TCP4 " + b"1" * 120 + b"\r\n" + REQUEST,  # over the v1 line limit
        v2(0x21, 0x11, bytes(4)) + REQUEST,  # too short for its addresses
        V2_SIGNATURE + b"\x21\x11\xff\xff" + REQUEST,  # a payload over 4 KiB
    ):
        assert await exchange(proxy.port, payload) == b""
    assert colours["blue"].seen_headers == []
    assert proxy.server.stats.proxy_headers_rejected == {"invalid": 5, "timeout": 0, "closed": 0}


async def test_a_header_that_never_ends_is_closed_after_the_head_timeout(
    proxy: RunningProxy, make_table: TableFactory
) -> None:
    table = make_table()
    limits = dataclasses.replace(table.limits, head_timeout=0.2)
    proxy.server.swap_table(with_proxy_protocol(table, limits=limits))
    assert await exchange(proxy.port, V1[:20]) == b""
    assert proxy.server.stats.proxy_headers_rejected == {"invalid": 0, "timeout": 1, "closed": 0}


async def test_an_untrusted_peer_is_plain_http_and_its_header_is_refused(
    proxy: RunningProxy, make_table: TableFactory, colours: dict[str, ColourApp]
) -> None:
    proxy.server.swap_table(with_proxy_protocol(make_table(), trusted=ELSEWHERE))
    assert colour_saw(await exchange(proxy.port, REQUEST))["x-forwarded-for"] == "127.0.0.1"
    for header in (V1, V2_TCP6):
        raw = await exchange(proxy.port, header + REQUEST)
        assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n"), raw
        assert b"Connection: close\r\n" in raw
    assert len(colours["blue"].seen_headers) == 1


async def test_with_the_key_off_a_header_is_a_bad_request(proxy: RunningProxy) -> None:
    assert not proxy.server.table or not proxy.server.table.edge.proxy_protocol
    raw = await exchange(proxy.port, V1 + REQUEST)
    assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n"), raw


def test_the_proxy_protocol_key_reaches_the_routing_table() -> None:
    base = {"active": "blue", "upstream.blue": "http://b:80", "upstream.green": "http://g:80"}
    assert not parse_config(base).to_routing_table("v").edge.proxy_protocol
    table = parse_config({**base, "listen.proxyProtocol": "true"}).to_routing_table("v")
    assert table.edge.proxy_protocol


async def test_a_peer_that_half_closes_inside_its_header_is_closed(
    proxy: RunningProxy, make_table: TableFactory
) -> None:
    proxy.server.swap_table(with_proxy_protocol(make_table()))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(V1[:10])
    writer.write_eof()
    try:
        async with asyncio.timeout(5):
            assert await reader.read() == b""
    except ConnectionResetError:
        pass
    writer.close()
    assert proxy.server.stats.proxy_headers_rejected == {"invalid": 0, "timeout": 0, "closed": 1}
