"""Pure header handling: hop-by-hop removal, X-Forwarded-*, and the heads the proxy writes.

Every function here works on the raw `(name, value)` byte pairs that the parser hands over and
returns bytes ready for a transport. Nothing does I/O, so all of it is tested without sockets.
The proxy always writes its own framing (Content-Length or chunked), never the peer's.
"""

from __future__ import annotations

import functools
import re
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


# Response fields the proxy never passes on: hop-by-hop, the framing it states itself, and a
# colour header an upstream may try to forge. Matched on the raw header block in one regex pass:
# per-field parser callbacks and a Python loop over every field cost more than the rest of the
# response path together on small responses.
_RESPONSE_SPECIAL = re.compile(
    rb"^(connection|keep-alive|te|trailer|transfer-encoding|upgrade|content-length"
    rb"|x-bluegreen-colour|proxy-[^:\r\n]*):[ \t]*(.*?)[ \t]*\r\n",
    re.IGNORECASE | re.MULTILINE,
)


class ResponseHead:
    """A response head as received, split into what the proxy passes on and what it decides."""

    __slots__ = (
        "chunked",
        "connection_named",
        "content_length",
        "fields",
        "status_line",
        "upgrade",
    )

    def __init__(self, block: bytes) -> None:
        """Split a raw head block (status line through the blank line), as llhttp accepted it.

        llhttp has already refused anything ambiguous (obs-fold, bare CR or LF, a repeated or
        malformed Content-Length, Content-Length with Transfer-Encoding), so the block is a
        status line and clean `name: value CRLF` lines.
        """
        line_end = block.index(b"\r\n")
        status_line = block[:line_end]
        if not status_line.startswith(b"HTTP/1.1 "):
            status_line = b"HTTP/1.1" + status_line[8:]  # the proxy speaks HTTP/1.1 to clients
        self.status_line = status_line
        self.content_length: int | None = None
        self.chunked = False
        self.upgrade: bytes | None = None
        self.connection_named: set[bytes] | None = None
        self.fields = _RESPONSE_SPECIAL.sub(self._take, block[line_end + 2 : -2])
        named = self.connection_named
        if named:
            # Fields that Connection names are hop-by-hop too (RFC 9110 7.6.1).
            self.fields = _named_fields_pattern(frozenset(named)).sub(b"", self.fields)

    def _take(self, match: re.Match[bytes]) -> bytes:
        name = match.group(1).lower()
        value = match.group(2)
        if name == b"content-length":
            self.content_length = int(value)
        elif name == b"transfer-encoding":
            self.chunked = value.lower().endswith(b"chunked")
        elif name == b"upgrade":
            self.upgrade = value
        elif name == b"connection":
            tokens = {t.strip().lower() for t in value.split(b",")} - _NOT_FIELD_NAMES
            if tokens:
                self.connection_named = (self.connection_named or set()) | tokens
        return b""


_NOT_FIELD_NAMES = HOP_BY_HOP | {b"", b"close", b"content-length", b"x-bluegreen-colour"}


@functools.lru_cache(maxsize=64)
def _named_fields_pattern(names: frozenset[bytes]) -> re.Pattern[bytes]:
    alternatives = b"|".join(re.escape(name) for name in sorted(names))
    return re.compile(rb"^(?:" + alternatives + rb"):[^\r\n]*\r\n", re.IGNORECASE | re.MULTILINE)


def render_response_head(
    head: ResponseHead,
    *,
    colour: bytes,
    content_length: int | None,
    chunked: bool,
    keep_alive: bool,
    client_http10: bool,
    upgrade: bool,
) -> bytes:
    """Build the response head sent to the client, with the proxy's own framing.

    The proxy states `content_length` when known, chunked when `chunked`, otherwise the body
    (if any) is delimited by closing the connection. `X-Bluegreen-Colour` names the colour that
    answered.
    """
    parts = [head.status_line, b"\r\n", head.fields, COLOUR_HEADER, b": ", colour, b"\r\n"]
    if upgrade and head.upgrade is not None:
        parts += (b"Connection: upgrade\r\nUpgrade: ", head.upgrade, b"\r\n")
    else:
        if content_length is not None:
            parts += (b"Content-Length: ", str(content_length).encode("ascii"), b"\r\n")
        elif chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        if not keep_alive:
            parts.append(b"Connection: close\r\n")
        elif client_http10:
            parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


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
