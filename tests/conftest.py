"""Shared fixtures: real colour upstreams on loopback and a real proxy in front of them.

The code behind them is in tests/support/ (plain modules, also used by benchmarks/).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import uvloop

from proxy.metrics import TrafficStats
from proxy.routing import PreviewPolicy, ProxyTimeouts, RoutingTable, Upstream
from proxy.server import ProxyServer
from tests.support.colours import ColourApp
from tests.support.in_process import served
from tests.support.net import RunningProxy, TableFactory
from tests.support.upstreams import RawUpstreams

# For every test below tests/: the slow-kind markers, the kube-apiserver fixtures (loaded
# here once so that all directories share one session server) and the browser fixture.
pytest_plugins = ["tests.support.markers", "tests.support.kube_fixtures", "tests.support.browser"]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Run every async test on uvloop (what production uses) and on asyncio's own loop."""
    return {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


@pytest.fixture
async def colours() -> AsyncIterator[dict[str, ColourApp]]:
    """Blue and green upstream servers."""
    apps = {colour: ColourApp(colour) for colour in ("blue", "green")}
    async with served(apps):
        yield apps


@pytest.fixture
def make_table(colours: dict[str, ColourApp]) -> TableFactory:
    """Build routing tables over the running colour apps."""

    def build(
        active: str = "blue",
        *,
        version: str = "v1",
        preview: PreviewPolicy | None = None,
        timeouts: ProxyTimeouts | None = None,
        upstreams: dict[str, Upstream] | None = None,
    ) -> RoutingTable:
        ups = upstreams or {c: app.upstream() for c, app in colours.items()}
        idle = next(c for c in ups if c != active)
        return RoutingTable(
            version=version,
            active=active,
            idle=idle,
            upstreams=ups,
            preview=preview or PreviewPolicy(),
            timeouts=timeouts or ProxyTimeouts(),
        )

    return build


@pytest.fixture
async def proxy(make_table: TableFactory) -> AsyncIterator[RunningProxy]:
    """A proxy routing live traffic to blue and preview to green."""
    server = ProxyServer(TrafficStats(), make_table())
    listener = await server.listen("127.0.0.1", 0)
    yield RunningProxy(server, int(listener.sockets[0].getsockname()[1]))
    await server.shutdown(1.0)


@pytest.fixture
async def raw_upstreams() -> AsyncIterator[RawUpstreams]:
    """Upstreams written with raw streams, and proxies to them; all closed after the test."""
    made = RawUpstreams()
    yield made
    await made.close()
