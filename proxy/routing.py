"""The routing table the controller publishes and the pure per-request routing choice.

A `RoutingTable` is immutable. The controller builds a new one for every accepted config and the
server swaps it in with one attribute assignment; each request reads the table once, when its head
is complete, and keeps that table (and so its colour) to the end. No locks are needed because
nothing is ever mutated in place.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from proxy.access_log import AccessLogSettings
from proxy.preview_cookie import UNTRUSTED_PEER, VALID, check, derive_key, forwarded_https
from proxy.session_affinity import DrainWindow, SessionCookies, SessionPolicy

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

LIVE = "live"
PREVIEW = "preview"


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where one colour's Service listens: a plain-HTTP host and port."""

    colour: str
    url: str
    host: str
    port: int
    # `host:port`, as the access log writes it: made once, not per request.
    address: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", f"{self.host}:{self.port}")


DEFAULT_PREVIEW_PATH = "/.well-known/bluegreen/preview"
DEFAULT_PREVIEW_COOKIE = "bluegreen_preview"


@dataclass(frozen=True, slots=True)
class PreviewPolicy:
    """Who may send preview traffic to the idle colour: by header, or by the link's cookie."""

    header: str = "X-Bluegreen-Preview"  # matched case-insensitively (header_bytes)
    token: bytes | None = None
    trusted_networks: tuple[IPNetwork, ...] = ()
    # preview.tokenFile: the token read from a file (a mounted Secret); used when `token` is not
    # set (the config refuses both at once).
    token_from_file: bytes | None = None
    path: str = DEFAULT_PREVIEW_PATH  # the preview link, answered by the proxy itself
    cookie: str = DEFAULT_PREVIEW_COOKIE  # the cookie the link sets
    cookie_ttl: float = 8 * 3600.0
    # preview.cookieKeyFile: the HMAC key of the cookie; None: derived from the token.
    cookie_key_from_file: bytes | None = None
    secret: bytes | None = field(init=False, repr=False, compare=False)  # the token in force
    path_bytes: bytes = field(init=False, repr=False, compare=False)
    cookie_bytes: bytes = field(init=False, repr=False, compare=False)
    cookie_key: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        secret = self.token if self.token is not None else self.token_from_file
        object.__setattr__(self, "secret", secret)
        object.__setattr__(self, "path_bytes", self.path.encode("ascii"))
        object.__setattr__(self, "cookie_bytes", self.cookie.encode("ascii"))
        key = self.cookie_key_from_file
        object.__setattr__(self, "cookie_key", key if key is not None else derive_key(secret))

    @property
    def header_bytes(self) -> bytes:
        """The header name, lower-case, as the parser hands it over."""
        return self.header.lower().encode("ascii")

    def allows(self, value: bytes, peer_ip: str | None) -> bool:
        """Say whether a request with preview header `value` from `peer_ip` may use preview.

        The token is compared in constant time so its value cannot be guessed byte by byte
        from response timings.
        """
        if self.secret is not None and not hmac.compare_digest(value.strip(), self.secret):
            return False
        return self.allows_peer(peer_ip)

    def allows_peer(self, peer_ip: str | None) -> bool:
        """Say whether `peer_ip` lies in preview.trustedCIDRs (always, when none are set)."""
        if not self.trusted_networks:
            return True
        return _in_networks(peer_ip, self.trusted_networks)


def _in_networks(peer_ip: str | None, networks: tuple[IPNetwork, ...]) -> bool:
    """Say whether a peer address lies in one of `networks` (IPv4-mapped IPv6 counts as IPv4)."""
    if peer_ip is None:
        return False
    try:
        address = ipaddress.ip_address(peer_ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


@dataclass(frozen=True, slots=True)
class Route:
    """The outcome of routing one request: which colour, and whether it is live or preview."""

    colour: str
    kind: str  # LIVE or PREVIEW: a metric label, so it stays low-cardinality
    # A field line the response gets after the colour's (the session cookie's Set-Cookie).
    extra_line: bytes = b""
    colour_line: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The response field naming the colour, built once rather than per response.
        object.__setattr__(
            self,
            "colour_line",
            b"X-Bluegreen-Colour: %s\r\n%s" % (self.colour.encode(), self.extra_line),
        )


@dataclass(frozen=True, slots=True)
class ProxyTimeouts:
    """Per-request upstream limits, in seconds."""

    connect: float = 5.0
    read: float = 60.0
    drain: float = 30.0


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """Bounds of the keep-alive pool kept for each colour."""

    max_idle: int = 64
    idle_timeout: float = 4.0
    max_inflight: int = 10000  # concurrent requests per colour before a fast 503; 0: no limit


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """What one client may send or hold, each past its limit answered and closed.

    Sizes are in bytes and times in seconds; 0 turns off `max_body_size` and `max_connections`.
    """

    max_head_size: int = 64 * 1024  # request line and fields -> 431
    max_uri_size: int = 8 * 1024  # request target -> 414
    max_header_count: int = 100  # fields -> 431
    max_body_size: int = 100 * 1024 * 1024  # request body, counted as it streams -> 413
    max_connections: int = 10000  # concurrent client connections -> 503 with Retry-After
    head_timeout: float = 30.0  # the whole request head must arrive within this -> 408
    keepalive_timeout: float = 60.0  # idle keep-alive connections are closed after this


DEFAULT_LIMITS = ClientLimits()


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    """What the proxy accepts at its edge beyond strict HTTP/1.1 (each off by default)."""

    # headers.allowUnderscores: pass fields like `X_Forwarded_For` on instead of dropping them.
    allow_underscores: bool = False
    # listen.proxyProtocol: a connection from `forwarded.trustedCIDRs` starts with a PROXY
    # protocol header naming the client (see proxy/proxy_header_reader.py).
    proxy_protocol: bool = False


@dataclass(frozen=True, slots=True)
class TraceSettings:
    """W3C trace context: `traceparent` and `tracestate` always pass through as sent.

    With `generate`, a request that comes without a `traceparent` gets one started at the
    proxy (a new sampled trace), so that the proxy hop appears in the colour's traces.
    """

    generate: bool = False


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often a failed upstream attempt is tried again, and for how long.

    Which failures are retried at all is decided per request (see proxy/exchange.py); this only
    bounds the count and the time since the request's head arrived.
    """

    max_retries: int = 2
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class ShadowSettings:
    """Shadow traffic to the idle colour (proxy/shadow.py) and the switch gate it feeds.

    `percent` 0 turns mirroring off. Sizes in bytes, times in seconds. The gate's figures
    (`max_mismatch_rate`, `min_requests`, over `window`) are read by the control plane.
    """

    percent: float = 0.0
    methods: frozenset[bytes] = frozenset({b"GET", b"HEAD"})
    max_body_size: int = 64 * 1024
    max_inflight: int = 100
    compare_body: bool = False
    timeout: float = 5.0
    max_mismatch_rate: float = 0.05
    min_requests: int = 100
    window: float = 600.0


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """One immutable snapshot of where traffic goes.

    `idle` is the colour that preview traffic reaches, or None when there is no distinct idle
    colour (then the preview header is ignored and the request is live).
    """

    version: str
    active: str
    idle: str | None
    upstreams: Mapping[str, Upstream]
    preview: PreviewPolicy = field(default_factory=PreviewPolicy)
    timeouts: ProxyTimeouts = field(default_factory=ProxyTimeouts)
    pool: PoolSettings = field(default_factory=PoolSettings)
    # Peers (a load balancer in front) whose forwarded fields (X-Forwarded-*, Forwarded,
    # X-Real-IP, X-Client-IP) are kept, and who may send a PROXY protocol header.
    forwarded_trusted: tuple[IPNetwork, ...] = ()
    limits: ClientLimits = field(default_factory=ClientLimits)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    edge: EdgeSettings = field(default_factory=EdgeSettings)
    access_log: AccessLogSettings = field(default_factory=AccessLogSettings)
    tracing: TraceSettings = field(default_factory=TraceSettings)
    shadow: ShadowSettings = field(default_factory=ShadowSettings)
    session: SessionPolicy = field(default_factory=SessionPolicy)
    # After a switch with session.affinity on: the colour whose sessions stay, and until when.
    drain: DrainWindow | None = None
    live_route: Route = field(init=False)
    preview_route: Route | None = field(init=False)
    preview_header: bytes = field(init=False)
    # Whether a finished request is written to the access log: the one check the hot path makes.
    logs_access: bool = field(init=False)
    # The second byte of preview.path (after the `/`): a cheap first test for the link.
    preview_path_second: int = field(init=False)
    preview_cookie: bytes = field(init=False)
    # Whether live requests are mirrored at all: the one check the hot path makes for shadows.
    shadowing: bool = field(init=False)
    # The session cookie in force (None: session.affinity none, nothing to do per request),
    # its name for the Cookie scan (b"": off), and the route of sessions kept on `drain`.
    affinity: SessionCookies | None = field(init=False, compare=False)
    session_cookie: bytes = field(init=False)
    drain_route: Route | None = field(init=False, repr=False)
    # Routes that set a session cookie, by their Set-Cookie line (a few at a time).
    _cookie_routes: dict[bytes, Route] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.active not in self.upstreams:
            raise ValueError(f"active colour {self.active!r} has no upstream")
        if self.idle is not None and (self.idle not in self.upstreams or self.idle == self.active):
            raise ValueError(f"idle colour {self.idle!r} must be another known colour")
        # Freeze the mapping and precompute the two possible routes so the hot path allocates
        # nothing to route a request.
        object.__setattr__(self, "upstreams", MappingProxyType(dict(self.upstreams)))
        object.__setattr__(self, "live_route", Route(self.active, LIVE))
        object.__setattr__(
            self, "preview_route", Route(self.idle, PREVIEW) if self.idle is not None else None
        )
        object.__setattr__(self, "preview_header", self.preview.header_bytes)
        object.__setattr__(self, "logs_access", self.access_log.enabled)
        object.__setattr__(self, "preview_path_second", self.preview.path_bytes[1])
        object.__setattr__(self, "preview_cookie", self.preview.cookie_bytes)
        object.__setattr__(self, "shadowing", self.shadow.percent > 0 and self.idle is not None)
        drain = self.drain
        if drain is not None and (
            drain.colour == self.active or drain.colour not in self.upstreams
        ):
            raise ValueError(f"drained colour {drain.colour!r} must be another known colour")
        session = self.session
        affinity = None
        if session.enabled:
            key = session.key(self.preview.cookie_key)
            affinity = SessionCookies(session, key, self.active, drain)
        object.__setattr__(self, "affinity", affinity)
        object.__setattr__(self, "session_cookie", session.cookie_bytes if affinity else b"")
        object.__setattr__(
            self, "drain_route", Route(drain.colour, LIVE) if drain is not None else None
        )
        object.__setattr__(self, "_cookie_routes", {})

    @property
    def colours(self) -> tuple[str, ...]:
        """Every configured colour, in config order."""
        return tuple(self.upstreams)

    def trusts_forwarded_for(self, peer_ip: str | None) -> bool:
        """Say whether the X-Forwarded-For that `peer_ip` sent may be kept."""
        return bool(self.forwarded_trusted) and _in_networks(peer_ip, self.forwarded_trusted)

    def choose(self, preview_value: bytes | None, peer_ip: str | None) -> Route:
        """Route one request: live to the active colour, allowed preview to the idle colour.

        A preview header that is not allowed (wrong token, untrusted peer) is treated as absent,
        so an outsider cannot tell whether preview exists.
        """
        if preview_value is None or self.preview_route is None:
            return self.live_route
        if self.preview.allows(preview_value, peer_ip):
            return self.preview_route
        return self.live_route

    def choose_by_cookie(self, value: bytes, peer_ip: str | None, now: float) -> tuple[Route, str]:
        """Route a live request that carries the preview cookie; say what the cookie was.

        A valid cookie (signed, not expired, naming today's idle colour) from a peer that may
        use preview reaches the idle colour; anything else is live, with the outcome word
        (proxy/preview_cookie.py) saying why, for the metrics.
        """
        outcome = check(self.preview.cookie_key, value, self.idle, now)
        if outcome == VALID and not self.preview.allows_peer(peer_ip):
            outcome = UNTRUSTED_PEER
        if outcome == VALID and self.preview_route is not None:
            return self.preview_route, outcome
        return self.live_route, outcome

    def choose_by_session(
        self,
        value: bytes | None,
        now: float,
        trusted_peer: bool,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> tuple[Route, str | None]:
        """Route a live request by its session cookie (`value`; None: none), affinity on.

        A valid cookie for the colour being drained keeps the request there; anything else is
        live. The route returned sets a fresh cookie naming its colour when the request had none
        for it or its cookie is near expiry (`Secure` when a trusted balancer says https). The
        outcome word (proxy/session_affinity.py) is None for a request without the cookie.
        """
        affinity = self.affinity
        assert affinity is not None
        keep, outcome, refresh = affinity.decide(value, now)
        route = self.drain_route if keep and self.drain_route is not None else self.live_route
        if not refresh:
            return route, outcome
        secure = trusted_peer and forwarded_https(headers)
        line = affinity.set_cookie(route.colour, now, secure)
        routes = self._cookie_routes
        with_cookie = routes.get(line)
        if with_cookie is None:
            if len(routes) >= 8:
                routes.clear()  # lines of colours and times gone by
            with_cookie = routes[line] = Route(route.colour, LIVE, line)
        return with_cookie, outcome
