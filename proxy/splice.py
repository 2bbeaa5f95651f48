"""Large response bodies moved from the upstream socket to the client's inside the kernel.

The rest of a body of known length is forwarded with splice(2): upstream socket -> pipe ->
client socket. Its bytes are never copied into the process, and each system call moves up to a
pipe's worth (1 MiB) instead of uvloop's 256,000-byte reads, each copied twice on the way
(HAProxy's `option splice-response` does the same). On loopback and veth, where the kernel moves
the pages instead of copying them, the proxy's CPU per byte of large bodies falls by more than
half.

A `BodySplice` owns duplicates of both sockets' descriptors while it runs, since uvloop refuses
`add_reader` on a descriptor that a transport owns; the transports' own reading of the upstream
is paused by the caller, and nothing else writes to the client while the body is in flight (the
response in progress owns the client connection). Every way out (done, failed, cancelled)
unregisters the descriptors before closing the duplicates: an epoll registration outlives a
closed duplicate while the socket is open elsewhere.

This module knows nothing above it: the connection that starts a splice hears of it through
the `SpliceEvents` protocol below.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
from typing import Final, Protocol

log = logging.getLogger(__name__)

# Bodies shorter than this (what is left after the head's read) take the ordinary path: the
# descriptor duplicates, the pipe and the event registrations cost more than copying them.
SPLICE_MIN_BYTES: Final = 64 * 1024
# What one pipe holds, asked for with F_SETPIPE_SZ (Linux's default pipe-max-size); a pipe
# refused that size (the per-user pipe budget is used up) keeps the kernel's default, 64 KiB.
PIPE_BYTES: Final = 1 << 20
# Empty pipes kept for the next body, so that a steady stream of large responses opens none.
MAX_SPARE_PIPES: Final = 32
# Moves per readiness callback before yielding to the event loop: a fast upstream and a fast
# client would otherwise keep one body's loop going and starve every other connection.
MAX_MOVES_PER_CALLBACK: Final = 16

_FLAGS: Final = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK if hasattr(os, "SPLICE_F_MOVE") else 0
# Where the client is gone: the splice ends as a client failure, not an upstream one.
_CLIENT_GONE: Final = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN})
# splice(2) not allowed here: a seccomp profile that forbids it (EPERM, or ENOSYS from some
# sandboxes), or descriptors it does not support (EINVAL). Nothing has moved when the first call
# says so, so the body is copied instead, and so is every later one.
_REFUSED: Final = frozenset({errno.EPERM, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})

_spare_pipes: list[tuple[int, int, int]] = []  # (read end, write end, capacity)


class SpliceTotals:
    """Bodies and bytes spliced since start-up (bluegreen_spliced_response_bytes_total)."""

    __slots__ = ("bodies", "bytes")

    def __init__(self) -> None:
        self.bodies = 0  # bodies whose rest reached the client whole
        self.bytes = 0  # bytes that reached the client, whole bodies or not


totals = SpliceTotals()


def splice_available() -> bool:
    """Say whether bodies may be spliced here: Linux's os.splice, unless BLUEGREEN_SPLICE=0."""
    return hasattr(os, "splice") and os.environ.get("BLUEGREEN_SPLICE", "1") != "0"


class SpliceSwitch:
    """Whether large bodies are spliced: on where available, off for good once refused."""

    __slots__ = ("enabled",)

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def refused(self, reason: str) -> None:
        """The kernel refused splice(2) here: say so once, and copy bodies from now on."""
        if self.enabled:
            self.enabled = False
            log.warning("splice(2) refused (%s): large response bodies are copied instead", reason)


switch = SpliceSwitch(splice_available())


class SpliceEvents(Protocol):
    """What a splice tells the connection that started it."""

    def body_spliced(self, size: int) -> None:
        """`size` more bytes of the body reached the client's socket."""
        ...

    def splice_finished(self) -> None:
        """The whole body reached the client's socket; the descriptors are released."""
        ...

    def splice_failed(self, client_gone: bool, message: str) -> None:
        """The splice stopped: the upstream closed or failed, or (`client_gone`) the client."""
        ...

    def splice_refused(self) -> None:
        """splice(2) is not allowed here and nothing moved: copy the body instead."""
        ...


def transport_fd(transport: asyncio.Transport) -> int | None:
    """The descriptor of a transport's socket, or None for a transport without one.

    Callers keep it per connection: uvloop builds a socket object and asks the kernel for its
    address on every get_extra_info("socket").
    """
    sock = transport.get_extra_info("socket")
    return None if sock is None else int(sock.fileno())


def _take_pipe() -> tuple[int, int, int]:
    """A spare empty pipe, or a new one made as large as the kernel allows."""
    if _spare_pipes:
        return _spare_pipes.pop()
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        capacity = fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:
        capacity = fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ)
    return read_end, write_end, capacity


def _give_back_pipe(pipe: tuple[int, int, int], empty: bool) -> None:
    """Keep an empty pipe for the next body; close one that still holds bytes, or one too many."""
    if empty and len(_spare_pipes) < MAX_SPARE_PIPES:
        _spare_pipes.append(pipe)
    else:
        os.close(pipe[0])
        os.close(pipe[1])


class BodySplice:
    """Moves `length` bytes from one socket to another through a pipe, driven by the loop."""

    __slots__ = (
        "client",
        "events",
        "in_pipe",
        "loop",
        "moved_any",
        "pipe",
        "pipe_in",
        "pipe_out",
        "reading",
        "to_read",
        "upstream",
        "waiting_for_client",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        upstream_fd: int,
        client_fd: int,
        length: int,
        events: SpliceEvents,
    ) -> None:
        self.loop = loop
        self.events = events
        self.to_read = length
        self.in_pipe = 0
        self.reading = False
        self.waiting_for_client = False
        self.moved_any = False
        self.upstream = os.dup(upstream_fd)
        try:
            self.client = os.dup(client_fd)
        except OSError:
            os.close(self.upstream)
            raise
        self.pipe: tuple[int, int, int] | None = None
        try:
            self.pipe = pipe = _take_pipe()
        except OSError:
            os.close(self.upstream)
            os.close(self.client)
            raise
        self.pipe_out, self.pipe_in = pipe[0], pipe[1]

    def start(self) -> None:
        """Begin moving bytes; what the upstream already sent moves at once."""
        self._watch_upstream()
        self._upstream_readable()

    def cancel(self) -> None:
        """Stop without a word to the events (the connection is closing); drop what is held."""
        self._release()

    # --- internals --------------------------------------------------------------------------

    def _watch_upstream(self) -> None:
        if not self.reading:
            self.reading = True
            self.loop.add_reader(self.upstream, self._upstream_readable)

    def _unwatch_upstream(self) -> None:
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.upstream)

    def _upstream_readable(self) -> None:
        """Fill the pipe from the upstream and empty it to the client, until either would block."""
        pipe = self.pipe
        if pipe is None:
            return
        capacity = pipe[2]
        for _ in range(MAX_MOVES_PER_CALLBACK):
            want = min(self.to_read, capacity - self.in_pipe)
            moved = -1
            if want > 0:
                try:
                    moved = os.splice(self.upstream, self.pipe_in, want, flags=_FLAGS)
                except BlockingIOError:
                    moved = -1
                except OSError as error:
                    if error.errno in _REFUSED and not self.moved_any:
                        self._release()
                        switch.refused(error.strerror or str(error))
                        self.events.splice_refused()
                        return
                    self._fail(False, f"reading the upstream: {error.strerror or error}")
                    return
                if moved == 0:
                    self._fail(False, "connection closed before the response was complete")
                    return
                if moved > 0:
                    self.moved_any = True
                    self.to_read -= moved
                    self.in_pipe += moved
            if not self._drain():
                return  # the client's socket is full: _client_writable carries on
            if not self.to_read and not self.in_pipe:
                self._finish()
                return
            if moved < 0:
                return  # nothing more from the upstream for now: wait for it to be readable

    def _drain(self) -> bool:
        """Empty the pipe into the client; False (and wait for it) when its socket is full."""
        while self.in_pipe:
            try:
                moved = os.splice(self.pipe_out, self.client, self.in_pipe, flags=_FLAGS)
            except BlockingIOError:
                if not self.waiting_for_client:
                    self.waiting_for_client = True
                    # Read no more than the pipe holds while the client is slow.
                    self._unwatch_upstream()
                    self.loop.add_writer(self.client, self._client_writable)
                return False
            except OSError as error:
                gone = error.errno in _CLIENT_GONE
                self._fail(gone, f"writing to the client: {error.strerror or error}")
                return False
            self.in_pipe -= moved
            totals.bytes += moved
            self.events.body_spliced(moved)
        return True

    def _client_writable(self) -> None:
        if self.pipe is None or not self._drain():
            return
        self.waiting_for_client = False
        self.loop.remove_writer(self.client)
        if not self.to_read:
            self._finish()
            return
        self._watch_upstream()
        self._upstream_readable()

    def _finish(self) -> None:
        self._release()
        totals.bodies += 1
        self.events.splice_finished()

    def _fail(self, client_gone: bool, message: str) -> None:
        self._release()
        self.events.splice_failed(client_gone, message)

    def _release(self) -> None:
        """Unregister both descriptors, then close the duplicates and give the pipe back."""
        pipe = self.pipe
        if pipe is None:
            return
        self.pipe = None
        self._unwatch_upstream()
        if self.waiting_for_client:
            self.waiting_for_client = False
            self.loop.remove_writer(self.client)
        os.close(self.upstream)
        os.close(self.client)
        _give_back_pipe(pipe, empty=self.in_pipe == 0)
