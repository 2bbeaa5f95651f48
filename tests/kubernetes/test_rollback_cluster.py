"""Rollback decided by one elected replica and written to the ConfigMap, on a real API server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client

from controller.decision import DECISION_ANNOTATION, ServedDecision, read_decision
from controller.health_state import Health
from controller.history import HISTORY_ANNOTATION, PREVIOUS_ANNOTATION
from controller.kube import ConfigMapRef, KubeClient
from controller.leader import LeaseSettings
from controller.process import ConfigMapSpec, ProxyProcess
from tests.kubernetes.apiserver import KubeApiServer
from tests.kubernetes.colour_configmap import colour_configmap
from tests.support.colours import BreakableColour as Colour
from tests.support.kube_process import Running, start_following, stop_all
from tests.support.process import run_cli
from tests.support.waiting import wait_for as wait
from tests.support.waiting import wait_for_async

LEASE = LeaseSettings(duration=3, renew_deadline=2, retry_period=1)
MERGE_PATCH = "application/merge-patch+json"


@dataclass
class Replicas:
    """Colour apps, one ConfigMap, and any number of proxy replicas following it."""

    server: KubeApiServer
    api: Any
    ref: ConfigMapRef
    colours: dict[str, Colour]
    running: Running = field(default_factory=list)
    background: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> ProxyProcess:
        return await start_following(
            ConfigMapSpec(self.ref, self.server.kubeconfig, LEASE), self.running
        )

    async def stop(self, process: ProxyProcess) -> None:
        for entry in list(self.running):
            if entry[0] is process:
                process.stop()
                await asyncio.wait_for(entry[1], 10)
                self.running.remove(entry)

    @property
    def processes(self) -> list[ProxyProcess]:
        return [process for process, _ in self.running]

    def leader(self) -> ProxyProcess | None:
        leaders = [p for p in self.processes if p.decides]
        assert len(leaders) <= 1, "two replicas lead at once"
        return leaders[0] if leaders else None

    async def patch_active(self, colour: str) -> None:
        await client.CoreV1Api(self.api).patch_namespaced_config_map(
            self.ref.name,
            self.ref.namespace,
            {"data": {"active": colour}},
            _content_type=MERGE_PATCH,  # type: ignore[call-arg]
        )

    async def configmap(self) -> tuple[str, list[dict[str, str]]]:
        version = await KubeClient(self.api, self.ref).read()
        history = json.loads(version.annotations.get(HISTORY_ANNOTATION, "[]"))
        return version.data["active"], history

    async def decision(self) -> ServedDecision | None:
        return read_decision((await KubeClient(self.api, self.ref).read()).annotations)

    async def events(self, reason: str) -> list[dict[str, Any]]:
        return [e for e in await KubeClient(self.api, self.ref).events() if e["reason"] == reason]


HEALTH = {
    "health.interval": "200ms",
    "health.timeout": "200ms",  # bounds a healthy probe: colours fail by answering 503 or 500
    "health.failureThreshold": "2",
    "health.successThreshold": "1",
}
# Every live request mirrored to green; the gate decides from 30 comparisons on.
SHADOW = {"shadow.percent": "100", "shadow.minRequests": "30", "shadow.maxMismatchRate": "0.1"}


@pytest.fixture
async def replicas(kube_apiserver: KubeApiServer) -> AsyncIterator[Replicas]:
    async with replicas_over(kube_apiserver, "rb", HEALTH) as made:
        yield made


@pytest.fixture
async def shadow_replicas(kube_apiserver: KubeApiServer) -> AsyncIterator[Replicas]:
    async with replicas_over(kube_apiserver, "sh", {**HEALTH, **SHADOW}) as made:
        yield made


@contextlib.asynccontextmanager
async def replicas_over(
    kube_apiserver: KubeApiServer, prefix: str, keys: dict[str, str]
) -> AsyncIterator[Replicas]:
    """Replicas over a fresh `colour_configmap` with `keys`; every one started is stopped."""
    async with colour_configmap(kube_apiserver, prefix, keys) as made_up:
        made = Replicas(kube_apiserver, made_up.api, made_up.ref, made_up.colours)
        try:
            yield made
        finally:
            for chore in made.background:
                chore.cancel()
            await stop_all(made.running)


async def decision_recorded(replicas: Replicas, desired: str, served: str) -> ServedDecision:
    """Wait until the ConfigMap records that `served` is served instead of `desired`.

    The write is asynchronous. `active` (the desired colour) is never written by the proxies.
    """
    deadline = time.monotonic() + 5
    while (decision := await replicas.decision()) is None:
        assert time.monotonic() < deadline, f"no decision recorded ({DECISION_ANNOTATION})"
        await asyncio.sleep(0.05)
    assert (decision.desired, decision.served) == (desired, served)
    assert (await replicas.configmap())[0] == desired
    return decision


async def healthy_everywhere(replicas: Replicas) -> None:
    await wait(
        lambda: all(p.health.health("green") is Health.HEALTHY for p in replicas.processes), 10
    )


async def test_three_replicas_roll_back_once(replicas: Replicas) -> None:
    for _ in range(3):
        await replicas.start()
    await wait(lambda: replicas.leader() is not None, 10)
    await healthy_everywhere(replicas)
    await replicas.patch_active("green")
    await wait(
        lambda: all(
            p.state.table is not None and p.state.table.active == "green"
            for p in replicas.processes
        ),
        5,
    )
    replicas.colours["green"].healthy = False
    took = await wait(
        lambda: all(
            p.state.table is not None and p.state.table.active == "blue" for p in replicas.processes
        ),
        5,
    )
    print(f"all three replicas back on blue {took * 1000:.0f} ms after green failed")
    assert took < 0.2 * 2 + 1.5  # interval x failureThreshold, plus the watch and a margin
    decision = await decision_recorded(replicas, "green", "blue")
    assert decision.reason.startswith("rollback: green unhealthy")
    assert decision.by == replicas.leader().source.leadership.identity  # type: ignore[union-attr]
    _, history = await replicas.configmap()
    rollbacks = [h for h in history if h["reason"].startswith("rollback:")]
    assert len(rollbacks) == 1  # exactly one write won
    assert rollbacks[0]["from"] == "green" and rollbacks[0]["to"] == "blue"
    await asyncio.sleep(1)
    assert len(await replicas.events("RolledBack")) == 1
    for process in replicas.processes:
        assert process.state.switches[0].reason.startswith("rollback: green unhealthy")
        assert process.guard.failed["green"].startswith("rollback: green unhealthy")
        status = process.status()
        assert (status["active"], status["desired"]) == ("blue", "green")
        assert status["desired_reason"] == decision.reason
    # No flip-flop: green recovers and stays idle.
    replicas.colours["green"].healthy = True
    await healthy_everywhere(replicas)
    await asyncio.sleep(1)
    assert all(p.status()["active"] == "blue" for p in replicas.processes)
    assert await replicas.decision() == decision


async def test_switch_to_an_unhealthy_colour_is_refused(replicas: Replicas) -> None:
    await replicas.start()
    await wait(lambda: replicas.leader() is not None, 10)
    replicas.colours["green"].healthy = False
    await wait(lambda: replicas.processes[0].health.health("green") is Health.UNHEALTHY, 5)
    await replicas.patch_active("green")
    await wait(lambda: bool(replicas.processes[0].state.switches), 5)
    assert replicas.processes[0].state.switches[0].reason == "refused: green unhealthy"

    await decision_recorded(replicas, "green", "blue")
    # The Event is recorded after the decision: wait for it, then make sure it stays one.
    await wait_for_async(
        lambda: _has_events(replicas, "TargetUnhealthy"),
        5,
    )
    await asyncio.sleep(1)  # every replica has had time to try recording it too
    assert len(await replicas.events("TargetUnhealthy")) == 1


async def test_switch_to_a_colour_whose_shadows_mismatch_is_refused(
    shadow_replicas: Replicas,
) -> None:
    replicas = shadow_replicas
    process = await replicas.start()
    await wait(lambda: replicas.leader() is not None, 10)
    await healthy_everywhere(replicas)
    replicas.colours["green"].failing_under = "/api"  # healthy, but wrong on /api
    async with aiohttp.ClientSession() as session:
        for n in range(30):
            path = "/api/cart" if n % 3 == 0 else "/"
            async with session.get(f"http://127.0.0.1:{process.proxy_port}{path}") as response:
                assert response.headers["X-Bluegreen-Colour"] == "blue"
    green = process.stats.shadow.colour("green")
    await wait(lambda: sum(green.counts.values()) >= 30, 5)
    await replicas.patch_active("green")
    await wait(lambda: bool(process.state.switches), 5)
    reason = "refused: green shadow mismatch 0.33 over 30 requests"
    assert process.state.switches[0].reason == reason
    decision = await decision_recorded(replicas, "green", "blue")  # `active` stays green
    assert decision.reason == reason
    _, history = await replicas.configmap()
    assert history[0]["reason"] == reason
    await wait_for_async(lambda: _has_events(replicas, "ShadowMismatch"), 5)
    events = await replicas.events("ShadowMismatch")
    assert len(events) == 1 and reason in events[0]["message"]
    assert process.state.table is not None and process.state.table.active == "blue"


async def _has_events(replicas: Replicas, reason: str) -> bool:
    return bool(await replicas.events(reason))


async def test_a_new_leader_takes_over_and_still_rolls_back(replicas: Replicas) -> None:
    first = await replicas.start()
    await wait(lambda: first.decides, 10)
    second = await replicas.start()
    await replicas.stop(first)  # the leader goes away without handing over
    took = await wait(lambda: second.decides, LEASE.duration + 3)
    print(f"new leader after {took:.1f}s (lease duration {LEASE.duration:g}s)")
    await healthy_everywhere(replicas)
    await replicas.patch_active("green")
    await wait(lambda: second.state.table is not None and second.state.table.active == "green", 5)
    replicas.colours["green"].healthy = False
    await wait(lambda: second.state.table is not None and second.state.table.active == "blue", 5)
    decision = await decision_recorded(replicas, "green", "blue")
    assert second.source.leadership is not None  # type: ignore[attr-defined]
    assert decision.by == second.source.leadership.identity  # type: ignore[attr-defined]


async def sample_for(replicas: Replicas, seconds: float, every: float = 0.005) -> Counter[str]:
    """Send one live request to every replica each `every` seconds; count who answered."""
    answered: Counter[str] = Counter()
    ports = [p.proxy_port for p in replicas.processes]
    async with aiohttp.ClientSession() as session:

        async def one(port: int) -> None:
            async with session.get(f"http://127.0.0.1:{port}/") as response:
                await response.read()
                answered[f"{response.status} {response.headers['X-Bluegreen-Colour']}"] += 1

        loop = asyncio.get_running_loop()
        start = loop.time()
        tick = 0
        while loop.time() - start < seconds:
            await asyncio.gather(*(one(port) for port in ports))
            tick += 1
            await asyncio.sleep(max(0.0, start + tick * every - loop.time()))
    return answered


async def unhealthy_everywhere(replicas: Replicas) -> None:
    await wait(
        lambda: all(p.health.health("green") is Health.UNHEALTHY for p in replicas.processes), 10
    )


async def test_no_replica_serves_a_refused_colour(replicas: Replicas) -> None:
    """Three replicas, green failing its checks: from the PATCH to 2 s after, no green at all."""
    for _ in range(3):
        await replicas.start()
    await wait(lambda: replicas.leader() is not None, 10)
    replicas.colours["green"].healthy = False
    await unhealthy_everywhere(replicas)
    sampling = asyncio.create_task(sample_for(replicas, 2.0))
    await replicas.patch_active("green")
    answered = await sampling
    print(f"answers from the PATCH to 2 s after: {dict(answered)}")
    assert set(answered) == {"200 blue"}, answered
    assert sum(answered.values()) > 3 * 100  # the sampler kept its pace (~400 rounds)
    # Between two samples too: no replica ever put green in its routing table.
    for process in replicas.processes:
        assert [(r.from_colour, r.to_colour, r.reason) for r in process.state.switches] == [
            ("blue", "green", "refused: green unhealthy")
        ]
    await decision_recorded(replicas, "green", "blue")  # the leader, and only it, recorded it
    await wait_for_async(lambda: _has_events(replicas, "TargetUnhealthy"), 5)
    await asyncio.sleep(1)
    assert len(await replicas.events("TargetUnhealthy")) == 1
    _, history = await replicas.configmap()
    assert [h["reason"] for h in history] == ["refused: green unhealthy"]
    for process in replicas.processes:
        assert process.hold is None  # the recorded decision took over every follower's hold
        assert process.guard.failed["green"] == "refused: green unhealthy"
        assert process.state.switches[0].reason == "refused: green unhealthy"
        status = process.status()
        assert (status["active"], status["desired"], status["desired_reason"]) == (
            "blue",
            "green",
            "refused: green unhealthy",
        )


async def hold_the_lease_elsewhere(replicas: Replicas) -> None:
    """Hold the Lease, renewed every 0.3 s, for a holder that is no replica: none of them decides.

    Candidates count the Lease duration from the last change they observed, so it is renewed
    until the test ends (the task is cancelled with the test's event loop).
    """
    leases = client.CoordinationV1Api(replicas.api)
    name, namespace = f"{replicas.ref.name}-leader", replicas.ref.namespace
    now = datetime.now(UTC)
    spec = client.V1LeaseSpec(
        holder_identity="elsewhere", lease_duration_seconds=3, acquire_time=now, renew_time=now
    )
    await leases.create_namespaced_lease(
        namespace, client.V1Lease(metadata=client.V1ObjectMeta(name=name), spec=spec)
    )

    async def renew() -> None:
        while True:
            await asyncio.sleep(0.3)
            await leases.patch_namespaced_lease(
                name,
                namespace,
                {"spec": {"renewTime": datetime.now(UTC).isoformat(timespec="microseconds")}},
                _content_type=MERGE_PATCH,  # type: ignore[call-arg]
            )

    renewing = asyncio.create_task(renew())
    replicas.background.append(renewing)


async def test_followers_act_on_their_own_checks_without_a_leader(replicas: Replicas) -> None:
    """With no replica leading, each still refuses and leaves an unhealthy colour by itself,
    writes nothing, and serves the config's colour again once its own checks say healthy."""
    await hold_the_lease_elsewhere(replicas)
    for _ in range(3):
        await replicas.start()
    await asyncio.sleep(1.5)  # more than a retry period: nobody took the Lease
    assert replicas.leader() is None
    green = replicas.colours["green"]

    # A refused switch: every replica stays on blue, the ConfigMap keeps saying green.
    green.healthy = False
    await unhealthy_everywhere(replicas)
    sampling = asyncio.create_task(sample_for(replicas, 1.0))
    await replicas.patch_active("green")
    assert set(await sampling) == {"200 blue"}
    for process in replicas.processes:
        status = process.status()
        assert (status["active"], status["desired"]) == ("blue", "green")
        assert status["desired_reason"] == (
            "refused: green unhealthy (this replica's health checks)"
        )
        gauges = {
            name: process.registry.get_sample_value(name, {"colour": "green"})
            for name in ("bluegreen_desired_colour", "bluegreen_active_colour")
        }
        assert gauges == {"bluegreen_desired_colour": 1, "bluegreen_active_colour": 0}
    green.healthy = True  # this replica's checks agree again: serve what the config says
    await wait(lambda: all(p.status()["active"] == "green" for p in replicas.processes), 5)

    # After the switch, green turns unhealthy: each replica leaves it on its own checks.
    green.healthy = False
    took = await wait(lambda: all(p.status()["active"] == "blue" for p in replicas.processes), 5)
    print(f"every follower left green {took * 1000:.0f} ms after its checks began to fail")
    assert took < 0.2 * 2 + 0.2 + 0.5  # interval x failureThreshold, one probe's lag, margin
    for process in replicas.processes:
        assert process.status()["desired_reason"] == (
            "rollback: green unhealthy (active health check) (this replica's health checks)"
        )
    assert await replicas.configmap() == ("green", [])  # nothing written
    assert await replicas.events("RolledBack") == []
    assert await replicas.events("TargetUnhealthy") == []


def target(replicas: Replicas) -> list[str]:
    return ["--configmap", str(replicas.ref), "--kubeconfig", str(replicas.server.kubeconfig)]


def admins(replicas: Replicas) -> list[str]:
    return [f"--admin=127.0.0.1:{p.admin_port}" for p in replicas.processes]


async def test_switch_wait_exits_0_when_served_and_4_with_the_reason_when_refused(
    replicas: Replicas,
) -> None:
    for _ in range(2):
        await replicas.start()
    await wait(lambda: replicas.leader() is not None, 10)
    await healthy_everywhere(replicas)
    code, out, err = await run_cli(
        "switch", "green", *target(replicas), "--wait", *admins(replicas)
    )
    assert code == 0, err
    assert "switched blue -> green" in out
    assert "green is served by every ready replica (2)" in out
    assert all(p.status()["active"] == "green" for p in replicas.processes)

    code, out, err = await run_cli("switch", "blue", *target(replicas), "--wait", *admins(replicas))
    assert code == 0, err
    replicas.colours["green"].healthy = False
    await unhealthy_everywhere(replicas)
    code, out, err = await run_cli(
        "switch", "green", *target(replicas), "--wait", "--timeout", "10s", *admins(replicas)
    )
    assert code == 4, (out, err)
    assert "switched blue -> green" in out  # the write happened; users never got green
    assert "not served: refused: green unhealthy (by " in err
    assert all(p.status()["active"] == "blue" for p in replicas.processes)


async def test_switch_wait_reads_the_replicas_behind_the_admin_service(
    replicas: Replicas,
) -> None:
    """Without --admin, the replicas are the ready pods of the admin Service's Endpoints."""
    await replicas.start()
    code, _, err = await run_cli("switch", "green", *target(replicas), "--wait", "--timeout", "1s")
    assert code == 1
    assert f"no Service {replicas.ref.namespace}/bluegreen-admin to find the replicas by" in err
    await client.CoreV1Api(replicas.api).create_namespaced_endpoints(
        replicas.ref.namespace,
        client.V1Endpoints(
            metadata=client.V1ObjectMeta(name="bluegreen-admin"),
            subsets=[
                client.V1EndpointSubset(
                    not_ready_addresses=[
                        client.V1EndpointAddress(
                            ip="10.0.0.9",
                            target_ref=client.V1ObjectReference(kind="Pod", name="starting"),
                        )
                    ],
                    ports=[client.CoreV1EndpointPort(name="admin", port=9090)],
                )
            ],
        ),
    )
    code, _, err = await run_cli("switch", "blue", *target(replicas), "--wait", "--timeout", "1s")
    assert code == 1
    assert "blue is not served by every ready replica after 1s: no ready replica was found" in err


async def test_rollback_after_a_kubectl_patch_returns_to_the_colour_served_before(
    replicas: Replicas,
) -> None:
    process = await replicas.start()
    await wait(lambda: process.decides, 10)
    await healthy_everywhere(replicas)
    await replicas.patch_active("green")  # kubectl patch: no history, no previous colour
    deadline = time.monotonic() + 5
    while (await KubeClient(replicas.api, replicas.ref).read()).annotations.get(
        PREVIOUS_ANNOTATION
    ) != "blue":
        assert time.monotonic() < deadline, "the leader never recorded the previous colour"
        await asyncio.sleep(0.05)
    _, history = await replicas.configmap()
    assert history[0]["from"] == "blue" and history[0]["to"] == "green"
    assert history[0]["reason"] == "manual"
    assert history[0]["by"].startswith("observed by ")
    code, out, err = await run_cli("rollback", *target(replicas), "--wait", *admins(replicas))
    assert code == 0, err
    assert "switched green -> blue" in out
    assert (await replicas.configmap())[0] == "blue"
    assert process.status()["active"] == "blue"
