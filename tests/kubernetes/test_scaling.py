"""Scaling the idle colour through the `scale` subresource, on a real kube-apiserver.

The proxy runs in the test's loop with exactly the rights of deploy/'s Roles: the base Role plus
deploy/examples/myapp/scaling-rbac.yaml, or the base Role alone (scaling must then say what is
missing and change nothing). The colours are local apps; each has a real Deployment object
(`myapp-v1` for blue, `myapp-v2` for green), whose `scale` subresource works on the API server
alone. This server has no controller-manager or kubelet, so nothing ever becomes ready by
itself: `ReadyFollower` stands in for them, writing `status.readyReplicas = spec.replicas` on
the `status` subresource as admin. The real thing, with real pods, is in tests/cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client

from controller.cluster_ops import switch_colour
from controller.decision import read_decision
from controller.kube import MERGE_PATCH, ConfigMapRef, KubeClient
from controller.leader import LeaseSettings
from controller.process import ConfigMapSpec, ProxyProcess
from controller.scale_plan import SCALED_DOWN_ANNOTATION, read_records
from tests.kubernetes.apiserver import KubeApiServer
from tests.kubernetes.colour_configmap import colour_configmap
from tests.support.colours import BreakableColour
from tests.support.kube_fixtures import new_server, started
from tests.support.kube_process import proxy_following
from tests.support.waiting import wait_for, wait_for_async

REPO = Path(__file__).resolve().parents[2]
BASE_RBAC = REPO / "deploy" / "base" / "rbac.yaml"
SCALE_RBAC = REPO / "deploy" / "examples" / "myapp" / "scaling-rbac.yaml"
DEPLOYMENTS = {"blue": "myapp-v1", "green": "myapp-v2"}
LEASE = LeaseSettings(duration=3, renew_deadline=2, retry_period=1)
SCALING_USER = "bluegreen-scaling"
BASE_ONLY_USER = "bluegreen-base-only"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[KubeApiServer, dict[str, str]]]:
    """A kube-apiserver of this module's own, with two token users for the proxy."""
    made = new_server()
    tokens = {user: made.add_user(user) for user in (SCALING_USER, BASE_ONLY_USER)}
    started(made)
    try:
        yield made, tokens
    finally:
        made.close()


def as_body(document: object) -> Any:
    """A plain manifest as a request body (the client takes them as well as its models)."""
    return document


def roles(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "Role"]


@dataclass
class Scene:
    """A namespace with the ConfigMap, the two Deployments, the Roles, and the colour apps."""

    api: Any
    ref: ConfigMapRef
    colours: dict[str, BreakableColour]
    kubeconfig: Path
    admin_kubeconfig: Path
    followers: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    async def replicas(self, colour: str) -> int:
        scale = await self.apps.read_namespaced_deployment_scale(
            DEPLOYMENTS[colour], self.ref.namespace
        )
        return int(scale.spec.replicas or 0)  # 0 is left out of the JSON

    async def patch(self, data: dict[str, str]) -> None:
        await client.CoreV1Api(self.api).patch_namespaced_config_map(
            self.ref.name,
            self.ref.namespace,
            {"data": data},
            _content_type=MERGE_PATCH,  # type: ignore[call-arg]
        )

    async def configmap(self) -> Any:
        return await KubeClient(self.api, self.ref).read()

    async def events(self, reason: str) -> list[dict[str, Any]]:
        return [e for e in await KubeClient(self.api, self.ref).events() if e["reason"] == reason]

    def follow_readiness(self) -> None:
        """Start standing in for the Deployment controller and the kubelet (see the module)."""
        self.followers.append(asyncio.create_task(self._ready_follows_spec()))

    def stop_following(self) -> None:
        for task in self.followers:
            task.cancel()
        self.followers.clear()

    async def _ready_follows_spec(self) -> None:
        while True:
            for name in DEPLOYMENTS.values():
                deployment = await self.apps.read_namespaced_deployment(name, self.ref.namespace)
                replicas = int(deployment.spec.replicas or 0)
                await self.apps.patch_namespaced_deployment_status(
                    name,
                    self.ref.namespace,
                    {"status": {"replicas": replicas, "readyReplicas": replicas,
                                "updatedReplicas": replicas, "availableReplicas": replicas,
                                "observedGeneration": deployment.metadata.generation}},
                    _content_type=MERGE_PATCH,  # type: ignore[call-arg]
                )  # fmt: skip
            await asyncio.sleep(0.1)


def deployment(name: str, version: str) -> dict[str, Any]:
    labels = {"app": "myapp", "version": version}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 10,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "myapp", "image": f"myapp:{version}"}]},
            },
        },
    }


@contextlib.asynccontextmanager
async def scene(
    server: tuple[KubeApiServer, dict[str, str]], user: str, extra: dict[str, str]
) -> AsyncIterator[Scene]:
    """Everything of `Scene`, for the proxy identity `user` (its Roles bound as the user's)."""
    apiserver, tokens = server
    keys = {
        "health.interval": "200ms",
        "health.timeout": "200ms",  # bounds a healthy probe: colours fail by answering 503
        "health.failureThreshold": "2",
        "health.successThreshold": "2",
        "rollback.window": "1s",
        "scale.blue": "deployment/myapp-v1",
        "scale.green": "deployment/myapp-v2",
        **extra,
    }
    async with colour_configmap(apiserver, "scale", keys) as made_up:
        api, namespace = made_up.api, made_up.ref.namespace
        rbac = client.RbacAuthorizationV1Api(api)
        granted = roles(BASE_RBAC) + (roles(SCALE_RBAC) if user == SCALING_USER else [])
        for role in granted:
            await rbac.create_namespaced_role(namespace, as_body(role))
            await rbac.create_namespaced_role_binding(
                namespace,
                as_body(
                    {
                        "metadata": {"name": role["metadata"]["name"]},
                        "roleRef": {
                            "apiGroup": "rbac.authorization.k8s.io",
                            "kind": "Role",
                            "name": role["metadata"]["name"],
                        },
                        "subjects": [
                            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}
                        ],
                    }
                ),
            )
        for version, name in (("v1", "myapp-v1"), ("v2", "myapp-v2")):
            await client.AppsV1Api(api).create_namespaced_deployment(
                namespace, as_body(deployment(name, version))
            )
        kubeconfig = apiserver.kubeconfig_for(
            tokens[user], apiserver.dir / f"kubeconfig-{user}.yaml"
        )
        made = Scene(api, made_up.ref, made_up.colours, kubeconfig, apiserver.kubeconfig)
        try:
            # The RBAC authorizer learns of new bindings a moment later.
            await asyncio.sleep(0.5)
            yield made
        finally:
            made.stop_following()


@contextlib.asynccontextmanager
async def leading_proxy(made: Scene) -> AsyncIterator[ProxyProcess]:
    async with proxy_following(ConfigMapSpec(made.ref, made.kubeconfig, LEASE)) as process:
        await wait_for(lambda: process.decides, 10, "the proxy leading")
        yield process


def served(process: ProxyProcess) -> str | None:
    return process.state.table.active if process.state.table is not None else None


def gauge(process: ProxyProcess, name: str, colour: str) -> float | None:
    value = process.registry.get_sample_value(name, {"colour": colour})
    return float(value) if value is not None else None


async def test_a_held_switch_scales_the_old_colour_down_and_a_switch_back_scales_it_up(
    server: tuple[KubeApiServer, dict[str, str]],
) -> None:
    extra = {"scale.idleReplicas": "0", "scale.after": "2s"}
    async with scene(server, SCALING_USER, extra) as made, leading_proxy(made) as process:
        made.follow_readiness()
        await wait_for(lambda: gauge(process, "bluegreen_colour_ready_replicas", "green") == 10, 5)
        await made.patch({"active": "green"})
        await wait_for(lambda: served(process) == "green", 5, "green served")
        # Blue is not scaled down within the rollback window: it is still the way back.
        await asyncio.sleep(1.0)
        assert await made.replicas("blue") == 10
        took = await wait_for_async(
            lambda: _replicas_are(made, "blue", 0), 10, "blue scaled down to 0"
        )
        print(f"blue scaled down {took:.1f} s after the rollback window")
        records = read_records((await made.configmap()).annotations)
        assert records["blue"].replicas == 10 and records["blue"].idle == 0
        assert records["blue"].deployment == "myapp-v1"
        assert records["blue"].by.startswith(process.source.leadership.identity)  # type: ignore[attr-defined]
        await wait_for_async(lambda: _has_events(made, "ScaledDown"), 5, "the ScaledDown Event")
        [event] = await made.events("ScaledDown")
        assert event["message"].startswith(
            "blue (deployment/myapp-v1) scaled down 10 -> 0 replicas: not served for 2s"
        ), event
        await wait_for(lambda: gauge(process, "bluegreen_colour_scaled_down", "blue") == 1, 5)
        assert gauge(process, "bluegreen_colour_scaled_down", "green") == 0
        # Idempotent: it stays scaled down once, with one record and one Event.
        await asyncio.sleep(2)
        assert len(await made.events("ScaledDown")) == 1

        # Switch back while nothing becomes ready: traffic waits on green.
        made.stop_following()
        await made.patch({"active": "blue"})
        await wait_for_async(lambda: _replicas_are(made, "blue", 10), 5, "blue scaled up to 10")
        await asyncio.sleep(1.0)
        assert served(process) == "green"
        status = process.status()
        assert status["desired"] == "blue"
        assert status["desired_reason"].startswith("waiting for blue to scale up"), status
        assert status["scale"]["colours"]["blue"]["scaled_down"]["replicas"] == 10
        # Ready now: the switch follows.
        made.follow_readiness()
        await wait_for(lambda: served(process) == "blue", 5, "blue served after its scale-up")
        assert SCALED_DOWN_ANNOTATION not in (await made.configmap()).annotations
        await wait_for_async(lambda: _has_events(made, "ScaledUp"), 5, "the ScaledUp Event")
        [up] = await made.events("ScaledUp")
        assert up["message"].startswith("blue (deployment/myapp-v1) scaled up 0 -> 10 replicas")
        assert process.state.switches[0].to_colour == "blue"
        assert process.state.switches[0].reason == "manual"


async def test_a_scale_up_that_times_out_leaves_traffic_and_says_why(
    server: tuple[KubeApiServer, dict[str, str]],
) -> None:
    extra = {"scale.idleReplicas": "0", "scale.after": "1s", "scale.timeout": "1s"}
    async with scene(server, SCALING_USER, extra) as made, leading_proxy(made) as process:
        made.follow_readiness()
        await made.patch({"active": "green"})
        await wait_for_async(lambda: _replicas_are(made, "blue", 0), 10, "blue scaled down")
        await wait_for(lambda: gauge(process, "bluegreen_colour_ready_replicas", "blue") == 0, 5)
        made.stop_following()  # blue will never be ready
        await made.patch({"active": "blue"})
        await wait_for_async(
            lambda: _has_events(made, "ScaleUpTimedOut"), 10, "the ScaleUpTimedOut Event"
        )
        assert served(process) == "green"
        [event] = await made.events("ScaleUpTimedOut")
        assert event["message"].startswith("refused: blue not ready after 1s: 0/10 replicas")
        # `active` stays desired (blue); the refusal is the recorded decision. Traffic never moved.
        configmap = await made.configmap()
        assert configmap.data["active"] == "blue"
        recorded = read_decision(configmap.annotations)
        assert recorded is not None and (recorded.desired, recorded.served) == ("blue", "green")
        assert process.status()["desired_reason"].startswith("refused: blue not ready")
        await wait_for_async(lambda: _replicas_are(made, "blue", 0), 5, "blue scaled back")
        assert read_records((await made.configmap()).annotations)["blue"].replicas == 10
        assert process.state.switches[0].reason.startswith("refused: blue not ready")
        value = process.registry.get_sample_value(
            "bluegreen_rollbacks_total", {"reason": "scale_up_timeout"}
        )
        assert value == 1
        # The decision holds for this desired config: no new scale-up by itself...
        await asyncio.sleep(2)
        assert await made.replicas("blue") == 0
        # ...until an operator retries, with blue able to get ready this time.
        made.follow_readiness()
        await switch_colour(made.ref, made.admin_kubeconfig, "blue", retry=True)
        await wait_for(lambda: served(process) == "blue", 10, "blue served after --retry")
        assert await made.replicas("blue") == 10


async def test_without_deployments_scale_in_the_role_nothing_changes_and_it_says_why(
    server: tuple[KubeApiServer, dict[str, str]],
) -> None:
    extra = {"scale.idleReplicas": "0", "scale.after": "1s"}
    async with scene(server, BASE_ONLY_USER, extra) as made, leading_proxy(made) as process:
        await made.patch({"active": "green"})
        await wait_for(lambda: served(process) == "green", 5)
        await wait_for(lambda: process.status()["scale"]["error"] is not None, 10, "an error")
        error = process.status()["scale"]["error"]
        expected = (
            "scaling is off: this service account may not get deployments/scale myapp-v1, "
            "patch deployments/scale myapp-v1"
        )
        assert error.startswith(expected), error
        assert "deploy/base/rbac.yaml" in error and "Nothing was recorded or scaled" in error
        await wait_for_async(lambda: _has_events(made, "ScaleForbidden"), 5, "ScaleForbidden")
        await asyncio.sleep(2)  # well past scale.after
        assert await made.replicas("blue") == 10
        assert SCALED_DOWN_ANNOTATION not in (await made.configmap()).annotations
        assert len(await made.events("ScaleForbidden")) == 1


async def test_an_autoscaled_deployment_is_not_scaled_to_warm_replicas(
    server: tuple[KubeApiServer, dict[str, str]],
) -> None:
    extra = {"scale.idleReplicas": "2", "scale.after": "1s"}
    async with scene(server, SCALING_USER, extra) as made:
        await client.AutoscalingV1Api(made.api).create_namespaced_horizontal_pod_autoscaler(
            made.ref.namespace,
            as_body({
                "metadata": {"name": "myapp-v1"},
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                       "name": "myapp-v1"},
                    "minReplicas": 5,
                    "maxReplicas": 20,
                },
            }),
        )  # fmt: skip
        async with leading_proxy(made) as process:
            await made.patch({"active": "green"})
            await wait_for_async(lambda: _has_events(made, "ScaleSkipped"), 10, "ScaleSkipped")
            [event] = await made.events("ScaleSkipped")
            assert "HorizontalPodAutoscaler myapp-v1 owns deployment/myapp-v1" in event["message"]
            assert await made.replicas("blue") == 10
            note = process.status()["scale"]["colours"]["blue"]["note"]
            assert note.startswith("not scaled down: HorizontalPodAutoscaler myapp-v1")


async def _replicas_are(made: Scene, colour: str, count: int) -> bool:
    return await made.replicas(colour) == count


async def _has_events(made: Scene, reason: str) -> bool:
    return bool(await made.events(reason))
