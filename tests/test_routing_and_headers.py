"""Pure tests of the routing choice and header rewriting: tables of inputs and outputs."""

from __future__ import annotations

import ipaddress
import re

import pytest

from proxy.headers import (
    RequestHeadError,
    ResponseHead,
    ResponseHeadError,
    build_upstream_request,
    render_response_head,
)
from proxy.routing import LIVE, PREVIEW, PreviewPolicy, Route, RoutingTable, Upstream

UPSTREAMS = {
    "blue": Upstream("blue", "http://blue:80", "blue", 80),
    "green": Upstream("green", "http://green:80", "green", 80),
}
TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


@pytest.mark.parametrize(
    ("policy", "value", "peer", "expected"),
    [
        (PreviewPolicy(), None, "1.2.3.4", Route("blue", LIVE)),
        (PreviewPolicy(), b"", "1.2.3.4", Route("green", PREVIEW)),
        (PreviewPolicy(), b"anything", None, Route("green", PREVIEW)),
        (PreviewPolicy(token=b"t0k"), b"t0k", "1.2.3.4", Route("green", PREVIEW)),
        (PreviewPolicy(token=b"t0k"), b" t0k ", "1.2.3.4", Route("green", PREVIEW)),
        (PreviewPolicy(token=b"t0k"), b"t0", "1.2.3.4", Route("blue", LIVE)),
        (PreviewPolicy(token=b"t0k"), b"t0kk", "1.2.3.4", Route("blue", LIVE)),
        (PreviewPolicy(trusted_networks=TRUSTED), b"1", "10.1.2.3", Route("green", PREVIEW)),
        (PreviewPolicy(trusted_networks=TRUSTED), b"1", "11.1.2.3", Route("blue", LIVE)),
        (PreviewPolicy(trusted_networks=TRUSTED), b"1", "::ffff:10.0.0.1", Route("green", PREVIEW)),
        (PreviewPolicy(trusted_networks=TRUSTED), b"1", "fd00::1", Route("green", PREVIEW)),
        (PreviewPolicy(trusted_networks=TRUSTED), b"1", None, Route("blue", LIVE)),
        (PreviewPolicy(trusted_networks=TRUSTED), b"1", "not-an-ip", Route("blue", LIVE)),
        (
            PreviewPolicy(token=b"t", trusted_networks=TRUSTED),
            b"t",
            "192.168.0.1",
            Route("blue", LIVE),
        ),
    ],
)
def test_routing_choice(
    policy: PreviewPolicy, value: bytes | None, peer: str | None, expected: Route
) -> None:
    table = RoutingTable("v", "blue", "green", UPSTREAMS, preview=policy)
    assert table.choose(value, peer) == expected


def test_without_an_idle_colour_preview_is_live() -> None:
    table = RoutingTable("v", "blue", None, UPSTREAMS)
    assert table.choose(b"1", "10.0.0.1") == Route("blue", LIVE)


@pytest.mark.parametrize(
    ("active", "idle", "message"),
    [("red", None, "active colour 'red'"), ("blue", "blue", "idle colour 'blue'")],
)
def test_table_refuses_inconsistent_colours(active: str, idle: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RoutingTable("v", active, idle, UPSTREAMS)


def test_table_is_immutable() -> None:
    table = RoutingTable("v", "blue", "green", UPSTREAMS)
    with pytest.raises(AttributeError):
        table.active = "green"  # type: ignore[misc]
    with pytest.raises(TypeError):
        table.upstreams["red"] = UPSTREAMS["blue"]  # type: ignore[index]


MADE_ID_LINE = re.compile(rb"X-Request-Id: ([0-9a-f]{24})\r\n\r\n\Z")


def upstream_head(
    headers: list[tuple[bytes, bytes]], *, upgrade: bool = False, trusted: bool = True
) -> bytes:
    """The head sent upstream, without its last field: the X-Request-Id made for it."""
    request = build_upstream_request(
        b"GET",
        b"/p?q=1",
        headers,
        peer=b"192.0.2.1",
        preview_header=b"x-bluegreen-preview",
        upgrade=upgrade,
        trusted_peer=trusted,
    )
    made = MADE_ID_LINE.search(request.head)
    assert made is not None, request.head
    assert made.group(1) == request.request_id
    return request.head[: made.start()] + b"\r\n"


def request_with(
    headers: list[tuple[bytes, bytes]], *, start_trace: bool = False
) -> tuple[bytes, bytes, bytes | None]:
    """(head, request ID, traceparent) of a request with these fields after Host."""
    request = build_upstream_request(
        b"GET",
        b"/",
        [(b"Host", b"h"), *headers],
        peer=None,
        preview_header=b"x-bluegreen-preview",
        upgrade=False,
        start_trace=start_trace,
    )
    return request.head, request.request_id, request.traceparent


@pytest.mark.parametrize(
    "value", [b"4bf92f35-77b3-4da6-a3ce-929d0e0e4736", b"Root=1-67891233-abcdef;Parent=53995c"]
)
def test_a_valid_client_request_id_goes_upstream_unchanged(value: bytes) -> None:
    head, request_id, _ = request_with([(b"x-request-id", value)])
    assert request_id == value
    assert head.endswith(b"\r\nX-Request-Id: " + value + b"\r\n\r\n")
    assert head.count(b"-Id: ") == 1


@pytest.mark.parametrize(
    "sent",
    [
        [(b"X-Request-Id", b"has space")],
        [(b"X-Request-Id", b'"quoted"')],
        [(b"X-Request-Id", b"")],
        [(b"X-Request-Id", b"x" * 129)],
        [(b"X-Request-Id", b"a"), (b"X-Request-Id", b"b")],  # which would the colour log?
    ],
)
def test_an_invalid_or_repeated_client_request_id_is_replaced(
    sent: list[tuple[bytes, bytes]],
) -> None:
    head, request_id, _ = request_with(sent)
    assert re.fullmatch(rb"[0-9a-f]{24}", request_id)
    assert MADE_ID_LINE.search(head) is not None
    assert head.count(b"X-Request-Id") == 1


def test_each_request_gets_its_own_id() -> None:
    ids = {request_with([])[1] for _ in range(1000)}
    assert len(ids) == 1000


def test_traceparent_passes_as_sent_and_is_started_only_when_asked() -> None:
    sent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    for start in (False, True):
        head, _, traceparent = request_with(
            [(b"traceparent", sent), (b"tracestate", b"congo=t61rcWkgMzE")], start_trace=start
        )
        assert traceparent == sent
        assert b"\r\ntraceparent: " + sent + b"\r\ntracestate: congo=t61rcWkgMzE\r\n" in head
    head, _, traceparent = request_with([])
    assert traceparent is None and b"traceparent" not in head
    head, _, traceparent = request_with([], start_trace=True)
    assert traceparent is not None
    assert re.fullmatch(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-01", traceparent)
    assert b"\r\ntraceparent: " + traceparent + b"\r\n" in head


def test_upstream_head_is_rebuilt_with_forwarded_fields() -> None:
    head = upstream_head(
        [
            (b"Host", b"shop"),
            (b"X-Bluegreen-Preview", b"1"),
            (b"X-Forwarded-For", b"203.0.113.9"),
            (b"X-Forwarded-Proto", b"https"),
            (b"Connection", b"keep-alive, X-Hop"),
            (b"X-Hop", b"1"),
            (b"Proxy-Authorization", b"x"),
            (b"Accept", b"*/*"),
        ]
    )
    assert head == (
        b"GET /p?q=1 HTTP/1.1\r\nHost: shop\r\nAccept: */*\r\n"
        b"X-Forwarded-For: 203.0.113.9, 192.0.2.1\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: shop\r\n\r\n"
    )


@pytest.mark.parametrize("trusted", [False, True])
def test_fields_the_access_log_reads_are_picked_out_in_the_same_pass(trusted: bool) -> None:
    fields = [
        (b"Host", b"shop"),
        (b"User-Agent", b"first"),
        (b"X-Forwarded-For", b"203.0.113.9, 10.0.0.2"),
        (b"user-agent", b"curl/8.5"),
        (b"Referer", b"http://shop/"),
        (b"x-forwarded-for", b"10.0.0.3"),
    ]
    request = build_upstream_request(
        b"GET",
        b"/",
        fields,
        peer=b"10.0.0.1",
        preview_header=b"p",
        upgrade=False,
        trusted_peer=trusted,
    )
    # Plain fields all the same: every one goes upstream as sent.
    assert b"\r\nUser-Agent: first\r\nuser-agent: curl/8.5\r\nReferer: http://shop/\r\n" in (
        request.head
    )
    assert (request.user_agent, request.referer) == (b"curl/8.5", b"http://shop/")  # the last
    # A trusted peer's X-Forwarded-For as sent, without the peer the proxy appends; from anyone
    # else, nothing: the peer is the client.
    expected = [b"203.0.113.9, 10.0.0.2", b"10.0.0.3"] if trusted else None
    assert request.forwarded_for == expected
    bare = build_upstream_request(
        b"GET", b"/", [(b"Host", b"h")], peer=None, preview_header=b"p", upgrade=False
    )
    assert (bare.user_agent, bare.referer, bare.forwarded_for) == (None, None, None)


def test_a_preview_header_named_like_a_logged_field_is_still_taken_out() -> None:
    request = build_upstream_request(
        b"GET",
        b"/",
        [(b"Host", b"h"), (b"Referer", b"t0k")],
        peer=None,
        preview_header=b"referer",
        upgrade=False,
    )
    assert request.preview_value == b"t0k" and request.referer is None
    assert b"t0k" not in request.head


CLIENT_ADDRESS_FIELDS = [
    (b"Host", b"shop"),
    (b"X-Forwarded-Proto", b"http, https"),
    (b"X-Forwarded-Host", b"shop.example"),
    (b"X-Forwarded-Port", b"8443, 443"),
    (b"Forwarded", b"for=203.0.113.9;proto=https"),
    (b"X-Real-IP", b"203.0.113.9"),
    (b"x-client-ip", b"203.0.113.9"),
]


def test_a_trusted_balancer_keeps_its_forwarded_fields_last_value_first() -> None:
    head = upstream_head(CLIENT_ADDRESS_FIELDS, trusted=True)
    assert head == (
        b"GET /p?q=1 HTTP/1.1\r\nHost: shop\r\nX-Forwarded-For: 192.0.2.1\r\n"
        b"Forwarded: for=203.0.113.9;proto=https\r\n"
        b"X-Real-IP: 203.0.113.9\r\nx-client-ip: 203.0.113.9\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: shop.example\r\n"
        b"X-Forwarded-Port: 443\r\n\r\n"
    )


def test_an_untrusted_peer_gets_its_forwarded_fields_replaced_or_dropped() -> None:
    head = upstream_head(CLIENT_ADDRESS_FIELDS, trusted=False)
    assert head == (
        b"GET /p?q=1 HTTP/1.1\r\nHost: shop\r\nX-Forwarded-For: 192.0.2.1\r\n"
        b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: shop\r\n\r\n"
    )


@pytest.mark.parametrize("allow", [False, True])
def test_fields_with_an_underscore_are_dropped_unless_allowed(allow: bool) -> None:
    fields = [(b"Host", b"h"), (b"X_Forwarded_For", b"6.6.6.6"), (b"X-Forwarded_Host", b"e")]
    request = build_upstream_request(
        b"GET",
        b"/",
        fields,
        peer=None,
        preview_header=b"p",
        upgrade=False,
        allow_underscores=allow,
    )
    assert (b"X_Forwarded_For: 6.6.6.6\r\n" in request.head) is allow
    assert (b"X-Forwarded_Host: e\r\n" in request.head) is allow
    assert request.dropped == (0 if allow else 2)


def test_untrusted_forwarded_for_is_replaced_by_the_peer() -> None:
    head = upstream_head(
        [(b"Host", b"h"), (b"X-Forwarded-For", b"10.9.9.9"), (b"x-forwarded-for", b"1.1.1.1")],
        trusted=False,
    )
    assert b"X-Forwarded-For: 192.0.2.1\r\n" in head
    assert b"10.9.9.9" not in head and b"1.1.1.1" not in head


def test_upgrade_keeps_upgrade_fields_and_chunked_body_is_declared() -> None:
    upgrade = upstream_head(
        [(b"Host", b"h"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")], upgrade=True
    )
    assert b"Connection: upgrade\r\nUpgrade: websocket\r\n" in upgrade
    chunked = upstream_head([(b"Host", b"h"), (b"Transfer-Encoding", b"chunked")])
    assert chunked.count(b"Transfer-Encoding: chunked\r\n") == 1


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ([], "missing Host"),
        ([(b"Host", b"a"), (b"host", b"b")], "repeated Host"),
        ([(b"Host", b"")], "empty Host"),
    ],
)
def test_bad_host_is_refused(headers: list[tuple[bytes, bytes]], message: str) -> None:
    with pytest.raises(RequestHeadError, match=message):
        upstream_head(headers)


def test_response_head_states_its_own_framing() -> None:
    head = ResponseHead(
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Length: 10\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"Connection: X-Hop\r\n"
        b"X-Hop: 1\r\n"
        b"X-Bluegreen-Colour: forged\r\n"
        b"X-Request-Id: the-colour's-own\r\n"
        b'ETag: "1"\r\n'
        b"Proxy-Authenticate: Basic\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"X-Hop-Not: kept\r\n"
        b"\r\n"
    )
    assert head.content_length == 10 and head.chunked
    rendered = render_response_head(
        head,
        colour_line=b"X-Bluegreen-Colour: green\r\n",
        request_id=b"4bf92f3577b34da6a3ce929d",
        content_length=None,
        chunked=True,
        keep_alive=False,
        client_http10=False,
        upgrade=False,
    )
    assert rendered == (
        b'HTTP/1.1 200 OK\r\nETag: "1"\r\nX-Hop-Not: kept\r\nX-Bluegreen-Colour: green\r\n'
        b"X-Request-Id: 4bf92f3577b34da6a3ce929d\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("block", "status_line", "fields", "length", "chunked"),
    [
        (b"HTTP/1.0 200 OK\r\nA: b\r\n\r\n", b"HTTP/1.1 200 OK", b"A: b\r\n", None, False),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 204 No Content", b"", None, False),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length:  7 \r\n\r\n",
            b"HTTP/1.1 200 OK",
            b"content-length:  7 \r\n",  # kept as received when the proxy forwards the length
            7,
            False,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\nX: y\r\n\r\n",
            b"HTTP/1.1 200 OK",
            b"X: y\r\n",
            None,
            True,
        ),
        (
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-A\r\nx-a: 1\r\nX-AB: 2\r\n\r\n",
            b"HTTP/1.1 200 OK",
            b"X-AB: 2\r\n",
            None,
            False,
        ),
        (
            b"HTTP/1.1 200 OK\r\nX-Proxy-Thing: kept\r\nProxy-Thing: dropped\r\n\r\n",
            b"HTTP/1.1 200 OK",
            b"X-Proxy-Thing: kept\r\n",
            None,
            False,
        ),
    ],
)
def test_response_head_split(
    block: bytes, status_line: bytes, fields: bytes, length: int | None, chunked: bool
) -> None:
    head = ResponseHead(block)
    assert (head.status_line, head.fields, head.content_length, head.chunked) == (
        status_line,
        fields,
        length,
        chunked,
    )


@pytest.mark.parametrize(
    "coding", [b"gzip, chunked", b"chunked, gzip", b"gzip", b"xchunked", b"chunked, chunked"]
)
def test_response_head_refuses_codings_other_than_chunked(coding: bytes) -> None:
    with pytest.raises(ResponseHeadError, match="only chunked, once, is implemented"):
        ResponseHead(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + coding + b"\r\n\r\n")


@pytest.mark.parametrize(
    ("line", "status", "built"),
    [
        (b"HTTP/1.0 404 Not Found", 404, b"HTTP/1.1 404 Not Found"),
        (b"ICE/1.1 200 OK", 200, b"HTTP/1.1 200 OK"),
        (b"HTTP/1.0 200 ", 200, b"HTTP/1.1 200 OK"),
        (b"HTTP/1.0 299", 299, b"HTTP/1.1 299 "),
        (b"HTTP/1.0 201 Made It", 0, b"HTTP/1.1 201 Made It"),
    ],
)
def test_response_status_line_is_built_from_the_code(
    line: bytes, status: int, built: bytes
) -> None:
    assert ResponseHead(line + b"\r\n\r\n", status).status_line == built


def test_upgrade_response_keeps_upgrade() -> None:
    head = ResponseHead(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: abc\r\n\r\n"
    )
    rendered = render_response_head(
        head,
        colour_line=b"X-Bluegreen-Colour: blue\r\n",
        request_id=b"4bf92f3577b34da6a3ce929d",
        content_length=None,
        chunked=False,
        keep_alive=True,
        client_http10=False,
        upgrade=True,
    )
    assert rendered == (
        b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: abc\r\n"
        b"X-Bluegreen-Colour: blue\r\nX-Request-Id: 4bf92f3577b34da6a3ce929d\r\n"
        b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    )


def test_request_fields_named_by_connection_are_removed() -> None:
    head = upstream_head(
        [
            (b"Host", b"h"),
            (b"Connection", b"Keep-Alive, X-A ,,"),
            (b"connection", b"x-b"),
            (b"X-A", b"1"),
            (b"x-b", b"2"),
            (b"X-AB", b"3"),
            (b"Content-Length", b"0"),
        ]
    )
    assert head == (
        b"GET /p?q=1 HTTP/1.1\r\nHost: h\r\nX-AB: 3\r\nContent-Length: 0\r\n"
        b"X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n\r\n"
    )
