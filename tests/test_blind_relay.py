"""The benchmark's blind relay (benchmarks/blind_relay.py) over real loopback sockets.

It is a reference in every benchmark run, so it must be what it claims: every byte both ways,
in order, big bodies under flow control, half-closes passed on, and one upstream connection per
client connection, kept for the client's life.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.net import free_port

RELAY = Path(__file__).resolve().parent.parent / "benchmarks" / "blind_relay.py"


class EchoUpstream:
    """An upstream that writes back what it reads, counting the connections it accepts."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Echo until the peer half-closes, then close."""
        self.connections += 1
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def start(self) -> int:
        """Listen on a free loopback port and return it."""
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])


@contextlib.asynccontextmanager
async def running_relay(upstream_port: int) -> AsyncIterator[int]:
    """The relay as the benchmark starts it, before 127.0.0.1:upstream_port; yields its port."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(RELAY),
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        f"127.0.0.1:{upstream_port}",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert b"blind relay on" in line
        yield port
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0


@pytest.fixture
async def relay() -> AsyncIterator[tuple[int, EchoUpstream]]:
    """The relay in front of an echo upstream."""
    upstream = EchoUpstream()
    async with running_relay(await upstream.start()) as port:
        yield port, upstream
    assert upstream.server is not None
    upstream.server.close()


async def test_large_payload_both_ways_with_half_close(relay: tuple[int, EchoUpstream]) -> None:
    port, upstream = relay
    payload = os.urandom(8 * 1024 * 1024)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        # Written in pieces with drain, so the relay's flow control is what paces it.
        for start in range(0, len(payload), 1 << 20):
            writer.write(payload[start : start + (1 << 20)])
            await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    received = await asyncio.wait_for(reader.read(-1), 30)
    await sender
    writer.close()
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    assert upstream.connections == 1


async def test_one_upstream_connection_per_client_connection(
    relay: tuple[int, EchoUpstream],
) -> None:
    port, upstream = relay
    clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    for round_ in range(5):
        for n, (reader, writer) in enumerate(clients):
            message = f"client {n} round {round_}\n".encode()
            writer.write(message)
            assert await asyncio.wait_for(reader.readexactly(len(message)), 5) == message
    assert upstream.connections == 3
    for _reader, writer in clients:
        writer.close()


async def test_client_closed_when_upstream_is_unreachable() -> None:
    async with running_relay(free_port()) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        try:
            answer = await asyncio.wait_for(reader.read(-1), 5)
        except ConnectionResetError:
            answer = b""
        # Closed (a FIN or a reset, as the kernel decides), with nothing relayed.
        assert answer == b""
        writer.close()
