"""Pure header handling: hop-by-hop removal, X-Forwarded-*, and the heads the proxy writes.

Every function here works on the raw `(name, value)` byte pairs that the parser hands over and
returns bytes ready for a transport. Nothing does I/O, so all of it is tested without sockets.
The proxy always writes its own framing (Content-Length or chunked), never the peer's.
"""

from __future__ import annotations

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


def field_pattern(names: Sequence[bytes]) -> re.Pattern[bytes]:
    """Compile the pattern `find_fields` uses for these lower-case field names (and proxy-*).

    The pattern starts with the literal CRLF, so the regex engine jumps from line start to line
    start instead of trying every byte of the block.
    """
    alternatives = b"|".join(re.escape(name) for name in names)
    return re.compile(rb"\r\n(" + alternatives + rb"|proxy-[^:\r\n]*):")


def find_fields(lowered: bytes, pattern: re.Pattern[bytes]) -> list[tuple[int, int, bytes]]:
    """Locate the lines of the fields that `pattern` (from `field_pattern`) names.

    `lowered` is CRLF followed by the lower-cased header section (lines of `name: value CRLF`).
    Returns `(start, end, name)` per line found, as offsets into the section itself, with `end`
    just past the line's CRLF.
    """
    found: list[tuple[int, int, bytes]] = []
    for match in pattern.finditer(lowered):
        start = match.start()
        found.append((start, lowered.find(b"\r\n", match.end()), match.group(1)))
    return found


def cut_lines(section: bytes, lines: list[tuple[int, int, bytes]]) -> bytes:
    """Return `section` without the given lines (as `find_fields` located them)."""
    if not lines:
        return section
    lines.sort()
    kept = []
    position = 0
    for start, end, _ in lines:
        kept.append(section[position:start])
        position = end
    kept.append(section[position:])
    return b"".join(kept)


# Response fields the proxy never passes on: hop-by-hop, the framing it states itself, and a
# colour header an upstream may try to forge. They are found in the raw header block with a few
# substring searches of a lower-cased copy: per-field parser callbacks, a Python loop over every
# field, or one regex over the block each cost more than the rest of a small response's path.
_RESPONSE_SPECIAL = field_pattern(
    (
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"x-bluegreen-colour",
    )
)


class ResponseHead:
    """A response head as received, split into what the proxy passes on and what it decides."""

    __slots__ = ("chunked", "content_length", "fields", "length_line", "status_line", "upgrade")

    def __init__(self, block: bytes) -> None:
        """Split a raw head block (status line through the blank line), as llhttp accepted it.

        llhttp has already refused anything ambiguous (obs-fold, bare CR or LF, a repeated or
        malformed Content-Length, Content-Length with Transfer-Encoding, space before a colon),
        so the block is a status line and clean `name: value CRLF` lines. The Content-Length
        line stays in `fields` (the usual case forwards it unchanged); `render_response_head`
        removes it when the proxy frames the body otherwise.
        """
        line_end = block.index(b"\r\n")
        status_line = block[:line_end]
        if not status_line.startswith(b"HTTP/1.1 "):
            status_line = b"HTTP/1.1" + status_line[8:]  # the proxy speaks HTTP/1.1 to clients
        self.status_line = status_line
        self.content_length: int | None = None
        self.length_line = b""
        self.chunked = False
        self.upgrade: bytes | None = None
        section = block[line_end + 2 : -2]
        lowered = block[line_end:-2].lower()  # starts with the status line's CRLF
        cut: list[tuple[int, int, bytes]] = []
        named: set[bytes] | None = None
        for match in _RESPONSE_SPECIAL.finditer(lowered):
            name = match.group(1)
            start = match.start()
            end = lowered.find(b"\r\n", match.end())
            if name == b"content-length":
                self.length_line = section[start:end]
                self.content_length = int(section[match.end() - 2 : end - 2])
                continue
            value = section[match.end() - 2 : end - 2].strip(b" \t")
            if name == b"transfer-encoding":
                self.chunked = value.lower().endswith(b"chunked")
            elif name == b"upgrade":
                self.upgrade = value
            elif name == b"connection":
                tokens = {t.strip() for t in value.lower().split(b",")} - _NOT_FIELD_NAMES
                if tokens:
                    named = tokens if named is None else named | tokens
            cut.append((start, end, name))
        if named:
            # Fields that Connection names are hop-by-hop too (RFC 9110 7.6.1).
            cut += find_fields(lowered, field_pattern(sorted(named)))
        self.fields = cut_lines(section, cut)


_NOT_FIELD_NAMES = HOP_BY_HOP | {b"", b"close", b"content-length", b"x-bluegreen-colour"}


def render_response_head(
    head: ResponseHead,
    *,
    colour_line: bytes,
    content_length: int | None,
    chunked: bool,
    keep_alive: bool,
    client_http10: bool,
    upgrade: bool,
) -> bytes:
    """Build the response head sent to the client, with the proxy's own framing.

    The proxy states `content_length` when known (it is always the upstream's, whose line is
    then kept as received), chunked when `chunked`, otherwise the body (if any) is delimited by
    closing the connection. `colour_line` is the `X-Bluegreen-Colour` field naming the colour
    that answered.
    """
    fields = head.fields
    keep_length_line = bool(head.length_line) and content_length is not None and not upgrade
    if head.length_line and not keep_length_line:
        fields = fields.replace(head.length_line, b"", 1)
    parts = [head.status_line, b"\r\n", fields, colour_line]
    if upgrade and head.upgrade is not None:
        parts += (b"Connection: upgrade\r\nUpgrade: ", head.upgrade, b"\r\n")
    else:
        if content_length is not None and not keep_length_line:
            parts.append(b"Content-Length: %d\r\n" % content_length)
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
