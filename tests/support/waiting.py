"""Polling for a condition, and for a `bluegreen run` process to become ready.

Tests wait for what they can observe (a status field, a probe's outcome) rather than sleeping
for a guessed time; each wait has a deadline and says what it waited for when it fails.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp


async def wait_for(
    condition: Callable[[], bool], timeout: float, what: str = "condition", poll: float = 0.01
) -> float:
    """Poll `condition` until it is true and return the seconds that took.

    Raises AssertionError naming `what` after `timeout` seconds.
    """
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(poll)
    return time.monotonic() - started


async def wait_for_async(
    condition: Callable[[], Awaitable[bool]], timeout: float, what: str = "condition"
) -> float:
    """As `wait_for`, for a condition that has to await (an API read)."""
    started = time.monotonic()
    while not await condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def wait_until_ready(
    admin: str, exited: Callable[[], bool], output: Callable[[], str], timeout: float = 20
) -> None:
    """Poll a `bluegreen run` process's /readyz until it answers 200.

    Fails at once when `exited()` says the process is gone, and after `timeout` seconds, both
    times with the process's `output()` in the message.
    """
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            assert not exited(), "bluegreen exited: " + output()
            try:
                async with session.get(admin + "/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"bluegreen not ready in {timeout:g}s: " + output())
