"""An in-memory network for asyncio protocols: transports that keep what is written to them.

Nothing here knows the proxy. A `MemoryTransport` plays the socket under any
`asyncio.Protocol`: it records the bytes written, whether reading is paused and whether the
transport was closed or aborted, and it reports `connection_lost` on the next loop turn the way
a real transport does. A `MemoryNetwork` takes the place of `loop.create_connection`, so code
that opens connections gets memory transports too; a test decides when (or whether) each
connection is made, and plays the far end through the transport (`feed`, `peer_closes`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class MemoryTransport(asyncio.Transport):
    """A transport whose other end is the test."""

    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        super().__init__()
        self.peer = peer
        self.protocol: asyncio.Protocol | None = None
        self.data = bytearray()  # everything written, in order
        self.reading = True
        self.closing = False
        self.aborted = False
        self.lost = False  # connection_lost has been delivered
        self.buffered = 0  # what get_write_buffer_size reports: set it to play a slow peer
        self.write_limits: tuple[int | None, int | None] = (None, None)

    # --- the far end, driven by the test ------------------------------------------------------

    def connect(self, protocol: asyncio.Protocol) -> MemoryTransport:
        """Make the connection: `protocol` gets connection_made with this transport."""
        self.protocol = protocol
        protocol.connection_made(self)
        return self

    def feed(self, data: bytes) -> None:
        """The peer sends `data` (delivered at once, as one read)."""
        assert self.protocol is not None, "connect() first"
        assert not self.lost, "the connection is gone"
        self.protocol.data_received(data)

    def peer_closes(self, exc: Exception | None = None) -> None:
        """The peer closes the connection (or it is reset, with `exc`)."""
        assert self.protocol is not None
        if not self.lost:
            self.lost = True
            self.closing = True
            self.protocol.connection_lost(exc)

    def take(self) -> bytes:
        """Return what was written since the last `take`, and forget it."""
        written = bytes(self.data)
        self.data.clear()
        return written

    # --- asyncio.Transport ----------------------------------------------------------------------

    def write(self, data: Any) -> None:
        """Keep the bytes (ignored once closing, as a real transport drops them)."""
        if not self.closing:
            self.data += data

    def writelines(self, list_of_data: Any) -> None:
        """Keep each piece, in order."""
        for data in list_of_data:
            self.write(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Answer `peername` like a TCP socket; nothing else."""
        return self.peer if name == "peername" else default

    def is_closing(self) -> bool:
        """Whether close or abort was called, or the peer went away."""
        return self.closing

    def pause_reading(self) -> None:
        """Stop delivering reads (recorded, so tests can assert back-pressure)."""
        self.reading = False

    def resume_reading(self) -> None:
        """Deliver reads again."""
        self.reading = True

    def is_reading(self) -> bool:
        """Whether reading is not paused."""
        return self.reading

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Record the limits; flow control is played by the test (`pause_writing` etc.)."""
        self.write_limits = (high, low)

    def get_write_buffer_size(self) -> int:
        """Report `buffered`."""
        return self.buffered

    def close(self) -> None:
        """Close after the written bytes; connection_lost follows on the next loop turn."""
        self._close(aborted=False)

    def abort(self) -> None:
        """Close at once; connection_lost follows on the next loop turn."""
        self._close(aborted=True)

    def _close(self, *, aborted: bool) -> None:
        if self.closing:
            return
        self.closing = True
        self.aborted = aborted
        asyncio.get_running_loop().call_soon(self._lose)

    def _lose(self) -> None:
        if not self.lost and self.protocol is not None:
            self.lost = True
            self.protocol.connection_lost(None)


class MemoryNetwork:
    """Stands in for `loop.create_connection`: every connection is a `MemoryTransport`.

    Install it with `monkeypatch.setattr(loop, "create_connection", network.create_connection)`.
    Connections are made at once unless `hold` is set: then each waits until `release` (or
    `refuse`) is called, like a connect still in progress.
    """

    def __init__(self) -> None:
        self.transports: list[MemoryTransport] = []  # every connection made, in order
        self.hold = False
        self._waiting: list[asyncio.Future[None]] = []

    async def create_connection(
        self,
        protocol_factory: Callable[[], asyncio.Protocol],
        host: str | None = None,
        port: int | None = None,
        **kwargs: Any,
    ) -> tuple[MemoryTransport, asyncio.Protocol]:
        """Make a connection to host:port in memory, once it is released when held."""
        if self.hold:
            waiting = asyncio.get_running_loop().create_future()
            self._waiting.append(waiting)
            await waiting
        protocol = protocol_factory()
        transport = MemoryTransport(peer=(host or "127.0.0.1", port or 0))
        self.transports.append(transport.connect(protocol))
        return transport, protocol

    @property
    def connecting(self) -> int:
        """How many connects are held, waiting for `release` or `refuse`."""
        return sum(not waiting.done() for waiting in self._waiting)

    def release(self) -> None:
        """Let every held connect complete."""
        self.hold = False
        for waiting in self._waiting:
            if not waiting.done():
                waiting.set_result(None)

    def refuse(self) -> None:
        """Fail every held connect as refused."""
        for waiting in self._waiting:
            if not waiting.done():
                waiting.set_exception(ConnectionRefusedError(111, "Connection refused"))
