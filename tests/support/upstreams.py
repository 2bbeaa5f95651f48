"""Upstreams written with raw streams (to misbehave exactly), and a proxy in front of one.

A handler gets each connection's reader and writer and does what the test needs: stall, hang
up, send conflicting framing. The proxy routes live traffic to it as `blue`; `green` points at
port 1, where nothing listens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from proxy.metrics import TrafficStats
from proxy.routing import ProxyTimeouts, RetryPolicy, RoutingTable, Upstream
from proxy.server import ProxyServer
from tests.support.net import RunningProxy

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def proxy_to(
    port: int, retry: RetryPolicy | None = None, *, timeouts: ProxyTimeouts | None = None
) -> RunningProxy:
    """Start a proxy whose live colour, blue, is 127.0.0.1:`port` (read timeout 2 s by default)."""
    upstreams = {
        "blue": Upstream("blue", f"http://127.0.0.1:{port}", "127.0.0.1", port),
        "green": Upstream("green", "http://127.0.0.1:1", "127.0.0.1", 1),
    }
    table = RoutingTable(
        "v1",
        "blue",
        "green",
        upstreams,
        timeouts=timeouts or ProxyTimeouts(read=2),
        retry=retry or RetryPolicy(),
    )
    server = ProxyServer(TrafficStats(), table)
    listener = await server.listen("127.0.0.1", 0)
    return RunningProxy(server, int(listener.sockets[0].getsockname()[1]))


class RawUpstreams:
    """Starts raw upstream servers and proxies in front of them; `close` ends them all."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self.proxies: list[ProxyServer] = []

    async def start(self, handler: Handler) -> int:
        """Serve `handler` on a free loopback port and return the port."""
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def proxy_to(
        self, port: int, retry: RetryPolicy | None = None, *, timeouts: ProxyTimeouts | None = None
    ) -> RunningProxy:
        """As the module's `proxy_to`, shut down by `close`."""
        proxy = await proxy_to(port, retry, timeouts=timeouts)
        self.proxies.append(proxy.server)
        return proxy

    async def close(self) -> None:
        """Shut the proxies down (0.5 s grace), then close the upstream servers."""
        for proxy in self.proxies:
            await proxy.shutdown(0.5)
        for server in self.servers:
            server.close()


class RecordingUpstream:
    """A raw upstream that keeps every byte it receives and answers each request with 200."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.connections = 0  # accepted so far: a second one means the first was not reused

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Record what arrives, answering 200 after each blank line, until the peer closes."""
        self.connections += 1
        while data := await reader.read(65536):
            self.received += data
            if b"\r\n\r\n" in data:
                body = b"" if data.startswith(b"HEAD ") else b"ok"
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n" + body)
        writer.close()
