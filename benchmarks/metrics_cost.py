"""What counting one request costs: bluegreen's plain counters against prometheus-client's objects.

Run: .venv/bin/python benchmarks/metrics_cost.py

The hot path counts each request into `TrafficStats` (dict increments and a bisect) and exports the
numbers at scrape time. This prints the cost per request of that, next to what the same counting
costs through prometheus-client's Counter/Gauge/Histogram children, so the choice stays measured.
Compare the figure with the proxy's CPU time per request (tens of microseconds, see run.py).
"""

from __future__ import annotations

import statistics
import timeit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from controller.metrics import build_registry
from proxy.histogram import DURATION_BUCKETS
from proxy.metrics import TrafficStats

ROUNDS = 7
NUMBER = 200_000


def per_call_ns(statement: timeit.Timer) -> float:
    """Median nanoseconds per call over ROUNDS timings of NUMBER calls."""
    return statistics.median(t / NUMBER * 1e9 for t in statement.repeat(ROUNDS, NUMBER))


def main() -> None:
    """Print ns per request for both ways of counting, and the scrape cost."""
    stats = TrafficStats()

    def plain() -> None:
        stats.request_started("blue")
        stats.request_finished("blue", "live", 200, 0.0031)

    registry = CollectorRegistry()
    requests = Counter("r", "r", ("colour", "route", "code"), registry=registry)
    inflight = Gauge("i", "i", ("colour",), registry=registry)
    durations = Histogram(
        "d", "d", ("colour", "route"), buckets=DURATION_BUCKETS, registry=registry
    )

    def client_library() -> None:
        inflight.labels("blue").inc()
        inflight.labels("blue").dec()
        requests.labels("blue", "live", "200").inc()
        durations.labels("blue", "live").observe(0.0031)

    plain_ns = per_call_ns(timeit.Timer(plain))
    library_ns = per_call_ns(timeit.Timer(client_library))
    full_registry, _ = build_registry(stats)
    scrape_ms = (
        statistics.median(timeit.Timer(lambda: generate_latest(full_registry)).repeat(ROUNDS, 200))
        / 200
        * 1e3
    )
    print(f"bluegreen TrafficStats       {plain_ns:8.0f} ns per request")
    print(f"prometheus-client children   {library_ns:8.0f} ns per request")
    print(f"ratio                        {library_ns / plain_ns:8.2f}x")
    print(f"one scrape of /metrics       {scrape_ms:8.3f} ms")


if __name__ == "__main__":
    main()
