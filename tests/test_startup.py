"""Start-up: `/readyz` says ready only once the proxy listener accepts connections.

A file's config is loaded and the admin port opens before the proxy listener does, so readiness
is gated on the listener itself. A proxy port that cannot be bound is fatal (exit 1, naming the
address), and `/readyz` must not have said 200 on the way out: a kubelet probing then would send
traffic to a pod whose port refuses it. The first two tests run `bluegreen run` as a real child
and poll `/readyz` as fast as the loop allows, with no pause between attempts; the third runs a
`ProxyProcess` in the test's loop, which keeps running after the start-up failed.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from controller.process import Endpoint, ProxyProcess
from tests.support.colours import ColourApp
from tests.support.net import free_port, raw_exchange
from tests.support.process import Proxy, config_text

# Before readiness waited for the listener, a poller saw /readyz answer 200 in about 40 % of
# the starts whose proxy port was taken (the process on its way out, its loop still serving the
# admin port): three starts show that regression four times in five. The test in the loop
# below shows it every time.
FAILED_STARTS = 3

# The child runs on uvloop whatever the test's loop is: one loop for the test is enough.
ONE_LOOP = pytest.mark.asyncio(loop_factories=["uvloop"])


async def readyz_status(port: int) -> int | None:
    """One `GET /readyz` on a new connection: the status, or None if nothing answered."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    try:
        writer.write(b"GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        line = await reader.readline()
    except OSError:
        return None
    finally:
        writer.close()
    return int(line.split()[1]) if line.startswith(b"HTTP/") else None


async def config_loaded(proxy: Proxy) -> list[bytes]:
    """Read the child's log up to its "config loaded" line (the admin port opens next).

    Polling only from then on leaves the CPU to the child while it imports. Returns the lines
    read, for the failure message.
    """
    assert proxy.process is not None and proxy.process.stdout is not None
    lines: list[bytes] = []
    while not lines or b'msg="config loaded"' not in lines[-1]:
        line = await asyncio.to_thread(proxy.process.stdout.readline)
        assert line, "bluegreen exited before loading its config: " + b"".join(lines).decode()
        lines.append(line)
    return lines


@contextmanager
def occupied_port() -> Iterator[int]:
    """A loopback port a socket of this test listens on, so nobody else can bind it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@ONE_LOOP
async def test_the_proxy_port_accepts_the_moment_readyz_says_200(
    colours: dict[str, ColourApp], tmp_path: Path
) -> None:
    config = tmp_path / "bluegreen.yaml"
    config.write_text(config_text(colours, "blue"))
    proxy = Proxy(config)
    proxy.start()
    assert proxy.process is not None
    try:
        deadline = time.monotonic() + 20
        while await readyz_status(proxy.admin_port) != 200:
            assert proxy.process.poll() is None, "bluegreen exited: " + proxy.output()
            assert time.monotonic() < deadline, "bluegreen not ready in 20 s"
        # Refused here (ConnectionRefusedError) is the bug: ready before the listener opened.
        answer = await raw_exchange(
            proxy.port, b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert b"\r\nx-bluegreen-colour: blue\r\n" in answer.lower()
    finally:
        proxy.stop()


@ONE_LOOP
async def test_a_proxy_port_in_use_is_fatal_and_never_ready(
    colours: dict[str, ColourApp], tmp_path: Path
) -> None:
    config = tmp_path / "bluegreen.yaml"
    config.write_text(config_text(colours, "blue"))
    for _ in range(FAILED_STARTS):
        with occupied_port() as port:
            proxy = Proxy(config)
            proxy.port = port
            proxy.start()
            assert proxy.process is not None
            logged = await config_loaded(proxy)
            answers: set[int | None] = set()
            while proxy.process.poll() is None:
                answers.add(await readyz_status(proxy.admin_port))
            output = b"".join(logged).decode() + proxy.output()
        assert proxy.process.returncode == 1, output
        assert 200 not in answers, "/readyz said ready without a listener:\n" + output
        assert "bluegreen: cannot start: " in output
        assert f"('127.0.0.1', {port})" in output and "address already in use" in output
        # The failed start closed what it had opened (the health checks' HTTP client too).
        assert "Unclosed" not in output, output


async def test_a_process_whose_listener_cannot_open_closes_its_admin_port(
    colours: dict[str, ColourApp], tmp_path: Path
) -> None:
    config = tmp_path / "bluegreen.yaml"
    config.write_text(config_text(colours, "blue"))
    admin_port = free_port()
    with occupied_port() as port:
        process = ProxyProcess(
            config, Endpoint("127.0.0.1", port), Endpoint("127.0.0.1", admin_port)
        )
        with pytest.raises(OSError) as raised:
            await process.run()
    assert raised.value.errno == errno.EADDRINUSE
    # The loop still runs: an admin site left open would answer here (it said 200 before).
    assert await readyz_status(admin_port) is None
    assert process.state.table is not None  # the config was loaded: only the listener failed
    assert process.state.readiness() == (False, "proxy listener not open yet")
