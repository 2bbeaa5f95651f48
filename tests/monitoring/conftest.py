"""A real `bluegreen run` process in front of colour apps whose health and answers the test sets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.colours import BreakableColour as Colour
from tests.support.colours import breakable_config
from tests.support.files import atomic_write
from tests.support.in_process import breakable_colours
from tests.support.process import Proxy
from tests.tools import debian_tool


@pytest.fixture
def promtool() -> Path:
    """Debian's promtool (tests/tools/fetch_debian_tools.sh); tests using it get `prometheus`."""
    return debian_tool("promtool")


def config_text(colours: dict[str, Colour], active: str) -> str:
    """A config with fast health checks, so that rollbacks happen within a test."""
    # Every live request mirrored to the idle colour, and session affinity on, so that the
    # shadow and session cookie families exist.
    return breakable_config(colours, active, "shadow.percent: 100\nsession.affinity: cookie\n")


class Bluegreen(Proxy):
    """A `bluegreen run --config FILE` subprocess on loopback ports, its output in `log`."""

    def __init__(self, config: Path, log: Path, colours: dict[str, Colour]) -> None:
        super().__init__(config, ("--shutdown-grace", "2"), log=log)
        self.colours = colours

    def write_config(self, active: str) -> None:
        """Set `active` in the config file, as an operator's edit would."""
        atomic_write(self.config, config_text(self.colours, active))

    async def status(self) -> dict[str, Any]:
        """The /status JSON document."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.admin + "/status", headers={"Accept": "application/json"}) as r,
        ):
            document: dict[str, Any] = await r.json()
            return document

    async def wait_status(self, what: str, check: Any, timeout: float = 10.0) -> dict[str, Any]:
        """Poll /status until `check(document)` holds; fail with `what` after `timeout`."""
        deadline = time.monotonic() + timeout
        document = await self.status()
        while not check(document):
            assert time.monotonic() < deadline, f"{what} not seen in {timeout}s: {document}"
            await asyncio.sleep(0.05)
            document = await self.status()
        return document


@pytest.fixture
async def bluegreen(tmp_path: Path) -> AsyncIterator[Bluegreen]:
    """Colour apps blue and green, and a `bluegreen run` process with blue active."""
    async with breakable_colours() as colours:
        config = tmp_path / "bluegreen.yaml"
        config.write_text(config_text(colours, "blue"))
        process = Bluegreen(config, tmp_path / "bluegreen.log", colours)
        process.start()
        try:
            await process.wait_ready()
            yield process
        finally:
            await process.stop_in_thread()
