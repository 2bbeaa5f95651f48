"""The leader gives its Lease up on SIGTERM, so decisions go on during a rolling update.

Real `bluegreen run` processes on a real kube-apiserver: the leader is sent SIGTERM, another
replica leads within about one retry period (not after the Lease duration), and a bad switch
made right after is still rolled back.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from controller.decision import read_decision
from controller.history import read_history
from controller.kube import ConfigMapRef, KubeClient
from tests.kubernetes.apiserver import KubeApiServer
from tests.kubernetes.colour_configmap import colour_configmap
from tests.support.colours import BreakableColour
from tests.support.net import free_port
from tests.support.waiting import wait_until_ready

LEASE_DURATION = 15  # the default: a hand-over that waited for expiry would take this long
RETRY_PERIOD = 1
MERGE_PATCH = "application/merge-patch+json"


@dataclass
class Replica:
    name: str
    process: asyncio.subprocess.Process
    admin: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@dataclass
class Cluster:
    server: KubeApiServer
    api: Any
    ref: ConfigMapRef
    colours: dict[str, BreakableColour]
    logs: Path
    replicas: list[Replica] = field(default_factory=list)

    async def start(self, name: str) -> Replica:
        admin_port = free_port()
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "controller.cli", "run"),
                *("--configmap", str(self.ref), "--kubeconfig", str(self.server.kubeconfig)),
                *("--listen", "127.0.0.1:0", "--admin-listen", f"127.0.0.1:{admin_port}"),
                *("--lease-duration", str(LEASE_DURATION)),
                *("--lease-renew-deadline", "10", "--lease-retry-period", str(RETRY_PERIOD)),
                *("--shutdown-delay", "1"),
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "HOSTNAME": name},  # the Lease holder's identity starts so
            )
        replica = Replica(name, process, f"http://127.0.0.1:{admin_port}", log)
        self.replicas.append(replica)
        await wait_until_ready(
            replica.admin, lambda: process.returncode is not None, replica.output
        )
        return replica

    async def holder(self) -> str:
        """The replica name that holds the Lease now, or "" when nobody does."""
        lease = await client.CoordinationV1Api(self.api).read_namespaced_lease(
            f"{self.ref.name}-leader", self.ref.namespace
        )
        holder = (lease.spec.holder_identity or "") if lease.spec else ""
        return holder.rpartition("-")[0]  # identity() appends a per-process suffix

    async def wait_for_holder(self, among: set[str], timeout: float) -> tuple[str, float]:
        started = time.monotonic()
        while (holder := await self.holder()) not in among:
            assert time.monotonic() - started < timeout, f"no leader among {among} in time"
            await asyncio.sleep(0.05)
        return holder, time.monotonic() - started

    async def patch_active(self, colour: str) -> None:
        await client.CoreV1Api(self.api).patch_namespaced_config_map(
            self.ref.name,
            self.ref.namespace,
            {"data": {"active": colour}},
            _content_type=MERGE_PATCH,  # type: ignore[call-arg]
        )


@pytest.fixture
async def cluster(kube_apiserver: KubeApiServer, tmp_path: Path) -> AsyncIterator[Cluster]:
    health = {
        "health.interval": "100ms",
        "health.timeout": "100ms",  # bounds a healthy probe; green fails by answering 503
        "health.failureThreshold": "2",
        "health.successThreshold": "1",
    }
    async with colour_configmap(kube_apiserver, "lease", health) as made_up:
        made = Cluster(kube_apiserver, made_up.api, made_up.ref, made_up.colours, tmp_path)
        try:
            yield made
        finally:
            for replica in made.replicas:
                if replica.process.returncode is None:
                    replica.process.kill()
                await asyncio.wait_for(replica.process.wait(), 10)


async def test_sigterm_hands_the_lease_over_and_a_bad_switch_is_still_rolled_back(
    cluster: Cluster,
) -> None:
    names = {"replica-a", "replica-b", "replica-c"}
    for name in sorted(names):
        await cluster.start(name)
    leader, _ = await cluster.wait_for_holder(names, 20)
    old = next(r for r in cluster.replicas if r.name == leader)

    cluster.colours["green"].healthy = False
    old.process.send_signal(signal.SIGTERM)
    successor, took = await cluster.wait_for_holder(names - {leader}, LEASE_DURATION)
    print(f"{successor} leads {took:.2f}s after SIGTERM to {leader}")
    # One retry period for the followers to notice the released Lease, plus one API round trip
    # each and load: far from the 15 s an expiry would have taken.
    assert took < RETRY_PERIOD + 2
    await cluster.patch_active("green")  # a bad switch, while the old leader still drains

    kube = KubeClient(cluster.api, cluster.ref)
    deadline = time.monotonic() + 5
    while (recorded := read_decision((version := await kube.read()).annotations)) is None:
        assert time.monotonic() < deadline, f"the bad switch was not undone: {version.data}"
        await asyncio.sleep(0.05)
    assert (recorded.desired, recorded.served) == ("green", "blue")
    assert version.data["active"] == "green"  # desired; the proxies never rewrite it
    decision = read_history(version.annotations)[0]
    assert decision["from"] == "green" and decision["to"] == "blue"
    assert decision["reason"].startswith(("refused: green", "rollback: green"))
    assert decision["by"].startswith(successor)

    assert await asyncio.wait_for(old.process.wait(), 20) == 0, old.output()
    assert "released the lease" in old.output()
