"""Rollback decided by one elected replica and written to the ConfigMap, on a real API server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes_asyncio import client

from controller.health_state import Health
from controller.history import HISTORY_ANNOTATION
from controller.kube import ConfigMapRef, KubeClient
from controller.leader import LeaseSettings
from controller.process import ConfigMapSpec, Endpoint, ProxyProcess
from tests.kubernetes.apiserver import KubeApiServer
from tests.kubernetes.colour_configmap import colour_configmap
from tests.support.colours import BreakableColour as Colour
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
    running: list[tuple[ProxyProcess, asyncio.Task[None]]] = field(default_factory=list)

    async def start(self) -> ProxyProcess:
        process = ProxyProcess(
            ConfigMapSpec(self.ref, self.server.kubeconfig, LEASE),
            Endpoint("127.0.0.1", 0),
            Endpoint("127.0.0.1", 0),
        )
        task = asyncio.create_task(process.run())
        self.running.append((process, task))
        await wait(lambda: process.state.table is not None and process.proxy_port != 0, 20)
        return process

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

    async def events(self, reason: str) -> list[dict[str, Any]]:
        return [e for e in await KubeClient(self.api, self.ref).events() if e["reason"] == reason]


@pytest.fixture
async def replicas(kube_apiserver: KubeApiServer) -> AsyncIterator[Replicas]:
    health = {
        "health.interval": "200ms",
        "health.timeout": "100ms",
        "health.failureThreshold": "2",
        "health.successThreshold": "1",
    }
    async with colour_configmap(kube_apiserver, "rb", health) as made_up:
        made = Replicas(kube_apiserver, made_up.api, made_up.ref, made_up.colours)
        try:
            yield made
        finally:
            for process, task in made.running:
                process.stop()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 10)


async def configmap_says(replicas: Replicas, colour: str) -> None:
    """Wait until the ConfigMap's `active` is `colour` (the rollback write is asynchronous)."""
    deadline = time.monotonic() + 5
    while (await replicas.configmap())[0] != colour:
        assert time.monotonic() < deadline, f"the ConfigMap never said {colour}"
        await asyncio.sleep(0.05)


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
    await configmap_says(replicas, "blue")
    _, history = await replicas.configmap()
    rollbacks = [h for h in history if h["reason"].startswith("rollback:")]
    assert len(rollbacks) == 1  # exactly one write won
    assert rollbacks[0]["from"] == "green" and rollbacks[0]["to"] == "blue"
    await asyncio.sleep(1)
    assert len(await replicas.events("RolledBack")) == 1
    for process in replicas.processes:
        assert process.state.switches[0].reason.startswith("rollback: green unhealthy")
        assert process.guard.failed["green"].startswith("rollback: green unhealthy")
    # No flip-flop: green recovers and stays idle.
    replicas.colours["green"].healthy = True
    await healthy_everywhere(replicas)
    await asyncio.sleep(1)
    assert (await replicas.configmap())[0] == "blue"


async def test_switch_to_an_unhealthy_colour_is_refused(replicas: Replicas) -> None:
    await replicas.start()
    await wait(lambda: replicas.leader() is not None, 10)
    replicas.colours["green"].healthy = False
    await wait(lambda: replicas.processes[0].health.health("green") is Health.UNHEALTHY, 5)
    await replicas.patch_active("green")
    await wait(lambda: bool(replicas.processes[0].state.switches), 5)
    assert replicas.processes[0].state.switches[0].reason == "refused: green unhealthy"

    await configmap_says(replicas, "blue")
    # The Event is recorded after the write-back: wait for it, then make sure it stays one.
    await wait_for_async(
        lambda: _has_events(replicas, "TargetUnhealthy"),
        5,
    )
    await asyncio.sleep(1)  # every replica has had time to try recording it too
    assert len(await replicas.events("TargetUnhealthy")) == 1


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
    await configmap_says(replicas, "blue")
