"""`bluegreen run` as a real subprocess through its console module, as users start it."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from prometheus_client.parser import text_string_to_metric_families

from tests.support.colours import ColourApp
from tests.support.net import free_port
from tests.support.waiting import wait_until_ready

BLUEGREEN = [sys.executable, "-m", "controller.cli"]


async def run_cli(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run the `bluegreen` CLI as a person would; return its exit status, stdout and stderr."""
    child = await asyncio.create_subprocess_exec(
        *BLUEGREEN, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(child.communicate(), timeout)
    assert child.returncode is not None
    return child.returncode, out.decode(), err.decode()


def config_text(colours: dict[str, ColourApp], active: str, extra: str = "") -> str:
    """A config file over the two colour apps, with `extra` lines after the upstreams."""
    return (
        f"# test config\nactive: {active}\n"
        f"upstream.blue: {colours['blue'].url}\nupstream.green: {colours['green'].url}\n" + extra
    )


class Proxy:
    """A `bluegreen run` subprocess on free loopback ports."""

    def __init__(
        self,
        config: Path,
        extra_args: tuple[str, ...] = (),
        *,
        stderr: IO[bytes] | int = subprocess.STDOUT,
        global_args: tuple[str, ...] = (),
        log: Path | None = None,
    ) -> None:
        """`stderr` (the process log): merged into stdout unless a file is given for it.

        `log`: stdout and stderr both go to this file instead (a pipe nobody reads can fill up
        under traffic, and the access log is on stdout); `output()` is then its end.
        `global_args` go before `run` (`--log-format json`).
        """
        self.global_args = global_args
        self.config = config
        self.extra_args = extra_args
        self.stderr = stderr
        self.log = log
        self.port = free_port()
        self.admin_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self) -> None:
        if self.log is not None:
            with self.log.open("wb") as sink:
                self._start(sink, subprocess.STDOUT)
        else:
            self._start(subprocess.PIPE, self.stderr)

    def _start(self, stdout: IO[bytes] | int, stderr: IO[bytes] | int) -> None:
        self.process = subprocess.Popen(
            [
                *BLUEGREEN,
                *self.global_args,
                "run",
                "--config",
                str(self.config),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--admin-listen",
                f"127.0.0.1:{self.admin_port}",
                "--shutdown-grace",
                "5",
                *self.extra_args,
            ],
            stdout=stdout,
            stderr=stderr,
        )

    async def wait_ready(self) -> None:
        process = self.process
        assert process is not None
        await wait_until_ready(self.admin, lambda: process.poll() is not None, self.output)

    def stop(self) -> int:
        """SIGTERM, and its exit status; one still running after 15 s is killed, and fails."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
            raise

    async def stop_in_thread(self) -> int:
        """As `stop`, in a thread: apps on the test's loop keep answering while it drains."""
        return await asyncio.to_thread(self.stop)

    def output(self) -> str:
        if self.log is not None:
            return self.log.read_text(errors="replace")[-4000:]
        if self.process is None or self.process.stdout is None or self.process.poll() is None:
            return ""
        return self.process.stdout.read().decode(errors="replace")

    def peak_rss_mib(self) -> float:
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM in /proc status")


@contextmanager
def running(config: Path) -> Iterator[Proxy]:
    proxy = Proxy(config)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def sample(metrics: str, name: str, **labels: str) -> float:
    """Return the value of the sample `name` with `labels` in a /metrics text; 0 if absent."""
    for family in text_string_to_metric_families(metrics):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0
