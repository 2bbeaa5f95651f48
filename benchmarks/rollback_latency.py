"""How fast a bad switch is undone: first failing response of the new colour -> traffic back.

Run: .venv/bin/python benchmarks/rollback_latency.py [--switches 20] [--clients 10]

Two colour apps run in this process; `bluegreen run --config` runs as its own process with the
default rollback policy (maxErrorRate 0.05 over at least minRequests 20). Clients keep sending
live traffic. Each round switches to green (by rewriting the file, as `bluegreen switch` does)
while green answers every live request with 500; the proxy must notice from the traffic alone
and switch back. Per round: the time from the first failing response to the first response from
blue again, and the failed requests in between. Prints medians, p99 and totals.
For comparison: Flagger rolls back after interval x threshold of failed analysis (minutes with
its defaults); Argo Rollouts needs an AnalysisRun against a metrics provider.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.proxy_process import percentile, start_proxy, wait_ready
from controller.file_source import write_active
from tests.support.colours import BreakableColour as Colour
from tests.support.net import free_port


async def run(switches: int, clients: int) -> None:
    colours = {"blue": Colour("blue"), "green": Colour("green")}
    runners: list[web.AppRunner] = []
    for colour in colours.values():
        runner = web.AppRunner(colour.app(), access_log=None)
        await runner.setup()
        colour.port = free_port()
        await web.TCPSite(runner, "127.0.0.1", colour.port).start()
        runners.append(runner)
    workdir = Path(tempfile.mkdtemp(prefix="bluegreen-rollback-"))
    config = workdir / "bluegreen.yaml"
    config.write_text(
        "active: blue\n"
        f"upstream.blue: http://127.0.0.1:{colours['blue'].port}\n"
        f"upstream.green: http://127.0.0.1:{colours['green'].port}\n"
    )
    proxy = start_proxy(["--config", str(config)])
    answers: list[tuple[float, int, str]] = []  # (answered at, status, colour)
    stop = asyncio.Event()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:
            await wait_ready(proxy)

            async def client() -> None:
                while not stop.is_set():
                    try:
                        async with session.get(f"http://127.0.0.1:{proxy.port}/") as response:
                            await response.read()
                            colour = response.headers.get("X-Bluegreen-Colour", "")
                            answers.append((time.monotonic(), response.status, colour))
                    except aiohttp.ClientError:
                        answers.append((time.monotonic(), 0, ""))

            workers = [asyncio.create_task(client()) for _ in range(clients)]
            await asyncio.sleep(1)
            latencies: list[float] = []
            failed: list[int] = []
            colours["green"].failing = True
            for _ in range(switches):
                mark = len(answers)
                write_active(config, "green")
                deadline = time.monotonic() + 10
                while True:
                    await asyncio.sleep(0.02)
                    window = answers[mark:]
                    first_bad = next((a for a in window if a[1] != 200), None)
                    back = first_bad is not None and any(
                        a[0] > first_bad[0] and a[2] == "blue" and a[1] == 200 for a in window
                    )
                    if back or time.monotonic() > deadline:
                        break
                assert first_bad is not None and back, "no rollback within 10 s"
                first_blue = min(
                    a[0] for a in window if a[0] > first_bad[0] and a[2] == "blue" and a[1] == 200
                )
                latencies.append(first_blue - first_bad[0])
                failed.append(sum(1 for a in window if a[1] != 200 and a[0] <= first_blue))
                await asyncio.sleep(0.3)  # the file write-back lands before the next switch
            stop.set()
            await asyncio.gather(*workers)
    finally:
        proxy.stop()
        for runner in runners:
            await runner.cleanup()
    print(f"bad switches: {switches}, clients: {clients}, requests: {len(answers)}")
    print("first failing response -> first response from the old colour again:")
    print(f"  median {statistics.median(latencies) * 1000:7.1f} ms")
    print(f"  p99    {percentile(latencies, 0.99) * 1000:7.1f} ms")
    print(
        f"failed user requests per bad switch: median {statistics.median(failed):.0f}, "
        f"max {max(failed)}, total {sum(failed)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--switches", type=int, default=20)
    parser.add_argument("--clients", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(run(args.switches, args.clients))


if __name__ == "__main__":
    main()
