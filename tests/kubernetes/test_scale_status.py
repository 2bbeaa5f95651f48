"""What an operator sees of the idle colour's scaling: the /status page, the CLI, the dashboard.

On a real kube-apiserver, with the Deployments and Roles of tests/kubernetes/test_scaling.py: a
leading proxy scales idle green down, then a switch to green waits for a scale-up that never gets
ready (nobody stands in for the kubelet), times out, and an operator retries. Along the way the
page in real Chromium (loaded once, never reloaded), the `bluegreen` CLI as a child process
against the running proxy's admin port and the ConfigMap, and the dashboard's scale panels in a
real Prometheus scraping that proxy must say which colour is scaling up and until when.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, expect

from controller.cluster_ops import switch_colour
from controller.process import ConfigMapSpec, ProxyProcess
from tests.kubernetes.apiserver import KubeApiServer
from tests.kubernetes.test_scaling import (
    LEASE,
    SCALING_USER,
    Scene,
    _replicas_are,
    gauge,
    leading_proxy,
    scene,
    served,
    server,
)
from tests.monitoring.assets import dashboard_queries, promql_use
from tests.monitoring.test_exported_names import exported_series, problems_of
from tests.monitoring.test_prometheus_e2e import eventually, prometheus_process, wait_ready
from tests.support.kube_process import proxy_following
from tests.support.process import run_cli
from tests.support.waiting import wait_for, wait_for_async
from tests.test_status_page import keep

# test_scaling.py's module-scoped fixture, imported: this module gets a kube-apiserver of its own.
__all__ = ["server"]

WAIT_MS = 5000
SCALE_PANELS = ("Scale state per colour", "Replicas per colour", "Scale-up time left")


def scale_panel(where: str) -> bool:
    """Whether a dashboard query (as dashboard_queries names it) is one of the scale row's."""
    return any(where.startswith(f"panel {title!r} ") for title in SCALE_PANELS)


async def cli_status(made: Scene, *extra: str) -> tuple[int, str]:
    """`bluegreen status` on the scene's ConfigMap, as an operator with a kubeconfig runs it."""
    code, out, err = await run_cli(
        "status",
        *("--configmap", str(made.ref), "--kubeconfig", str(made.admin_kubeconfig)),
        *extra,
    )
    assert err == "", err
    print(f"$ bluegreen status {' '.join(extra)}\n{out}")
    return code, out


def line_of(text: str, start: str) -> str:
    """The one line of `text` that starts with `start` (after its indentation)."""
    [line] = [line for line in text.splitlines() if line.strip().startswith(start)]
    return line


def scale_line(text: str, colour: str) -> str:
    """The scale section's line of `colour` in `bluegreen status` output."""
    return line_of(text, f"{colour:<12}deployment/")


async def test_the_page_and_the_cli_follow_a_scale_up_its_timeout_and_the_retry(
    server: tuple[KubeApiServer, dict[str, str]], browser: Browser, tmp_path: Path
) -> None:
    extra = {"scale.idleReplicas": "0", "scale.after": "6s", "scale.timeout": "15s"}
    async with scene(server, SCALING_USER, extra) as made, leading_proxy(made) as process:
        made.follow_readiness()
        page: Page = await browser.new_page(viewport={"width": 1280, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(f"http://127.0.0.1:{process.admin_port}/status", timeout=WAIT_MS)
        await page.evaluate("window.__loadedOnce = true")
        blue = page.locator('#scale tbody tr[data-colour="blue"]')
        green = page.locator('#scale tbody tr[data-colour="green"]')
        banner = page.locator("#scale-banner")

        # Blue serves; green is idle and will be scaled down 6 s after it stopped being served.
        await expect(blue).to_contain_text("deployment/myapp-v1", timeout=WAIT_MS)
        await expect(blue).to_contain_text("serving")
        await expect(blue).to_contain_text("10 / 10", timeout=WAIT_MS)
        await expect(green).to_contain_text("will scale down to 0 at", timeout=WAIT_MS)
        await expect(green.locator("time.until")).to_contain_text("(in ")
        await expect(page.locator("#scale-summary")).to_contain_text("scaled to 0 replicas 6 s")
        await expect(banner).to_be_hidden()

        # Scaled down: what it is owed is on the page.
        await expect(green).to_contain_text("scaled down", timeout=15_000)
        await expect(green).to_contain_text("restored to 10 before a switch to green")
        await expect(green).to_contain_text("0 / 0", timeout=WAIT_MS)
        code, idle_text = await cli_status(made, "--admin", f"127.0.0.1:{process.admin_port}")
        assert code == 0
        assert "(restore to 10 before a switch to green)" in scale_line(idle_text, "green")

        # A switch to green while nothing becomes ready: the page says it waits, until when.
        made.stop_following()
        await made.patch({"active": "green"})
        await expect(banner).to_be_visible(timeout=WAIT_MS)
        await expect(banner).to_contain_text(
            "Switch to green waits: scaling up deployment/myapp-v2"
        )
        await expect(banner).to_contain_text("0 of 10 replicas ready")
        await expect(banner).to_contain_text("Live traffic stays on blue")
        await expect(banner.locator("time.until")).to_contain_text("(in ")
        await expect(green).to_have_class("scaling_up")
        await expect(green).to_contain_text("timeout (scale.timeout 15 s) at")
        await expect(green).to_contain_text("0 / 10", timeout=WAIT_MS)  # spec up, none ready
        await expect(page.locator("#desired")).to_contain_text("not served: waiting for green")
        await expect(page.locator("#active")).to_have_text("blue")
        status = process.status()["scale"]["colours"]["green"]
        assert status["state"] == "scaling_up" and status["restore_to"] == 10, status
        since = datetime.fromisoformat(status["scaling_up_since"])
        deadline = datetime.fromisoformat(status["timeout_at"])
        assert (deadline - since).total_seconds() == 15
        assert 0 < (deadline - datetime.now(UTC)).total_seconds() <= 15
        assert gauge(process, "bluegreen_colour_scaling_up", "green") == 1
        assert gauge(
            process, "bluegreen_colour_scale_up_deadline_timestamp_seconds", "green"
        ) == pytest.approx(deadline.timestamp(), abs=1)
        screenshot = tmp_path / "status-page-scaling-up.png"
        await page.screenshot(path=str(screenshot), full_page=True)
        keep(screenshot)

        # The CLI, on the running replica: the same state and deadline; exit 4 (not served).
        code, text = await cli_status(made, "--admin", f"127.0.0.1:{process.admin_port}")
        assert code == 4
        green_line = scale_line(text, "green")
        assert "deployment/myapp-v2  0/10 ready  scaling up to 10 since " in green_line
        assert f"timeout at {deadline.isoformat(timespec='seconds')} (in " in green_line
        assert "serving" in scale_line(text, "blue") and "this replica" not in text
        # From the ConfigMap alone: what it can know, and where to look for the rest.
        code, text = await cli_status(made)
        assert code == 4
        # No switch in the history yet: which colour is served is not in the ConfigMap.
        assert line_of(text, "active").startswith(
            "active        unknown here (--admin HOST:PORT reads a replica's)  (not the desired "
            "colour: waiting for green to scale up (deployment/myapp-v2"
        )
        assert "serving or idle (the ConfigMap does not say" in scale_line(text, "blue")
        assert "scaling up to 10 (the Lease holder; --admin shows since when)" in text

        # The timeout: refused, scaled back, traffic never moved; every interface says so.
        await expect(green).to_have_class("failed", timeout=30_000)
        refused = "refused: green not ready after 15s: 0/10 replicas ready (scale.timeout)"
        await expect(green).to_contain_text(refused)
        await expect(green).to_contain_text("bluegreen switch green --retry tries again")
        await expect(banner).to_contain_text("Switch to green failed: " + refused)
        await expect(banner).to_have_class("failed")
        # The refusal is recorded (what the page shows) before the scaler has scaled green
        # back down and cleared its scale-up: the gauges follow within a moment.
        await wait_for(
            lambda: (
                gauge(process, "bluegreen_colour_scaling_up", "green") == 0
                and gauge(process, "bluegreen_colour_scale_up_deadline_timestamp_seconds", "green")
                is None
            ),
            5,
            "the scale-up gauges cleared after the timeout",
        )
        code, text = await cli_status(made, "--admin", f"127.0.0.1:{process.admin_port}")
        assert code == 4
        assert f"failed: {refused}" in scale_line(text, "green")
        code, text = await cli_status(made)
        assert f"failed: {refused}" in scale_line(text, "green")
        screenshot = tmp_path / "status-page-scale-up-failed.png"
        await page.screenshot(path=str(screenshot), full_page=True)
        keep(screenshot)

        # The operator retries with green able to get ready: it serves, and blue goes idle.
        made.follow_readiness()
        await switch_colour(made.ref, made.admin_kubeconfig, "green", retry=True)
        await wait_for(lambda: served(process) == "green", 15, "green served after --retry")
        await expect(green).to_contain_text("serving", timeout=WAIT_MS)
        await expect(banner).to_be_hidden(timeout=WAIT_MS)
        await expect(blue).to_contain_text("will scale down to 0 at", timeout=WAIT_MS)
        assert await page.evaluate("window.__loadedOnce === true"), "the page was reloaded"
        assert errors == []
        await page.close()


async def test_the_dashboard_scale_panels_show_a_scale_up_in_a_real_prometheus(
    server: tuple[KubeApiServer, dict[str, str]], tmp_path: Path
) -> None:
    extra = {"scale.idleReplicas": "0", "scale.after": "1s", "scale.timeout": "60s"}
    async with scene(server, SCALING_USER, extra) as made, leading_proxy(made) as process:
        made.follow_readiness()
        await wait_for_async(lambda: _replicas_are(made, "green", 0), 10, "green scaled down")
        await wait_for(
            lambda: gauge(process, "bluegreen_colour_ready_replicas", "green") == 0, 5, "none ready"
        )
        made.stop_following()
        await made.patch({"active": "green"})
        await wait_for(
            lambda: gauge(process, "bluegreen_colour_scaling_up", "green") == 1, 5, "scaling up"
        )
        # Every metric and label the scale panels read is one this process exports.
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{process.admin_port}/metrics") as response,
        ):
            exported = exported_series(await response.text())
        scale_queries = [(w, e) for w, e in dashboard_queries() if scale_panel(w)]
        assert len(scale_queries) >= 4, dashboard_queries()
        problems = [
            problem
            for where, expr in scale_queries
            for problem in problems_of(where, promql_use(expr), exported)
        ]
        assert problems == []

        config = {
            "scrape_configs": [
                {
                    "job_name": "bluegreen",
                    "scrape_interval": "1s",
                    "static_configs": [{"targets": [f"127.0.0.1:{process.admin_port}"]}],
                }
            ]
        }
        with prometheus_process(config, tmp_path) as prometheus:
            await wait_ready(prometheus)

            def grafana(expr: str) -> str:
                return (
                    expr.replace("$__rate_interval", "1m")
                    .replace("$job", "bluegreen")
                    .replace("$namespace", ".*")
                )

            queries = {where: grafana(expr) for where, expr in scale_queries}
            state = next(q for w, q in queries.items() if "'Scale state per colour'" in w)
            states = await eventually(
                "green scaling up (3) and blue at full size (0)",
                lambda: prometheus.by_colour(state),
                lambda values: values == {"blue": 0.0, "green": 3.0},
                30,
            )
            left = next(q for w, q in queries.items() if "'Scale-up time left'" in w)
            seconds = await prometheus.by_colour(left)
            assert set(seconds) == {"green"} and 0 < seconds["green"] <= 60, seconds
            for where, query in queries.items():
                assert await prometheus.query(query), f"{where}: no data for {query!r}"
            print(f"scale state {states}, time left {seconds}")


async def test_a_replica_without_the_lease_shows_the_same_scale_up_from_the_record(
    server: tuple[KubeApiServer, dict[str, str]],
) -> None:
    extra = {"scale.idleReplicas": "0", "scale.after": "1s", "scale.timeout": "60s"}
    async with (
        scene(server, SCALING_USER, extra) as made,
        leading_proxy(made) as leader,
        proxy_following(ConfigMapSpec(made.ref, made.kubeconfig, LEASE)) as follower,
    ):
        assert not follower.decides
        made.follow_readiness()

        def green(process: ProxyProcess) -> dict[str, Any]:
            entry: dict[str, Any] = process.status()["scale"]["colours"]["green"]
            return entry

        await wait_for(lambda: green(follower)["state"] == "scaled_down", 10, "green scaled down")
        assert green(follower)["restore_to"] == 10
        await wait_for(lambda: green(follower)["ready_replicas"] == 0, 5, "green's pods gone")
        made.stop_following()
        await made.patch({"active": "green"})
        await wait_for(
            lambda: all(green(p)["timeout_at"] for p in (leader, follower)), 5, "both waiting"
        )
        led, followed = green(leader), green(follower)
        assert led["state"] == followed["state"] == "scaling_up"
        assert leader.status()["scale"]["leader"] and not follower.status()["scale"]["leader"]
        apart = datetime.fromisoformat(led["timeout_at"]) - datetime.fromisoformat(
            followed["timeout_at"]
        )
        assert abs(apart.total_seconds()) <= 2, (led, followed)  # seen within a poll or two
        assert gauge(follower, "bluegreen_colour_scaling_up", "green") == 1
        code, text = await cli_status(made, "--admin", f"127.0.0.1:{follower.admin_port}")
        assert code == 4
        assert "times as this replica saw them (the Lease holder scales)" in text
        assert "0/10 ready  scaling up to 10 since " in scale_line(text, "green")
