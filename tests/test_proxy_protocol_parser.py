"""PROXY protocol v1 and v2 headers, parsed without a socket: a table of bytes and outcomes."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from proxy.proxy_protocol import (
    V1_MAX_LENGTH,
    V2_MAX_PAYLOAD,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    parse_proxy_header,
)

HTTP = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


def v2(command: int, family: int, payload: bytes) -> bytes:
    """A v2 header: signature, version 2 and command, family, payload length, payload."""
    return (
        V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(payload)) + payload
    )


def tcp4(source: str, destination: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.IPv4Address(source).packed
        + ipaddress.IPv4Address(destination).packed
        + struct.pack("!HH", sport, dport)
    )


def tcp6(source: str, destination: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.IPv6Address(source).packed
        + ipaddress.IPv6Address(destination).packed
        + struct.pack("!HH", sport, dport)
    )


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


V1_TCP4 = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 56324 443\r\n"
V2_TCP4 = v2(1, 0x11, tcp4("203.0.113.7", "10.0.0.1", 56324, 443))
V2_TCP6_TLVS = v2(
    1,
    0x21,
    tcp6("2001:db8::7", "2001:db8::1", 56324, 443) + tlv(0x01, b"h2") + tlv(0xEA, b"\x01vpce-1"),
)
V2_LOCAL = v2(0, 0x11, tcp4("10.0.0.9", "10.0.0.1", 1, 2))

COMPLETE = [
    (V1_TCP4, ProxyHeader(len(V1_TCP4), "203.0.113.7", 56324, "10.0.0.1", 443)),
    (V1_TCP6, ProxyHeader(len(V1_TCP6), "2001:db8::7", 56324, "2001:db8::1", 443)),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(15)),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", ProxyHeader(35)),
    (V2_TCP4, ProxyHeader(len(V2_TCP4), "203.0.113.7", 56324, "10.0.0.1", 443)),
    (
        V2_TCP6_TLVS,
        ProxyHeader(
            len(V2_TCP6_TLVS),
            "2001:db8::7",
            56324,
            "2001:db8::1",
            443,
            ((0x01, b"h2"), (0xEA, b"\x01vpce-1")),
        ),
    ),
    # LOCAL: the balancer's own health check; its addresses are not the client's.
    (V2_LOCAL, ProxyHeader(len(V2_LOCAL))),
    (v2(0, 0x00, b""), ProxyHeader(16)),
    # UNSPEC with PROXY: no address to take; whatever the payload holds is skipped.
    (v2(1, 0x00, b"\x00" * 5), ProxyHeader(21)),
    # UDP is carried like TCP; UNIX addresses name no client IP.
    (
        v2(1, 0x12, tcp4("192.0.2.1", "192.0.2.2", 5, 6)),
        ProxyHeader(28, "192.0.2.1", 5, "192.0.2.2", 6),
    ),
    (v2(1, 0x31, b"\x00" * 216), ProxyHeader(232)),
]


@pytest.mark.parametrize(("data", "expected"), COMPLETE, ids=range(len(COMPLETE)))
def test_a_complete_header_is_parsed_and_the_http_bytes_after_it_are_left(
    data: bytes, expected: ProxyHeader
) -> None:
    assert parse_proxy_header(data) == expected
    header = parse_proxy_header(data + HTTP)
    assert header == expected
    assert (data + HTTP)[header.length :] == HTTP


@pytest.mark.parametrize("data", [V1_TCP4, V1_TCP6, V2_TCP4, V2_TCP6_TLVS, V2_LOCAL])
def test_every_cut_short_prefix_asks_for_more(data: bytes) -> None:
    for end in range(len(data)):
        assert parse_proxy_header(data[:end]) is None, end


BAD = [
    (HTTP, "no PROXY protocol header"),
    (b"GET", "no PROXY protocol header"),
    (b"\r\n\r\nGET / HTTP/1.1\r\n", "no PROXY protocol header"),
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 56324\r\n", "not 'PROXY TCP4|TCP6"),
    (b"PROXY TCP5 1.2.3.4 1.2.3.5 1 2\r\n", "not 'PROXY TCP4|TCP6"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2 3\r\n", "not 'PROXY TCP4|TCP6"),
    (b"PROXY  TCP4 1.2.3.4 1.2.3.5 1 2\r\n", "not 'PROXY TCP4|TCP6"),
    (b"PROXY TCP4 2001:db8::1 1.2.3.5 1 2\r\n", "is not IPv4"),
    (b"PROXY TCP6 1.2.3.4 2001:db8::1 1 2\r\n", "is not IPv6"),
    (b"PROXY TCP4 1.2.3.400 1.2.3.5 1 2\r\n", "is not an IP address"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.5 65536 2\r\n", "over 65535"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.5 080 2\r\n", "not a decimal port"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.5 -1 2\r\n", "not a decimal port"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2\n", "longer than"),
    (b"PROXY TCP4 " + b"1" * V1_MAX_LENGTH, "longer than 107 bytes"),
    (V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\x00" * 12, "version 1 is not 2"),
    (V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\x00" * 12, "neither LOCAL nor PROXY"),
    (V2_SIGNATURE + b"\x21\x41\x00\x00", "family 0x41 is unknown"),
    (v2(1, 0x11, b"\x00" * 11), "too short for IPv4"),
    (v2(1, 0x21, tcp4("1.2.3.4", "1.2.3.5", 1, 2)), "too short for IPv6"),
    (v2(1, 0x31, b"\x00" * 100), "too short for UNIX"),
    (v2(1, 0x11, tcp4("1.2.3.4", "1.2.3.5", 1, 2) + b"\x01\x00"), "TLV cut short"),
    (v2(1, 0x11, tcp4("1.2.3.4", "1.2.3.5", 1, 2) + b"\x01\x00\x09ab"), "TLV 0x01 longer"),
    (V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", V2_MAX_PAYLOAD + 1), "over 4096"),
]


@pytest.mark.parametrize(("data", "message"), BAD, ids=range(len(BAD)))
def test_garbage_truncated_or_oversized_headers_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ProxyProtocolError, match=message.replace("|", r"\|")):
        parse_proxy_header(data)


def test_an_oversized_v2_header_is_refused_before_its_payload_arrives() -> None:
    # Only the 16 fixed bytes have come: the declared length alone is enough to refuse.
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(V2_SIGNATURE + b"\x21\x11\xff\xff")
