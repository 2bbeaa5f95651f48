"""Flow control: one read gate per transport, closed while any reason to stop reading holds.

Both sides of the proxy stop reading for several independent reasons at once (the other side's
write buffer is full, a request body waits for an upstream connection, too many pipelined
requests are queued). Each reason is one bit; the transport is paused when the first bit is set
and resumed when the last is cleared, so one reason ending never resumes reading that another
still forbids. Like uvicorn's `FlowControl`, in one small object both sides use.
"""

from __future__ import annotations

import asyncio
from typing import Final

# Why a transport is not read, as bits of one mask.
# The peer's write buffer is full: reading more would only grow it (client reads slowly, or the
# upstream reads a request body slowly).
PEER_BACKED_UP: Final = 1
# Request-body or early tunnel bytes wait for an upstream connection or a 101, past their bound.
PENDING_BODY: Final = 2
# As many pipelined requests are queued as the client connection accepts at once.
PIPELINE: Final = 4
# The rest of a response body moves socket to socket in the kernel (proxy/splice.py): the
# transport must not read it.
SPLICING: Final = 8


class ReadGate:
    """Pauses reading of one transport while any reason holds, and resumes it after the last."""

    __slots__ = ("reasons", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reasons = 0

    def open(self, transport: asyncio.Transport) -> None:
        """Govern `transport` from now on (the connection was made)."""
        self.transport = transport

    def close(self) -> None:
        """Stop touching the transport: it is closing, and pausing it now could raise."""
        self.transport = None

    def block(self, reason: int) -> None:
        """Stop reading for `reason` (one of the bits above)."""
        if not self.reasons and self.transport is not None:
            self.transport.pause_reading()
        self.reasons |= reason

    def unblock(self, reason: int) -> None:
        """Clear `reason`; reading resumes once no reason is left."""
        if not self.reasons & reason:
            return
        self.reasons &= ~reason
        if not self.reasons and self.transport is not None:
            self.transport.resume_reading()

    @property
    def blocked(self) -> bool:
        """Say whether the transport is held for any reason."""
        return bool(self.reasons)
