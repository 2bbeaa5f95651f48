"""The proxy following a ConfigMap on a real kube-apiserver: switches, rejections, outages, 410.

Colour apps and clients are real (loopback sockets); the proxy runs in the test's event loop as
`ProxyProcess`, exactly as `bluegreen run --configmap` wires it, so its state can be inspected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client

import controller.kube
from controller.configmap_source import ConfigMapSource
from controller.kube import (
    MERGE_PATCH,
    ConfigMapRef,
    ConflictError,
    KubeClient,
    NotFoundError,
    load_api_client,
)
from controller.process import ConfigMapSpec, ProxyProcess
from tests.kubernetes.apiserver import KubeApiServer
from tests.support.colours import ColourApp
from tests.support.kube_process import Running, colour_data, start_following, stop_all
from tests.support.waiting import wait_for, wait_for_async


@dataclass
class Cluster:
    """A namespace with one ConfigMap on the real API server, and an admin client."""

    server: KubeApiServer
    api: Any
    ref: ConfigMapRef
    proxies: Running = field(default_factory=list)

    @property
    def core(self) -> Any:
        return client.CoreV1Api(self.api)

    async def patch(self, data: Mapping[str, str | None]) -> str:
        """Merge-patch the ConfigMap's data (None removes a key); return the new version."""
        raw = await self.core.patch_namespaced_config_map(
            self.ref.name,
            self.ref.namespace,
            {"data": dict(data)},
            _content_type=MERGE_PATCH,
            _preload_content=False,
        )
        return str((await raw.json())["metadata"]["resourceVersion"])

    async def events(self, reason: str) -> list[dict[str, Any]]:
        kube = KubeClient(self.api, self.ref)
        return [e for e in await kube.events() if e.get("reason") == reason]

    async def start_proxy(self) -> ProxyProcess:
        return await start_following(ConfigMapSpec(self.ref, self.server.kubeconfig), self.proxies)


@contextlib.asynccontextmanager
async def cluster_on(
    server: KubeApiServer, colours: dict[str, ColourApp]
) -> AsyncIterator[Cluster]:
    api = await load_api_client(server.kubeconfig)
    namespace = f"bg-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    await core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="bluegreen"), data=colour_data(colours, "blue")
        ),
    )
    cluster = Cluster(server, api, ConfigMapRef(namespace, "bluegreen"))
    try:
        yield cluster
    finally:
        await stop_all(cluster.proxies)
        await api.close()


@pytest.fixture
async def cluster(
    kube_apiserver: KubeApiServer, colours: dict[str, ColourApp]
) -> AsyncIterator[Cluster]:
    async with cluster_on(kube_apiserver, colours) as made:
        yield made


class Load:
    """Concurrent clients that record (sent, answered, status, colour) for every request."""

    def __init__(self, port: int, clients: int = 20) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        self.clients = clients
        self.results: list[tuple[float, float, int, str]] = []
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Load:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.clients))
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.clients)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        assert self._session is not None
        await self._session.close()

    async def _client(self) -> None:
        assert self._session is not None
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                async with self._session.get(self.url) as response:
                    await response.read()
                    self.results.append(
                        (
                            sent,
                            time.monotonic(),
                            response.status,
                            response.headers.get("X-Bluegreen-Colour", ""),
                        )
                    )
                    if response.status != 200:
                        self.failures.append(f"status {response.status}")
            except aiohttp.ClientError as error:
                self.failures.append(repr(error))

    def colour_now(self) -> str | None:
        return self.results[-1][3] if self.results else None


async def test_merge_patch_switches_live_traffic_without_a_failure(cluster: Cluster) -> None:
    proxy = await cluster.start_proxy()
    async with Load(proxy.proxy_port) as load:
        await asyncio.sleep(0.5)
        patched_at = time.monotonic()
        await cluster.patch({"active": "green"})
        await wait_for(
            lambda: proxy.state.table is not None and proxy.state.table.active == "green", 5
        )
        applied_at = time.monotonic()
        await asyncio.sleep(0.5)
    assert load.failures == []
    first_green = min(answered for _, answered, _, colour in load.results if colour == "green")
    stale = [r for r in load.results if r[0] > first_green and r[3] == "blue"]
    assert stale == []
    print(f"applied {1000 * (applied_at - patched_at):.1f} ms after the PATCH was sent")
    await wait_for_async(lambda: _has_events(cluster, "Switched", 1), 5)


async def _has_events(cluster: Cluster, reason: str, count: int) -> bool:
    return len(await cluster.events(reason)) == count


async def test_twenty_switches_under_load_fail_no_request(cluster: Cluster) -> None:
    proxy = await cluster.start_proxy()
    async with Load(proxy.proxy_port) as load:
        for i in range(20):
            target = "green" if i % 2 == 0 else "blue"
            await cluster.patch({"active": target})
            await wait_for(
                lambda t=target: proxy.state.table is not None and proxy.state.table.active == t,  # type: ignore[misc]
                5,
            )
            await asyncio.sleep(0.1)
    assert load.failures == []
    assert len(load.results) > 100
    assert {colour for *_, colour in load.results} == {"blue", "green"}


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ({"active": "purple"}, "purple"),
        ({"upstream.green": "ftp://nowhere"}, "ftp://nowhere"),
        ({"upstream.green": None}, "upstream."),
        ({"health.interval": "soon"}, "health.interval"),
    ],
    ids=["unknown-active", "bad-url", "missing-upstream", "bad-duration"],
)
async def test_invalid_configmap_keeps_the_last_good_config(
    cluster: Cluster, bad: dict[str, Any], expected: str
) -> None:
    proxy = await cluster.start_proxy()
    good_version = proxy.state.table.version if proxy.state.table else None
    rejected_version = await cluster.patch(bad)
    await wait_for(lambda: proxy.state.last_error is not None, 5)
    assert expected in (proxy.state.last_error or "")
    assert rejected_version in (proxy.state.last_error or "")
    assert proxy.state.table is not None and proxy.state.table.version == good_version
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{proxy.proxy_port}/") as response:
            assert response.headers["X-Bluegreen-Colour"] == "blue"
        async with session.get(f"http://127.0.0.1:{proxy.admin_port}/status?format=json") as r:
            assert expected in (await r.json())["last_error"]
    await wait_for_async(lambda: _has_events(cluster, "ConfigRejected", 1), 5)
    # The next valid version recovers.
    await cluster.patch(colour_data_from(cluster, proxy, "green"))
    await wait_for(lambda: proxy.state.table is not None and proxy.state.table.active == "green", 5)
    assert proxy.state.last_error is None


def colour_data_from(cluster: Cluster, proxy: ProxyProcess, active: str) -> dict[str, str]:
    table = proxy.state.table
    assert table is not None
    data = {f"upstream.{c}": u.url for c, u in table.upstreams.items()}
    data["active"] = active
    data["health.interval"] = "2s"
    return data


async def test_api_server_outage_keeps_traffic_and_the_watch_resumes(
    kube_apiserver: KubeApiServer, colours: dict[str, ColourApp]
) -> None:
    async with cluster_on(kube_apiserver, colours) as cluster:
        proxy = await cluster.start_proxy()
        async with Load(proxy.proxy_port, clients=5) as load:
            kube_apiserver.stop()
            try:
                await asyncio.sleep(2)
                assert load.failures == []
                assert load.colour_now() == "blue"
            finally:
                kube_apiserver.start()
        assert load.failures == []
        await cluster.patch({"active": "green"})
        await wait_for(
            lambda: proxy.state.table is not None and proxy.state.table.active == "green", 30
        )


async def test_expired_watch_lists_again_and_later_switches_apply(
    kube_apiserver_fast_compaction: KubeApiServer,
    colours: dict[str, ColourApp],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Short server-side watches, so the proxy re-watches from its last resourceVersion often.
    monkeypatch.setattr(controller.kube, "WATCH_TIMEOUT_SECONDS", 1)
    async with cluster_on(kube_apiserver_fast_compaction, colours) as cluster:
        proxy = await cluster.start_proxy()
        source = proxy.source
        assert isinstance(source, ConfigMapSource)
        # Writes to other objects move etcd's revision on; compaction every 2 s then removes the
        # revision the proxy would resume from, and this server sends configmap watches no
        # bookmarks, so the next watch gets 410 Gone.
        for i in range(20):
            await cluster.core.create_namespaced_config_map(
                cluster.ref.namespace,
                client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"filler-{i}")),
            )
        await wait_for(lambda: source.relists >= 1, 30)
        await cluster.patch({"active": "green"})
        await wait_for(
            lambda: proxy.state.table is not None and proxy.state.table.active == "green", 30
        )


async def test_two_proxies_switch_together_and_events_exist_once(cluster: Cluster) -> None:
    first = await cluster.start_proxy()
    second = await cluster.start_proxy()
    await cluster.patch({"active": "green"})
    await wait_for(
        lambda: all(
            p.state.table is not None and p.state.table.active == "green" for p in (first, second)
        ),
        5,
    )
    await cluster.patch({"active": "nope"})
    await wait_for(lambda: all(p.state.last_error is not None for p in (first, second)), 5)
    await asyncio.sleep(1)  # both replicas have tried to record their Events by now
    assert len(await cluster.events("Switched")) == 1
    assert len(await cluster.events("ConfigRejected")) == 1


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_cli_switch_status_and_rollback_on_a_configmap(cluster: Cluster) -> None:
    target = ["--configmap", str(cluster.ref), "--kubeconfig", str(cluster.server.kubeconfig)]
    loop = asyncio.get_running_loop()
    refused = await loop.run_in_executor(None, lambda: cli("switch", "purple", *target))
    assert refused.returncode == 2 and "unknown colour 'purple'" in refused.stderr
    switched = await loop.run_in_executor(None, lambda: cli("switch", "green", *target))
    assert switched.returncode == 0, switched.stderr
    assert "switched blue -> green" in switched.stdout
    again = await loop.run_in_executor(None, lambda: cli("switch", "green", *target))
    assert "already active" in again.stdout
    status = await loop.run_in_executor(None, lambda: cli("status", "-o", "json", *target))
    document = json.loads(status.stdout)
    assert document["active"] == "green"
    assert document["switches"][0]["from"] == "blue"
    assert document["switches"][0]["to"] == "green"
    back = await loop.run_in_executor(None, lambda: cli("rollback", *target))
    assert back.returncode == 0, back.stderr
    assert "switched green -> blue" in back.stdout
    text = await loop.run_in_executor(None, lambda: cli("status", *target))
    assert "active        blue" in text.stdout


async def test_cli_cluster_status_with_admin_shows_the_running_proxy(cluster: Cluster) -> None:
    proxy = await cluster.start_proxy()
    admin = f"http://127.0.0.1:{proxy.admin_port}"
    target = ["--configmap", str(cluster.ref), "--kubeconfig", str(cluster.server.kubeconfig)]
    loop = asyncio.get_running_loop()
    status = await loop.run_in_executor(
        None, lambda: cli("status", "-o", "json", "--admin", admin, *target)
    )
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    assert document["active"] == "blue"
    assert document["running"]["active"] == "blue"
    assert set(document["running"]["colours"]) == {"blue", "green"}
    text = await loop.run_in_executor(None, lambda: cli("status", "--admin", admin, *target))
    assert "running proxy active=blue" in text.stdout
    no_scheme = admin.removeprefix("http://")  # HOST:PORT, as people type it: http is meant
    text = await loop.run_in_executor(None, lambda: cli("status", "--admin", no_scheme, *target))
    assert text.returncode == 0, text.stderr
    assert "running proxy active=blue" in text.stdout
    unreachable = await loop.run_in_executor(
        None, lambda: cli("status", "--admin", "http://127.0.0.1:1", *target)
    )
    assert unreachable.returncode == 1
    assert "cannot read http://127.0.0.1:1" in unreachable.stderr


def test_configmap_ref_parsing() -> None:
    assert ConfigMapRef.parse("default/bluegreen") == ConfigMapRef("default", "bluegreen")
    with pytest.raises(ValueError, match="NAMESPACE/NAME"):
        ConfigMapRef.parse("bluegreen")


async def test_patch_guarded_by_a_stale_version_is_refused(cluster: Cluster) -> None:
    kube = KubeClient(cluster.api, cluster.ref)
    read = await kube.read()
    await cluster.patch({"active": "green"})  # someone else writes in between
    with pytest.raises(ConflictError):
        await kube.patch(read.resource_version, data={"active": "blue"})
    assert (await kube.read()).data["active"] == "green"
    with pytest.raises(NotFoundError):
        await KubeClient(cluster.api, ConfigMapRef(cluster.ref.namespace, "absent")).read()
