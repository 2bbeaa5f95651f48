#!/usr/bin/env python3
"""The asyncio ceiling: a byte relay on uvloop that parses nothing.

`benchmarks/run.py` measures this next to bluegreen, in the same rounds, as the `relay` target:
what any proxy on this event loop can do at best, so the table shows how much of the gap to
nginx is bluegreen's own per-request work and how much is the loop and its system calls.

Each client connection gets one upstream connection, opened when the client connects and kept
for the client connection's life (a pool of one per client: with keep-alive clients, as wrk's,
that is what a pooled proxy reaches after its warm-up). Bytes are written on as they arrive, in
both directions, with flow control (a side whose peer's write buffer is full stops reading until
it drains), so a large body never sits in memory whole. No HTTP is parsed: it is not a proxy,
only the floor under one's cost.

    python benchmarks/blind_relay.py --listen 127.0.0.1:8081 --upstream 127.0.0.1:8080
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import cast

import uvloop


class RelaySide(asyncio.Protocol):
    """One socket of a relayed pair: what it reads is written to its peer's transport."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: RelaySide | None = None
        # Bytes read before the peer's connection is up (only the client side can have them).
        self.early: list[bytes] = []
        # This side has read its peer socket's end of stream (a half-close).
        self.ended = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport; uvloop's transports are asyncio.Transport without subclassing it."""
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=256 * 1024)

    def attach(self, peer: RelaySide) -> None:
        """Pair with peer and hand it what arrived before the pair was complete."""
        self.peer = peer
        peer.peer = self
        assert peer.transport is not None
        for chunk in self.early:
            peer.transport.write(chunk)
        self.early.clear()

    def data_received(self, data: bytes) -> None:
        """Write the bytes on to the peer, or hold them until it exists."""
        peer = self.peer
        if peer is None or peer.transport is None:
            self.early.append(data)
        else:
            peer.transport.write(data)

    def eof_received(self) -> bool:
        """Pass the half-close on; the pair closes once both directions have ended."""
        self.ended = True
        peer = self.peer
        if peer is None or peer.transport is None:
            return False
        if peer.ended:
            peer.transport.close()
            return False
        if peer.transport.can_write_eof():
            peer.transport.write_eof()
            return True
        peer.transport.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Close the peer once what it still has to write is written."""
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        """This side's write buffer is full: stop reading from the peer."""
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        """Drained: read from the peer again."""
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class ClientSide(RelaySide):
    """The accepted connection: it opens its own upstream connection at once."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__()
        self.upstream = upstream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start connecting upstream; reading pauses until the upstream is there."""
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()
        asyncio.get_running_loop().create_task(self.connect_upstream())

    async def connect_upstream(self) -> None:
        """Open the pair's upstream connection, or drop the client when it cannot."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        try:
            _transport, upstream = await loop.create_connection(RelaySide, *self.upstream)
        except OSError:
            self.transport.abort()
            return
        if self.transport.is_closing():
            assert upstream.transport is not None
            upstream.transport.close()
            return
        self.attach(upstream)
        self.transport.resume_reading()


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT as a (host, port) pair."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


async def serve(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    """Relay until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: ClientSide(upstream), *listen, backlog=4096, reuse_address=True
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"blind relay on {listen[0]}:{listen[1]} -> {upstream[0]}:{upstream[1]}", flush=True)
    await stop.wait()
    server.close()


def main() -> None:
    """Run the relay (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=parse_address, required=True, metavar="HOST:PORT")
    parser.add_argument("--upstream", type=parse_address, required=True, metavar="HOST:PORT")
    args = parser.parse_args()
    uvloop.run(serve(args.listen, args.upstream))


if __name__ == "__main__":
    main()
