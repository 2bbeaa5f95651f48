"""How fast a ConfigMap edit moves live traffic: from the PATCH to all requests on the new colour.

Run: .venv/bin/python benchmarks/switch_latency.py [--switches 50] [--clients 10]

Starts a real kube-apiserver and etcd (tests/kubernetes/apiserver.py; build them first with
tests/kubernetes/build_apiserver.sh), two colour apps, and `bluegreen run --configmap` as its own
process. Clients keep requesting while the script patches `active` back and forth. For each switch
the latency is the time from the PATCH's response until the first moment after which every request
sent was answered by the new colour. Prints median and p99, and the failed requests of the run.
For comparison (PRODUCT.md): Argo Rollouts waits for kube-proxy on every node (seconds),
ingress-nginx applies canary changes in about 4-5 s, Traefik throttles provider changes by 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from kubernetes_asyncio import client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.proxy_process import ProxyUnderTest, percentile, start_proxy, wait_ready
from controller.kube import load_api_client
from tests.kubernetes.apiserver import KubeApiServer
from tests.support.colours import BreakableColour, start_app

MERGE_PATCH = "application/merge-patch+json"


async def run(switches: int, clients: int) -> None:
    server = KubeApiServer()
    server.start()
    runners: list[web.AppRunner] = []
    proxy: ProxyUnderTest | None = None
    api = await load_api_client(server.kubeconfig)
    try:
        colours = {name: BreakableColour(name) for name in ("blue", "green")}
        for colour in colours.values():
            runner, colour.port = await start_app(colour.app())
            runners.append(runner)
        core = client.CoreV1Api(api)
        await core.create_namespaced_config_map(
            "default",
            client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name="bluegreen"),
                data={
                    "active": "blue",
                    "upstream.blue": colours["blue"].url,
                    "upstream.green": colours["green"].url,
                },
            ),
        )
        proxy = start_proxy(
            ["--configmap", "default/bluegreen", "--kubeconfig", str(server.kubeconfig)]
        )
        url = f"http://127.0.0.1:{proxy.port}/"
        results: list[tuple[float, str]] = []  # (sent, colour)
        failures = 0
        stop = asyncio.Event()

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:
            await wait_ready(proxy)

            async def load() -> None:
                nonlocal failures
                while not stop.is_set():
                    sent = time.monotonic()
                    try:
                        async with session.get(url) as response:
                            body = await response.text()
                            if response.status != 200:
                                failures += 1
                            else:
                                results.append((sent, body.strip()))  # "blue\n"
                    except aiohttp.ClientError:
                        failures += 1

            workers = [asyncio.create_task(load()) for _ in range(clients)]
            await asyncio.sleep(1)
            latencies: list[float] = []
            from_send: list[float] = []
            target = "blue"
            for _ in range(switches):
                target = "green" if target == "blue" else "blue"
                sent_patch = time.monotonic()
                await core.patch_namespaced_config_map(
                    "bluegreen",
                    "default",
                    {"data": {"active": target}},
                    _content_type=MERGE_PATCH,  # type: ignore[call-arg]
                )
                patched = time.monotonic()
                await asyncio.sleep(0.5)
                stale = [
                    sent for sent, colour in results if sent >= sent_patch and colour != target
                ]
                last_stale = max(stale, default=sent_patch)
                latencies.append(max(0.0, last_stale - patched))
                from_send.append(last_stale - sent_patch)
            stop.set()
            await asyncio.gather(*workers)

        print(f"switches: {switches}, clients: {clients}, requests: {len(results)}")
        for title, figures in (
            ("PATCH response -> all new requests on the new colour", latencies),
            ("PATCH sent -> all new requests on the new colour", from_send),
        ):
            figures.sort()
            p99 = percentile(figures, 0.99)
            print(f"{title}:")
            print(f"  median {statistics.median(figures) * 1000:7.1f} ms")
            print(f"  p99    {p99 * 1000:7.1f} ms")
            print(f"  max    {figures[-1] * 1000:7.1f} ms")
        print(f"failed requests: {failures}")
    finally:
        if proxy is not None:
            proxy.stop()
        for runner in runners:
            await runner.cleanup()
        await api.close()
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--switches", type=int, default=50)
    parser.add_argument("--clients", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(run(args.switches, args.clients))


if __name__ == "__main__":
    main()
