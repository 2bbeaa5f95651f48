"""A real Prometheus (Debian's) scrapes a real `bluegreen run` with the scrape config of the docs.

The scrape config is read from docs/metrics.md, so the docs and this test cannot drift apart;
only the target and the interval (1s, to keep the test short) change. Traffic runs all along;
after a switch, the issue's query `sum by (colour) (rate(bluegreen_requests_total[1m]))` must
show the traffic moving from blue to green.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.monitoring.assets import dashboard_queries, doc_block, doc_blocks
from tests.monitoring.conftest import Bluegreen
from tests.support.net import free_port
from tests.tools import debian_tool

QUERY = "sum by (colour) (rate(bluegreen_requests_total[1m]))"
# Bluegreen is a subprocess; the test's loop only drives clients, so one loop is enough.
ONE_LOOP = pytest.mark.asyncio(loop_factories=["uvloop"])


@dataclass
class Prometheus:
    """A running Prometheus server and the HTTP API calls the tests make."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        """The end of Prometheus' log, for failure messages."""
        return self.log.read_text(errors="replace")[-3000:]

    async def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; fails the test unless Prometheus answers success."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}/api/v1/{path}", params=params) as response,
        ):
            document = await response.json()
        assert document.get("status") == "success", (path, params, document)
        return document["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        data = await self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    async def by_colour(self, expr: str) -> dict[str, float]:
        """An instant query's values keyed by their colour label."""
        return {r["metric"].get("colour", ""): float(r["value"][1]) for r in await self.query(expr)}


@contextlib.contextmanager
def prometheus_process(config: dict[str, Any], directory: Path) -> Iterator[Prometheus]:
    """Run Debian's prometheus on a free loopback port with `config`; stop it by its PID."""
    config_file = directory / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log = directory / "prometheus.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                str(debian_tool("prometheus")),
                f"--config.file={config_file}",
                f"--storage.tsdb.path={directory / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Prometheus(f"http://127.0.0.1:{port}", process, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


async def wait_ready(prometheus: Prometheus) -> None:
    """Wait for /-/ready, failing early if Prometheus exits."""
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            assert prometheus.process.poll() is None, "prometheus exited: " + prometheus.output()
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with session.get(prometheus.url + "/-/ready") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise AssertionError("prometheus not ready in 30s: " + prometheus.output())


async def eventually(
    what: str, probe: Callable[[], Awaitable[Any]], done: Callable[[Any], bool], timeout: float
) -> Any:
    """Probe until `done(result)`; fail with every observation after `timeout` seconds."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        seen.append(result)
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen in {timeout:g}s; observed: {seen[-10:]}")
        await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def live_traffic(bluegreen: Bluegreen) -> AsyncIterator[list[str]]:
    """Send live requests without pause until the block ends; yields the colours that answered."""
    answered: list[str] = []
    stop = asyncio.Event()

    async def client() -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                async with session.get(bluegreen.url + "/") as response:
                    await response.read()
                    assert response.status == 200
                    answered.append(response.headers["X-Bluegreen-Colour"])
                await asyncio.sleep(0.005)

    task = asyncio.create_task(client())
    try:
        yield answered
    finally:
        stop.set()
        await task


def documented_static_job(target: str) -> dict[str, Any]:
    """docs/metrics.md's static scrape config, pointed at `target`, scraping every second."""
    config: dict[str, Any] = yaml.safe_load(doc_block("scrape-config: static"))
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [target]}]
    job["scrape_interval"] = "1s"
    return config


@ONE_LOOP
async def test_prometheus_sees_traffic_move_to_green_after_a_switch(
    bluegreen: Bluegreen, tmp_path: Path
) -> None:
    config = documented_static_job(f"127.0.0.1:{bluegreen.admin_port}")
    job = config["scrape_configs"][0]["job_name"]
    with prometheus_process(config, tmp_path) as prometheus:
        await wait_ready(prometheus)
        async with live_traffic(bluegreen) as answered:
            await eventually(
                "the target up",
                lambda: prometheus.query(f'up{{job="{job}"}} == 1'),
                lambda result: len(result) == 1,
                30,
            )
            before = await eventually(
                "blue's traffic (two samples of the counter)",
                lambda: prometheus.by_colour(QUERY),
                lambda rates: rates.get("blue", 0) > 0,
                30,
            )
            assert "green" not in before, before  # no live request ever went to green
            await asyncio.sleep(3)  # a few more samples of blue alone
            blue_peak = (await prometheus.by_colour(QUERY))["blue"]
            bluegreen.write_config("green")
            await bluegreen.wait_status("the switch to green", lambda d: d["active"] == "green")
            after = await eventually(
                "green's rate above blue's, and blue's falling",
                lambda: prometheus.by_colour(QUERY),
                lambda rates: (
                    rates.get("green", 0) > rates.get("blue", 0)
                    and rates.get("blue", 0) < blue_peak
                ),
                60,
            )
            await assert_every_dashboard_query_runs(prometheus, job)
        print(f"rate before the switch {before}, peak blue {blue_peak:.1f}/s, after {after}")
        assert "green" in answered and answered[-1] == "green"
        assert answered.index("green") > 0 and "blue" not in answered[answered.index("green") :]


async def assert_every_dashboard_query_runs(prometheus: Prometheus, job: str) -> None:
    """Each dashboard query, and each query shown in the docs, runs in the real Prometheus.

    The panels that this scenario must fill (traffic, latency, active colour, health, the
    switch annotation) must return data; the others (errors, rollbacks) must at least parse.
    """
    must_have_data = (
        "'Active colour'",
        "'Replicas per active colour'",
        "'Since the last accepted config'",
        "'Requests per second'",
        "'Latency p50 and p99'",
        "'In-flight requests'",
        "'Upstream health'",
        "annotation 'Switches'",
        "'Leader'",
        "'Leaders per job'",
        "'Active colour per replica'",
        "'Requests per second per replica'",
        "'Client connections per replica'",
        "'Upstream connections per replica'",
    )
    for where, expr in dashboard_queries():
        # The namespace variable's "All" (a static scrape has no namespace label: "" matches).
        grafana = expr.replace("$__rate_interval", "1m").replace("$job", job)
        grafana = grafana.replace("$namespace", ".*")
        assert "$" not in grafana, f"{where}: unknown variable in {expr!r}"
        result = await prometheus.query(grafana)
        if any(name in where for name in must_have_data):
            assert result, f"{where}: no data for {grafana!r}"
    docs_queries = [
        block.strip()
        for text in doc_blocks("promql")
        for block in re.split(r"\n\s*\n", text)
        if block.strip()
    ]
    exprs = [
        "\n".join(line for line in block.splitlines() if not line.startswith("#")).strip()
        for block in docs_queries
    ]
    assert len(exprs) >= 4 and exprs[0] == QUERY  # the docs show the query this test runs
    for expr in exprs:
        await prometheus.query(expr)  # each parses and runs (the 5xx ratio has no data here)
    jobs = await prometheus.api("label/job/values", **{"match[]": "bluegreen_active_colour"})
    assert jobs == [job]  # what the dashboard's job variable lists


@ONE_LOOP
async def test_documented_kubernetes_relabeling_scrapes_the_annotated_port(
    bluegreen: Bluegreen, tmp_path: Path
) -> None:
    """The pod discovery job's relabel rules, in a real Prometheus, on pods as discovery sees them.

    Debian's Prometheus has no Kubernetes discovery, so static targets carry the meta labels
    that pod discovery gives: the address is a pod's first container port (bluegreen's proxy
    port), and the annotations name the admin port. A pod without the scrape annotation and a
    pod of another application must be dropped.
    """
    config: dict[str, Any] = yaml.safe_load(doc_block("scrape-config: kubernetes-pods"))
    (job,) = config["scrape_configs"]
    job.pop("kubernetes_sd_configs")
    job["scrape_interval"] = "1s"

    def pod(name: str, app: str, scrape: str) -> dict[str, Any]:
        return {
            "targets": [f"127.0.0.1:{bluegreen.port}"],
            "labels": {
                "__meta_kubernetes_namespace": "shop",
                "__meta_kubernetes_pod_name": name,
                "__meta_kubernetes_pod_label_app_kubernetes_io_name": app,
                "__meta_kubernetes_pod_annotation_prometheus_io_scrape": scrape,
                "__meta_kubernetes_pod_annotation_prometheus_io_port": str(bluegreen.admin_port),
                "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
            },
        }

    job["static_configs"] = [
        pod("bluegreen-abc", "bluegreen", "true"),
        pod("bluegreen-unannotated", "bluegreen", "false"),
        pod("myapp-v1-xyz", "myapp", "true"),
    ]
    with prometheus_process(config, tmp_path) as prometheus:
        await wait_ready(prometheus)
        up = await eventually(
            "the bluegreen pod scraped",
            lambda: prometheus.query('up{job="bluegreen"}'),
            lambda result: len(result) == 1 and result[0]["value"][1] == "1",
            30,
        )
        assert up[0]["metric"] == {
            "__name__": "up",
            "job": "bluegreen",
            "instance": f"127.0.0.1:{bluegreen.admin_port}",
            "namespace": "shop",
            "pod": "bluegreen-abc",
        }
        targets = await prometheus.api("targets", state="active")
        urls = [t["scrapeUrl"] for t in targets["activeTargets"]]
        assert urls == [f"http://127.0.0.1:{bluegreen.admin_port}/metrics"]
        active = await prometheus.query('bluegreen_active_colour{namespace="shop"} == 1')
        assert [r["metric"]["colour"] for r in active] == ["blue"]
