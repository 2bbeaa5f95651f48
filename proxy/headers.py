"""Pure header handling: hop-by-hop removal, X-Forwarded-*, and the heads the proxy writes.

Every function here works on the raw `(name, value)` byte pairs that the parser hands over and
returns bytes ready for a transport. Nothing does I/O, so all of it is tested without sockets.
The proxy always writes its own framing (Content-Length or chunked), never the peer's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from http import HTTPStatus

Header = tuple[bytes, bytes]

# RFC 9110 7.6.1 and RFC 9112: fields that describe one connection, not the message. They are
# dropped in both directions, as are the fields that Connection names.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Set by the proxy itself from what it knows; a client's own copies are replaced or appended to.
FORWARDED_SET_BY_PROXY = frozenset({b"x-forwarded-proto", b"x-forwarded-host"})
COLOUR_HEADER = b"X-Bluegreen-Colour"
# Response fields the proxy never passes on: hop-by-hop, the framing it states itself, and a
# colour header an upstream may try to forge.
_RESPONSE_DROPPED = HOP_BY_HOP | {b"content-length", b"x-bluegreen-colour"}
_CONNECTION_OPTIONS = frozenset({b"", b"close", b"keep-alive", b"upgrade"})


def connection_tokens(headers: Iterable[Header]) -> frozenset[bytes]:
    """Return the lower-case field names listed in every Connection header."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(tokens)


def is_hop_by_hop(lower_name: bytes, named_by_connection: frozenset[bytes]) -> bool:
    """Say whether a field must not cross the proxy (RFC 9110 7.6.1, plus every Proxy-* field)."""
    return (
        lower_name in HOP_BY_HOP
        or lower_name.startswith(b"proxy-")
        or lower_name in named_by_connection
    )


class RequestHeadError(ValueError):
    """A request head that the proxy refuses; the message is safe to show to the client."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def build_upstream_request_head(
    method: bytes,
    target: bytes,
    headers: Sequence[Header],
    *,
    peer_ip: str | None,
    preview_header: bytes,
    chunked_body: bool,
    upgrade: bool,
) -> tuple[bytes, bytes]:
    """Build the request head sent upstream and return it with the client's Host value.

    The head is HTTP/1.1 with keep-alive (the upstream pool reuses connections whatever the
    client's version). The preview header and hop-by-hop fields are removed, X-Forwarded-For gets
    the peer appended, X-Forwarded-Proto and X-Forwarded-Host are set. For an upgrade the
    `Upgrade` field and `Connection: upgrade` are kept, since they are the point of the request.

    Raises RequestHeadError when Host is missing or repeated.
    """
    named = connection_tokens(headers)
    host: bytes | None = None
    host_count = 0
    forwarded_for: list[bytes] = []
    upgrade_value: bytes | None = None
    lines = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        lower = name.lower()
        if lower == b"host":
            host_count += 1
            host = value
            lines += (b"Host: ", value, b"\r\n")
        elif lower == preview_header:
            continue
        elif lower == b"x-forwarded-for":
            forwarded_for.append(value)
        elif lower in FORWARDED_SET_BY_PROXY:
            continue
        elif lower == b"upgrade":
            upgrade_value = value
        elif is_hop_by_hop(lower, named):
            continue
        else:
            lines += (name, b": ", value, b"\r\n")
    if host_count != 1 or host is None:
        problem = "missing Host header" if host_count == 0 else "repeated Host header"
        raise RequestHeadError(f"bad request: {problem}")
    if not host.strip():
        raise RequestHeadError("bad request: empty Host header")
    if peer_ip is not None:
        forwarded_for.append(peer_ip.encode("ascii"))
    if forwarded_for:
        lines += (b"X-Forwarded-For: ", b", ".join(forwarded_for), b"\r\n")
    lines += (b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: ", host, b"\r\n")
    if upgrade and upgrade_value is not None:
        lines += (b"Connection: upgrade\r\nUpgrade: ", upgrade_value, b"\r\n")
    if chunked_body:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    lines.append(b"\r\n")
    return b"".join(lines), host


def build_response_head(
    status: int,
    reason: bytes,
    headers: Sequence[Header],
    *,
    colour: bytes,
    content_length: int | None,
    chunked: bool,
    keep_alive: bool,
    client_http10: bool,
    upgrade: bool,
) -> bytes:
    """Build the response head sent to the client.

    Hop-by-hop fields of the upstream's response are dropped and the proxy states its own
    framing: `content_length` when known, chunked when `chunked`, otherwise the body (if any) is
    delimited by closing the connection. `X-Bluegreen-Colour` names the colour that answered.
    """
    # One pass drops what is always dropped; fields named by Connection are rare enough (it
    # usually says only keep-alive or close) to be filtered in a second pass when present.
    kept: list[tuple[bytes, bytes, bytes]] = []
    named: set[bytes] = set()
    upgrade_value: bytes | None = None
    for name, value in headers:
        lower = name.lower()
        if lower in _RESPONSE_DROPPED or lower.startswith(b"proxy-"):
            if lower == b"connection":
                named.update(t.strip().lower() for t in value.split(b","))
            elif lower == b"upgrade":
                upgrade_value = value
            continue
        kept.append((lower, name, value))
    named -= _CONNECTION_OPTIONS
    lines = [b"HTTP/1.1 ", str(status).encode("ascii"), b" ", reason, b"\r\n"]
    for lower, name, value in kept:
        if not named or lower not in named:
            lines += (name, b": ", value, b"\r\n")
    lines += (COLOUR_HEADER, b": ", colour, b"\r\n")
    if upgrade and upgrade_value is not None:
        lines += (b"Connection: upgrade\r\nUpgrade: ", upgrade_value, b"\r\n")
    else:
        if content_length is not None:
            lines += (b"Content-Length: ", str(content_length).encode("ascii"), b"\r\n")
        elif chunked:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        if not keep_alive:
            lines.append(b"Connection: close\r\n")
        elif client_http10:
            lines.append(b"Connection: keep-alive\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def simple_response(
    status: int,
    message: str,
    *,
    colour: str | None = None,
    close: bool = True,
    extra_headers: Sequence[Header] = (),
) -> bytes:
    """Build a whole small plain-text response that the proxy itself answers with."""
    body = (message.rstrip("\n") + "\n").encode("utf-8", "replace")
    reason = HTTPStatus(status).phrase.encode("ascii")
    lines = [
        b"HTTP/1.1 ",
        str(status).encode("ascii"),
        b" ",
        reason,
        b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ",
        str(len(body)).encode("ascii"),
        b"\r\n",
    ]
    if colour is not None:
        lines += (COLOUR_HEADER, b": ", colour.encode("ascii"), b"\r\n")
    for name, value in extra_headers:
        lines += (name, b": ", value, b"\r\n")
    if close:
        lines.append(b"Connection: close\r\n")
    lines += (b"\r\n", body)
    return b"".join(lines)


def chunk(data: bytes) -> bytes:
    """Frame `data` as one HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
