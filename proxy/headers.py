"""Pure header handling: hop-by-hop removal, X-Forwarded-*, and the heads the proxy writes.

Every function here works on the raw `(name, value)` byte pairs that the parser hands over and
returns bytes ready for a transport. Nothing does I/O, so all of it is tested without sockets.
The proxy always writes its own framing (Content-Length or chunked), never the peer's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from http import HTTPStatus
from typing import Final

from proxy.preview_cookie import remove_cookie
from proxy.request_id import new_request_id, new_traceparent, valid_request_id

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
COLOUR_HEADER = b"X-Bluegreen-Colour"
# Connection tokens that are options or fields handled anyway, not extra fields to remove.
# Host is among them: a client that names it in Connection must not make the proxy drop it.
_NOT_FIELD_NAMES = HOP_BY_HOP | {b"", b"close", b"host", b"content-length", b"x-bluegreen-colour"}


# RFC 9110 7.2 / RFC 3986 3.2.2: a reg-name or an IP literal in brackets, with an optional port.
# Host values already found valid: a proxy sees the same few again and again, and a set lookup
# costs a tenth of the match. Bounded, so that random Host values cannot grow it.
_valid_hosts: set[bytes] = set()
_VALID_HOSTS_KEPT = 1024
_HOST_VALUE = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::[0-9]*)?")


class RequestHeadError(ValueError):
    """A request head that the proxy refuses; the message is safe to show to the client."""

    def __init__(
        self, message: str, status: int = 400, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers  # extra response fields, such as Retry-After on a 503


# How each request field is treated: most are _PLAIN and pass unchanged. Final, so that the
# compiled build (mypyc) inlines them instead of looking up a module global per comparison.
_PLAIN: Final = 0
_HOST: Final = 1
_FORWARDED_FOR: Final = 2
_DROP: Final = 3
_UPGRADE: Final = 4
_CONNECTION: Final = 5
_LENGTH: Final = 6
_TRANSFER: Final = 7
_FROM_BALANCER: Final = 8
_UNDERSCORED: Final = 9
_REQUEST_ID: Final = 10
_TRACEPARENT: Final = 11
_COOKIE: Final = 12
# Plain fields the access log reads too: recorded in the same pass, so that a logged request
# needs no second look at its fields (and the comparisons come last: only these fields pay).
_USER_AGENT: Final = 13
_REFERER: Final = 14
_REQUEST_SPECIAL = {
    b"host": _HOST,
    b"x-forwarded-for": _FORWARDED_FOR,
    # What a load balancer in front says about the client: kept from a trusted one, which set
    # them, dropped (or, for the first two, set by the proxy) from anyone else, who could forge
    # them.
    b"x-forwarded-proto": _FROM_BALANCER,
    b"x-forwarded-host": _FROM_BALANCER,
    b"x-forwarded-port": _FROM_BALANCER,
    b"forwarded": _FROM_BALANCER,
    b"x-real-ip": _FROM_BALANCER,
    b"x-client-ip": _FROM_BALANCER,
    b"keep-alive": _DROP,
    b"te": _DROP,
    b"trailer": _DROP,
    b"upgrade": _UPGRADE,
    b"connection": _CONNECTION,
    b"content-length": _LENGTH,
    b"transfer-encoding": _TRANSFER,
    # Set by the proxy: the client's own value when valid, else a fresh one (proxy/request_id.py).
    b"x-request-id": _REQUEST_ID,
    b"traceparent": _TRACEPARENT,
    b"cookie": _COOKIE,
    # The mark of a mirrored request (proxy/shadow.py): from a client it could make the
    # application skip the side effects of a real request.
    b"x-bluegreen-shadow": _DROP,
    b"user-agent": _USER_AGENT,
    b"referer": _REFERER,
}
# Every lower-case name seen so far, with its kind: classifying a name (proxy-*, an underscore)
# costs more than one dict lookup, and a proxy sees the same few dozen names again and again.
# Bounded, so that random names cannot grow it; past the bound a name is classified each time.
_request_kinds: dict[bytes, int] = dict(_REQUEST_SPECIAL)
_KINDS_KEPT = 1024
# `in` with an int is a memchr; with b"_" CPython first tries the bytes as an int, and the
# TypeError it builds and clears costs ~2,000 instructions (callgrind).
_UNDERSCORE: Final = 0x5F  # ord("_")
# Of a trusted balancer's fields, those that say one thing about the request (its scheme, the
# host and port it came to) and are set again from their last value: the one that balancer set.
_LAST_VALUE_FIELDS = {
    b"x-forwarded-proto": b"X-Forwarded-Proto",
    b"x-forwarded-host": b"X-Forwarded-Host",
    b"x-forwarded-port": b"X-Forwarded-Port",
}


# A request target is origin-form (`/path?query`) on the hot path; anything else, or a `#`
# anywhere in it, is looked at by _origin_form.
_SLASH: Final = 0x2F  # ord("/")
_HASH: Final = 0x23  # ord("#")
# RFC 9112 3.2.2 absolute-form: scheme "://" authority, then an optional path and query.
_ABSOLUTE_FORM = re.compile(rb"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?]*)([/?].*)?", re.DOTALL)
_DEFAULT_PORTS = {b"http": b":80", b"https": b":443"}


class UpstreamRequest:
    """The request head to send upstream, and what the proxy learnt from the client's head."""

    __slots__ = (
        "chunked",
        "content_length",
        "dropped",
        "forwarded_for",
        "head",
        "host",
        "preview_cookie",
        "preview_value",
        "referer",
        "request_id",
        "session_cookie",
        "traceparent",
        "upgrade",
        "user_agent",
    )

    def __init__(
        self,
        head: bytes,
        host: bytes,
        preview_value: bytes | None,
        content_length: int | None,
        chunked: bool,
        *,
        request_id: bytes,
        traceparent: bytes | None = None,
        dropped: int = 0,
        upgrade: bool = False,
        preview_cookie: bytes | None = None,
        user_agent: bytes | None = None,
        referer: bytes | None = None,
        forwarded_for: list[bytes] | None = None,
        session_cookie: bytes | None = None,
    ) -> None:
        self.head = head
        self.dropped = dropped  # fields removed for an underscore in their name
        self.request_id = request_id  # the X-Request-Id sent upstream: the client's, or made here
        self.traceparent = traceparent  # as sent upstream: the client's, or started here
        self.upgrade = upgrade  # the head asks the upstream for an upgrade (h2c never does)
        self.host = host
        self.preview_value = preview_value
        self.preview_cookie = preview_cookie  # the preview cookie's value, taken out of Cookie
        self.session_cookie = session_cookie  # the session cookie's (session.affinity), likewise
        self.content_length = content_length
        self.chunked = chunked
        # For the access log: the last User-Agent and Referer sent, and a trusted peer's
        # X-Forwarded-For values as it sent them (None from anyone else, or without one).
        self.user_agent = user_agent
        self.referer = referer
        self.forwarded_for = forwarded_for


def build_upstream_request(
    method: bytes,
    target: bytes,
    headers: Sequence[Header],
    *,
    peer: bytes | None,
    preview_header: bytes,
    upgrade: bool,
    trusted_peer: bool = False,
    allow_underscores: bool = False,
    start_trace: bool = False,
    preview_cookie: bytes = b"",
    session_cookie: bytes = b"",
) -> UpstreamRequest:
    """Build the request head sent upstream, in one pass over the client's fields.

    The head is HTTP/1.1 with keep-alive (the upstream pool reuses connections whatever the
    client's version). The preview header and hop-by-hop fields are removed. X-Forwarded-For gets
    the peer appended. `trusted_peer` says the peer is a trusted load balancer
    (`forwarded.trustedCIDRs`): then its X-Forwarded-For chain, Forwarded, X-Real-IP and
    X-Client-IP are kept, and so are its X-Forwarded-Proto, -Host and -Port (the last value of
    each, the one that balancer added). From anyone else, who could forge them, those are
    dropped, and X-Forwarded-Proto (`http`) and X-Forwarded-Host (the Host) are set. Unless
    `allow_underscores`, a field whose name has an underscore is dropped (and counted in
    `dropped`): several application servers read `_` as `-` (CGI's HTTP_X_FORWARDED_FOR
    cannot tell them apart), so `X_Forwarded_For` would pass every check here and still be read
    as X-Forwarded-For behind the proxy; nginx drops them too (`underscores_in_headers`).
    `X-Request-Id` goes last: the client's when it sent one valid value, else a fresh one.
    `traceparent` passes as sent; without one, `start_trace` starts a trace here. The body's
    framing is the proxy's own: Content-Length is kept, chunked is declared again. For an
    upgrade, the `Upgrade` field and `Connection: upgrade` are kept, since they are the point of
    the request, without `h2c` (an HTTP/2 upgrade would take the connection past the proxy's
    parser, Envoy drops it too); an upgrade to h2c alone goes as a plain request. The cookie named
    `preview_cookie` (when not empty) is taken out of every Cookie field, the other cookies
    staying byte for byte, and its value returned in `preview_cookie`: whether it is valid or
    not, the colour never sees it. The same goes for the session cookie named `session_cookie`.

    An absolute-form target goes upstream in origin-form, once its authority is the Host (the
    upstream must obey the target's, RFC 9112 3.2.2: a mismatch is refused, as HAProxy does).

    Raises RequestHeadError when Host is missing, repeated or empty, for a target that is not
    origin-form, `OPTIONS *` or such an absolute-form (userinfo, a `#`, another scheme), and
    with 501 for a transfer coding other than chunked.
    """
    host: bytes | None = None
    host_count = 0
    preview_value: bytes | None = None
    cookie_value: bytes | None = None
    session_value: bytes | None = None
    content_length: int | None = None
    chunked = False
    forwarded_for: list[bytes] = []
    upgrade_value: bytes | None = None
    from_balancer: list[Header] | None = None
    dropped = 0
    request_id: bytes | None = None
    request_ids = 0
    traceparent: bytes | None = None
    named: set[bytes] | None = None
    user_agent: bytes | None = None
    referer: bytes | None = None
    # Pieces are appended one by one: `kept += (a, b, c)` builds and frees a tuple each time,
    # ~150 instructions per field more in the compiled build (callgrind).
    kept: list[bytes] = [method, b" ", target, b" HTTP/1.1\r\n"]
    kinds = _request_kinds
    for name, value in headers:
        lower = name.lower()
        kind = kinds.get(lower)
        if kind is None:
            kind = _classify(lower)
        if kind == _PLAIN:
            if lower == preview_header:
                preview_value = value
            else:
                kept.append(name)
                kept.append(b": ")
                kept.append(value)
                kept.append(b"\r\n")
        elif kind == _HOST:
            host_count += 1
            host = value
            kept.append(b"Host: ")
            kept.append(value)
            kept.append(b"\r\n")
        elif kind == _LENGTH:
            content_length = int(value)  # llhttp already refused bad or repeated values
            # The integer parsed, never the bytes as sent: `010` is 8 to an upstream that
            # reads octal, which would leave bytes behind on a pooled connection.
            kept.append(b"Content-Length: %d\r\n" % content_length)
        elif kind == _TRANSFER:
            chunked = True  # llhttp accepts only a final "chunked", and never with a length
            if value != b"chunked":
                _check_codings(value)  # `gzip, chunked` would go on as chunked, gzip inside
        elif kind == _FORWARDED_FOR:
            if trusted_peer:
                forwarded_for.append(value)
        elif kind == _UPGRADE:
            upgrade_value = value
        elif kind == _CONNECTION:
            tokens = {t.strip() for t in value.lower().split(b",")} - _NOT_FIELD_NAMES
            if tokens:
                named = tokens if named is None else named | tokens
        elif kind == _FROM_BALANCER:
            if trusted_peer:
                if from_balancer is None:
                    from_balancer = []
                from_balancer.append((name, value))
        elif kind == _REQUEST_ID:
            request_ids += 1
            request_id = value
        elif kind == _TRACEPARENT:
            traceparent = value
            kept.append(name)
            kept.append(b": ")
            kept.append(value)
            kept.append(b"\r\n")
        elif kind == _COOKIE:
            # partition, not `in` or find: `in` first tries the needle as an int (see
            # _UNDERSCORE) and find parses its arguments from a tuple; partition takes one
            # argument directly, and returns (value, b"", b"") when the name is absent.
            others = value
            if preview_cookie and value.partition(preview_cookie)[1]:
                others, found = remove_cookie(value, preview_cookie)
                if found is not None:
                    cookie_value = found
            if session_cookie:
                # Usually there when session affinity is on: no separate test for the name.
                others, found = remove_cookie(others, session_cookie)
                if found is not None:
                    session_value = found
            if others:
                kept += (name, b": ", others, b"\r\n")
        elif kind == _UNDERSCORED:
            if lower == preview_header:
                preview_value = value
            elif allow_underscores:
                kept.append(name)
                kept.append(b": ")
                kept.append(value)
                kept.append(b"\r\n")
            else:
                dropped += 1
        elif kind in (_USER_AGENT, _REFERER):
            if lower == preview_header:
                preview_value = value
            else:
                kept.append(name)
                kept.append(b": ")
                kept.append(value)
                kept.append(b"\r\n")
                if kind == _USER_AGENT:
                    user_agent = value
                else:
                    referer = value
        # _DROP: hop-by-hop fields and Proxy-*, for the proxy itself; never forwarded.
    if host_count != 1 or host is None:
        problem = "missing Host header" if host_count == 0 else "repeated Host header"
        raise RequestHeadError(f"bad request: {problem}")
    if host not in _valid_hosts:
        if _HOST_VALUE.fullmatch(host) is None:
            what = "empty" if not host.strip() else "invalid"
            raise RequestHeadError(f"bad request: {what} Host header")
        if len(_valid_hosts) < _VALID_HOSTS_KEPT:
            _valid_hosts.add(host)
    if target[0] != _SLASH or _HASH in target:
        kept[2] = _origin_form(target, host)
    if named:
        # Rare: fields that the client's Connection names are hop-by-hop too; rebuild without.
        return build_upstream_request(
            method,
            target,
            [(n, v) for n, v in headers if n.lower() not in named and n.lower() != b"connection"],
            peer=peer,
            preview_header=preview_header,
            upgrade=upgrade,
            trusted_peer=trusted_peer,
            allow_underscores=allow_underscores,
            start_trace=start_trace,
            preview_cookie=preview_cookie,
            session_cookie=session_cookie,
        )
    if request_id is None or request_ids != 1 or not valid_request_id(request_id):
        # None sent, several (which one would the colour log?), or unsafe to write in a log.
        request_id = new_request_id()
    sent_forwarded_for = forwarded_for.copy() if forwarded_for else None
    if peer is not None:
        forwarded_for.append(peer)
    if forwarded_for:
        kept.append(b"X-Forwarded-For: ")
        kept.append(b", ".join(forwarded_for))
        kept.append(b"\r\n")
    if from_balancer is None:
        kept.append(b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: ")
        kept.append(host)
        kept.append(b"\r\n")
    else:
        kept += _balancer_fields(from_balancer, host)
    forwards_upgrade = False
    if upgrade and upgrade_value is not None:
        upgrade_value = _without_h2c(upgrade_value)
        if upgrade_value:
            forwards_upgrade = True
            kept += (b"Connection: upgrade\r\nUpgrade: ", upgrade_value, b"\r\n")
    if traceparent is None and start_trace:
        traceparent = new_traceparent()
        kept += (b"traceparent: ", traceparent, b"\r\n")
    if chunked:
        kept.append(b"Transfer-Encoding: chunked\r\n")
    kept.append(b"X-Request-Id: ")
    kept.append(request_id)
    kept.append(b"\r\n\r\n")
    return UpstreamRequest(
        b"".join(kept),
        host,
        preview_value,
        content_length,
        chunked,
        request_id=request_id,
        traceparent=traceparent,
        dropped=dropped,
        upgrade=forwards_upgrade,
        preview_cookie=cookie_value,
        user_agent=user_agent,
        referer=referer,
        forwarded_for=sent_forwarded_for,
        session_cookie=session_value,
    )


def _origin_form(target: bytes, host: bytes) -> bytes:
    """The target to send upstream for one that is not plain origin-form, or RequestHeadError.

    `OPTIONS *` passes (the client connection refuses any other `*`). An absolute-form target
    (`http://a/x?y`) becomes its path and query (`/x?y`, `/` when empty), provided its authority
    names the same host and port as Host (default ports aside) and carries no userinfo.
    """
    if _HASH in target:
        raise RequestHeadError("bad request: '#' in the request target (a fragment is not sent)")
    if target[0] == _SLASH or target == b"*":
        return target
    match = _ABSOLUTE_FORM.fullmatch(target)
    if match is None:
        raise RequestHeadError("bad request: the request target is not origin-form (/path)")
    scheme = match.group(1).lower()
    authority = match.group(2)
    if scheme not in _DEFAULT_PORTS:
        raise RequestHeadError("bad request: the request target's scheme is not http or https")
    if authority.find(b"@") >= 0:
        raise RequestHeadError("bad request: userinfo in the request target")
    if not authority or _comparable(authority, scheme) != _comparable(host, scheme):
        shown = authority.decode("latin-1")
        raise RequestHeadError(
            f"bad request: the request target's authority {shown!r} is not the Host header"
        )
    rest = match.group(3) or b""
    return rest if rest[:1] == b"/" else b"/" + rest


def _comparable(authority: bytes, scheme: bytes) -> bytes:
    """An authority as compared with Host: lower-case, without an empty or default port."""
    lower = authority.lower()
    if lower.endswith(b":"):
        return lower[:-1]
    default = _DEFAULT_PORTS[scheme]
    return lower[: -len(default)] if lower.endswith(default) else lower


def _check_codings(value: bytes) -> None:
    """Refuse (501) a Transfer-Encoding with a coding other than chunked, parsed as tokens."""
    for coding in value.split(b","):
        if coding.strip(b" \t").lower() != b"chunked":
            shown = value.decode("latin-1")
            raise RequestHeadError(
                f"Transfer-Encoding {shown!r}: only chunked is implemented", status=501
            )


def _without_h2c(value: bytes) -> bytes:
    """An Upgrade value without its `h2c` offers (the rest as sent; empty when none is left)."""
    if value.lower().find(b"h2c") < 0:
        return value
    offers = [offer.strip(b" \t") for offer in value.split(b",")]
    return b", ".join([o for o in offers if o and o.lower().split(b"/")[0] != b"h2c"])


def _classify(lower: bytes) -> int:
    """The kind of a field name not seen before (remembered while the cache has room)."""
    if lower.startswith(b"proxy-"):
        kind = _DROP  # Proxy-Authorization and the like are for this proxy, not the colour
    elif _UNDERSCORE in lower:
        kind = _UNDERSCORED
    else:
        kind = _PLAIN
    if len(_request_kinds) < _KINDS_KEPT:
        _request_kinds[lower] = kind
    return kind


def _balancer_fields(fields: list[Header], host: bytes) -> list[bytes]:
    """The pieces of a trusted balancer's client fields, as they go upstream.

    Forwarded, X-Real-IP and X-Client-IP pass as they came. X-Forwarded-Proto, -Host and -Port
    each go once, with the last value sent (a list names every hop; the last is the balancer's
    own); Proto and Host fall back to `http` and the request's Host when it sent none.
    """
    last = {b"x-forwarded-proto": b"http", b"x-forwarded-host": host}
    pieces: list[bytes] = []
    for name, value in fields:
        lower = name.lower()
        if lower in _LAST_VALUE_FIELDS:
            item = value.rsplit(b",", 1)[-1].strip()
            if item:
                last[lower] = item
        else:
            pieces += (name, b": ", value, b"\r\n")
    for lower, value in last.items():
        pieces += (_LAST_VALUE_FIELDS[lower], b": ", value, b"\r\n")
    return pieces


def field_pattern(names: Sequence[bytes]) -> re.Pattern[bytes]:
    """Compile the pattern `find_fields` uses for these lower-case field names (and proxy-*).

    The pattern starts with the literal CRLF, so the regex engine jumps from line start to line
    start instead of trying every byte of the block.
    """
    alternatives = b"|".join([re.escape(name) for name in names])
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
        # A line can be listed twice (a field that Connection names and that is hop-by-hop
        # anyway, or named twice): its second entry starts before `position`. Skipped, not
        # sliced: mypyc's bytes slice fails on a start past the end, where Python gives b"".
        if start >= position:
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
        b"x-request-id",  # the proxy states the request's own
    )
)


class ResponseHeadError(ValueError):
    """A response head that llhttp accepted but the proxy will not relay (the client gets 502)."""


class ResponseHead:
    """A response head as received, split into what the proxy passes on and what it decides."""

    __slots__ = ("chunked", "content_length", "fields", "length_line", "status_line", "upgrade")

    def __init__(self, block: bytes, status: int = 0) -> None:
        """Split a raw head block (status line through the blank line), as llhttp accepted it.

        llhttp has already refused anything ambiguous (obs-fold, bare CR or LF, a repeated or
        malformed Content-Length, Content-Length with Transfer-Encoding, space before a colon),
        so the block is a status line and clean `name: value CRLF` lines. The Content-Length
        line stays in `fields` (the usual case forwards it unchanged); `render_response_head`
        removes it when the proxy frames the body otherwise. `status` is the code llhttp parsed
        (0: read it from the line).

        Raises ResponseHeadError for a transfer coding other than chunked, which the proxy
        would otherwise relabel without decoding.
        """
        line_end = block.index(b"\r\n")
        status_line = block[:line_end]
        if not status_line.startswith(b"HTTP/1.1 "):
            # The proxy speaks HTTP/1.1 to clients: the line is built again from the parsed
            # code (an HTTP/1.0 or ICE/1.1 upstream), never sliced at a fixed offset.
            status_line = _status_line(status_line, status)
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
                # Parsed as a list of tokens: only `chunked`, once, is relayed. `gzip` or
                # `chunked, gzip` would reach the client relabelled and undecoded, and a suffix
                # test would read `xchunked` (close-delimited to llhttp) as chunked.
                if self.chunked or value.lower() != b"chunked":
                    shown = value.decode("latin-1")
                    raise ResponseHeadError(
                        f"Transfer-Encoding {shown!r}: only chunked, once, is implemented"
                    )
                self.chunked = True
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


def _status_line(raw: bytes, status: int) -> bytes:
    """The HTTP/1.1 status line for a raw one of another version: the code and reason kept."""
    parts = raw.split(b" ", 2)
    if not status:
        status = int(parts[1])
    reason = parts[2] if len(parts) == 3 else b""
    if not reason:
        try:
            reason = HTTPStatus(status).phrase.encode("ascii")
        except ValueError:
            reason = b""
    return b"HTTP/1.1 %d %s" % (status, reason)


def render_response_head(
    head: ResponseHead,
    *,
    colour_line: bytes,
    request_id: bytes,
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
    that answered; `X-Request-Id` follows it with `request_id`, the ID the colour was sent.
    """
    fields = head.fields
    keep_length_line = bool(head.length_line) and content_length is not None and not upgrade
    if head.length_line and not keep_length_line:
        fields = fields.replace(head.length_line, b"", 1)
    parts = [head.status_line, b"\r\n", fields, colour_line, b"X-Request-Id: ", request_id, b"\r\n"]
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
    request_id: bytes | None = None,
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
    if request_id is not None:
        lines += (b"X-Request-Id: ", request_id, b"\r\n")
    for name, value in extra_headers:
        lines += (name, b": ", value, b"\r\n")
    if close:
        lines.append(b"Connection: close\r\n")
    lines += (b"\r\n", body)
    return b"".join(lines)


def chunk(data: bytes) -> list[bytes]:
    """Frame `data` as one HTTP/1.1 chunk, as pieces for writelines (the data is not copied)."""
    return [b"%x\r\n" % len(data), data, b"\r\n"]


LAST_CHUNK = b"0\r\n\r\n"
