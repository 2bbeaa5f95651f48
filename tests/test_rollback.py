"""Rollback: the pure decision as a table, then file mode end to end with colours that turn bad."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from controller.file_source import write_active
from controller.health_state import Health, HealthState
from controller.process import ProxyProcess
from controller.rollback import Action, Observation, Policy, Watch, decide, preflight
from tests.support.colours import FAST_FAILURE_THRESHOLD, breakable_config
from tests.support.colours import BreakableColour as Colour
from tests.support.in_process import breakable_colours, in_process_proxy
from tests.support.process import run_cli
from tests.support.waiting import wait_for as wait

H, U, X = Health.HEALTHY, Health.UNHEALTHY, Health.UNKNOWN
POLICY = Policy(enabled=True, window=60.0, max_error_rate=0.5, min_requests=4)
WATCH = Watch(previous="blue", active="green", since=100.0)


@pytest.mark.parametrize(
    ("watch", "observation", "policy", "action", "reason"),
    [
        (None, Observation(101, U, 10, 10), POLICY, Action.NOTHING, ""),
        (WATCH, Observation(101, H, 10, 0), POLICY, Action.NOTHING, ""),
        (WATCH, Observation(101, X, 0, 0), POLICY, Action.NOTHING, ""),
        (
            WATCH,
            Observation(101, U, 0, 0),
            POLICY,
            Action.ROLLBACK,
            "rollback: green unhealthy (active health check)",
        ),
        (WATCH, Observation(101, H, 2, 1), POLICY, Action.NOTHING, ""),  # below minRequests
        (WATCH, Observation(101, H, 3, 3), POLICY, Action.NOTHING, ""),
        (
            WATCH,
            Observation(101, H, 4, 2),
            POLICY,
            Action.ROLLBACK,
            "rollback: error rate 0.50 over 4 requests",
        ),
        (WATCH, Observation(101, H, 40, 19), POLICY, Action.NOTHING, ""),
        (WATCH, Observation(161, U, 40, 40), POLICY, Action.NOTHING, ""),  # window over
        (
            WATCH,
            Observation(101, U, 40, 40),
            Policy(enabled=False),
            Action.NOTHING,
            "",
        ),
    ],
)
def test_decide(
    watch: Watch | None, observation: Observation, policy: Policy, action: Action, reason: str
) -> None:
    decision = decide(watch, observation, policy)
    assert decision.action is action
    assert decision.reason == reason
    if action is Action.ROLLBACK:
        assert decision.target == "blue"


@pytest.mark.parametrize(
    ("health", "policy", "action"),
    [
        (U, POLICY, Action.REFUSE),
        (H, POLICY, Action.NOTHING),
        (X, POLICY, Action.NOTHING),
        (U, Policy(enabled=False), Action.NOTHING),
    ],
)
def test_preflight(health: Health, policy: Policy, action: Action) -> None:
    decision = preflight("green", health, policy)
    assert decision.action is action
    if action is Action.REFUSE:
        assert decision.reason == "refused: green unhealthy"


@pytest.fixture
async def setup(
    tmp_path: Path,
) -> AsyncIterator[tuple[ProxyProcess, dict[str, Colour], Path]]:
    async with breakable_colours() as colours:
        config = tmp_path / "bluegreen.yaml"
        config.write_text(
            breakable_config(
                colours, "blue", "rollback.minRequests: 10\nrollback.maxErrorRate: 0.3\n"
            )
        )
        async with in_process_proxy(config) as process:
            yield process, colours, config


def watch_turning_unhealthy(process: ProxyProcess, colour: str) -> list[tuple[int, float]]:
    """From now on, each time `colour` turns unhealthy: its failures in a row, and when."""
    seen: list[tuple[int, float]] = []
    on_change = process.health.on_change
    assert on_change is not None

    def watching(name: str, before: HealthState, after: HealthState) -> None:
        if name == colour and after.health is U:
            seen.append((after.failures, time.time()))
        on_change(name, before, after)

    process.health.on_change = watching
    return seen


def active_in(config: Path) -> str:
    return str(yaml.safe_load(config.read_text())["active"])


async def live(process: ProxyProcess, count: int) -> list[tuple[int, str]]:
    answers = []
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            async with session.get(f"http://127.0.0.1:{process.proxy_port}/") as response:
                await response.read()
                answers.append((response.status, response.headers["X-Bluegreen-Colour"]))
    return answers


async def test_unhealthy_new_colour_is_rolled_back_and_stays_back(
    setup: tuple[ProxyProcess, dict[str, Colour], Path],
) -> None:
    process, colours, config = setup
    write_active(config, "green")
    await wait(lambda: process.state.table is not None and process.state.table.active == "green", 2)
    turned_unhealthy = watch_turning_unhealthy(process, "green")
    colours["green"].healthy = False
    await wait(lambda: process.state.table is not None and process.state.table.active == "blue", 5)
    assert (await live(process, 3))[-1] == (200, "blue")
    latest = process.state.switches[0]
    assert (latest.from_colour, latest.to_colour) == ("green", "blue")
    # Unhealthy on the failureThreshold-th failed probe in a row, and rolled back within 0.5 s
    # of it: counted in probes, not in seconds since the break, which the slower probes of a
    # loaded machine stretch.
    [(failures, unhealthy_at)] = turned_unhealthy
    assert failures == FAST_FAILURE_THRESHOLD
    assert 0 <= latest.at.timestamp() - unhealthy_at < 0.5
    assert latest.reason == "rollback: green unhealthy (active health check)"
    assert process.guard.failed["green"] == latest.reason
    # The file is the desired state: never rewritten. The decision is the process's, in memory.
    assert active_in(config) == "green"
    status = process.status()
    assert (status["active"], status["desired"], status["desired_reason"]) == (
        "blue",
        "green",
        latest.reason,
    )
    assert status["decision"]["served"] == "blue"
    # No flip-flop: green recovers, nothing switches back by itself.
    colours["green"].healthy = True
    await wait(lambda: process.health.health("green") is H, 2)
    await asyncio.sleep(0.5)
    assert process.state.table is not None and process.state.table.active == "blue"
    # A new desired config (a new revision) ends the hold: green is switched to, and watched.
    config.write_text(config.read_text() + "revision: v2-fixed\n")
    await wait(lambda: process.status()["active"] == "green", 2)
    assert process.state.switches[0].reason == "manual"
    assert process.status()["decision"] is None
    colours["green"].healthy = False
    await wait(lambda: process.status()["active"] == "blue", 5)


async def test_switch_to_an_unhealthy_colour_is_refused_and_reverted(
    setup: tuple[ProxyProcess, dict[str, Colour], Path],
) -> None:
    process, colours, config = setup
    colours["green"].healthy = False
    await wait(lambda: process.health.health("green") is U, 2)
    write_active(config, "green")
    await wait(lambda: bool(process.state.switches), 2)
    refusal = process.state.switches[0]
    assert (refusal.from_colour, refusal.to_colour, refusal.reason) == (
        "blue",
        "green",
        "refused: green unhealthy",
    )
    assert process.state.table is not None and process.state.table.active == "blue"
    assert active_in(config) == "green"  # the desired colour stays; the refusal holds it back
    assert process.status()["desired_reason"] == "refused: green unhealthy"
    assert all(colour == "blue" for _, colour in await live(process, 5))


async def test_error_rate_rolls_back_only_past_min_requests(
    setup: tuple[ProxyProcess, dict[str, Colour], Path],
) -> None:
    process, colours, config = setup
    write_active(config, "green")
    await wait(lambda: process.state.table is not None and process.state.table.active == "green", 2)
    colours["green"].failing = True  # health stays fine; live traffic gets 500s
    answers = await live(process, 2)
    assert answers == [(500, "green"), (500, "green")]
    await asyncio.sleep(0.3)  # several guard rounds: 2 requests are below minRequests=10
    assert process.state.table is not None and process.state.table.active == "green"
    await live(process, 8)
    await wait(lambda: process.state.table is not None and process.state.table.active == "blue", 2)
    assert process.state.switches[0].reason == "rollback: error rate 1.00 over 10 requests"
    assert active_in(config) == "green"
    assert process.status()["desired"] == "green"


async def test_switch_wait_on_a_file_says_served_or_refused(
    setup: tuple[ProxyProcess, dict[str, Colour], Path],
) -> None:
    process, colours, config = setup
    admin = f"--admin=127.0.0.1:{process.admin_port}"
    code, out, err = await run_cli("switch", "green", "--config", str(config), "--wait", admin)
    assert code == 0, err
    assert "green is served by every ready replica (1)" in out
    code, out, err = await run_cli("switch", "blue", "--config", str(config), "--wait", admin)
    assert code == 0, err
    colours["green"].healthy = False
    await wait(lambda: process.health.health("green") is U, 5)
    code, out, err = await run_cli("switch", "green", "--config", str(config), "--wait", admin)
    assert code == 4, (out, err)
    assert "not served: refused: green unhealthy" in err
    assert active_in(config) == "green"  # desired; the process holds it back, in memory
    assert process.status()["active"] == "blue"
    code, _, err = await run_cli("switch", "green", "--config", str(config), "--wait")
    assert code == 2 and "needs the running proxy: add --admin URL" in err
