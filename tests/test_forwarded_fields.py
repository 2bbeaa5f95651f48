"""Forwarded fields over real sockets: what a colour sees of the client's address and scheme.

A trusted load balancer (`forwarded.trustedCIDRs`) terminating TLS keeps its X-Forwarded-Proto,
-Host and -Port and its Forwarded, X-Real-IP and X-Client-IP; anyone else's are dropped or
replaced. Field names with an underscore are dropped (nginx's `underscores_in_headers off`),
since application servers that read `_` as `-` would take them for the real fields.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json

from controller.config import parse_config
from proxy.routing import EdgeSettings
from tests.support.net import RunningProxy, TableFactory, raw_exchange

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
BALANCER_FIELDS = (
    b"X-Forwarded-For: 203.0.113.7\r\n"
    b"X-Forwarded-Proto: https\r\n"
    b"X-Forwarded-Host: shop.example\r\n"
    b"X-Forwarded-Port: 8443, 443\r\n"
    b"Forwarded: for=203.0.113.7;proto=https\r\n"
    b"X-Real-IP: 203.0.113.7\r\n"
    b"X-Client-IP: 203.0.113.7\r\n"
)
UNDERSCORED = (
    b"X_Forwarded_For: 6.6.6.6\r\n"
    b"X-Forwarded_For: 6.6.6.6\r\n"
    b"X_Forwarded_Host: evil.example\r\n"
    b"X_Bluegreen_Preview: 1\r\n"
    b"Transfer_Encoding: chunked\r\n"
    b"Content_Length: 5\r\n"
)


async def seen_by_colour(port: int, fields: bytes) -> dict[str, str]:
    """Send one GET /headers with `fields` and return the fields the colour received."""
    raw = await raw_exchange(
        port,
        b"GET /headers HTTP/1.1\r\nHost: app.example\r\n" + fields + b"Connection: close\r\n\r\n",
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), raw
    return {name.lower(): value for name, value in json.loads(body)["headers"]}


async def test_from_an_untrusted_peer_forwarded_fields_are_set_or_dropped(
    proxy: RunningProxy,
) -> None:
    seen = await seen_by_colour(proxy.port, BALANCER_FIELDS)
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "app.example"
    for forged in ("x-forwarded-port", "forwarded", "x-real-ip", "x-client-ip"):
        assert forged not in seen, forged


async def test_a_trusted_balancer_keeps_its_scheme_host_port_and_client_fields(
    proxy: RunningProxy, make_table: TableFactory
) -> None:
    proxy.server.swap_table(dataclasses.replace(make_table(), forwarded_trusted=LOOPBACK))
    seen = await seen_by_colour(proxy.port, BALANCER_FIELDS)
    assert seen["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-host"] == "shop.example"
    assert seen["x-forwarded-port"] == "443"  # the last value: the balancer's own
    assert seen["forwarded"] == "for=203.0.113.7;proto=https"
    assert seen["x-real-ip"] == "203.0.113.7"
    assert seen["x-client-ip"] == "203.0.113.7"


async def test_fields_with_an_underscore_are_dropped_and_counted(proxy: RunningProxy) -> None:
    seen = await seen_by_colour(proxy.port, UNDERSCORED + b"X-Kept: yes\r\n")
    assert not [name for name in seen if "_" in name]
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-host"] == "app.example"
    assert seen["x-kept"] == "yes"
    assert proxy.server.stats.dropped_fields == {"underscore": 6}
    # An underscore elsewhere in the head (a value, the target) drops nothing.
    seen = await seen_by_colour(proxy.port, b"Cookie: _ga=GA1_2\r\n")
    assert seen["cookie"] == "_ga=GA1_2"
    assert proxy.server.stats.dropped_fields == {"underscore": 6}


async def test_the_underscore_check_spans_a_head_split_over_reads(proxy: RunningProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /headers HTTP/1.1\r\nHost: a\r\nX_Forwarded_")
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(b"For: 6.6.6.6\r\nX-Other: 1\r\nConnection: close\r\n\r\n")
    raw = await reader.read()
    writer.close()
    seen = json.loads(raw.partition(b"\r\n\r\n")[2])["headers"]
    assert "6.6.6.6" not in {value for _, value in seen}


async def test_headers_allow_underscores_passes_them_on(
    proxy: RunningProxy, make_table: TableFactory
) -> None:
    table = dataclasses.replace(make_table(), edge=EdgeSettings(allow_underscores=True))
    proxy.server.swap_table(table)
    seen = await seen_by_colour(proxy.port, b"X_Custom_Field: 1\r\n")
    assert seen["x_custom_field"] == "1"
    assert proxy.server.stats.dropped_fields == {}


def test_the_allow_underscores_key_reaches_the_routing_table() -> None:
    base = {"active": "blue", "upstream.blue": "http://b:80", "upstream.green": "http://g:80"}
    assert not parse_config(base).to_routing_table("v").edge.allow_underscores
    allowed = parse_config({**base, "headers.allowUnderscores": "true"})
    assert allowed.to_routing_table("v").edge.allow_underscores
