"""Two breakable colour apps and a namespace with a bluegreen ConfigMap naming them.

The set-up that the tests with real `bluegreen` replicas on the kube-apiserver share: each test
gets a namespace of its own, so replicas of one test never see another test's ConfigMap or Lease.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client

from controller.kube import ConfigMapRef, load_api_client
from tests.kubernetes.apiserver import KubeApiServer
from tests.support.colours import BreakableColour
from tests.support.in_process import breakable_colours


@dataclass
class ColourConfigMap:
    """What the set-up made: an API client, the ConfigMap's reference and the colour apps."""

    api: Any
    ref: ConfigMapRef
    colours: dict[str, BreakableColour]


@contextlib.asynccontextmanager
async def colour_configmap(
    server: KubeApiServer, prefix: str, health: Mapping[str, str]
) -> AsyncIterator[ColourConfigMap]:
    """Serve blue and green, create namespace `<prefix>-<random>` with ConfigMap `bluegreen`
    (active: blue, both upstreams, then the `health` keys), and clean all of it up on exit."""
    async with breakable_colours() as colours:
        api = await load_api_client(server.kubeconfig)
        try:
            namespace = f"{prefix}-{uuid.uuid4().hex[:8]}"
            core = client.CoreV1Api(api)
            await core.create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
            )
            data = {"active": "blue", **{f"upstream.{n}": c.url for n, c in colours.items()}}
            await core.create_namespaced_config_map(
                namespace,
                client.V1ConfigMap(
                    metadata=client.V1ObjectMeta(name="bluegreen"), data={**data, **health}
                ),
            )
            yield ColourConfigMap(api, ConfigMapRef(namespace, "bluegreen"), colours)
        finally:
            await api.close()
