"""Desired state and served state kept apart, on a real API server (issue 12 item 2).

`data.active` is desired and owned by people and Git; the proxies record what they decided in
the annotation `bluegreen.io/decision` and never write `data`. So a GitOps controller that keeps
applying the desired `active: green` (server-side apply under its own field manager, as Argo CD
and Flux do) never sends users back to a colour that was rolled back.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes_asyncio import client

from controller.decision import DECISION_ANNOTATION
from controller.history import HISTORY_ANNOTATION, PREVIOUS_ANNOTATION
from controller.kube import KubeClient
from tests.kubernetes.apiserver import KubeApiServer
from tests.kubernetes.test_rollback_cluster import (
    HEALTH,
    MERGE_PATCH,
    Replicas,
    admins,
    decision_recorded,
    healthy_everywhere,
    replicas_over,
    sample_for,
    target,
    unhealthy_everywhere,
)
from tests.support.process import run_cli as bluegreen
from tests.support.waiting import wait_for as wait

APPLY_PATCH = "application/apply-patch+yaml"
GITOPS_MANAGER = "argocd-controller"  # the field manager a GitOps controller applies with


@pytest.fixture
async def gitops(kube_apiserver: KubeApiServer) -> AsyncIterator[Replicas]:
    """Replicas over a ConfigMap whose error-rate rollback needs only 6 live requests."""
    keys = {**HEALTH, "rollback.minRequests": "6"}
    async with replicas_over(kube_apiserver, "gitops", keys) as made:
        yield made


async def desired_data(replicas: Replicas, **changes: str) -> dict[str, str]:
    """The ConfigMap's data as Git holds it, with `changes` (e.g. active="green")."""
    data = dict((await KubeClient(replicas.api, replicas.ref).read()).data)
    return {**data, **changes}


async def server_side_apply(replicas: Replicas, data: dict[str, str]) -> None:
    """Apply the ConfigMap as a GitOps controller does: only data, its own field manager."""
    manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": replicas.ref.name, "namespace": replicas.ref.namespace},
        "data": data,
    }
    await client.CoreV1Api(replicas.api).patch_namespaced_config_map(
        replicas.ref.name,
        replicas.ref.namespace,
        manifest,
        field_manager=GITOPS_MANAGER,
        force=True,  # take the fields over from whoever created the ConfigMap, as Argo CD does
        _content_type=APPLY_PATCH,  # type: ignore[call-arg]
    )


def serving(replicas: Replicas, colour: str) -> bool:
    return all(p.status()["active"] == colour for p in replicas.processes)


async def rollbacks_in_history(replicas: Replicas) -> list[dict[str, str]]:
    _, history = await replicas.configmap()
    return [h for h in history if h["reason"].startswith("rollback:")]


async def test_a_gitops_controller_re_applying_green_never_undoes_the_rollback(
    gitops: Replicas,
) -> None:
    for _ in range(3):
        await gitops.start()
    await wait(lambda: gitops.leader() is not None, 10)
    await healthy_everywhere(gitops)
    green_in_git = await desired_data(gitops, active="green")
    await server_side_apply(gitops, green_in_git)  # the release, synced from Git
    await wait(lambda: serving(gitops, "green"), 5)

    # Green passes its health checks but answers users with 500s: the error rate rolls it back.
    gitops.colours["green"].failing = True
    rolled_back = asyncio.create_task(wait(lambda: serving(gitops, "blue"), 10))
    while not rolled_back.done():
        await sample_for(gitops, 0.1, every=0.02)
    await rolled_back
    decision = await decision_recorded(gitops, "green", "blue")
    assert decision.reason.startswith("rollback: error rate")
    deadline = asyncio.get_running_loop().time() + 5
    while not await gitops.events("RolledBack"):
        assert asyncio.get_running_loop().time() < deadline, "no RolledBack Event"
        await asyncio.sleep(0.05)
    switches = [len(p.state.switches) for p in gitops.processes]

    # Self-heal: the GitOps controller applies the desired state again and again for 10 s.
    sampling = asyncio.create_task(sample_for(gitops, 10.5, every=0.02))
    for _ in range(10):
        await server_side_apply(gitops, green_in_git)
        await asyncio.sleep(1)
    answered = await sampling
    print(f"answers while green was re-applied 10 times: {dict(answered)}")
    assert set(answered) == {"200 blue"}, answered
    assert sum(answered.values()) > 3 * 200  # the sampler kept going all along

    version = await KubeClient(gitops.api, gitops.ref).read()
    assert version.data["active"] == "green"  # desired, as in Git: no drift to report
    assert await gitops.decision() == decision  # the same decision, never rewritten
    assert len(await rollbacks_in_history(gitops)) == 1
    assert len(await gitops.events("RolledBack")) == 1
    assert [len(p.state.switches) for p in gitops.processes] == switches  # no new switch
    for process in gitops.processes:
        status = process.status()
        assert (status["active"], status["desired"]) == ("blue", "green")
        assert status["desired_reason"] == decision.reason
        assert status["decision"]["fingerprint"] == decision.fingerprint
        gauges = {
            name: process.registry.get_sample_value(name, {"colour": "green"})
            for name in ("bluegreen_desired_colour", "bluegreen_active_colour")
        }
        assert gauges == {"bluegreen_desired_colour": 1, "bluegreen_active_colour": 0}
    # The fields the GitOps controller applied are its own; the decision annotation is not.
    managed = {entry["manager"]: entry for entry in await managed_fields(gitops)}
    assert "f:active" in json.dumps(managed[GITOPS_MANAGER]["fieldsV1"])
    assert DECISION_ANNOTATION not in json.dumps(managed[GITOPS_MANAGER]["fieldsV1"])

    # A new desired config from Git (a fixed release: new revision) ends the hold.
    gitops.colours["green"].failing = False
    await server_side_apply(gitops, {**green_in_git, "revision": "v2-fixed"})
    await wait(lambda: serving(gitops, "green"), 5)


async def managed_fields(replicas: Replicas) -> list[dict[str, Any]]:
    raw: Any = await client.CoreV1Api(replicas.api).read_namespaced_config_map(
        replicas.ref.name, replicas.ref.namespace, _preload_content=False
    )
    document: dict[str, Any] = json.loads(await raw.read())
    fields: list[dict[str, Any]] = document["metadata"]["managedFields"]
    return fields


async def test_retry_tries_the_same_desired_config_again_and_a_later_bad_switch_rolls_back(
    gitops: Replicas,
) -> None:
    for _ in range(2):
        await gitops.start()
    await wait(lambda: gitops.leader() is not None, 10)
    await healthy_everywhere(gitops)
    green = gitops.colours["green"]
    await gitops.patch_active("green")
    await wait(lambda: serving(gitops, "green"), 5)
    green.healthy = False
    await wait(lambda: serving(gitops, "blue"), 5)
    await decision_recorded(gitops, "green", "blue")

    # Fixed, but nothing changed in the desired config: still held, and a plain switch says so.
    green.healthy = True
    await healthy_everywhere(gitops)
    await asyncio.sleep(0.5)
    assert serving(gitops, "blue")
    code, _, err = await bluegreen("switch", "green", *target(gitops))
    assert code == 2, err
    assert "green is already desired but not served: rollback: green unhealthy" in err
    assert "bluegreen switch green --retry" in err
    code, out, err = await bluegreen("status", *target(gitops), "-o", "json")
    assert code == 4, err  # the served colour is not the desired one
    status = json.loads(out)
    assert (status["desired"], status["active"]) == ("green", "blue")
    assert status["served_reason"].startswith("rollback: green unhealthy")

    code, out, err = await bluegreen(
        "switch", "green", "--retry", *target(gitops), "--wait", *admins(gitops)
    )
    assert code == 0, (out, err)
    assert "switched blue -> green" in out
    assert "green is served by every ready replica (2)" in out
    assert await gitops.decision() is None
    _, history = await gitops.configmap()
    assert (history[0]["from"], history[0]["to"], history[0]["reason"]) == (
        "blue",
        "green",
        "manual",
    )

    # The retried switch is watched like any other: green failing again is rolled back again.
    green.healthy = False
    await wait(lambda: serving(gitops, "blue"), 5)
    await decision_recorded(gitops, "green", "blue")
    assert len(await rollbacks_in_history(gitops)) == 2
    deadline = asyncio.get_running_loop().time() + 5
    while len(await gitops.events("RolledBack")) != 2:
        assert asyncio.get_running_loop().time() < deadline, "the second RolledBack Event"
        await asyncio.sleep(0.05)


async def test_a_configmap_written_by_the_previous_version_is_read_as_it_was(
    gitops: Replicas,
) -> None:
    """Before this model, a rollback wrote `active: blue` back, with the reason in the history."""
    now = datetime.now(UTC).replace(microsecond=0)
    history = [
        {
            "from": "green",
            "to": "blue",
            "reason": "rollback: green unhealthy (active health check)",
            "at": (now - timedelta(minutes=5)).isoformat(),
            "by": "bluegreen-6c8f9-old",
        },
        {
            "from": "blue",
            "to": "green",
            "reason": "manual",
            "at": (now - timedelta(minutes=6)).isoformat(),
            "by": "ops@laptop",
        },
    ]
    await client.CoreV1Api(gitops.api).patch_namespaced_config_map(
        gitops.ref.name,
        gitops.ref.namespace,
        {
            "metadata": {
                "annotations": {
                    HISTORY_ANNOTATION: json.dumps(history, separators=(",", ":")),
                    PREVIOUS_ANNOTATION: "green",
                }
            },
            "data": {"active": "blue"},
        },
        _content_type=MERGE_PATCH,  # type: ignore[call-arg]
    )
    before = await KubeClient(gitops.api, gitops.ref).read()
    for _ in range(2):
        await gitops.start()
    await wait(lambda: gitops.leader() is not None, 10)
    await healthy_everywhere(gitops)
    for process in gitops.processes:
        status = process.status()
        assert (status["active"], status["desired"], status["decision"]) == ("blue", "blue", None)
    code, out, err = await bluegreen("status", *target(gitops), "-o", "json")
    assert code == 0, err
    shown = json.loads(out)
    assert (shown["desired"], shown["active"], shown["decision"]) == ("blue", "blue", None)
    assert [(s["from"], s["to"]) for s in shown["switches"]] == [
        ("green", "blue"),
        ("blue", "green"),
    ]
    await asyncio.sleep(1)
    after = await KubeClient(gitops.api, gitops.ref).read()
    assert after.resource_version == before.resource_version  # nothing to migrate, nothing written

    # The new model from the first decision on: the history goes on, `active` stays desired.
    gitops.colours["green"].healthy = False
    await unhealthy_everywhere(gitops)
    await gitops.patch_active("green")
    decision = await decision_recorded(gitops, "green", "blue")
    assert decision.reason == "refused: green unhealthy"
    _, history_now = await gitops.configmap()
    assert [h["reason"] for h in history_now] == [
        "refused: green unhealthy",
        "rollback: green unhealthy (active health check)",
        "manual",
    ]
    assert serving(gitops, "blue")
