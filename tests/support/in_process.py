"""Colour apps and a `ProxyProcess` in the test's own event loop, for fixtures.

The in-process counterpart of tests/support/process.py (which runs `bluegreen run` as a child):
tests that look at the process's state (its routing table, health, switches) use these.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol, TypeVar

from aiohttp import web

from controller.health_state import Health
from controller.process import Endpoint, ProxyProcess
from tests.support.colours import BreakableColour, start_app
from tests.support.waiting import wait_for


class ServedApp(Protocol):
    """A test server: its aiohttp application, and the port it is served on once started."""

    port: int

    def app(self) -> web.Application: ...


App = TypeVar("App", bound=ServedApp)


@asynccontextmanager
async def served(apps: Mapping[str, App]) -> AsyncIterator[Mapping[str, App]]:
    """Serve each of `apps` on a free loopback port (set as its `port`); stop them on exit."""
    runners = []
    try:
        for app in apps.values():
            runner, app.port = await start_app(app.app())
            runners.append(runner)
        yield apps
    finally:
        for runner in runners:
            await runner.cleanup()


@asynccontextmanager
async def breakable_colours() -> AsyncIterator[dict[str, BreakableColour]]:
    """Blue and green BreakableColour apps on free loopback ports, stopped on exit."""
    colours = {name: BreakableColour(name) for name in ("blue", "green")}
    async with served(colours):
        yield colours


@asynccontextmanager
async def in_process_run(
    config: Path, *, healthy: Sequence[str] = ("green",)
) -> AsyncIterator[tuple[ProxyProcess, asyncio.Task[None]]]:
    """A ProxyProcess over `config` on free loopback ports, serving, with the colours named in
    `healthy` passing their health checks, and the task running it (for a test that stops the
    process itself); stopped on exit. A process that stops while starting raises what stopped
    it."""
    process = ProxyProcess(config, Endpoint("127.0.0.1", 0), Endpoint("127.0.0.1", 0))
    task = asyncio.create_task(process.run())

    def started() -> bool:
        return task.done() or (
            process.ready.is_set()
            and all(process.health.health(colour) is Health.HEALTHY for colour in healthy)
        )

    try:
        await wait_for(started, 10, "process ready")
        if task.done():
            task.result()
        yield process, task
    finally:
        process.stop()
        await asyncio.wait_for(task, 15)


@asynccontextmanager
async def in_process_proxy(
    config: Path, *, healthy: Sequence[str] = ("green",)
) -> AsyncIterator[ProxyProcess]:
    """As `in_process_run`, for the process alone."""
    async with in_process_run(config, healthy=healthy) as (process, _):
        yield process
