"""The proxy works with exactly the rights of deploy/'s Role, on a real API server, and no more."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio import client

from controller.kube import ConfigMapRef, KubeClient, load_api_client
from controller.process import ConfigMapSpec
from tests.support.colours import ColourApp
from tests.support.kube_fixtures import KubeApiServerFactory, started
from tests.support.kube_process import assert_confined_to_role, colour_data, proxy_following
from tests.support.waiting import wait_for, wait_for_async

RBAC = Path(__file__).resolve().parents[2] / "deploy" / "base" / "rbac.yaml"
PROXY_USER = "bluegreen-proxy"


def shipped_role() -> dict[str, Any]:
    documents = [d for d in yaml.safe_load_all(RBAC.read_text()) if d]
    return next(d for d in documents if d["kind"] == "Role")


async def test_proxy_runs_with_the_shipped_role_and_nothing_more(
    kube_apiserver_factory: KubeApiServerFactory, colours: dict[str, ColourApp]
) -> None:
    server = kube_apiserver_factory()
    token = server.add_user(PROXY_USER)
    started(server)
    namespace = f"rbac-{uuid.uuid4().hex[:8]}"
    admin = await load_api_client(server.kubeconfig)
    try:
        core = client.CoreV1Api(admin)
        rbac = client.RbacAuthorizationV1Api(admin)
        await core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
        )
        role: Any = shipped_role()  # the client takes plain manifests as well as models
        await rbac.create_namespaced_role(namespace, role)
        # The shipped RoleBinding names the ServiceAccount; this server has no token controller,
        # so the same Role is bound to a token user standing in for it.
        binding: Any = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "bluegreen-test"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": role["metadata"]["name"],
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": PROXY_USER}
            ],
        }
        await rbac.create_namespaced_role_binding(namespace, binding)
        for name in ("bluegreen", "other"):
            await core.create_namespaced_config_map(
                namespace,
                client.V1ConfigMap(
                    metadata=client.V1ObjectMeta(name=name), data=colour_data(colours, "blue")
                ),
            )
        ref = ConfigMapRef(namespace, "bluegreen")
        proxy_kubeconfig = server.kubeconfig_for(token)
        async with proxy_following(ConfigMapSpec(ref, proxy_kubeconfig), timeout=20) as process:
            # The Role's Lease rules are enough to win the election.
            await wait_for(lambda: process.decides, 20)
            await core.patch_namespaced_config_map(
                "bluegreen",
                namespace,
                {"data": {"active": "green"}},
                _content_type="application/merge-patch+json",  # type: ignore[call-arg]
            )
            await wait_for(
                lambda: process.state.table is not None and process.state.table.active == "green",
                10,
            )
            admin_kube = KubeClient(admin, ref)

            async def switched_event() -> bool:
                return any(e.get("reason") == "Switched" for e in await admin_kube.events())

            await wait_for_async(switched_event, 10, "the Switched Event")

        # ...and nothing beyond what the Role grants.
        await assert_confined_to_role(proxy_kubeconfig, ref, "green")
    finally:
        await admin.close()
