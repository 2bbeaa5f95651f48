"""A `ProxyProcess` following a ConfigMap in-loop, and the check that its identity is confined.

`proxy_following` runs one for a `with` block; `start_following` and `stop_all` run any number
of replicas (tests/kubernetes, tests/deploy/test_reapply.py).

`assert_confined_to_role` is used by tests/kubernetes/test_rbac.py (the Role bound to a stand-in
user) and tests/deploy/test_apply.py (the applied RoleBinding itself), which ask the same two
questions: does the proxy run with these rights, and does it have nothing beyond them?
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeAlias

import pytest
from kubernetes_asyncio import client

from controller.kube import ConfigMapRef, ForbiddenError, KubeClient, load_api_client
from controller.process import ConfigMapSpec, Endpoint, ProxyProcess, ShutdownSettings
from tests.support.colours import ColourApp
from tests.support.waiting import wait_for


def colour_data(colours: Mapping[str, ColourApp], active: str) -> dict[str, str]:
    """The `data` of a ConfigMap over the two colour apps, probed every 2 s."""
    return {
        "active": active,
        "upstream.blue": colours["blue"].url,
        "upstream.green": colours["green"].url,
        "health.interval": "2s",
    }


Running: TypeAlias = list[tuple[ProxyProcess, asyncio.Task[None]]]


def _serving(process: ProxyProcess, task: asyncio.Task[None]) -> bool:
    """Whether the process serves the ConfigMap's first valid version, or has stopped."""
    return task.done() or (process.state.table is not None and process.proxy_port != 0)


async def start_following(
    spec: ConfigMapSpec, running: Running, timeout: float = 20
) -> ProxyProcess:
    """Start a proxy on free loopback ports, add it and its task to `running`, and wait until it
    serves the ConfigMap's first valid version. A process that stops first raises what stopped
    it. `stop_all(running)` stops them."""
    process = ProxyProcess(spec, Endpoint("127.0.0.1", 0), Endpoint("127.0.0.1", 0))
    task = asyncio.create_task(process.run())
    running.append((process, task))
    await wait_for(lambda: _serving(process, task), timeout, "the proxy serving the ConfigMap")
    if task.done():
        task.result()
    return process


async def stop_all(running: Running) -> None:
    """Stop every process of `running` as SIGTERM would and await each, whatever it raises."""
    for process, task in running:
        process.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


@asynccontextmanager
async def proxy_following(
    spec: ConfigMapSpec, shutdown: ShutdownSettings | None = None, timeout: float = 30
) -> AsyncIterator[ProxyProcess]:
    """Run a proxy on free loopback ports until it serves the ConfigMap's first valid version.

    On leaving, the process is stopped as SIGTERM would and awaited.
    """
    process = ProxyProcess(spec, Endpoint("127.0.0.1", 0), Endpoint("127.0.0.1", 0), shutdown)
    task = asyncio.create_task(process.run())
    try:
        await wait_for(lambda: _serving(process, task), timeout, "the proxy serving the ConfigMap")
        if task.done():
            task.result()  # raises what ended it
        yield process
    finally:
        process.stop()
        await asyncio.wait_for(task, 30)


async def assert_confined_to_role(kubeconfig: Path, ref: ConfigMapRef, active: str) -> None:
    """Check that the identity of `kubeconfig` reads its ConfigMap (`active` as given) and no more.

    Another ConfigMap of the namespace is forbidden, and so are listing Secrets and deleting its
    own ConfigMap.
    """
    async with await load_api_client(kubeconfig) as limited:
        assert (await KubeClient(limited, ref).read()).data["active"] == active
        with pytest.raises(ForbiddenError):
            await KubeClient(limited, ConfigMapRef(ref.namespace, "other")).read()
        core = client.CoreV1Api(limited)
        with pytest.raises(client.ApiException) as denied:
            await core.list_namespaced_secret(ref.namespace)
        assert denied.value.status == 403
        with pytest.raises(client.ApiException) as denied_delete:
            await core.delete_namespaced_config_map(ref.name, ref.namespace)
        assert denied_delete.value.status == 403
