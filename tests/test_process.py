"""The whole `bluegreen run` process from a config file: switches, rejected edits, metrics, memory.

The proxy runs as a real subprocess through the console script, exactly as users start it; the
colour apps and the clients run in the test.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.colours import ColourApp
from tests.support.files import atomic_write
from tests.support.process import BLUEGREEN, Proxy, config_text, running, sample


@pytest.fixture
async def served(
    colours: dict[str, ColourApp], tmp_path: Path
) -> AsyncIterator[tuple[Proxy, Path]]:
    config = tmp_path / "bluegreen.yaml"
    config.write_text(config_text(colours, "blue"))
    with running(config) as proxy:
        await proxy.wait_ready()
        yield proxy, config


async def status(proxy: Proxy) -> dict[str, object]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(proxy.admin + "/status", headers={"Accept": "application/json"}) as response,
    ):
        document: dict[str, object] = await response.json()
        return document


async def test_file_edit_switches_under_load_without_a_failed_request(
    served: tuple[Proxy, Path], colours: dict[str, ColourApp]
) -> None:
    """50 clients keep requesting while the file is edited: zero failures, no stale colour."""
    proxy, config = served
    results: list[tuple[float, float, int, str]] = []  # sent, answered, status, colour
    stop = asyncio.Event()

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            sent = time.monotonic()
            async with session.get(proxy.url + "/") as response:
                await response.read()
                results.append(
                    (
                        sent,
                        time.monotonic(),
                        response.status,
                        response.headers["X-Bluegreen-Colour"],
                    )
                )

    connector = aiohttp.TCPConnector(limit=50)
    async with aiohttp.ClientSession(connector=connector) as session:
        clients = [asyncio.create_task(client(session)) for _ in range(50)]
        await asyncio.sleep(1.0)
        written = time.monotonic()
        atomic_write(config, config_text(colours, "green"))
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*clients)

    assert len(results) > 200
    assert all(code == 200 for _, _, code, _ in results)
    first_green = min(answered for _, answered, _, colour in results if colour == "green")
    # Once any client has seen green, no request sent afterwards is answered by blue.
    stale = [r for r in results if r[0] > first_green and r[3] == "blue"]
    assert stale == []
    delay = first_green - written
    print(f"switch seen by clients {delay * 1000:.1f} ms after the write")
    assert delay < 1.0
    document = await status(proxy)
    assert document["active"] == "green"
    switches = document["switches"]
    assert isinstance(switches, list) and switches[0]["from"] == "blue"
    assert switches[0]["to"] == "green" and switches[0]["reason"] == "manual"


async def test_invalid_edit_is_rejected_and_the_last_good_config_kept(
    served: tuple[Proxy, Path], colours: dict[str, ColourApp]
) -> None:
    proxy, config = served
    before = await status(proxy)
    atomic_write(config, config_text(colours, "purple", "health.interval: soon\n"))
    deadline = time.monotonic() + 5
    document = before
    while time.monotonic() < deadline and document["last_error"] is None:
        await asyncio.sleep(0.05)
        document = await status(proxy)
    error = document["last_error"]
    assert isinstance(error, str)
    assert "active" in error and "purple" in error  # both problems reported, not only the first
    assert "health.interval" in error and "soon" in error
    assert document["active"] == "blue"
    assert document["config_version"] == before["config_version"]
    async with aiohttp.ClientSession() as session, session.get(proxy.url + "/") as response:
        assert response.headers["X-Bluegreen-Colour"] == "blue"
        metrics = await (await session.get(proxy.admin + "/metrics")).text()
    assert 'bluegreen_config_reloads_total{result="rejected"} 1.0' in metrics
    assert "bluegreen_config_last_reload_successful 0.0" in metrics
    # A good edit afterwards applies and clears the error.
    atomic_write(config, config_text(colours, "green"))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        document = await status(proxy)
        if document["active"] == "green":
            break
        await asyncio.sleep(0.05)
    assert document["active"] == "green" and document["last_error"] is None
    async with aiohttp.ClientSession() as session:
        metrics = await (await session.get(proxy.admin + "/metrics")).text()
    assert sample(metrics, "bluegreen_config_last_reload_successful") == 1


async def test_metrics_match_the_traffic_sent(served: tuple[Proxy, Path]) -> None:
    proxy, _ = served
    async with aiohttp.ClientSession() as session:
        for _ in range(30):
            async with session.get(proxy.url + "/") as response:
                await response.read()
        for _ in range(7):
            async with session.get(
                proxy.url + "/", headers={"X-Bluegreen-Preview": "yes"}
            ) as response:
                await response.read()
        for _ in range(3):
            async with session.get(proxy.url + "/nothing-here-404") as response:
                await response.read()
        async with session.get(proxy.admin + "/metrics") as response:
            metrics = await response.text()
    total = "bluegreen_requests_total"
    assert sample(metrics, total, colour="blue", route="live", code="200") == 33
    assert sample(metrics, total, colour="green", route="preview", code="200") == 7
    count = "bluegreen_request_duration_seconds_count"
    assert sample(metrics, count, colour="blue", route="live") == 33
    assert sample(metrics, count, colour="green", route="preview") == 7
    assert sample(metrics, "bluegreen_inflight_requests", colour="blue") == 0
    assert sample(metrics, "bluegreen_active_colour", colour="blue") == 1
    assert sample(metrics, "bluegreen_active_colour", colour="green") == 0
    assert sample(metrics, "bluegreen_desired_colour", colour="blue") == 1
    assert sample(metrics, "bluegreen_desired_colour", colour="green") == 0
    assert sample(metrics, "bluegreen_config_reloads_total", result="accepted") == 1
    assert sample(metrics, "bluegreen_config_last_reload_success_timestamp_seconds") > 1e9


async def test_hundred_megabytes_each_way_with_bounded_memory(served: tuple[Proxy, Path]) -> None:
    proxy, _ = served
    size = 100 * 1024 * 1024
    block = b"z" * (1024 * 1024)

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(size // len(block)):
            yield block

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        headers = {"Content-Length": str(size)}
        async with session.post(proxy.url + "/count", data=upload(), headers=headers) as response:
            assert await response.text() == str(size)
        received = 0
        async with session.get(proxy.url + f"/download?size={size}") as response:
            async for piece in response.content.iter_chunked(1024 * 1024):
                received += len(piece)
        assert received == size
    peak = proxy.peak_rss_mib()
    print(f"proxy peak RSS after 100 MiB each way: {peak:.0f} MiB")
    # The interpreter with aiohttp and prometheus-client imported is ~50-60 MiB; a proxy that
    # buffered a body would have grown by 100 MiB.
    assert peak < 100


async def test_sigterm_lets_in_flight_requests_finish(served: tuple[Proxy, Path]) -> None:
    proxy, _ = served
    async with aiohttp.ClientSession() as session:
        slow = asyncio.create_task(session.get(proxy.url + "/slow?delay=1"))
        await asyncio.sleep(0.3)
        assert proxy.process is not None
        proxy.process.send_signal(signal.SIGTERM)
        response = await slow
        assert response.status == 200
        assert await response.text() == "slow blue\n"
        assert response.headers.get("Connection") == "close"
    assert proxy.process.wait(timeout=10) == 0


def test_run_refuses_to_start_on_an_invalid_file(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("active: blue\nupstream.blue: ftp://x\n")
    result = subprocess.run(
        [*BLUEGREEN, "run", "--config", str(config), "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "upstream.blue" in result.stderr and "ftp://x" in result.stderr
