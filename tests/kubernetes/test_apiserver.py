"""The real kube-apiserver fixture, exercised with kubernetes_asyncio through its kubeconfig."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.rest import ApiException

from tests.kubernetes.apiserver import (
    KUBE_VERSION,
    KubeApiServer,
    KubeApiServerError,
    MissingBinariesError,
    find_binaries,
)
from tests.support.kube_fixtures import KubeApiServerFactory

MERGE_PATCH = "application/merge-patch+json"


@contextlib.asynccontextmanager
async def api_client(kubeconfig: Path) -> AsyncIterator[Any]:
    """An ApiClient configured from `kubeconfig`, closed on exit."""
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        yield api


@contextlib.asynccontextmanager
async def fresh_namespace(api: Any) -> AsyncIterator[str]:
    """A namespace with a unique name, deleted afterwards (it stays Terminating: no controllers)."""
    core = client.CoreV1Api(api)
    name = f"bg-test-{uuid.uuid4().hex[:10]}"
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        with contextlib.suppress(ApiException):
            await core.delete_namespace(name)


async def merge_patch_config_map(
    core: client.CoreV1Api, name: str, namespace: str, patch: dict[str, Any]
) -> Any:
    """PATCH a ConfigMap with a JSON merge patch (RFC 7386), not the default strategic merge."""
    # The client's stubs do not list _content_type, which its generated methods accept.
    return await core.patch_namespaced_config_map(  # type: ignore[call-arg]
        name, namespace, patch, _content_type=MERGE_PATCH
    )


def config_map(name: str, data: dict[str, str]) -> Any:
    """A V1ConfigMap body."""
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data=data)


async def test_kubeconfig_reaches_a_verified_1_20_2_server(kube_apiserver: KubeApiServer) -> None:
    text = kube_apiserver.kubeconfig.read_text()
    assert "certificate-authority:" in text  # TLS verified against the generated CA
    assert "insecure-skip-tls-verify" not in text
    async with api_client(kube_apiserver.kubeconfig) as api:
        version = await client.VersionApi(api).get_code()
        assert version.git_version == f"v{KUBE_VERSION}"
        namespaces = await client.CoreV1Api(api).list_namespace()
        names = {item.metadata.name for item in namespaces.items}
        assert {"default", "kube-system"} <= names


async def test_configmap_merge_patch_is_seen_by_a_watch(kube_apiserver: KubeApiServer) -> None:
    async with api_client(kube_apiserver.kubeconfig) as api, fresh_namespace(api) as namespace:
        core = client.CoreV1Api(api)
        created = await core.create_namespaced_config_map(
            namespace, config_map("routes", {"active": "blue", "stale": "x"})
        )
        assert created.data == {"active": "blue", "stale": "x"}

        async def first_modified() -> dict[str, Any]:
            """Watch from the creation's resourceVersion until the first MODIFIED event."""
            async with watch.Watch() as stream:
                async for event in stream.stream(
                    core.list_namespaced_config_map,
                    namespace,
                    field_selector="metadata.name=routes",
                    resource_version=created.metadata.resource_version,
                    timeout_seconds=20,
                ):
                    if event["type"] == "MODIFIED":
                        return dict(event["raw_object"])
            raise AssertionError("the watch ended without a MODIFIED event")

        watcher = asyncio.create_task(first_modified())
        await asyncio.sleep(0.2)  # the watch is usually open by now; from the rv it can't miss
        patched = await merge_patch_config_map(
            core,
            "routes",
            namespace,
            {"data": {"active": "green", "stale": None}, "metadata": {"labels": {"v": "2"}}},
        )
        assert patched.data == {"active": "green"}  # null removed the key: a JSON merge patch
        assert patched.metadata.labels == {"v": "2"}

        modified = await asyncio.wait_for(watcher, 25)
        assert modified["data"] == {"active": "green"}
        assert modified["metadata"]["resourceVersion"] == patched.metadata.resource_version


async def test_restart_keeps_etcd_data_and_reads_new_token_users(
    kube_apiserver: KubeApiServer,
) -> None:
    server = kube_apiserver
    port = server.port
    async with api_client(server.kubeconfig) as api:
        namespace = f"bg-restart-{uuid.uuid4().hex[:10]}"
        core = client.CoreV1Api(api)
        await core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
        )
        await core.create_namespaced_config_map(namespace, config_map("kept", {"colour": "blue"}))

    reader = f"reader-{uuid.uuid4().hex[:6]}"
    try:
        server.stop()
        assert not server.running
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        reader_token = server.add_user(reader, ["bluegreen:readers"])  # token file read at start
    finally:
        server.start()  # the session's server must be left running, whatever happened
    assert server.port == port

    async with api_client(server.kubeconfig) as api:
        kept = await client.CoreV1Api(api).read_namespaced_config_map("kept", namespace)
        assert kept.data == {"colour": "blue"}

        # The new user authenticates, but RBAC grants it nothing until a binding does.
        async with api_client(server.kubeconfig_for(reader_token)) as reader_api:
            with pytest.raises(ApiException) as forbidden:
                await client.CoreV1Api(reader_api).read_namespaced_config_map("kept", namespace)
            assert forbidden.value.status == 403
            assert reader in str(forbidden.value.body)

            rbac = client.RbacAuthorizationV1Api(api)
            await rbac.create_namespaced_role(
                namespace,
                client.V1Role(
                    metadata=client.V1ObjectMeta(name="read-configmaps"),
                    rules=[
                        client.V1PolicyRule(
                            api_groups=[""], resources=["configmaps"], verbs=["get"]
                        )
                    ],
                ),
            )
            await rbac.create_namespaced_role_binding(
                namespace,
                client.V1RoleBinding(
                    metadata=client.V1ObjectMeta(name="reader-reads"),
                    role_ref=client.V1RoleRef(
                        api_group="rbac.authorization.k8s.io", kind="Role", name="read-configmaps"
                    ),
                    subjects=[
                        client.RbacV1Subject(
                            api_group="rbac.authorization.k8s.io", kind="User", name=reader
                        )
                    ],
                ),
            )
            # The RBAC authorizer learns of the binding through its informer: eventually.
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                try:
                    allowed = await client.CoreV1Api(reader_api).read_namespaced_config_map(
                        "kept", namespace
                    )
                    break
                except ApiException as error:
                    if error.status != 403 or asyncio.get_running_loop().time() > deadline:
                        raise
                    await asyncio.sleep(0.1)
            assert allowed.data == {"colour": "blue"}
        await client.CoreV1Api(api).delete_namespace(namespace)


async def test_watch_from_a_compacted_resource_version_gets_410(
    kube_apiserver_fast_compaction: KubeApiServer,
) -> None:
    server = kube_apiserver_fast_compaction
    async with api_client(server.kubeconfig) as api, fresh_namespace(api) as namespace:
        core = client.CoreV1Api(api)
        created = await core.create_namespaced_config_map(namespace, config_map("old", {"n": "0"}))
        old_version = created.metadata.resource_version

        gone: ApiException | None = None
        deadline = time.monotonic() + 45
        n = 0
        while gone is None and time.monotonic() < deadline:
            # Keep etcd's revision moving, so that each 2 s compaction has something to cut.
            n += 1
            await merge_patch_config_map(core, "old", namespace, {"data": {"n": str(n)}})
            try:
                async with watch.Watch() as stream:
                    async for _event in stream.stream(
                        core.list_namespaced_config_map,
                        namespace,
                        resource_version=old_version,
                        timeout_seconds=1,
                    ):
                        pass  # still replaying history: not compacted yet
            except ApiException as error:
                gone = error
            await asyncio.sleep(0.5)

        assert gone is not None, "no 410 Gone within 45 s of 2 s compactions"
        assert gone.status == 410
        assert "too old" in str(gone.reason).lower()


def test_missing_binaries_say_how_to_build_them(tmp_path: Path) -> None:
    with pytest.raises(MissingBinariesError, match=r"tests/kubernetes/build_apiserver\.sh"):
        find_binaries(tmp_path)


def test_a_fresh_server_serves_users_added_before_start(
    kube_apiserver_factory: KubeApiServerFactory,
) -> None:
    server = kube_apiserver_factory()
    token = server.add_user("deployer", ["bluegreen:deployers"])
    server.start()
    assert 0 < server.ready_seconds < 60
    with pytest.raises(KubeApiServerError, match="before start"):
        server.add_user("late")

    # Plain HTTPS, verified against the CA in the kubeconfig: who does the server think we are?
    tls = ssl.create_default_context(cafile=str(server.ca_file))
    review = json.dumps(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
    ).encode()
    request = urllib.request.Request(
        f"{server.url}/apis/authentication.k8s.io/v1/tokenreviews",
        data=review,
        headers={
            "Authorization": f"Bearer {server.admin_token}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, context=tls, timeout=10) as response:
        status = json.loads(response.read())["status"]
    assert status["authenticated"] is True
    assert status["user"]["username"] == "deployer"
    assert "bluegreen:deployers" in status["user"]["groups"]

    unknown = urllib.request.Request(
        f"{server.url}/api/v1/namespaces/default", headers={"Authorization": "Bearer nope"}
    )
    with pytest.raises(urllib.error.HTTPError) as unauthorized:
        urllib.request.urlopen(unknown, context=tls, timeout=10)
    assert unauthorized.value.code == 401
