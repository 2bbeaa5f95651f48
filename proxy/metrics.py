"""The data plane's metrics: per-colour traffic counted on the hot path, exported at scrape.

The forwarding hot path counts into plain Python ints and lists (`TrafficStats`), which costs a
dict lookup and an add per request. prometheus-client's own Counter and Histogram children take
a lock and do more work per call; at tens of thousands of requests a second that shows up.
`TrafficCollector` turns the plain counts into metric families only when Prometheus scrapes.
The control plane's metrics (switches, reloads, rollbacks) are in controller/metrics.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from time import monotonic

from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from proxy import splice
from proxy.access_log import AccessLog
from proxy.histogram import DURATION_BUCKETS, DurationHistogram
from proxy.preview_cookie import LINK_ACTIONS, OUTCOMES
from proxy.shadow_compare import ShadowStats


@dataclass(slots=True)
class RouteTraffic:
    """What one colour and route carried: durations, times to first byte, body bytes."""

    durations: DurationHistogram = field(default_factory=DurationHistogram)
    ttfb: DurationHistogram = field(default_factory=DurationHistogram)
    bytes_in: int = 0
    bytes_out: int = 0


# Open client connections, their limit (0: none), and per colour (open, idle) upstream
# connections: read from the server only when Prometheus scrapes.
ConnectionCounts = tuple[int, int, dict[str, tuple[int, int]]]


class TrafficStats:
    """Request counts, latencies, in-flight gauges and upstream errors, as plain numbers.

    Only the event loop's thread touches these, so no lock is needed.
    """

    def __init__(self) -> None:
        # (colour, route, status code): `code` is the exact status, as in every metric here.
        self.requests: dict[tuple[str, str, int], int] = {}
        self.routes: dict[tuple[str, str], RouteTraffic] = {}
        self.inflight: dict[str, int] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self.rejected: dict[int, int] = {}
        self.retries: dict[tuple[str, str], int] = {}
        self.dropped_fields: dict[str, int] = {}
        # Each kind exported at 0 from the start, so that an alert on increase() sees the first.
        self.proxy_headers_rejected = {"invalid": 0, "timeout": 0, "closed": 0}
        self.access_log: AccessLog | None = None  # the server's, once the log is first on
        self.connections: Callable[[], ConnectionCounts] | None = None  # set by the server
        self.preview_cookies = dict.fromkeys(OUTCOMES, 0)
        self.preview_links = dict.fromkeys(LINK_ACTIONS, 0)
        self.shadow = ShadowStats()  # mirrored requests and their comparison
        # Requests with a session cookie (session.affinity), by (colour sent to, outcome).
        self.session_cookies: dict[tuple[str, str], int] = {}

    def session_cookie(self, colour: str, outcome: str) -> None:
        """Count a live request with a session cookie: where it went, and why (outcome word)."""
        key = (colour, outcome)
        self.session_cookies[key] = self.session_cookies.get(key, 0) + 1

    def preview_cookie(self, outcome: str) -> None:
        """Count a request that carried the preview cookie, by outcome (proxy/preview_cookie.py)."""
        self.preview_cookies[outcome] = self.preview_cookies.get(outcome, 0) + 1

    def preview_link(self, action: str) -> None:
        """Count a request to the preview link, by what it did (on, off, refused, invalid)."""
        self.preview_links[action] = self.preview_links.get(action, 0) + 1

    def proxy_header_rejected(self, kind: str) -> None:
        """Count a connection closed without a valid PROXY protocol header, by a fixed word."""
        self.proxy_headers_rejected[kind] = self.proxy_headers_rejected.get(kind, 0) + 1

    def dropped_request_fields(self, reason: str, count: int) -> None:
        """Count request header fields removed before forwarding; `reason` is a fixed word."""
        self.dropped_fields[reason] = self.dropped_fields.get(reason, 0) + count

    def rejected_request(self, status: int) -> None:
        """Count a request refused before routing (bad framing, no config)."""
        self.rejected[status] = self.rejected.get(status, 0) + 1

    def request_started(self, colour: str) -> None:
        """Count a request as in flight to `colour`."""
        self.inflight[colour] = self.inflight.get(colour, 0) + 1

    def request_finished(
        self,
        colour: str,
        route: str,
        status: int,
        seconds: float,
        *,
        ttfb: float = -1.0,
        bytes_in: int = 0,
        bytes_out: int = 0,
    ) -> None:
        """Count a finished request: status code, duration, time to first byte, body bytes.

        `ttfb` is negative when no response head came from the colour (the proxy answered).
        An upgraded connection (101) is not in the duration histogram: it lasts as long as
        the WebSocket, which says nothing about the colour's latency.
        """
        self.inflight[colour] -= 1
        key = (colour, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        traffic = self.routes.get((colour, route))
        if traffic is None:
            traffic = self.routes[(colour, route)] = RouteTraffic()
        if status != 101:
            traffic.durations.observe(seconds)
        if ttfb >= 0:
            traffic.ttfb.observe(ttfb)
        traffic.bytes_in += bytes_in
        traffic.bytes_out += bytes_out

    def upstream_error(self, colour: str, kind: str) -> None:
        """Count one failure to reach or read a colour; `kind` is a short fixed word."""
        key = (colour, kind)
        self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1

    def upstream_retry(self, colour: str, kind: str) -> None:
        """Count one new attempt after a failure of `kind` that left the request unanswered."""
        key = (colour, kind)
        self.retries[key] = self.retries.get(key, 0) + 1

    def request_count(self, colour: str, route: str | None = None) -> int:
        """Total requests answered for a colour (optionally one route), for status and tests."""
        return sum(
            n for (c, r, _), n in self.requests.items() if c == colour and route in (None, r)
        )


class TrafficCollector(Collector):
    """Exposes a `TrafficStats` as Prometheus metric families at scrape time."""

    def __init__(self, stats: TrafficStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        """Yield the request, latency, in-flight and upstream error families."""
        stats = self._stats
        requests = CounterMetricFamily(
            "bluegreen_requests",
            "Requests answered, by colour, route (live or preview) and status code.",
            labels=("colour", "route", "code"),
        )
        for (colour, route, code), n in sorted(stats.requests.items()):
            requests.add_metric((colour, route, str(code)), n)
        yield requests

        routes = sorted(stats.routes.items())
        durations = HistogramMetricFamily(
            "bluegreen_request_duration_seconds",
            "Time from a complete request head to the end of the response (not upgrades).",
            labels=("colour", "route"),
        )
        ttfb = HistogramMetricFamily(
            "bluegreen_upstream_ttfb_seconds",
            "Time from a complete request head to the colour's response head.",
            labels=("colour", "route"),
        )
        for (colour, route), traffic in routes:
            durations.add_metric((colour, route), *_cumulative(traffic.durations))
            ttfb.add_metric((colour, route), *_cumulative(traffic.ttfb))
        yield durations
        yield ttfb
        request_bytes = CounterMetricFamily(
            "bluegreen_request_bytes",
            "Request body bytes (tunnel bytes for an upgrade) received from clients.",
            labels=("colour", "route"),
        )
        response_bytes = CounterMetricFamily(
            "bluegreen_response_bytes",
            "Response body bytes (tunnel bytes for an upgrade) sent to clients.",
            labels=("colour", "route"),
        )
        for (colour, route), traffic in routes:
            request_bytes.add_metric((colour, route), traffic.bytes_in)
            response_bytes.add_metric((colour, route), traffic.bytes_out)
        yield request_bytes
        yield response_bytes
        spliced = CounterMetricFamily(
            "bluegreen_spliced_response_bytes",
            "Response body bytes moved from the upstream's socket to the client's in the kernel "
            "(splice), part of bluegreen_response_bytes_total.",
        )
        spliced.add_metric((), splice.totals.bytes)
        yield spliced
        yield from _connection_families(stats)

        inflight = GaugeMetricFamily(
            "bluegreen_inflight_requests",
            "Requests being forwarded right now, by colour.",
            labels=("colour",),
        )
        for colour, n in sorted(stats.inflight.items()):
            inflight.add_metric((colour,), n)
        yield inflight

        errors = CounterMetricFamily(
            "bluegreen_upstream_errors",
            "Failures to reach or read a colour: connect, timeout, reset, protocol.",
            labels=("colour", "kind"),
        )
        for (colour, kind), n in sorted(stats.upstream_errors.items()):
            errors.add_metric((colour, kind), n)
        yield errors

        retries = CounterMetricFamily(
            "bluegreen_upstream_retries",
            "Requests sent again after a failure that left them unanswered, by the failure kind.",
            labels=("colour", "kind"),
        )
        for (colour, kind), n in sorted(stats.retries.items()):
            retries.add_metric((colour, kind), n)
        yield retries

        rejected = CounterMetricFamily(
            "bluegreen_rejected_requests",
            "Requests answered by the proxy itself before routing, by status code.",
            labels=("code",),
        )
        for status, n in sorted(stats.rejected.items()):
            rejected.add_metric((str(status),), n)
        yield rejected

        yield _counter_by(
            "bluegreen_dropped_request_fields",
            "Request header fields removed before forwarding, by reason (underscore: a name "
            "with `_`, see headers.allowUnderscores).",
            "reason",
            stats.dropped_fields,
        )
        yield _counter_by(
            "bluegreen_proxy_protocol_rejected_connections",
            "Connections from trusted peers closed without a valid PROXY protocol header "
            "(listen.proxyProtocol), by kind: invalid, timeout, closed.",
            "kind",
            stats.proxy_headers_rejected,
        )
        yield _counter_by(
            "bluegreen_preview_cookies",
            "Requests that carried the preview cookie, by outcome: valid (sent to the preview "
            "colour), or why they went live: malformed, forged, expired, wrong_colour (issued "
            "for a colour that is not the preview colour now), untrusted_peer.",
            "outcome",
            stats.preview_cookies,
        )
        yield _counter_by(
            "bluegreen_preview_links",
            "Requests to the preview link (preview.path), by action: on (cookie set), off "
            "(cleared), refused (token or preview.trustedCIDRs), invalid.",
            "action",
            stats.preview_links,
        )

        yield from _shadow_families(stats.shadow)
        sessions = CounterMetricFamily(
            "bluegreen_session_cookie_requests",
            "Live requests with the session cookie (session.affinity: cookie), by the colour "
            "they went to and outcome: kept (on the colour being drained after a switch), "
            "current (named the active colour), moved (named another colour, not or no longer "
            "drained), invalid (malformed, forged or expired).",
            labels=("colour", "outcome"),
        )
        for (colour, outcome), n in sorted(stats.session_cookies.items()):
            sessions.add_metric((colour, outcome), n)
        if stats.session_cookies:  # appears with the first such request, as documented
            yield sessions

        access_log = stats.access_log
        yield CounterMetricFamily(
            "bluegreen_access_log_lines",
            "Access log lines formatted for stdout (accessLog.format).",
            value=access_log.written if access_log is not None else 0,
        )
        yield CounterMetricFamily(
            "bluegreen_access_log_dropped",
            "Access log lines dropped because the buffer was full (stdout slower than requests).",
            value=access_log.dropped if access_log is not None else 0,
        )


def _cumulative(histogram: DurationHistogram) -> tuple[list[tuple[str, float]], float]:
    """A histogram's buckets as Prometheus wants them (cumulative, `+Inf` last), and its sum."""
    cumulative = 0
    buckets: list[tuple[str, float]] = []
    for bound, n in zip((*DURATION_BUCKETS, float("inf")), histogram.buckets, strict=True):
        cumulative += n
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    return buckets, histogram.total


def _connection_families(stats: TrafficStats) -> Iterator[Metric]:
    """Client connections against their limit, and each colour's upstream connections."""
    client, limit, upstream = stats.connections() if stats.connections else (0, 0, {})
    yield GaugeMetricFamily(
        "bluegreen_client_connections", "Client connections open now.", value=client
    )
    yield GaugeMetricFamily(
        "bluegreen_client_connections_limit",
        "The most client connections served at once (limits.connections; 0: no limit).",
        value=limit,
    )
    pools = GaugeMetricFamily(
        "bluegreen_upstream_connections",
        "Connections to a colour open now, by state: active (serving a request) or idle.",
        labels=("colour", "state"),
    )
    for colour, (open_, idle) in sorted(upstream.items()):
        pools.add_metric((colour, "active"), max(open_ - idle, 0))
        pools.add_metric((colour, "idle"), idle)
    yield pools


def _shadow_families(shadow: ShadowStats) -> Iterator[Metric]:
    """Mirrored requests per idle colour: outcomes, latency, and the figures over the window.

    The families appear once a colour has had a shadow: with shadow.percent at 0 there are none.
    """
    if not shadow.colours:
        return
    requests = CounterMetricFamily(
        "bluegreen_shadow_requests",
        "Live requests mirrored to the idle colour, by outcome: match, mismatch, error, dropped.",
        labels=("colour", "outcome"),
    )
    durations = HistogramMetricFamily(
        "bluegreen_shadow_duration_seconds",
        "Time the idle colour took to answer a mirrored request (answers only).",
        labels=("colour",),
    )
    ratio = GaugeMetricFamily(
        "bluegreen_shadow_latency_ratio",
        "Shadow over live latency of the pairs both colours answered, over shadow.window.",
        labels=("colour",),
    )
    bad = GaugeMetricFamily(
        "bluegreen_shadow_mismatch_ratio",
        "Mismatches and errors over compared shadows, over shadow.window (what the gate reads).",
        labels=("colour",),
    )
    now = monotonic()
    for colour, kept in sorted(shadow.colours.items()):
        for outcome, n in kept.counts.items():
            requests.add_metric((colour, outcome), n)
        durations.add_metric((colour,), *_cumulative(kept.latency))
        figures = kept.window.figures(now, shadow.window)
        latency_ratio = figures.latency_ratio
        if latency_ratio is not None:
            ratio.add_metric((colour,), latency_ratio)
        bad.add_metric((colour,), figures.bad_rate)
    yield requests
    yield durations
    if ratio.samples:
        yield ratio
    yield bad


def _counter_by(name: str, documentation: str, label: str, counts: dict[str, int]) -> Metric:
    """A counter family with one label, a sample per key of `counts`."""
    family = CounterMetricFamily(name, documentation, labels=(label,))
    for value, n in sorted(counts.items()):
        family.add_metric((value,), n)
    return family


def traffic_registry(stats: TrafficStats) -> CollectorRegistry:
    """Create a registry holding the traffic collector of `stats`; other metrics join it later."""
    # `_created` series double the exposition and no dashboard or alert of ours uses them.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry(auto_describe=True)
    registry.register(TrafficCollector(stats))
    return registry
