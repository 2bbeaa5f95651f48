"""The proxy works with exactly the rights of deploy/'s Role, on a real API server, and no more."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client

from controller.kube import ConfigMapRef, ForbiddenError, KubeClient, load_api_client
from controller.process import ConfigMapSpec, Endpoint, ProxyProcess
from tests.conftest import ColourApp
from tests.kubernetes.test_configmap_source import colour_data, wait_for
from tests.support.kube_fixtures import KubeApiServerFactory, started

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
    process: ProxyProcess | None = None
    task: asyncio.Task[None] | None = None
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
        process = ProxyProcess(
            ConfigMapSpec(ref, proxy_kubeconfig),
            Endpoint("127.0.0.1", 0),
            Endpoint("127.0.0.1", 0),
        )
        task = asyncio.create_task(process.run())
        await wait_for(lambda: process is not None and process.state.table is not None, 20)
        # The Role's Lease rules are enough to win the election.
        await wait_for(lambda: process is not None and process.decides, 20)
        await core.patch_namespaced_config_map(
            "bluegreen",
            namespace,
            {"data": {"active": "green"}},
            _content_type="application/merge-patch+json",  # type: ignore[call-arg]
        )
        await wait_for(
            lambda: (
                process is not None
                and process.state.table is not None
                and process.state.table.active == "green"
            ),
            10,
        )
        admin_kube = KubeClient(admin, ref)

        async def switched_event() -> bool:
            return any(e.get("reason") == "Switched" for e in await admin_kube.events())

        deadline = asyncio.get_running_loop().time() + 10
        while not await switched_event():
            assert asyncio.get_running_loop().time() < deadline, "no Switched Event"
            await asyncio.sleep(0.1)

        # ...and nothing beyond what the Role grants.
        async with await load_api_client(proxy_kubeconfig) as limited:
            with pytest.raises(ForbiddenError):
                await KubeClient(limited, ConfigMapRef(namespace, "other")).read()
            own = KubeClient(limited, ref)
            version = await own.read()
            assert version.data["active"] == "green"
            with pytest.raises(client.ApiException) as denied:
                await client.CoreV1Api(limited).list_namespaced_secret(namespace)
            assert denied.value.status == 403
            with pytest.raises(client.ApiException) as denied_delete:
                await client.CoreV1Api(limited).delete_namespaced_config_map("bluegreen", namespace)
            assert denied_delete.value.status == 403
    finally:
        if process is not None:
            process.stop()
        if task is not None:
            await asyncio.wait_for(task, 10)
        await admin.close()
