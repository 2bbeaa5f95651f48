"""Property-based tests (hypothesis) of header handling, routing and WebSocket framing.

Each property is checked against a plain reference model written for the test, and the
forwarded request head is re-parsed by h11, an independent HTTP/1.1 parser.
"""

from __future__ import annotations

import ipaddress
import itertools
import struct

import h11
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.headers import HOP_BY_HOP, build_upstream_request
from proxy.routing import LIVE, PREVIEW, PreviewPolicy, RoutingTable, Upstream
from proxy.websocket import FrameTracker

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
PREVIEW_HEADER = b"x-bluegreen-preview"
# Fields the proxy frames or writes itself; the generator leaves them to dedicated tests.
HANDLED = {
    b"host",
    b"content-length",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-forwarded-port",
    b"forwarded",
    b"x-real-ip",
    b"x-client-ip",
    PREVIEW_HEADER,
}

names = st.one_of(
    st.text(TCHAR, min_size=1, max_size=12).map(str.encode),
    st.sampled_from(sorted(HOP_BY_HOP - {b"transfer-encoding"})).map(
        lambda n: n.title()  # any case: field names are case-insensitive
    ),
    st.text(TCHAR, min_size=1, max_size=6).map(lambda s: b"Proxy-" + s.encode()),
).filter(lambda n: n.lower() not in HANDLED)
# Field values as llhttp hands them over: visible ASCII and inner spaces, trimmed.
values = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E) | st.just(" "), max_size=20
).map(lambda s: s.strip().encode())


@st.composite
def request_fields(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    fields = draw(st.lists(st.tuples(names, values), max_size=12))
    if draw(st.booleans()) and fields:
        # A Connection field naming some of the other fields (and maybe options).
        named = draw(st.lists(st.sampled_from([n for n, _ in fields]), max_size=3))
        options = draw(st.lists(st.sampled_from([b"close", b"keep-alive", b"host"]), max_size=2))
        fields.append((b"Connection", b", ".join(named + options)))
    if draw(st.booleans()):
        fields.append((b"X-Forwarded-For", b"203.0.113.7"))
    if draw(st.booleans()):
        fields.append((b"X-Bluegreen-Preview", b"1"))
    position = draw(st.integers(0, len(fields)))
    fields.insert(position, (b"Host", b"app.example"))
    return fields


def expected_fields(
    fields: list[tuple[bytes, bytes]], trusted: bool, allow_underscores: bool, request_id: bytes
) -> list[tuple[bytes, bytes]]:
    """The reference model: what an RFC 9110 proxy forwards, in order (names with `_` only
    when allowed), ending with the request ID the proxy made."""
    named: set[bytes] = set()
    for name, value in fields:
        if name.lower() == b"connection":
            named |= {token.strip().lower() for token in value.split(b",")}
    named -= {b"host", b"close", b""}
    kept = [
        (name, value)
        for name, value in fields
        if name.lower() not in HOP_BY_HOP
        and name.lower() not in named
        and not name.lower().startswith(b"proxy-")
        and name.lower() not in {PREVIEW_HEADER, b"x-forwarded-for"}
        and (allow_underscores or b"_" not in name)
    ]
    client_xff = [v for n, v in fields if n.lower() == b"x-forwarded-for" and trusted]
    kept.append((b"X-Forwarded-For", b", ".join([*client_xff, b"10.1.2.3"])))
    kept += [(b"X-Forwarded-Proto", b"http"), (b"X-Forwarded-Host", b"app.example")]
    kept.append((b"X-Request-Id", request_id))
    return kept


@settings(max_examples=300)
@given(fields=request_fields(), trusted=st.booleans(), allow_underscores=st.booleans())
def test_forwarded_head_is_one_request_with_exactly_the_end_to_end_fields(
    fields: list[tuple[bytes, bytes]], trusted: bool, allow_underscores: bool
) -> None:
    request = build_upstream_request(
        b"GET",
        b"/path?q=1",
        fields,
        peer=b"10.1.2.3",
        preview_header=PREVIEW_HEADER,
        upgrade=False,
        trusted_peer=trusted,
        allow_underscores=allow_underscores,
    )
    parser = h11.Connection(h11.SERVER)
    parser.receive_data(request.head)
    event = parser.next_event()
    assert isinstance(event, h11.Request)
    assert (event.method, event.target, event.http_version) == (b"GET", b"/path?q=1", b"1.1")
    assert isinstance(parser.next_event(), h11.EndOfMessage)  # no body, nothing smuggled
    assert parser.their_state is h11.DONE
    assert parser.trailing_data == (b"", False)  # not a byte after the one request
    assert list(event.headers.raw_items()) == expected_fields(
        fields, trusted, allow_underscores, request.request_id
    )
    has_preview = any(n.lower() == PREVIEW_HEADER for n, _ in fields)
    assert request.preview_value == (b"1" if has_preview else None)


networks = st.lists(
    st.builds(
        lambda address, prefix: ipaddress.ip_network(f"{address}/{prefix}", strict=False),
        st.ip_addresses(v=4),
        st.integers(8, 32),
    ),
    max_size=3,
).map(tuple)


@settings(max_examples=500)
@given(
    token=st.none() | st.binary(min_size=1, max_size=8).filter(lambda t: t.strip() == t),
    trusted=networks,
    sent=st.none() | st.binary(max_size=8),
    peer=st.ip_addresses(v=4).map(str) | st.ip_addresses(v=6).map(str),
)
def test_preview_reaches_the_idle_colour_only_when_allowed(
    token: bytes | None,
    trusted: tuple[ipaddress.IPv4Network, ...],
    sent: bytes | None,
    peer: str,
) -> None:
    ups = {c: Upstream(c, f"http://{c}:80", c, 80) for c in ("blue", "green")}
    table = RoutingTable(
        "v", "blue", "green", ups, preview=PreviewPolicy(token=token, trusted_networks=trusted)
    )
    route = table.choose(sent, peer)
    address = ipaddress.ip_address(peer)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    allowed = (
        sent is not None
        and (token is None or sent.strip() == token)
        and (not trusted or any(address in network for network in trusted))
    )
    assert (route.colour, route.kind) == (("green", PREVIEW) if allowed else ("blue", LIVE))


def frame(payload_size: int, masked: bool) -> bytes:
    if payload_size < 126:
        head = bytes((0x82, payload_size | (0x80 if masked else 0)))
    elif payload_size < 65536:
        head = bytes((0x82, 126 | (0x80 if masked else 0))) + struct.pack("!H", payload_size)
    else:
        head = bytes((0x82, 127 | (0x80 if masked else 0))) + struct.pack("!Q", payload_size)
    return head + (b"MASK" if masked else b"") + b"p" * payload_size


@settings(max_examples=300)
@given(
    sizes=st.lists(st.sampled_from([0, 1, 125, 126, 127, 200, 65535, 65536, 70000]), max_size=6),
    masked=st.booleans(),
    cuts=st.lists(st.integers(1, 400_000), max_size=10),
)
def test_frame_tracker_is_at_a_boundary_exactly_between_frames(
    sizes: list[int], masked: bool, cuts: list[int]
) -> None:
    frames = [frame(size, masked) for size in sizes]
    stream = b"".join(frames)
    ends = set(itertools.accumulate(len(f) for f in frames)) | {0}
    tracker = FrameTracker()
    position = 0
    for cut in sorted({min(c, len(stream)) for c in cuts} | {len(stream)}):
        tracker.feed(stream[position:cut])
        position = cut
        assert tracker.at_boundary == (cut in ends), (cut, sorted(ends))
