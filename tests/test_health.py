"""Active health checks: the pure state machine, and probes of real upstreams whose health flips."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from controller.config import parse_config
from controller.health import HealthChecker
from controller.health_state import Health, HealthState
from tests.support.colours import ColourApp
from tests.support.in_process import served
from tests.support.process import Proxy, config_text, running, sample
from tests.support.waiting import wait_for as wait_until

H, U, X = Health.HEALTHY, Health.UNHEALTHY, Health.UNKNOWN


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ([], X),
        ([True], X),
        ([True, True], H),
        ([False, False], X),
        ([False, False, False], U),
        ([True, True, False, False], H),
        ([True, True, False, False, False], U),
        ([True, True, False, False, True, False, False], H),  # failures must be consecutive
        ([False, False, False, True], U),
        ([False, False, False, True, True], H),
        ([False, False, False, True, False, True, True], H),
    ],
)
def test_health_state_machine(results: list[bool], expected: Health) -> None:
    state = HealthState()
    for ok in results:
        state = state.observe(ok, None if ok else "boom", success_threshold=2, failure_threshold=3)
    assert state.health is expected


class FlippableHealth:
    """A real HTTP server whose /healthz answers 200, 500, or too slowly, as the test says."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.port = 0
        self.probes = 0

    def app(self) -> web.Application:
        async def healthz(request: web.Request) -> web.Response:
            self.probes += 1
            if self.mode == "slow":
                await asyncio.sleep(1)
            if self.mode == "fail":
                return web.Response(status=500, text="broken\n")
            return web.Response(text="ok\n")

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        return app


@pytest.fixture
async def flippable() -> AsyncIterator[dict[str, FlippableHealth]]:
    servers = {"blue": FlippableHealth(), "green": FlippableHealth()}
    async with served(servers):
        yield servers


async def test_probes_follow_each_colour(flippable: dict[str, FlippableHealth]) -> None:
    config = parse_config(
        {
            "active": "blue",
            "upstream.blue": f"http://127.0.0.1:{flippable['blue'].port}",
            "upstream.green": f"http://127.0.0.1:{flippable['green'].port}",
            "health.interval": "200ms",
            "health.timeout": "200ms",  # a healthy probe's bound; "slow" takes 1 s, always over
            "health.failureThreshold": "2",
            "health.successThreshold": "2",
        }
    )
    changes: list[tuple[str, Health]] = []
    checker = HealthChecker(
        on_change=lambda colour, _, after: changes.append((colour, after.health))
    )
    checker.update(config)
    try:
        await wait_until(lambda: checker.health("blue") is H and checker.health("green") is H, 2)
        flippable["green"].mode = "fail"
        took = await wait_until(lambda: checker.health("green") is U, 2)
        assert took < 2 * 0.2 + 0.3  # two failures at 200 ms intervals, plus a margin
        assert "answered 500" in (checker.states["green"].last_error or "")
        assert checker.health("blue") is H  # the idle colour is checked, the active one too
        flippable["blue"].mode = "slow"
        await wait_until(lambda: checker.health("blue") is U, 2)
        assert "did not answer within 0.2s" in (checker.states["blue"].last_error or "")
        flippable["green"].mode = "ok"
        await wait_until(lambda: checker.health("green") is H, 2)
        assert ("green", U) in changes and ("blue", U) in changes
    finally:
        await checker.close()


async def test_status_and_metrics_show_health(
    colours: dict[str, ColourApp], tmp_path: Path
) -> None:
    config = tmp_path / "bluegreen.yaml"
    config.write_text(
        config_text(colours, "blue")
        + "health.interval: 100ms\nhealth.timeout: 100ms\nhealth.path: /healthz\n"
    )
    with running(config) as proxy:
        await proxy.wait_ready()
        document = await _status_when(proxy, lambda d: d["colours"]["green"]["health"] == "healthy")
        assert document["colours"]["blue"]["health"] == "healthy"
        async with aiohttp.ClientSession() as session:
            metrics = await (await session.get(proxy.admin + "/metrics")).text()
        assert sample(metrics, "bluegreen_upstream_healthy", colour="blue") == 1
        assert sample(metrics, "bluegreen_upstream_healthy", colour="green") == 1


async def _status_when(
    proxy: Proxy, condition: Callable[[dict[str, dict[str, dict[str, str]]]], bool]
) -> dict[str, dict[str, dict[str, str]]]:
    deadline = time.monotonic() + 10
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(proxy.admin + "/status?format=json") as response:
                document: dict[str, dict[str, dict[str, str]]] = await response.json()
            if condition(document):
                return document
            assert time.monotonic() < deadline, document
            await asyncio.sleep(0.05)
