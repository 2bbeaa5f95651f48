"""Pure parser of the PROXY protocol header (HAProxy's spec, versions 1 and 2).

An L4 load balancer (AWS NLB, HAProxy in TCP mode, most cloud balancers) that sends it puts
one header before the first byte of the client's stream, naming the client's address. The
proxy reads it with `parse_proxy_header` only when `listen.proxyProtocol` is on, and only
from a peer in `forwarded.trustedCIDRs` (see proxy/downstream.py): anyone else could name
any address.

Nothing here does I/O: the function takes the bytes read so far and says whether they hold a
complete header, need more bytes, or can never become a valid one.
Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107  # the spec's bound, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER_LENGTH = 16  # signature, version and command, family, payload length
# The spec allows 64 KiB of TLVs; balancers send a few dozen bytes (AWS: a VPC endpoint id,
# HAProxy: an ALPN or a unique id). A bound keeps one connection from making the proxy hold
# much before a single HTTP byte.
V2_MAX_PAYLOAD = 4096

_V2_LOCAL, _V2_PROXY = 0x20, 0x21
# Family and transport byte -> (address length, address family); UDP is carried like TCP.
_V2_ADDRESSES = {0x11: (12, 4), 0x12: (12, 4), 0x21: (36, 6), 0x22: (36, 6)}
_V2_UNSPEC, _V2_UNIX_STREAM, _V2_UNIX_DGRAM = 0x00, 0x31, 0x32


class ProxyProtocolError(ValueError):
    """Bytes that can never become a valid PROXY protocol header; the connection is closed."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed header: how many bytes it took and the client's address, when it names one.

    `source` is None for a v2 LOCAL command (the balancer's own health check) and for v1
    UNKNOWN or an address family without IP addresses: the connection's own peer stands.
    """

    length: int
    source: str | None = None
    source_port: int | None = None
    destination: str | None = None
    destination_port: int | None = None
    tlvs: tuple[tuple[int, bytes], ...] = ()


def parse_proxy_header(data: bytes) -> ProxyHeader | None:
    """Parse a PROXY protocol header at the start of `data`.

    Returns the header (its `length` says where the client's stream starts), or None when the
    bytes so far are a valid beginning and more must be read. Raises ProxyProtocolError,
    naming what is wrong, when they can never be a valid header.
    """
    if data.startswith(V2_SIGNATURE[: len(data)]) and data[:1] == b"\r":
        return _parse_v2(data)
    if data.startswith(V1_PREFIX[: len(data)]):
        return _parse_v1(data)
    raise ProxyProtocolError("no PROXY protocol header (listen.proxyProtocol is on)")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH or b"\n" in data:
            raise ProxyProtocolError(f"PROXY v1 line longer than {V1_MAX_LENGTH} bytes")
        return None
    fields = data[len(V1_PREFIX) : end].split(b" ")
    length = end + 2
    if fields[0] == b"UNKNOWN":
        # The balancer could not tell the client's address: the rest of the line is ignored.
        return ProxyHeader(length)
    if len(fields) != 5 or fields[0] not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError("PROXY v1 line is not 'PROXY TCP4|TCP6 SRC DST SPORT DPORT'")
    version = 4 if fields[0] == b"TCP4" else 6
    source = _v1_address(fields[1], version)
    destination = _v1_address(fields[2], version)
    return ProxyHeader(length, source, _v1_port(fields[3]), destination, _v1_port(fields[4]))


def _v1_address(text: bytes, version: int) -> str:
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyProtocolError(f"PROXY v1 address {text!r} is not an IP address") from None
    if address.version != version:
        raise ProxyProtocolError(f"PROXY v1 address {text!r} is not IPv{version}")
    return str(address)


def _v1_port(text: bytes) -> int:
    # The spec: decimal, 0 to 65535, no leading zero (which some parsers read as octal).
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[0] == 48):
        raise ProxyProtocolError(f"PROXY v1 port {text!r} is not a decimal port")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError(f"PROXY v1 port {port} is over 65535")
    return port


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < V2_HEADER_LENGTH:
        return None
    command, family = data[12], data[13]
    if command >> 4 != 2:
        raise ProxyProtocolError(f"PROXY v2 version {command >> 4} is not 2")
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyProtocolError(f"PROXY v2 command {command & 0x0F} is neither LOCAL nor PROXY")
    payload = int.from_bytes(data[14:16], "big")
    if payload > V2_MAX_PAYLOAD:
        raise ProxyProtocolError(f"PROXY v2 header of {payload} bytes, over {V2_MAX_PAYLOAD}")
    length = V2_HEADER_LENGTH + payload
    if len(data) < length:
        return None
    body = data[V2_HEADER_LENGTH:length]
    if family in _V2_ADDRESSES:
        size, version = _V2_ADDRESSES[family]
        if payload < size:
            raise ProxyProtocolError(
                f"PROXY v2 payload of {payload} bytes, too short for IPv{version} addresses"
            )
        half = (size - 4) // 2
        source = ipaddress.ip_address(body[:half])
        destination = ipaddress.ip_address(body[half : 2 * half])
        ports = body[2 * half : size]
        addresses: tuple[str | None, int | None, str | None, int | None] = (
            str(source),
            int.from_bytes(ports[:2], "big"),
            str(destination),
            int.from_bytes(ports[2:], "big"),
        )
    elif family in (_V2_UNIX_STREAM, _V2_UNIX_DGRAM):
        if payload < 216:
            raise ProxyProtocolError("PROXY v2 payload too short for UNIX addresses")
        size, addresses = 216, (None, None, None, None)
    elif family == _V2_UNSPEC:
        # The spec: a receiver must accept it and skip whatever the payload holds.
        return ProxyHeader(length)
    else:
        raise ProxyProtocolError(f"PROXY v2 address family 0x{family:02x} is unknown")
    tlvs = _v2_tlvs(body[size:])
    if command == _V2_LOCAL:
        # The balancer's own connection (a health check): addresses, if any, are ignored.
        return ProxyHeader(length, tlvs=tlvs)
    return ProxyHeader(length, *addresses, tlvs=tlvs)


def _v2_tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    """Split type-length-value extensions; each must fit the payload exactly."""
    tlvs = []
    position = 0
    while position < len(data):
        if len(data) - position < 3:
            raise ProxyProtocolError("PROXY v2 TLV cut short")
        kind = data[position]
        size = int.from_bytes(data[position + 1 : position + 3], "big")
        value = data[position + 3 : position + 3 + size]
        if len(value) != size:
            raise ProxyProtocolError(f"PROXY v2 TLV 0x{kind:02x} longer than the header")
        tlvs.append((kind, value))
        position += 3 + size
    return tuple(tlvs)
