"""Two breakable colour apps and a `ProxyProcess` in the test's own event loop, for fixtures.

The in-process counterpart of tests/support/process.py (which runs `bluegreen run` as a child):
tests that look at the process's state (its routing table, health, switches) use these.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from controller.health_state import Health
from controller.process import Endpoint, ProxyProcess
from tests.support.colours import BreakableColour, start_app
from tests.support.waiting import wait_for


@asynccontextmanager
async def breakable_colours() -> AsyncIterator[dict[str, BreakableColour]]:
    """Blue and green BreakableColour apps on free loopback ports, stopped on exit."""
    colours = {name: BreakableColour(name) for name in ("blue", "green")}
    runners = []
    try:
        for colour in colours.values():
            runner, colour.port = await start_app(colour.app())
            runners.append(runner)
        yield colours
    finally:
        for runner in runners:
            await runner.cleanup()


@asynccontextmanager
async def in_process_proxy(
    config: Path, *, healthy: Sequence[str] = ("green",)
) -> AsyncIterator[ProxyProcess]:
    """A ProxyProcess over `config` on free loopback ports, serving, with the colours named in
    `healthy` passing their health checks; stopped on exit. A process that stops while
    starting raises what stopped it."""
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
        yield process
    finally:
        process.stop()
        await asyncio.wait_for(task, 15)
