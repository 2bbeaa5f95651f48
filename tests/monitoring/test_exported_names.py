"""Every metric and label the alerts and the dashboard use is one a real process exports.

A `bluegreen run` process gets live and preview traffic, an upstream that hangs up, a malformed
request, a rejected config, a switch and a rollback, so that every series exists. Its /metrics,
scraped over HTTP, is then compared with what the PromQL of the alerts and the dashboard reads.
"""

from __future__ import annotations

import re
from collections import defaultdict

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.metrics import ROLLBACK_REASONS
from tests.monitoring.assets import (
    METRICS_DOC,
    TARGET_LABELS,
    PromQLUse,
    alert_rules,
    dashboard_label_values,
    dashboard_queries,
    promql_use,
)
from tests.monitoring.conftest import Bluegreen
from tests.support.net import raw_exchange

# The process is a subprocess; the test's own loop only drives clients, so one loop is enough.
ONE_LOOP = pytest.mark.asyncio(loop_factories=["uvloop"])

Exported = dict[str, dict[str, set[str]]]  # sample name -> label -> values seen

# The Deployments behind the colours are read only with a ConfigMap and scale.<colour> keys;
# this process runs on a file. tests/kubernetes/test_scale_status.py checks the dashboard's
# scale panels against a scaling process's /metrics and in a real Prometheus.
SCALE_ONLY = frozenset(
    {
        "bluegreen_colour_desired_replicas",
        "bluegreen_colour_ready_replicas",
        "bluegreen_colour_scaled_down",
        "bluegreen_colour_scaling_up",
        "bluegreen_colour_scale_up_deadline_timestamp_seconds",
    }
)


def test_the_promql_reader_tells_metrics_from_functions_keywords_and_labels() -> None:
    use = promql_use(
        'histogram_quantile(0.99, sum by (colour, le) (rate(a_bucket{job=~"$job", code=~"5.."}'
        "[$__rate_interval]))) / on (instance) group_left (pod) b offset 5m > bool 1e3 "
        "and count without (route) (c == 1) unless d{x!~'y'} or vector(1)"
    )
    assert set(use.metrics) == {"a_bucket", "b", "c", "d"}
    assert use.grouping_labels == {"colour", "le", "instance", "pod", "route"}
    assert [(m.label, m.op, m.value) for m in use.metrics["a_bucket"]] == [
        ("job", "=~", "$job"),
        ("code", "=~", "5.."),
    ]
    assert [(m.label, m.op, m.value) for m in use.metrics["d"]] == [("x", "!~", "y")]


async def drive_every_series(bluegreen: Bluegreen) -> str:
    """Make every metric have samples, then return one scrape of /metrics."""
    blue, green = bluegreen.colours["blue"], bluegreen.colours["green"]
    async with aiohttp.ClientSession() as session:
        for _ in range(10):
            async with session.get(bluegreen.url + "/") as response:
                assert response.headers["X-Bluegreen-Colour"] == "blue"
        for _ in range(5):
            headers = {"X-Bluegreen-Preview": "1"}
            async with session.get(bluegreen.url + "/", headers=headers) as response:
                assert response.headers["X-Bluegreen-Colour"] == "green"
        # A request that sends back the session cookie a live answer set (session.affinity).
        async with session.get(bluegreen.url + "/") as response:
            cookie = response.headers["Set-Cookie"].split(";", 1)[0]
        async with session.get(bluegreen.url + "/", headers={"Cookie": cookie}) as response:
            assert response.headers["X-Bluegreen-Colour"] == "blue"
        async with session.get(bluegreen.url + "/hang-up") as response:
            assert response.status == 502
        # A field name with an underscore: dropped and counted.
        async with session.get(bluegreen.url + "/", headers={"X_Forged": "1"}) as response:
            assert response.status == 200
    answer = await raw_exchange(
        bluegreen.port,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 400")
    # A rejected config: not a colour of the config.
    bluegreen.config.write_text(bluegreen.config.read_text().replace("active: blue", "active: red"))
    await bluegreen.wait_status("the rejected config", lambda d: d["last_error"] is not None)
    # Both colours healthy, then a switch to green, then green fails: a rollback to blue.
    await bluegreen.wait_status(
        "both colours healthy",
        lambda d: all(c["health"] == "healthy" for c in d["colours"].values()),
    )
    bluegreen.write_config("green")
    await bluegreen.wait_status("the switch to green", lambda d: d["active"] == "green")
    green.healthy = False
    document = await bluegreen.wait_status("the rollback", lambda d: d["active"] == "blue")
    assert document["switches"][0]["reason"].startswith("rollback:")
    assert not blue.failing
    async with aiohttp.ClientSession() as session, session.get(bluegreen.admin + "/metrics") as r:
        assert r.status == 200
        return await r.text()


def exported_series(text: str) -> Exported:
    """Index a scrape by sample name (what Prometheus stores: _total, _bucket, _count...)."""
    exported: Exported = defaultdict(lambda: defaultdict(set))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = exported[sample.name]
            for name, value in sample.labels.items():
                labels[name].add(value)
    return exported


def problems_of(where: str, use: PromQLUse, exported: Exported) -> list[str]:
    """Say what `use` reads that the scrape does not have."""
    problems = []
    known_labels: set[str] = set(TARGET_LABELS)
    for metric, matchers in use.metrics.items():
        if metric not in exported:
            problems.append(f"{where}: {metric} is not exported")
            continue
        labels = exported[metric]
        known_labels |= set(labels)
        for matcher in matchers:
            if matcher.label in TARGET_LABELS:
                continue
            if matcher.label not in labels:
                problems.append(f"{where}: {metric} has no label {matcher.label}")
            elif matcher.op == "=" and matcher.value not in labels[matcher.label]:
                problems.append(
                    f"{where}: {metric}{{{matcher.label}={matcher.value!r}}} never exported; "
                    f"values: {sorted(labels[matcher.label])}"
                )
            elif matcher.op == "=~" and not matcher.value.startswith("$"):
                # PromQL anchors a regular expression at both ends.
                pattern = re.compile(matcher.value)
                if not any(pattern.fullmatch(v) for v in labels[matcher.label]):
                    problems.append(
                        f"{where}: {metric}{{{matcher.label}=~{matcher.value!r}}} matches no "
                        f"exported value; values: {sorted(labels[matcher.label])}"
                    )
    for label in sorted(use.grouping_labels - known_labels):
        problems.append(f"{where}: label {label} is on none of {sorted(use.metrics)}")
    return problems


@ONE_LOOP
async def test_alerts_and_dashboard_read_only_what_the_process_exports(
    bluegreen: Bluegreen,
) -> None:
    exported = exported_series(await drive_every_series(bluegreen))
    queries = [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    queries += dashboard_queries()
    assert len(queries) >= 5 + 12  # five alerts, the dashboard's targets and annotations
    problems: list[str] = []
    used: set[str] = set()
    for where, expr in queries:
        use = promql_use(expr)
        assert use.metrics, f"{where}: no metric found in {expr!r}"
        # Every name the reader found must be one of ours: a function or keyword taken for a
        # metric would show up here.
        assert all(name.startswith("bluegreen_") for name in use.metrics), (where, use.metrics)
        used |= set(use.metrics)
        if set(use.metrics) <= SCALE_ONLY:
            continue
        problems += problems_of(where, use, exported)
    for metric, label in dashboard_label_values():
        used.add(metric)
        if metric not in exported:
            problems.append(f"template variable: {metric} is not exported")
        elif label not in TARGET_LABELS and label not in exported[metric]:
            problems.append(f"template variable: {metric} has no label {label}")
    assert problems == []
    # The assets together watch every family the process exports, and the scrape had them all.
    families = {
        "bluegreen_requests_total",
        "bluegreen_request_duration_seconds_bucket",
        "bluegreen_inflight_requests",
        "bluegreen_upstream_errors_total",
        "bluegreen_upstream_retries_total",
        "bluegreen_rejected_requests_total",
        "bluegreen_active_colour",
        "bluegreen_switches_total",
        "bluegreen_rollbacks_total",
        "bluegreen_config_reloads_total",
        "bluegreen_config_last_reload_success_timestamp_seconds",
        "bluegreen_upstream_healthy",
    }
    assert families <= used, sorted(families - used)
    assert families <= set(exported), sorted(families - set(exported))
    # Every reason exists from the start (at 0), so increase() sees the first rollback.
    assert exported["bluegreen_rollbacks_total"]["reason"] == set(ROLLBACK_REASONS)
    assert exported["bluegreen_upstream_errors_total"]["colour"] == {"blue"}
    assert exported["bluegreen_upstream_retries_total"]["colour"] == {"blue"}
    assert exported["bluegreen_rejected_requests_total"]["code"] == {"400"}
    # `code` is one thing everywhere: the exact status code (promhttp's convention), never a
    # class; the 502 of the upstream that hung up is its own series.
    assert {"200", "502"} <= exported["bluegreen_requests_total"]["code"]
    for metric, labels in exported.items():
        for value in labels.get("code", set()):
            assert re.fullmatch(r"[1-9][0-9][0-9]", value), (metric, value)


@ONE_LOOP
async def test_every_exported_family_is_documented(bluegreen: Bluegreen) -> None:
    """docs/metrics.md has a row for each family /metrics serves, with each of its labels."""
    families = list(text_string_to_metric_families(await drive_every_series(bluegreen)))
    assert len(families) >= 10
    empty = {family.name for family in families if not family.samples}
    assert empty <= SCALE_ONLY, f"every family should have samples: {sorted(empty - SCALE_ONLY)}"
    rows = {
        line.split("|")[1].strip().strip("`"): line
        for line in METRICS_DOC.read_text().splitlines()
        if line.startswith("| `bluegreen_")
    }
    for family in families:
        name = family.name + ("_total" if family.type == "counter" else "")
        assert name in rows, f"{name} is exported but not in docs/metrics.md"
        row = rows[name]
        assert f"| {family.type} |" in row, (name, family.type, row)
        for sample in family.samples:
            for label in set(sample.labels) - {"le"}:
                assert f"`{label}`" in row, f"label {label} of {name} not documented"
