"""The data plane's metrics: per-colour traffic counted on the hot path, exported at scrape.

The forwarding hot path counts into plain Python ints and lists (`TrafficStats`), which costs a
dict lookup and an add per request. prometheus-client's own Counter and Histogram children take
a lock and do more work per call; at tens of thousands of requests a second that shows up.
`TrafficCollector` turns the plain counts into metric families only when Prometheus scrapes.
The control plane's metrics (switches, reloads, rollbacks) are in controller/metrics.py.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from proxy.access_log import AccessLog

# Latency buckets in seconds: fine below 10 ms where a proxy in front of a healthy Service lives,
# coarse above, ending at the default read timeout.
DURATION_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


@dataclass(slots=True)
class DurationHistogram:
    """Cumulative-at-scrape latency histogram: per-bucket counts, a count and a sum."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        """Record one duration."""
        self.buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.total += seconds
        self.count += 1


class TrafficStats:
    """Request counts, latencies, in-flight gauges and upstream errors, as plain numbers.

    Only the event loop's thread touches these, so no lock is needed.
    """

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}
        self.durations: dict[tuple[str, str], DurationHistogram] = {}
        self.inflight: dict[str, int] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self.rejected: dict[int, int] = {}
        self.retries: dict[tuple[str, str], int] = {}
        self.dropped_fields: dict[str, int] = {}
        # Each kind exported at 0 from the start, so that an alert on increase() sees the first.
        self.proxy_headers_rejected = {"invalid": 0, "timeout": 0, "closed": 0}
        self.access_log: AccessLog | None = None  # the server's, once the log is first on

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

    def request_finished(self, colour: str, route: str, status: int, seconds: float) -> None:
        """Count a finished request: its status class and its duration."""
        self.inflight[colour] -= 1
        key = (colour, route, STATUS_CLASSES[status // 100 - 1] if 100 <= status < 600 else "5xx")
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.durations.get((colour, route))
        if histogram is None:
            histogram = self.durations[(colour, route)] = DurationHistogram()
        histogram.observe(seconds)

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
            "Requests answered, by colour, route (live or preview) and status class.",
            labels=("colour", "route", "code"),
        )
        for (colour, route, code), n in sorted(stats.requests.items()):
            requests.add_metric((colour, route, code), n)
        yield requests

        durations = HistogramMetricFamily(
            "bluegreen_request_duration_seconds",
            "Time from a complete request head to the end of the response.",
            labels=("colour", "route"),
        )
        for (colour, route), hist in sorted(stats.durations.items()):
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, n in zip((*DURATION_BUCKETS, float("inf")), hist.buckets, strict=True):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            durations.add_metric((colour, route), buckets, hist.total)
        yield durations

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

        dropped = CounterMetricFamily(
            "bluegreen_dropped_request_fields",
            "Request header fields removed before forwarding, by reason (underscore: a name "
            "with `_`, see headers.allowUnderscores).",
            labels=("reason",),
        )
        for reason, n in sorted(stats.dropped_fields.items()):
            dropped.add_metric((reason,), n)
        yield dropped

        proxy_headers = CounterMetricFamily(
            "bluegreen_proxy_protocol_rejected_connections",
            "Connections from trusted peers closed without a valid PROXY protocol header "
            "(listen.proxyProtocol), by kind: invalid, timeout, closed.",
            labels=("kind",),
        )
        for kind, n in sorted(stats.proxy_headers_rejected.items()):
            proxy_headers.add_metric((kind,), n)
        yield proxy_headers

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


def traffic_registry(stats: TrafficStats) -> CollectorRegistry:
    """Create a registry holding the traffic collector of `stats`; other metrics join it later."""
    # `_created` series double the exposition and no dashboard or alert of ours uses them.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry(auto_describe=True)
    registry.register(TrafficCollector(stats))
    return registry
