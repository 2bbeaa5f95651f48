"""What the latency benchmarks share: running `bluegreen run` as a process and waiting for it."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.net import free_port
from tests.support.waiting import wait_until_ready


@dataclass
class ProxyUnderTest:
    """A `bluegreen run` process on free loopback ports, logging to a file."""

    process: subprocess.Popen[bytes]
    port: int
    admin_port: int
    log: Path

    def stop(self) -> None:
        """End the process (SIGTERM, then wait for its graceful exit)."""
        self.process.terminate()
        self.process.wait(timeout=15)


def start_proxy(source: list[str]) -> ProxyUnderTest:
    """Start `bluegreen run` with `source` (`--config F` or `--configmap NS/N --kubeconfig K`)."""
    port, admin_port = free_port(), free_port()
    log = Path(tempfile.mkdtemp(prefix="bluegreen-bench-")) / "proxy.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controller.cli",
                "--log-level",
                "WARNING",
                "run",
                *source,
                "--listen",
                f"127.0.0.1:{port}",
                "--admin-listen",
                f"127.0.0.1:{admin_port}",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    return ProxyUnderTest(process, port, admin_port, log)


async def wait_ready(proxy: ProxyUnderTest) -> None:
    """Poll /readyz until the proxy serves a valid config; fail with its log's path if not."""
    await wait_until_ready(
        f"http://127.0.0.1:{proxy.admin_port}",
        lambda: proxy.process.poll() is not None,
        lambda: f"see {proxy.log}",
        timeout=30,
    )


def percentile(values: list[float], fraction: float) -> float:
    """Return the nearest-rank percentile of `values` (fraction 0.99 for p99)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]
