"""Shadow traffic over real sockets: mirrored to the idle colour, compared, and never in the way.

The live colour (blue) and the idle one (green) are raw servers, so the idle colour can
misbehave exactly: answer 500 on /api, never answer, reset, or send 10 MiB slowly.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import pytest

from proxy.metrics import TrafficStats, traffic_registry
from proxy.routing import ProxyTimeouts, RoutingTable, ShadowSettings, Upstream
from proxy.server import ProxyServer
from proxy.shadow_compare import DROPPED, ERROR, MATCH, MISMATCH
from tests.support.net import free_port
from tests.support.waiting import wait_for

Answer = Callable[[bytes], Awaitable[tuple[int, bytes]]]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Recorder:
    """A keep-alive HTTP/1.1 server that records each request (head and body) it reads."""

    answer: Answer
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                self.requests.append((head, body))
                status, text = await self.answer(head)
                writer.write(
                    b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(text), text)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def answering(colour: bytes, *, failing: bytes | None = None) -> Answer:
    """200 with the colour's name; 500 for targets starting with `failing`."""

    async def answer(head: bytes) -> tuple[int, bytes]:
        target = head.split(b" ", 2)[1]
        if failing is not None and target.startswith(failing):
            return 500, b"broken\n"
        return 200, colour + b"\n"

    return answer


@dataclass
class Setup:
    """A proxy with live blue and idle green, and what it took to make them."""

    server: ProxyServer
    port: int
    table: RoutingTable
    servers: list[asyncio.Server]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def shadow(self) -> object:
        return self.server.stats.shadow

    def swap(self, **shadow: Any) -> None:
        self.table = replace(self.table, shadow=replace(self.table.shadow, **shadow))
        self.server.swap_table(self.table)


class Proxies:
    def __init__(self) -> None:
        self.made: list[Setup] = []

    async def start(
        self, live: Handler, idle: Handler | int, settings: ShadowSettings, read: float = 5.0
    ) -> Setup:
        servers = [await asyncio.start_server(live, "127.0.0.1", 0)]
        ports = [int(servers[0].sockets[0].getsockname()[1])]
        if isinstance(idle, int):
            ports.append(idle)
        else:
            servers.append(await asyncio.start_server(idle, "127.0.0.1", 0))
            ports.append(int(servers[1].sockets[0].getsockname()[1]))
        upstreams = {
            colour: Upstream(colour, f"http://127.0.0.1:{port}", "127.0.0.1", port)
            for colour, port in zip(("blue", "green"), ports, strict=True)
        }
        table = RoutingTable(
            "v1", "blue", "green", upstreams, timeouts=ProxyTimeouts(read=read), shadow=settings
        )
        server = ProxyServer(TrafficStats(), table)
        listener = await server.listen("127.0.0.1", 0)
        setup = Setup(server, int(listener.sockets[0].getsockname()[1]), table, servers)
        self.made.append(setup)
        return setup

    async def close(self) -> None:
        for setup in self.made:
            await setup.server.shutdown(0.5)
            for server in setup.servers:
                server.close()


@pytest.fixture
async def proxies() -> AsyncIterator[Proxies]:
    made = Proxies()
    yield made
    await made.close()


ALL = ShadowSettings(percent=100)


def counts(setup: Setup, colour: str = "green") -> dict[str, int]:
    kept = setup.server.stats.shadow.colours.get(colour)
    return dict(kept.counts) if kept is not None else {}


async def settled(setup: Setup, total: int, timeout: float = 5.0) -> dict[str, int]:
    """Wait until `total` shadows have an outcome, and return the counts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = counts(setup)
        if sum(seen.values()) >= total and setup.server.shadows.inflight == 0:
            return seen
        await asyncio.sleep(0.02)
    raise AssertionError(f"shadows did not settle: {counts(setup)}")


async def get(session: aiohttp.ClientSession, url: str, **kwargs: object) -> tuple[int, str, str]:
    async with session.get(url, **kwargs) as response:  # type: ignore[arg-type]
        return response.status, response.headers["X-Bluegreen-Colour"], await response.text()


async def test_a_mirrored_request_reaches_the_idle_colour_with_the_marker(
    proxies: Proxies,
) -> None:
    live, idle = Recorder(answering(b"blue")), Recorder(answering(b"green"))
    setup = await proxies.start(live.handle, idle.handle, ALL)
    async with aiohttp.ClientSession() as session:
        # A client's own marker is removed: a live request never passes for a shadow.
        answer = await get(session, setup.url + "/a?q=1", headers={"X-Bluegreen-Shadow": "1"})
    assert answer == (200, "blue", "blue\n")
    assert await settled(setup, 1) == {MATCH: 1, MISMATCH: 0, ERROR: 0, DROPPED: 0}
    (live_head, _), (shadow_head, _) = live.requests[0], idle.requests[0]
    assert b"x-bluegreen-shadow" not in live_head.lower()
    # The live request as forwarded, plus the marker just before the blank line.
    assert shadow_head == live_head[:-2] + b"X-Bluegreen-Shadow: 1\r\n\r\n"
    assert shadow_head.startswith(b"GET /a?q=1 HTTP/1.1\r\n")
    assert b"X-Request-Id: " in shadow_head


async def test_unsafe_methods_are_not_mirrored_unless_listed(proxies: Proxies) -> None:
    live, idle = Recorder(answering(b"blue")), Recorder(answering(b"green"))
    setup = await proxies.start(live.handle, idle.handle, ALL)
    async with aiohttp.ClientSession() as session:
        async with session.post(setup.url + "/order", data=b"one") as response:
            assert response.status == 200 and await response.text() == "blue\n"
        async with session.head(setup.url + "/") as response:
            assert response.status == 200
        await asyncio.sleep(0.2)
        assert [head.split(b" ", 1)[0] for head, _ in idle.requests] == [b"HEAD"]
        setup.swap(methods=frozenset({b"GET", b"POST"}))
        async with session.post(setup.url + "/order", data=b"two") as response:
            assert await response.text() == "blue\n"
        # Larger than shadow.maxBodySize: not mirrored.
        async with session.post(setup.url + "/big", data=b"x" * (64 * 1024 + 1)) as response:
            assert response.status == 200
    await settled(setup, 2)
    assert idle.requests[-1][0].startswith(b"POST /order ")
    assert idle.requests[-1][1] == b"two"
    assert len(idle.requests) == 2
    assert len(live.requests) == 4


async def test_a_wrong_idle_colour_shows_on_its_paths(proxies: Proxies) -> None:
    live = Recorder(answering(b"blue"))
    idle = Recorder(answering(b"green", failing=b"/api"))
    setup = await proxies.start(live.handle, idle.handle, ALL)
    async with aiohttp.ClientSession() as session:
        for n in range(30):
            path = "/api/items" if n % 3 == 0 else f"/page/{n % 2}"
            assert (await get(session, setup.url + path + "?id=7"))[:2] == (200, "blue")
    seen = await settled(setup, 30)
    assert seen == {MATCH: 20, MISMATCH: 0, ERROR: 10, DROPPED: 0}
    stats = setup.server.stats.shadow
    figures = stats.figures("green", time.monotonic())
    assert figures.compared == 30
    assert figures.bad_rate == pytest.approx(1 / 3)
    paths = stats.colours["green"].paths.most()
    assert [(p.path, p.count, p.live_status, p.shadow_status) for p in paths] == [
        ("/api/items", 10, 200, 500)
    ]
    snapshot = stats.snapshot(time.monotonic())
    assert snapshot["colours"]["green"]["mismatching_paths"][0]["path"] == "/api/items"  # type: ignore[index]


async def test_status_and_body_differences_are_mismatches(proxies: Proxies) -> None:
    async def idle_answer(head: bytes) -> tuple[int, bytes]:
        target = head.split(b" ", 2)[1]
        if target == b"/gone":
            return 404, b"no\n"
        return 200, b"blue\n" if target == b"/same" else b"other\n"

    live, idle = Recorder(answering(b"blue")), Recorder(idle_answer)
    setup = await proxies.start(live.handle, idle.handle, replace(ALL, compare_body=True))
    async with aiohttp.ClientSession() as session:
        for path in ("/same", "/gone", "/differs"):
            await get(session, setup.url + path)
    assert await settled(setup, 3) == {MATCH: 1, MISMATCH: 2, ERROR: 0, DROPPED: 0}
    what = {p.path: p.what for p in setup.server.stats.shadow.colours["green"].paths.most()}
    assert what == {"/gone": "status class", "/differs": "body"}


async def test_percent_mirrors_that_share_exactly(proxies: Proxies) -> None:
    live, idle = Recorder(answering(b"blue")), Recorder(answering(b"green"))
    setup = await proxies.start(live.handle, idle.handle, ShadowSettings(percent=10))
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            await get(session, setup.url + "/")
    await settled(setup, 10)
    assert len(idle.requests) == 10
    setup.swap(percent=0.0)
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            await get(session, setup.url + "/")
    assert len(idle.requests) == 10


async def test_preview_requests_are_not_mirrored(proxies: Proxies) -> None:
    live, idle = Recorder(answering(b"blue")), Recorder(answering(b"green"))
    setup = await proxies.start(live.handle, idle.handle, ALL)
    async with aiohttp.ClientSession() as session:
        answer = await get(session, setup.url + "/", headers={"X-Bluegreen-Preview": "1"})
    assert answer[:2] == (200, "green")
    await asyncio.sleep(0.2)
    assert len(idle.requests) == 1 and counts(setup) == {}


async def live_load(setup: Setup, requests: int, concurrency: int = 10) -> list[float]:
    """Send `requests` GETs from `concurrency` clients; return each one's latency."""
    latencies: list[float] = []

    async def client(session: aiohttp.ClientSession, n: int) -> None:
        for _ in range(n):
            started = time.perf_counter()
            status, colour, _ = await get(session, setup.url + "/")
            assert (status, colour) == (200, "blue")
            latencies.append(time.perf_counter() - started)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(
            *(client(session, requests // concurrency) for _ in range(concurrency))
        )
    return latencies


def shadow_connections(setup: Setup) -> int:
    return sum(pool.open for pool in setup.server.shadows.pools.values())


async def no_shadow_connections(setup: Setup) -> None:
    """Wait until every shadow connection is closed (an abort completes a loop turn later)."""
    await wait_for(lambda: shadow_connections(setup) == 0, 2, "shadow connections closed")


async def test_an_idle_colour_that_never_answers_costs_live_nothing(proxies: Proxies) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()  # reads, answers nothing, until the proxy gives up

    live = Recorder(answering(b"blue"))
    settings = ShadowSettings(percent=100, max_inflight=20, timeout=1.0)
    setup = await proxies.start(live.handle, silent, settings)
    most_inflight = most_connections = 0

    async def watch() -> None:
        nonlocal most_inflight, most_connections
        while True:
            most_inflight = max(most_inflight, setup.server.shadows.inflight)
            most_connections = max(most_connections, shadow_connections(setup))
            await asyncio.sleep(0.005)

    watcher = asyncio.get_running_loop().create_task(watch())
    latencies = await live_load(setup, 400)
    watcher.cancel()
    # Loosely: the live answer never waits for the shadow's 1 s timeout (the benchmark
    # measures it exactly).
    assert max(latencies) < 0.5, max(latencies)
    assert most_inflight <= 20 and most_connections <= 20, (most_inflight, most_connections)
    seen = await settled(setup, 400, timeout=5.0)
    assert seen[DROPPED] >= 300  # past maxInflight: dropped at once, never queued
    assert seen[ERROR] >= 20 and seen[MATCH] == 0
    assert {p.what for p in setup.server.stats.shadow.colours["green"].paths.most()} == {"timeout"}
    await no_shadow_connections(setup)


async def test_an_idle_colour_that_resets_is_an_error_and_live_is_untouched(
    proxies: Proxies,
) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    live = Recorder(answering(b"blue"))
    setup = await proxies.start(live.handle, reset, ShadowSettings(percent=100, max_inflight=20))
    latencies = await live_load(setup, 200)
    assert max(latencies) < 0.5
    seen = await settled(setup, 200)
    assert seen[ERROR] + seen[DROPPED] == 200 and seen[ERROR] >= 20 and seen[MATCH] == 0
    assert {p.what for p in setup.server.stats.shadow.colours["green"].paths.most()} == {"reset"}


async def test_a_dead_idle_colour_is_an_error(proxies: Proxies) -> None:
    live = Recorder(answering(b"blue"))
    setup = await proxies.start(live.handle, free_port(), ALL)
    await live_load(setup, 20, concurrency=2)
    seen = await settled(setup, 20)
    assert seen[ERROR] == 20
    assert {p.what for p in setup.server.stats.shadow.colours["green"].paths.most()} == {"connect"}


async def test_a_slow_10_mib_answer_is_cut_at_max_body_size(proxies: Proxies) -> None:
    sent: list[int] = []
    cut = asyncio.Event()

    async def slow_big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        size = 10 * 1024 * 1024
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        total = 0
        try:
            while total < size:
                writer.write(b"x" * 65536)
                await writer.drain()
                total += 65536
                await asyncio.sleep(0.05)  # 1.3 MB/s: the whole body would take ~8 s
        except ConnectionError:
            cut.set()
        finally:
            sent.append(total)
            writer.close()

    live = Recorder(answering(b"blue"))
    settings = ShadowSettings(percent=100, max_body_size=128 * 1024, timeout=30.0)
    setup = await proxies.start(live.handle, slow_big, settings)
    async with aiohttp.ClientSession() as session:
        assert (await get(session, setup.url + "/file"))[:2] == (200, "blue")
    # Compared by status once past shadow.maxBodySize, and the connection closed there.
    assert await settled(setup, 1) == {MATCH: 1, MISMATCH: 0, ERROR: 0, DROPPED: 0}
    async with asyncio.timeout(5):
        await cut.wait()
    assert sent[0] < 2 * 1024 * 1024, sent
    await no_shadow_connections(setup)


async def test_the_shadow_families_are_exported(proxies: Proxies) -> None:
    live = Recorder(answering(b"blue"))
    idle = Recorder(answering(b"green", failing=b"/api"))
    setup = await proxies.start(live.handle, idle.handle, ALL)
    registry = traffic_registry(setup.server.stats)
    assert registry.get_sample_value("bluegreen_shadow_requests_total", {}) is None
    async with aiohttp.ClientSession() as session:
        await get(session, setup.url + "/")
        await get(session, setup.url + "/api")
    await settled(setup, 2)

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"colour": "green", **labels})

    assert sample("bluegreen_shadow_requests_total", outcome="match") == 1
    assert sample("bluegreen_shadow_requests_total", outcome="error") == 1
    assert sample("bluegreen_shadow_requests_total", outcome="dropped") == 0
    assert sample("bluegreen_shadow_duration_seconds_count") == 2
    assert sample("bluegreen_shadow_mismatch_ratio") == 0.5
    ratio = sample("bluegreen_shadow_latency_ratio")
    assert ratio is not None and ratio > 0


async def test_shutdown_ends_the_shadows_in_flight(proxies: Proxies) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    live = Recorder(answering(b"blue"))
    setup = await proxies.start(live.handle, silent, ShadowSettings(percent=100, timeout=30.0))
    await live_load(setup, 10, concurrency=2)
    await wait_for(lambda: shadow_connections(setup) == 10, 2, "ten shadows waiting")
    await setup.server.shutdown(0.5)
    # Uncompared: dropped, and nothing is left waiting for the 30 s deadline.
    assert setup.server.shadows.inflight == 0
    assert counts(setup)[DROPPED] == 10
    await no_shadow_connections(setup)
