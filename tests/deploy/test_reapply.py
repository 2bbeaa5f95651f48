"""`kubectl apply -k deploy/examples/myapp` again after a rollback changes nothing served.

The overlay is the desired state (a person's copy of it, after the release, says `active:
green`); the proxies' rollback is recorded in an annotation the overlay never had, which a
client-side `kubectl apply` (a three-way merge against its last-applied-configuration) leaves
alone. So re-applying the overlay does not send users back to the colour that was rolled back.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import yaml

from controller.kube import ConfigMapRef, KubeClient, load_api_client
from tests.deploy.manifests import Document, debian_kubectl, render
from tests.deploy.test_apply import apply, delete, for_kube_1_20, kubectl
from tests.kubernetes.apiserver import KubeApiServer
from tests.kubernetes.test_rollback_cluster import (
    HEALTH,
    Replicas,
    decision_recorded,
    healthy_everywhere,
    sample_for,
)
from tests.support.colours import BreakableColour
from tests.support.in_process import breakable_colours
from tests.support.kube_process import stop_all
from tests.support.waiting import wait_for as wait


def overlay(documents: list[Document], colours: dict[str, BreakableColour], active: str) -> str:
    """The rendered overlay as a person's copy has it: the upstreams on loopback, `active`."""
    edited = []
    for document in documents:
        if document["kind"] == "ConfigMap" and document["metadata"]["name"] == "bluegreen":
            data = {**document["data"], **HEALTH, "active": active}
            data.update({f"upstream.{name}": colour.url for name, colour in colours.items()})
            edited.append({**document, "data": data})
        else:
            edited.append(document)
    return yaml.safe_dump_all(edited, sort_keys=False)


@pytest.fixture
async def colours() -> AsyncIterator[dict[str, BreakableColour]]:
    async with breakable_colours() as made:
        yield made


async def test_re_applying_the_example_after_a_rollback_changes_nothing_served(
    kube_apiserver: KubeApiServer, colours: dict[str, BreakableColour]
) -> None:
    documents = for_kube_1_20(render("examples/myapp", debian_kubectl()).documents)
    namespace = f"reapply-{uuid.uuid4().hex[:8]}"
    kubeconfig = kube_apiserver.kubeconfig

    def kubectl_apply(active: str) -> None:
        stream = overlay(documents, colours, active)
        kubectl(kubeconfig, "apply", "--namespace", namespace, "-f", "-", stdin=stream)

    await asyncio.to_thread(apply, kube_apiserver, namespace, documents)
    api = await load_api_client(kubeconfig)
    replicas = Replicas(kube_apiserver, api, ConfigMapRef(namespace, "bluegreen"), dict(colours))
    try:
        await asyncio.to_thread(kubectl_apply, "blue")  # the overlay as first applied
        for _ in range(2):
            await replicas.start()
        await wait(lambda: replicas.leader() is not None, 10)
        await healthy_everywhere(replicas)

        await asyncio.to_thread(kubectl_apply, "green")  # the release: green in the overlay
        await wait(lambda: all(p.status()["active"] == "green" for p in replicas.processes), 5)
        colours["green"].failing = True  # every page 500, `/` (the shipped health.path) too
        await wait(lambda: all(p.status()["active"] == "blue" for p in replicas.processes), 5)
        decision = await decision_recorded(replicas, "green", "blue")
        colours["green"].failing = False  # the colour recovers; the rollback still holds
        await healthy_everywhere(replicas)

        sampling = asyncio.create_task(sample_for(replicas, 4.0, every=0.02))
        for _ in range(3):
            await asyncio.to_thread(kubectl_apply, "green")  # re-applied, unchanged
            await asyncio.sleep(1)
        answered = await sampling
        assert set(answered) == {"200 blue"}, answered
        assert await replicas.decision() == decision
        version = await KubeClient(api, replicas.ref).read()
        assert version.data["active"] == "green"
        _, history = await replicas.configmap()
        assert [h["reason"] for h in history if h["reason"].startswith("rollback:")] == [
            decision.reason
        ]
        assert len(await replicas.events("RolledBack")) == 1
        for process in replicas.processes:
            assert process.status()["desired_reason"] == decision.reason
    finally:
        await stop_all(replicas.running)
        await api.close()
        await asyncio.to_thread(delete, kube_apiserver, namespace, documents)
