"""Loopback sockets for tests and benchmarks: a free port, a raw exchange, a proxy's address."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass

from proxy.routing import RoutingTable
from proxy.server import ProxyServer

# What the `make_table` fixture of tests/conftest.py returns: routing tables over the colours.
TableFactory = Callable[..., RoutingTable]


def free_port() -> int:
    """Return a loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningProxy:
    """A ProxyServer listening on 127.0.0.1:port."""

    server: ProxyServer
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def raw_exchange(port: int, payload: bytes, *, timeout: float = 5.0) -> bytes:
    """Send raw bytes to 127.0.0.1:port and return everything read until the peer closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    chunks = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                chunks.append(data)
    finally:
        writer.close()
    return b"".join(chunks)
