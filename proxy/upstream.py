"""The upstream side: one protocol per connection to a colour, and a keep-alive pool per address.

An `UpstreamConnection` parses responses with llhttp (httptools) and hands what it reads to the
`Exchange` it serves. Bodies of known length are passed straight through once the head is
parsed: the parser would otherwise copy every chunk into a new bytes object, which halves the
throughput of large bodies. After such a pass-through the parser is replaced, since it stopped
mid-message.

This module knows nothing above it: what it needs of the exchange it serves is the
`ResponseHandler` protocol below (proxy/exchange.py implements it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol, cast

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from proxy import splice
from proxy.flow import PEER_BACKED_UP, SPLICING, ReadGate
from proxy.framing import FailureKind
from proxy.headers import ResponseHead, ResponseHeadError
from proxy.routing import PoolSettings
from proxy.splice import SPLICE_MIN_BYTES, BodySplice, transport_fd

log = logging.getLogger(__name__)

MAX_RESPONSE_HEAD = 64 * 1024


class ClientWriter(Protocol):
    """What an upstream connection needs of the client side it answers."""

    @property
    def reading(self) -> ReadGate:
        """The client's read gate: closed while the upstream reads a request body slowly."""
        ...

    def cork(self) -> None:
        """Hold writes to the client until `uncork`, to send one upstream read in one go."""
        ...

    def uncork(self) -> None:
        """Send what was held since `cork`."""
        ...


class ResponseHandler(Protocol):
    """What an upstream connection calls on the exchange it serves."""

    @property
    def client(self) -> ClientWriter:
        """The client side the response goes to."""
        ...

    @property
    def is_head(self) -> bool:
        """Whether the request was HEAD: its response has no body whatever its head says."""
        ...

    @property
    def is_upgrade(self) -> bool:
        """Whether the request asked for an upgrade, so that a 101 opens a tunnel."""
        ...

    def informational_response(self, head: ResponseHead) -> None:
        """A 1xx other than 101 arrived; the real response follows."""
        ...

    def response_head(
        self, status: int, head: ResponseHead, *, no_body: bool, upgrade: bool
    ) -> None:
        """The final response head arrived (`upgrade`: a 101 that opens a tunnel)."""
        ...

    def response_body(self, data: bytes) -> None:
        """A piece of the response body arrived."""
        ...

    def splice_target(self) -> int | None:
        """The client's socket descriptor when the rest of the body may go to it unseen.

        None when the proxy must see the body (it re-frames or digests it), or when bytes
        still wait to be written to the client, which a splice would overtake.
        """
        ...

    def body_spliced(self, size: int) -> None:
        """`size` bytes of the body went from the upstream's socket to the client's."""
        ...

    def client_write_failed(self) -> None:
        """Writing the spliced body to the client failed: the client connection is gone."""
        ...

    def response_complete(self, conn: UpstreamConnection) -> None:
        """The response is complete; `conn` is free for the pool."""
        ...

    def tunnel_from_upstream(self, data: bytes) -> None:
        """Bytes of an upgraded connection arrived from the upstream."""
        ...

    def tunnel_closed_by_upstream(self) -> None:
        """The upstream closed an upgraded connection."""
        ...

    def upstream_failed(self, kind: FailureKind, message: str, *, response_seen: bool) -> None:
        """The attempt failed; `response_seen` once any byte of a response head was parsed."""
        ...

    def waiting_for_client(self) -> bool:
        """Whether progress waits on the client, so that silence is not the upstream's fault."""
        ...


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection to a colour's Service, serving one exchange at a time."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.exchange: ResponseHandler | None = None
        self.parser = HttpResponseParser(self)
        self.parser_stale = False
        self.head_buf = b""  # bytes of the response head(s) read so far
        self.head_start = 0  # where the head being parsed starts in head_buf (after any 1xx)
        self.remaining: int | None = None  # body bytes still expected, when the length is known
        self.chunked = False  # the response in progress is chunked on the wire
        self.pass_through = 0  # body bytes to forward without parsing
        self.splice: BodySplice | None = None  # the rest of the body, moving in the kernel
        self.fd = -1  # the socket's descriptor, once a splice asked for it
        self.head_done = False
        self.message_done = False
        self.informational = False
        self.tunnel = False
        self.reusable = True
        self.requests_served = 0
        self.idle_since = 0.0
        self.last_activity = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.read_timeout = 60.0
        # Closed while the client reads the response slower than the upstream sends it.
        self.reading = ReadGate()
        self.closed = False

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport; the pool hands the connection to an exchange next."""
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=512 * 1024, low=128 * 1024)
        self.reading.open(transport)
        self.pool.open += 1

    def connection_lost(self, exc: Exception | None) -> None:
        """Tell the exchange in progress, or leave the pool quietly if idle."""
        self.pool.open -= 1
        self.closed = True
        self.reading.close()
        self._cancel_timer()
        self._stop_splice()
        exchange = self.exchange
        if exchange is None:
            self.pool.forget(self)
            return
        self.exchange = None
        if self.tunnel:
            exchange.tunnel_closed_by_upstream()
        elif not self.message_done:
            exchange.upstream_failed(
                "reset" if self.head_done or exc is not None else "closed",
                "connection closed before the response was complete"
                if self.head_done
                else "connection closed without a response",
                response_seen=self.head_done,
            )

    def eof_received(self) -> bool | None:
        """Treat EOF as the end of a close-delimited body, or as a failure otherwise."""
        exchange = self.exchange
        close_delimited = self.remaining is None and not self.tunnel and not self.chunked
        if exchange is not None and self.head_done and not self.message_done and close_delimited:
            # A body without Content-Length or chunked ends with the connection (RFC 9112 6.3).
            self.reusable = False
            self.message_done = True
            self._finish()
        return False

    def pause_writing(self) -> None:
        """The upstream reads the request body slower than the client sends it."""
        if self.exchange is not None:
            self.exchange.client.reading.block(PEER_BACKED_UP)

    def resume_writing(self) -> None:
        """The upstream caught up: read more of the client's body."""
        if self.exchange is not None:
            self.exchange.client.reading.unblock(PEER_BACKED_UP)

    def data_received(self, data: bytes) -> None:
        """Parse a response head, then pass body bytes to the exchange."""
        exchange = self.exchange
        if exchange is None:
            # Bytes on an idle connection: the upstream is confused; never reuse it.
            self.close()
            return
        self.last_activity = self.loop.time()
        if self.tunnel:
            exchange.tunnel_from_upstream(data)
            return
        if self.pass_through:
            self._pass_body_through(data, exchange)
            return
        if not self.head_done:
            # Kept until the head is complete: it is split from the raw bytes (see
            # proxy/headers.py), not from per-field parser callbacks.
            self.head_buf += data
        client = exchange.client
        client.cork()
        try:
            self._parse(data, exchange)
        finally:
            client.uncork()
        if not self.head_done and len(self.head_buf) - self.head_start > MAX_RESPONSE_HEAD:
            exchange.upstream_failed(
                "protocol", "response head larger than 64 KiB", response_seen=False
            )
            self.close()
        elif (
            self.pass_through >= SPLICE_MIN_BYTES
            and splice.switch.enabled
            and self.exchange is exchange
        ):
            self._start_splice(exchange)

    def _parse(self, data: bytes, exchange: ResponseHandler) -> None:
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as upgrade:
            offset = upgrade.args[0]
            if self.exchange is not None and self.tunnel:
                if offset < len(data):
                    exchange.tunnel_from_upstream(data[offset:])
                return
        except HttpParserError as error:
            self.reusable = False
            if self.message_done:
                # Bytes after a complete response: a body on a 204 or 304, data after
                # `Connection: close`, a second response. The response goes to the client
                # whole, the rest is dropped, and the pool closes the connection (HAProxy).
                log.info("upstream sent bytes after a complete response; connection not reused")
                self._finish()
                return
            cause = error.__context__
            if isinstance(cause, ResponseHeadError):
                message = f"invalid response: {cause}"
            else:
                message = f"invalid response: {_reason(error)}"
            exchange.upstream_failed("protocol", message, response_seen=self.head_done)
            self.close()
            return
        if self.message_done:
            self._finish()
        elif self.head_done and self.remaining:
            # The rest of this body is forwarded without the parser (see the module docstring).
            self.pass_through = self.remaining
            self.parser_stale = True

    # --- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        """Start a new response head (a second response to one request is an error)."""
        if self.message_done:
            raise ResponseHeadError("a second response to one request")
        self.head_done = False
        self.remaining = None
        self.chunked = False

    def on_headers_complete(self) -> None:
        """Hand the head to the exchange, deciding how the body is delimited."""
        exchange = self.exchange
        assert exchange is not None
        status = self.parser.get_status_code()
        if status == 101 and not exchange.is_upgrade:
            # Switching protocols on a request that asked for none: relayed, the connection
            # would go on as HTTP on one side and as something else on the other (HAProxy: 502).
            raise ResponseHeadError("101 Switching Protocols to a request that asked for none")
        buf = self.head_buf
        start = self.head_start
        if buf[start] != 0x48:  # not "H": empty lines before the status line, which llhttp skips
            start = _after_empty_lines(buf, start)
        # llhttp accepted the head, so it ends at the first blank line after its start.
        end = buf.find(b"\r\n\r\n", start) + 4
        head = ResponseHead(buf[start:end], status)
        self.head_done = True
        self.head_start = end
        if 100 <= status < 200 and status != 101:
            # 100 Continue and 103 Early Hints: forwarded, then the real response follows.
            self.informational = True
            exchange.informational_response(head)
            return
        self.informational = False
        if not self.parser.should_keep_alive():
            # `Connection: close`, or an HTTP/1.0 upstream: this connection ends with the response.
            self.reusable = False
        self.head_buf = b""
        self.remaining = head.content_length
        self.chunked = head.chunked
        no_body = exchange.is_head or status in (204, 304)
        if no_body:
            self.remaining = None
        if status == 101 and exchange.is_upgrade:
            self.tunnel = True
            self.reusable = False
        exchange.response_head(status, head, no_body=no_body, upgrade=self.tunnel)
        if exchange.is_head and not self.message_done:
            # llhttp does not know the request was HEAD and would wait for a body: finish here
            # and give the next response a fresh parser.
            self.message_done = True
            self.parser_stale = True

    def on_body(self, body: bytes) -> None:
        """Forward a piece of body the parser produced (chunked, or the head's first read)."""
        if self.message_done:
            # A body after a HEAD response: the upstream broke the framing. Drop it, and never
            # reuse the connection, since what follows cannot be trusted.
            self.reusable = False
            return
        if self.remaining is not None:
            self.remaining -= len(body)
        if self.exchange is not None:
            self.exchange.response_body(body)

    def on_message_complete(self) -> None:
        """Mark the response as complete; acted upon once the parser returns."""
        if self.informational:
            self.informational = False
            self.head_done = False
            return
        self.message_done = True

    # --- used by the exchange and the pool --------------------------------------------------

    def attach(self, exchange: ResponseHandler, read_timeout: float) -> None:
        """Serve `exchange`: reset per-response state and arm the read timeout."""
        self.exchange = exchange
        self.requests_served += 1
        if self.parser_stale:
            self.parser = HttpResponseParser(self)
            self.parser_stale = False
        self.head_done = self.message_done = self.informational = False
        self.head_buf = b""
        self.head_start = 0
        self.remaining = None
        self.pass_through = 0
        self.last_activity = self.loop.time()
        self.read_timeout = read_timeout
        if self.timer is None:
            # The timer outlives the exchange and is pushed back lazily when it fires: arming
            # and cancelling a timer per request cost ~8% of small-request throughput.
            self._arm_timer(read_timeout)

    def write(self, data: bytes) -> None:
        """Send request bytes upstream (they count as activity for the read timeout)."""
        assert self.transport is not None
        self.last_activity = self.loop.time()
        self.transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        """Send several pieces of request bytes upstream at once."""
        assert self.transport is not None
        self.last_activity = self.loop.time()
        self.transport.writelines(parts)

    def detach(self) -> None:
        """Stop serving the current exchange without returning to the pool."""
        self.exchange = None

    def close_after_write(self) -> None:
        """Close the connection once the bytes written so far are sent; it is never reused."""
        self.exchange = None
        self.reusable = False
        self._cancel_timer()
        self._stop_splice()
        self.reading.close()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()
        self.pool.forget(self)

    def close(self) -> None:
        """Close the connection at once; it is never reused."""
        self.exchange = None
        self.reusable = False
        self._cancel_timer()
        self._stop_splice()
        self.reading.close()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()
        self.pool.forget(self)

    # --- proxy.splice.SpliceEvents -----------------------------------------------------------

    def body_spliced(self, size: int) -> None:
        """Bytes reached the client: activity, for the read timeout."""
        self.last_activity = self.loop.time()
        if self.exchange is not None:
            self.exchange.body_spliced(size)

    def splice_finished(self) -> None:
        """The body is complete: read this connection again and finish the response."""
        self.splice = None
        self.reading.unblock(SPLICING)
        self._body_done()

    def splice_refused(self) -> None:
        """splice(2) is not allowed here: the rest of the body is copied, as without it."""
        self.splice = None
        assert self.remaining is not None
        self.pass_through = self.remaining
        self.reading.unblock(SPLICING)

    def splice_failed(self, client_gone: bool, message: str) -> None:
        """The splice stopped before the end: fail like a read or a client write would."""
        self.splice = None
        exchange = self.exchange
        if exchange is not None and not client_gone:
            exchange.upstream_failed("reset", message, response_seen=True)
        self.close()
        if exchange is not None and client_gone:
            exchange.client_write_failed()

    # --- internals --------------------------------------------------------------------------

    def _start_splice(self, exchange: ResponseHandler) -> None:
        """Move the rest of the body in the kernel, when the client's side allows it."""
        client_fd = exchange.splice_target()
        transport = self.transport
        if client_fd is None or transport is None:
            return
        if self.fd < 0:
            fd = transport_fd(transport)
            if fd is None:
                return
            self.fd = fd
        try:
            body = BodySplice(self.loop, self.fd, client_fd, self.pass_through, self)
        except OSError as error:
            # Out of descriptors, most likely: this body takes the ordinary path.
            log.warning("cannot splice a response body, copying it instead: %s", error)
            return
        self.splice = body
        self.pass_through = 0
        self.reading.block(SPLICING)
        body.start()

    def _stop_splice(self) -> None:
        body = self.splice
        if body is not None:
            self.splice = None
            body.cancel()

    def _pass_body_through(self, data: bytes, exchange: ResponseHandler) -> None:
        """Forward up to `pass_through` body bytes unparsed, finishing the response at its end."""
        size = len(data)
        if size <= self.pass_through:
            self.pass_through -= size
            exchange.response_body(data)
        else:
            exchange.response_body(data[: self.pass_through])
            self.pass_through = 0
            # More bytes than Content-Length said: the connection's framing is broken.
            self.reusable = False
        if self.pass_through == 0:
            self._body_done()

    def _body_done(self) -> None:
        """The last byte of a body of known length went out: the response is complete."""
        self.remaining = 0
        self.message_done = True
        self._finish()

    def _finish(self) -> None:
        exchange = self.exchange
        self.exchange = None
        if exchange is not None:
            exchange.response_complete(self)

    def _arm_timer(self, delay: float) -> None:
        self._cancel_timer()
        self.timer = self.loop.call_later(delay, self._check_timeout)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _check_timeout(self) -> None:
        self.timer = None
        exchange = self.exchange
        if exchange is None or self.tunnel:
            return  # idle in the pool: the next attach arms the timer again
        timeout = self.read_timeout
        idle_for = self.loop.time() - self.last_activity
        body = self.splice
        if exchange.waiting_for_client() or (body is not None and body.waiting_for_client):
            # The client is slow to send its body or to read ours: not the upstream's fault.
            self._arm_timer(timeout)
        elif idle_for >= timeout:
            exchange.upstream_failed(
                "read_timeout",
                f"no response within {timeout:g}s" if not self.head_done else "response stalled",
                response_seen=self.head_done,
            )
            self.close()
        else:
            self._arm_timer(timeout - idle_for)


def _after_empty_lines(buf: bytes, start: int) -> int:
    """Skip the CR and LF bytes an upstream sent before a status line (after a 100, often)."""
    while start < len(buf) and buf[start] in (0x0D, 0x0A):
        start += 1
    return start


def _reason(error: Exception) -> str:
    return str(error).strip() or type(error).__name__


class UpstreamPool:
    """Idle keep-alive connections to one upstream address, most recently used first."""

    def __init__(
        self, host: str, port: int, loop: asyncio.AbstractEventLoop, settings: PoolSettings
    ) -> None:
        self.host = host
        self.port = port
        self.loop = loop
        self.settings = settings
        self.idle: list[UpstreamConnection] = []
        self.opened = 0
        self.open = 0  # connections made and not yet lost
        self.sweeper: asyncio.TimerHandle | None = None

    def take_idle(self) -> UpstreamConnection | None:
        """Return a live idle connection, or None when a new one must be opened."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    async def connect(self, timeout: float) -> UpstreamConnection:
        """Open a new connection, raising TimeoutError or OSError when the colour is unreachable."""
        async with asyncio.timeout(timeout):
            _, protocol = await self.loop.create_connection(
                lambda: UpstreamConnection(self), self.host, self.port
            )
        self.opened += 1
        return protocol

    def release(self, conn: UpstreamConnection) -> None:
        """Return a connection after a complete exchange, or close it if it cannot be reused."""
        conn.detach()
        if not conn.reusable or conn.closed or len(self.idle) >= self.settings.max_idle:
            conn.close()
            return
        # Read while idle, so that an upstream closing an idle connection is noticed.
        conn.reading.unblock(PEER_BACKED_UP)
        conn.idle_since = self.loop.time()
        self.idle.append(conn)
        if self.sweeper is None:
            self.sweeper = self.loop.call_later(self.settings.idle_timeout / 2, self._sweep)

    def forget(self, conn: UpstreamConnection) -> None:
        """Drop a closed connection from the idle list."""
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    def close(self) -> None:
        """Close every idle connection (on shutdown or when the address left the config)."""
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()

    def _sweep(self) -> None:
        self.sweeper = None
        deadline = self.loop.time() - self.settings.idle_timeout
        # The list is ordered oldest first, since release appends and take_idle pops the end.
        expired = 0
        for conn in self.idle:
            if conn.idle_since > deadline:
                break
            expired += 1
        stale = self.idle[:expired]
        del self.idle[:expired]
        for conn in stale:
            conn.close()
        if self.idle:
            self.sweeper = self.loop.call_later(self.settings.idle_timeout / 2, self._sweep)
