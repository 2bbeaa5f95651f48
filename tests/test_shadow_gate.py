"""The shadow gate: the pure preflight as a table, then file mode end to end.

A wrong idle colour (500 under /api, 200 elsewhere) shows its mismatches on /api and the switch
to it is refused with the reason; a correct one switches; too few comparisons allow the switch
and say so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from controller.file_source import write_active
from controller.health_state import Health
from controller.process import ProxyProcess
from controller.rollback import Action, Policy, ShadowEvidence, preflight, shadow_note
from controller.status_report import render_text, with_served
from tests.support.colours import BreakableColour as Colour
from tests.support.colours import breakable_config
from tests.support.in_process import breakable_colours, in_process_proxy
from tests.support.waiting import wait_for as wait

H, U, X = Health.HEALTHY, Health.UNHEALTHY, Health.UNKNOWN
ON = Policy(enabled=True)


def evidence(compared: int, rate: float) -> ShadowEvidence:
    return ShadowEvidence(compared=compared, bad_rate=rate, max_rate=0.05, min_requests=200)


@pytest.mark.parametrize(
    ("health", "shadow", "policy", "reason"),
    [
        (H, evidence(200, 0.31), ON, "refused: green shadow mismatch 0.31 over 200 requests"),
        (X, evidence(500, 0.06), ON, "refused: green shadow mismatch 0.06 over 500 requests"),
        (H, evidence(500, 0.05), ON, ""),  # at the limit: allowed
        (H, evidence(199, 1.0), ON, ""),  # too few comparisons
        (H, evidence(0, 0.0), ON, ""),
        (H, None, ON, ""),
        # Unhealthy first: the health check says more than the comparison.
        (U, evidence(200, 0.9), ON, "refused: green unhealthy"),
        (H, evidence(200, 0.9), Policy(enabled=False), ""),
    ],
)
def test_preflight_with_shadow_evidence(
    health: Health, shadow: ShadowEvidence | None, policy: Policy, reason: str
) -> None:
    decision = preflight("green", health, policy, shadow)
    assert decision.reason == reason
    assert decision.action is (Action.REFUSE if reason else Action.NOTHING)
    if reason.startswith("refused: green shadow"):
        assert decision.kind == "shadow_mismatch"


def test_shadow_note_says_too_few_or_passed() -> None:
    assert shadow_note("green", evidence(12, 1.0)) == (
        "shadow gate: green allowed with too few comparisons (12, shadow.minRequests is 200)"
    )
    assert shadow_note("green", evidence(300, 0.01)) == (
        "shadow gate: green passed, mismatch 0.01 over 300 requests (limit 0.05)"
    )


GATE = "shadow.percent: 100\nshadow.minRequests: 30\nshadow.maxMismatchRate: 0.1\n"


@pytest.fixture
async def setup(
    tmp_path: Path,
) -> AsyncIterator[tuple[ProxyProcess, dict[str, Colour], Path]]:
    async with breakable_colours() as colours:
        config = tmp_path / "bluegreen.yaml"
        config.write_text(breakable_config(colours, "blue", GATE))
        async with in_process_proxy(config) as process:
            yield process, colours, config


def active_in(config: Path) -> str:
    return str(yaml.safe_load(config.read_text())["active"])


def served(process: ProxyProcess) -> str | None:
    return process.state.table.active if process.state.table is not None else None


async def traffic(process: ProxyProcess, count: int) -> None:
    """`count` live GETs, one in three under /api; every answer is blue's."""
    async with aiohttp.ClientSession() as session:
        for n in range(count):
            path = "/api/orders" if n % 3 == 0 else "/"
            url = f"http://127.0.0.1:{process.proxy_port}{path}?n={n}"
            async with session.get(url) as response:
                assert response.status == 200
                assert response.headers["X-Bluegreen-Colour"] == "blue"
    green = process.stats.shadow.colour("green")
    await wait(lambda: sum(green.counts.values()) >= count, 5)


async def admin_status(process: ProxyProcess) -> dict[str, object]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{process.admin_port}/status") as response,
    ):
        document: dict[str, object] = await response.json()
        return document


async def test_a_wrong_idle_colour_is_refused_with_the_reason(
    setup: tuple[ProxyProcess, dict[str, Colour], Path],
) -> None:
    process, colours, config = setup
    colours["green"].failing_under = "/api"
    await traffic(process, 60)
    status = await admin_status(process)
    shadow = status["shadow"]
    assert isinstance(shadow, dict)
    green = shadow["colours"]["green"]
    assert green["window"]["compared"] == 60
    assert green["window"]["error"] == 20
    assert green["mismatching_paths"] == [
        {
            "path": "/api/orders",
            "count": 20,
            "outcome": "error",
            "what": "500",
            "live_status": 200,
            "shadow_status": 500,
        }
    ]
    write_active(config, "green")
    await wait(lambda: bool(process.state.switches), 2)
    refusal = process.state.switches[0]
    reason = "refused: green shadow mismatch 0.33 over 60 requests"
    assert (refusal.from_colour, refusal.to_colour, refusal.reason) == ("blue", "green", reason)
    assert served(process) == "blue"
    # The desired colour stays in the file, as for an unhealthy one; the refusal holds it back.
    assert active_in(config) == "green"
    assert (await admin_status(process))["desired_reason"] == reason
    assert process.guard.failed["green"] == reason
    assert process.metrics.rollbacks.labels("shadow_mismatch")._value.get() == 1
    status = await admin_status(process)
    switches = status["switches"]
    assert isinstance(switches, list) and switches[0]["reason"] == reason
    # What `bluegreen status --admin` prints of the running proxy.
    text = render_text(with_served({"config": str(config), "desired": "blue", "running": status}))
    assert "green       shadow 60 compared in 600s: mismatch or error 0.33" in text
    assert "20 x /api/orders  live 200, green 500 (500)" in text


async def test_a_correct_idle_colour_switches(
    setup: tuple[ProxyProcess, dict[str, Colour], Path],
) -> None:
    process, _, config = setup
    await traffic(process, 45)
    write_active(config, "green")
    await wait(lambda: served(process) == "green", 2)
    assert process.state.switches[0].reason == "manual"
    assert process.shadow_gate == (
        "shadow gate: green passed, mismatch 0.00 over 45 requests (limit 0.1)"
    )


async def test_too_few_comparisons_allow_the_switch_and_say_so(
    setup: tuple[ProxyProcess, dict[str, Colour], Path],
) -> None:
    process, colours, config = setup
    colours["green"].failing_under = "/api"
    await traffic(process, 9)
    write_active(config, "green")
    await wait(lambda: served(process) == "green", 2)
    note = "shadow gate: green allowed with too few comparisons (9, shadow.minRequests is 30)"
    assert process.shadow_gate == note
    gate = (await admin_status(process))["shadow"]
    assert isinstance(gate, dict) and gate["gate"]["last"] == note
