"""A real `bluegreen run` process in front of colour apps whose health and answers the test sets."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.colours import BreakableColour as Colour
from tests.support.colours import breakable_config, start_app
from tests.support.files import atomic_write
from tests.support.net import free_port
from tests.support.waiting import wait_until_ready
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


@dataclass
class Bluegreen:
    """A `bluegreen run --config FILE` subprocess on loopback ports."""

    config: Path
    log: Path
    colours: dict[str, Colour]
    process: subprocess.Popen[bytes]
    port: int
    admin_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def output(self) -> str:
        """The process's log so far, for failure messages."""
        return read_log(self.log)

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


def read_log(log: Path) -> str:
    """The end of a process's log, for failure messages."""
    return log.read_text(errors="replace")[-4000:]


def start_bluegreen(config: Path, port: int, admin_port: int, log: Path) -> subprocess.Popen[bytes]:
    """Start `bluegreen run` as users do, its output going to `log` (a pipe could fill up)."""
    with log.open("wb") as sink:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "controller.cli", "run"),
                *("--config", str(config)),
                *("--listen", f"127.0.0.1:{port}"),
                *("--admin-listen", f"127.0.0.1:{admin_port}"),
                *("--shutdown-grace", "2"),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
async def bluegreen(tmp_path: Path) -> AsyncIterator[Bluegreen]:
    """Colour apps blue and green, and a `bluegreen run` process with blue active."""
    colours = {name: Colour(name) for name in ("blue", "green")}
    runners = []
    for colour in colours.values():
        runner, colour.port = await start_app(colour.app())
        runners.append(runner)
    config = tmp_path / "bluegreen.yaml"
    config.write_text(config_text(colours, "blue"))
    port, admin_port = free_port(), free_port()
    log = tmp_path / "bluegreen.log"
    process = start_bluegreen(config, port, admin_port, log)
    try:
        await wait_until_ready(
            f"http://127.0.0.1:{admin_port}",
            lambda: process.poll() is not None,
            lambda: read_log(log),
        )
        yield Bluegreen(config, log, colours, process, port, admin_port)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            # In a thread: the colour apps on this loop must keep answering while it drains.
            await asyncio.to_thread(process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait, 5)
        for runner in runners:
            await runner.cleanup()
