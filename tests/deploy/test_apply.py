"""deploy/ applied for real to kube-apiserver 1.20, and the proxy run on what was applied.

`kubectl apply` is Debian's kubectl 1.20 against the 1.20 API server from tests/kubernetes, into
a fresh namespace, the way a user runs `kubectl apply -k DIR -n NAMESPACE`. The server has no
controller-manager, scheduler or kubelet: objects are stored and validated, nothing is scheduled.
So the proxy runs here, in the test's event loop, with the container's own arguments, against
the applied ConfigMap and with exactly the rights of the applied Role and RoleBinding.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes_asyncio import client

from controller.cluster_ops import switch_colour
from controller.configmap_source import ConfigMapSource
from controller.kube import MERGE_PATCH, ConfigMapRef, load_api_client
from controller.leader import LeaseSettings
from controller.process import ConfigMapSpec, ShutdownSettings
from tests.deploy.manifests import (
    CRDS,
    Document,
    debian_kubectl,
    kustomizations,
    pod_spec,
    render,
    run_arguments,
)
from tests.kubernetes.apiserver import KubeApiServer
from tests.support.colours import ColourApp
from tests.support.kube_fixtures import KubeApiServerFactory, started
from tests.support.kube_process import assert_confined_to_role, proxy_following
from tests.support.waiting import wait_for

PROXY_KUSTOMIZATIONS = ("base", "examples/myapp")


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    """Run Debian's kubectl 1.20 against a test API server; fail the test with its stderr."""
    result = subprocess.run(
        [str(debian_kubectl().path), "--kubeconfig", str(kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"kubectl {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


def for_kube_1_20(documents: Iterable[Document]) -> list[Document]:
    """The rendered documents as a 1.20 API server can store them.

    deploy/ ships policy/v1 PodDisruptionBudgets, which Kubernetes serves from 1.21 (and
    policy/v1beta1 is gone in 1.25). The test server is 1.20, which knows only v1beta1, so this
    one document is sent as policy/v1beta1; its fields (minAvailable, selector) are the same in
    both versions. The shipped manifest stays policy/v1.
    """
    return [
        {**document, "apiVersion": "policy/v1beta1"}
        if document["kind"] == "PodDisruptionBudget" and document["apiVersion"] == "policy/v1"
        else document
        for document in documents
    ]


def apply(server: KubeApiServer, namespace: str, documents: list[Document]) -> None:
    """Create `namespace`, install the monitoring CRDs, and `kubectl apply` the documents."""
    kubeconfig = server.kubeconfig
    kubectl(kubeconfig, "create", "namespace", namespace)
    # Custom resources (ServiceMonitor, PrometheusRule) need their CRDs first; the server's
    # own apiextensions controller establishes them.
    kubectl(kubeconfig, "apply", "-f", str(CRDS))
    kubectl(kubeconfig, "wait", "--for=condition=established", "--timeout=60s", "-f", str(CRDS))
    stream = yaml.safe_dump_all(documents, sort_keys=False)
    kubectl(kubeconfig, "apply", "--namespace", namespace, "-f", "-", stdin=stream)


def delete(server: KubeApiServer, namespace: str, documents: list[Document]) -> None:
    """Delete the objects `apply` made in `namespace`, without waiting.

    Namespaces are never finalized on this server (no controller-manager): the objects
    themselves are deleted, so that the next test can take NodePort 30080 again.
    """
    stream = yaml.safe_dump_all(documents, sort_keys=False)
    kubectl(
        server.kubeconfig,
        *("delete", "--namespace", namespace, "--ignore-not-found", "--wait=false"),
        *("-f", "-"),
        stdin=stream,
    )


def applied(server: KubeApiServer, namespace: str, documents: list[Document]) -> list[Document]:
    """Read back, in the same order, the objects the API server stored for `documents`."""
    stream = yaml.safe_dump_all(documents, sort_keys=False)
    output = kubectl(
        server.kubeconfig, "get", "--namespace", namespace, "-f", "-", "-o", "yaml", stdin=stream
    )
    listed = yaml.safe_load(output)
    items: list[Document] = listed["items"] if listed.get("kind") == "List" else [listed]
    return items


def not_kept(wanted: Any, stored: Any, path: str = "") -> Iterator[str]:
    """Where the stored object lacks or changed something the manifest said.

    The server adds defaults (and metadata of its own); it must not drop or alter a field.
    """
    if isinstance(wanted, dict):
        if not isinstance(stored, dict):
            yield f"{path}: {stored!r} is not a mapping"
            return
        for key, value in wanted.items():
            if key not in stored:
                yield f"{path}.{key}: dropped"
            else:
                yield from not_kept(value, stored[key], f"{path}.{key}")
    elif isinstance(wanted, list):
        if not isinstance(stored, list) or len(stored) != len(wanted):
            yield f"{path}: {stored!r} instead of {wanted!r}"
            return
        for index, (value, kept) in enumerate(zip(wanted, stored, strict=True)):
            yield from not_kept(value, kept, f"{path}[{index}]")
    elif wanted != stored:
        yield f"{path}: {stored!r} instead of {wanted!r}"


@pytest.mark.parametrize("kustomization", kustomizations())
def test_every_kustomization_applies_to_a_real_api_server(
    kustomization: str, kube_apiserver: KubeApiServer
) -> None:
    documents = for_kube_1_20(render(kustomization, debian_kubectl()).documents)
    namespace = f"deploy-{uuid.uuid4().hex[:8]}"
    try:
        apply(kube_apiserver, namespace, documents)
        stored = applied(kube_apiserver, namespace, documents)
        assert [(d["kind"], d["metadata"]["name"]) for d in stored] == [
            (d["kind"], d["metadata"]["name"]) for d in documents
        ]
        problems = [
            f"{wanted['kind']} {wanted['metadata']['name']}{problem}"
            for wanted, kept in zip(documents, stored, strict=True)
            for problem in not_kept(wanted, kept)
        ]
        assert not problems, "\n".join(problems)
        for document in stored:
            assert document["metadata"]["namespace"] == namespace
        services = {d["metadata"]["name"]: d for d in stored if d["kind"] == "Service"}
        if "bluegreen" in services:
            # The API server allocated the NodePort the seed's users already know.
            assert services["bluegreen"]["spec"]["ports"][0]["nodePort"] == 30080
    finally:
        delete(kube_apiserver, namespace, documents)


async def get(session: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, str, str]:
    """GET `url`: status, X-Bluegreen-Colour and body."""
    async with session.get(url, headers=headers) as response:
        body = await response.text()
        return response.status, response.headers.get("X-Bluegreen-Colour", ""), body


@pytest.mark.parametrize("kustomization", PROXY_KUSTOMIZATIONS)
async def test_the_proxy_runs_on_the_applied_configmap_with_the_applied_rbac(
    kustomization: str,
    kube_apiserver_factory: KubeApiServerFactory,
    colours: dict[str, ColourApp],
) -> None:
    rendered = render(kustomization, debian_kubectl())
    namespace = f"deploy-{uuid.uuid4().hex[:8]}"
    account = pod_spec(rendered)["serviceAccountName"]
    args = run_arguments(rendered, namespace)  # what `bluegreen run` gets in this namespace
    server = kube_apiserver_factory()
    # No token controller issues the ServiceAccount's token here, so a static token carries the
    # ServiceAccount's own user name and groups: the applied RoleBinding (subject: the
    # ServiceAccount) is what grants the applied Role to the proxy, with no stand-in binding.
    token = server.add_user(
        f"system:serviceaccount:{namespace}:{account}",
        ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
    )
    started(server)
    # An explicit file name: the default one holds the user name, whose colons the kubeconfig
    # loader would read as a list of paths.
    proxy_kubeconfig = server.kubeconfig_for(token, server.dir / "kubeconfig-proxy.yaml")
    await asyncio.to_thread(apply, server, namespace, for_kube_1_20(rendered.documents))

    admin = await load_api_client(server.kubeconfig)
    try:
        core = client.CoreV1Api(admin)
        ref: ConfigMapRef = args.configmap
        stored = await core.read_namespaced_config_map(ref.name, ref.namespace)
        shipped = rendered.find("ConfigMap", ref.name)["data"]
        assert stored.data == shipped
        # The colour Services' names do not resolve outside a cluster: point the two upstream
        # keys at loopback colour apps standing in for them. Every other key stays as applied.
        await core.patch_namespaced_config_map(
            ref.name,
            ref.namespace,
            {"data": {f"upstream.{c}": app.url for c, app in colours.items()}},
            _content_type=MERGE_PATCH,  # type: ignore[call-arg]
        )

        spec = ConfigMapSpec(
            ref,
            proxy_kubeconfig,
            LeaseSettings(args.lease_duration, args.lease_renew_deadline, args.lease_retry_period),
        )
        # The container listens on 0.0.0.0:8080 and :9090; here, free loopback ports.
        shutdown = ShutdownSettings(delay=args.shutdown_delay, grace=args.shutdown_grace)
        async with proxy_following(spec, shutdown) as running:
            proxy_url = f"http://127.0.0.1:{running.proxy_port}/"
            admin_url = f"http://127.0.0.1:{running.admin_port}"
            async with aiohttp.ClientSession() as session:
                # What the kubelet's probes ask.
                for path in ("/readyz", "/healthz"):
                    async with session.get(admin_url + path) as response:
                        assert response.status == 200, path
                assert await get(session, proxy_url) == (200, "blue", "hello from blue\n")
                preview = shipped["preview.header"]
                assert (await get(session, proxy_url, **{preview: "1"}))[:2] == (200, "green")

                # The applied Role's Lease rules are enough to win the election.
                await wait_for(lambda: running.decides, 30)
                source = running.source
                assert isinstance(source, ConfigMapSource) and source.leadership is not None
                lease = await client.CoordinationV1Api(admin).read_namespaced_lease(
                    f"{ref.name}-leader", ref.namespace
                )
                assert lease.spec.holder_identity == source.leadership.identity

                # A switch as `bluegreen switch green` makes it, from an operator's kubeconfig.
                await wait_for(lambda: running.health_of("green")[0] == "healthy", 30)
                result = await switch_colour(ref, server.kubeconfig, "green")
                assert (result.previous, result.current, result.changed) == ("blue", "green", True)
                await wait_for(
                    lambda: (
                        running.state.table is not None and running.state.table.active == "green"
                    ),
                    10,
                )
                answers = [await get(session, proxy_url) for _ in range(20)]
                assert set(answers) == {(200, "green", "hello from green\n")}
                assert (await get(session, proxy_url, **{preview: "1"}))[:2] == (200, "blue")

        # ...and the proxy's identity has nothing beyond the Role.
        await assert_confined_to_role(proxy_kubeconfig, ref, "green")
    finally:
        await admin.close()
