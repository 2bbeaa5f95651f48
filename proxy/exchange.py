"""One request and its response, from a complete request head to the last response byte.

The exchange is the glue between the client connection (downstream) and one upstream
connection. It keeps the routing decision made when the head arrived, so a request finishes on
the colour it started on whatever the routing table says later.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import time
from time import perf_counter
from typing import Final, Protocol

from proxy.access_log import CLIENT, PROXY, UPSTREAM, AccessLog, AccessRecord
from proxy.flow import PENDING_BODY
from proxy.framing import (
    METRIC_KIND,
    FailureKind,
    failure_status,
    may_retry,
    response_framing,
    sent_nothing,
)
from proxy.headers import LAST_CHUNK, ResponseHead, chunk, render_response_head, simple_response
from proxy.metrics import TrafficStats
from proxy.routing import Route, RoutingTable, Upstream
from proxy.shadow import ShadowRequest
from proxy.upstream import ClientWriter, UpstreamConnection, UpstreamPool
from proxy.websocket import GOING_AWAY, FrameTracker, close_frame, is_websocket_request

log = logging.getLogger(__name__)

# Reading from the client stops while this many request-body bytes wait for an upstream
# connection, so a fast uploader cannot make the proxy buffer a whole body.
PENDING_BODY_LIMIT = 256 * 1024

# Connection attempts in progress, referenced so that they are not garbage-collected.
_connecting: set[asyncio.Task[None]] = set()


class Phase(enum.IntEnum):
    """Where an exchange is in its life: a state machine that only moves forward.

    The one step back is a retry, from SENT to CONNECTING. The order is used: from RESPONDING
    on, the client has been answered, so nothing else may be written in front of it.
    """

    QUEUED = 0  # behind earlier pipelined requests on its connection: nothing sent yet
    CONNECTING = 1  # waiting for an upstream connection; request bytes are held in `pending`
    SENT = 2  # attached to an upstream connection: request bytes go straight out
    RESPONDING = 3  # the response head has been written to the client
    TUNNEL = 4  # the upstream accepted an upgrade: bytes flow unparsed both ways
    CLOSING = 5  # a WebSocket tunnel being ended with Close frames (drain, shutdown)
    FINISHED = 6  # counted in the metrics; nothing more is sent either way


# The phases as module constants, for the hot path: CPython 3.11 reads an enum member off its
# class through a descriptor (~1,000 instructions), a module global in ~70.
QUEUED: Final = Phase.QUEUED
CONNECTING: Final = Phase.CONNECTING
SENT: Final = Phase.SENT
RESPONDING: Final = Phase.RESPONDING
TUNNEL: Final = Phase.TUNNEL
CLOSING: Final = Phase.CLOSING
FINISHED: Final = Phase.FINISHED


class ClientSide(ClientWriter, Protocol):
    """What an exchange needs of the client connection it answers (proxy/downstream.py).

    More than an upstream connection needs of it (`ClientWriter`: the read gate, cork).
    """

    @property
    def closed(self) -> bool:
        """Whether the client connection is closed (nothing more reaches it)."""
        ...

    @property
    def writing_paused(self) -> bool:
        """Whether the client reads slower than the proxy writes."""
        ...

    def write(self, data: bytes) -> None:
        """Send response bytes to the client."""
        ...

    def writelines(self, parts: list[bytes]) -> None:
        """Send several pieces of response bytes at once."""
        ...

    def start_tunnel(self, exchange: Exchange) -> None:
        """The upstream accepted `exchange`'s upgrade: bytes now flow unparsed both ways."""
        ...

    def exchange_finished(self, exchange: Exchange) -> None:
        """`exchange` is answered: go on with the next request, or close."""
        ...

    def close(self) -> None:
        """Close after the buffered bytes are written."""
        ...

    def abort(self) -> None:
        """Close at once: the client must see a cut response."""
        ...

    def splice_fd(self) -> int | None:
        """The client socket's descriptor while nothing waits to be written to it, else None."""
        ...


class ExchangeContext(Protocol):
    """What an exchange needs of the server it runs in (proxy/server.py)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop, for the clock and for connection attempts."""
        ...

    @property
    def stats(self) -> TrafficStats:
        """Where requests, failures and retries are counted."""
        ...

    @property
    def draining(self) -> bool:
        """Whether the server is shutting down, so connections are not kept alive."""
        ...

    @property
    def access_log(self) -> AccessLog | None:
        """Where finished requests are logged (made when a config first turns the log on)."""
        ...

    def pool_for(self, upstream: Upstream, table: RoutingTable) -> UpstreamPool:
        """The keep-alive pool of an upstream address."""
        ...


class Exchange:
    """Forwards one request to its colour and the response back to the client."""

    __slots__ = (
        "access",
        "body_chunked",
        "bytes_in",
        "bytes_out",
        "client",
        "client_http10",
        "colour_line",
        "conn",
        "early",
        "going_away",
        "has_body",
        "head",
        "is_head",
        "is_upgrade",
        "keep_alive",
        "method",
        "pending",
        "pending_size",
        "phase",
        "pool",
        "request_complete",
        "request_id",
        "response_chunked",
        "retries",
        "route",
        "server",
        "shadow",
        "started_at",
        "status",
        "table",
        "ttfb",
        "upstream",
        "ws_to_client",
        "ws_to_upstream",
    )

    def __init__(
        self,
        client: ClientSide,
        server: ExchangeContext,
        table: RoutingTable,
        route: Route,
        head: bytes,
        *,
        method: bytes,
        request_id: bytes,
        has_body: bool,
        body_chunked: bool,
        is_upgrade: bool,
        keep_alive: bool,
        client_http10: bool,
    ) -> None:
        self.client = client
        self.server = server
        self.table = table
        self.route = route
        self.upstream: Upstream = table.upstreams[route.colour]
        self.colour_line = route.colour_line
        self.pool: UpstreamPool | None = None
        self.head = head
        self.method = method
        self.request_id = request_id
        # The access log's record, begun by the client side when the table logs requests.
        self.access: AccessRecord | None = None
        self.bytes_in = 0  # request body (or tunnel) bytes from the client
        self.bytes_out = 0  # response body (or tunnel) bytes to the client
        self.is_head = method == b"HEAD"
        self.has_body = has_body
        self.body_chunked = body_chunked
        self.is_upgrade = is_upgrade
        self.keep_alive = keep_alive
        self.client_http10 = client_http10
        self.phase = QUEUED
        self.conn: UpstreamConnection | None = None
        # Request bytes waiting for an upstream connection (QUEUED and CONNECTING only).
        self.pending: list[bytes] = [head]
        self.pending_size = 0
        self.request_complete = False  # the request side: the whole request has been read
        self.response_chunked = False
        self.retries = 0
        self.status = 0
        # Frame boundaries of a WebSocket tunnel, so it can be ended with a Close frame.
        self.ws_to_client: FrameTracker | None = None
        self.ws_to_upstream: FrameTracker | None = None
        self.going_away = ""  # why the tunnel is being ended (phase CLOSING)
        # Bytes a client sent after an upgrade request, before the upstream accepted it: held
        # until the 101, so that a declined upgrade can never smuggle them in as a request.
        self.early: list[bytes] | None = None  # made on the first such bytes
        if is_upgrade and is_websocket_request(head):
            self.ws_to_client = FrameTracker()
            self.ws_to_upstream = FrameTracker()
        # High-resolution and monotonic: the event loop's clock is cached to the millisecond
        # under uvloop, too coarse for the 0.5 ms and 1 ms buckets.
        self.started_at = perf_counter()
        self.ttfb = -1.0  # seconds to the colour's response head; -1 while there is none
        # The request's mirror to the idle colour (proxy/shadow.py), set by the client side.
        self.shadow: ShadowRequest | None = None
        server.stats.request_started(route.colour)

    @property
    def response_started(self) -> bool:
        """Whether the client has been answered (or abandoned): nothing may go in front."""
        return self.phase >= RESPONDING

    # --- request side, driven by the client connection --------------------------------------

    def start(self) -> None:
        """Send the request upstream: on an idle pooled connection, or on a new one.

        Past `pool.max_inflight` requests in flight to the colour, answer 503 with Retry-After
        at once: a queue would only add latency to an overloaded colour.
        """
        self.phase = CONNECTING
        if self.shadow is not None:
            self.shadow.start()  # sent with the live request, never before it
        server = self.server
        limit = self.table.pool.max_inflight
        if limit and server.stats.inflight.get(self.route.colour, 0) > limit:
            self._overloaded(limit)
            return
        pool = self.pool = server.pool_for(self.upstream, self.table)
        conn = pool.take_idle()
        if conn is not None:
            self._attach(conn)
        else:
            self._connect_in_background(pool)

    def request_body(self, data: bytes) -> None:
        """Forward a piece of the request body, framing it again when chunked."""
        self.bytes_in += len(data)
        if self.shadow is not None:
            self.shadow.request_body(data)
        parts = chunk(data) if self.body_chunked else [data]
        conn = self.conn
        if conn is not None:
            conn.writelines(parts)
        elif self.phase <= CONNECTING:
            self.pending += parts
            self._hold(len(data))

    def request_done(self) -> None:
        """The whole request has been read from the client."""
        self.request_complete = True
        if self.body_chunked:
            conn = self.conn
            if conn is not None:
                conn.write(LAST_CHUNK)
            elif self.phase <= CONNECTING:
                self.pending.append(LAST_CHUNK)

    def tunnel_from_client(self, data: bytes) -> None:
        """Forward bytes of an upgraded connection; hold those sent before the 101.

        After a declined upgrade the bytes are dropped: they were meant for a tunnel that does
        not exist, and sent on they would reach the upstream as a request never parsed here.
        """
        phase = self.phase
        if phase < RESPONDING:
            if self.early is None:
                self.early = [data]
            else:
                self.early.append(data)
            self._hold(len(data))
            return
        if phase is not TUNNEL and phase is not CLOSING:
            return
        self.bytes_in += len(data)
        if self.ws_to_upstream is not None:
            self.ws_to_upstream.feed(data)
        conn = self.conn
        if conn is not None:
            conn.write(data)

    def waiting_for_client(self) -> bool:
        """Say whether progress waits on the client (slow upload, or slow reading of ours).

        An upload counts as the client's delay only while everything it sent has reached the
        upstream; an upstream that stops reading the body is stalled like one that stops
        answering.
        """
        if not self.request_complete and self.phase < RESPONDING:
            conn = self.conn
            transport = conn.transport if conn is not None else None
            return transport is None or transport.get_write_buffer_size() == 0
        return self.client.writing_paused

    def cancel(self, status: int, reason: str | None = None, ended_by: str = PROXY) -> None:
        """Abandon the request (the client sent something invalid); count it as `status`."""
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.close()
        self._record(status, ended_by, reason)

    def client_lost(self) -> None:
        """The client went away: the upstream connection is mid-message and cannot be reused.

        A connection the proxy itself ended (a drain, a shutdown) is the proxy's doing.
        """
        if self.phase is not FINISHED:
            status = self.status if self.phase >= RESPONDING else 499
            if self.going_away:
                self.cancel(status, self.going_away)
            else:
                self.cancel(status, None, CLIENT)

    # --- response side, driven by the upstream connection -----------------------------------

    def informational_response(self, head: ResponseHead) -> None:
        """Forward a 1xx (100 Continue, 103 Early Hints) to HTTP/1.1 clients."""
        if self.client_http10:
            return
        self.client.write(
            render_response_head(
                head,
                colour_line=self.colour_line,
                request_id=self.request_id,
                content_length=None,
                chunked=False,
                keep_alive=True,
                client_http10=False,
                upgrade=False,
            )
        )

    def response_head(
        self, status: int, head: ResponseHead, *, no_body: bool, upgrade: bool
    ) -> None:
        """Write the response head with the proxy's own framing and the colour header."""
        self.status = status
        self.phase = RESPONDING
        self.ttfb = perf_counter() - self.started_at
        length, self.response_chunked, self.keep_alive = response_framing(
            head.content_length,
            no_body=no_body,
            request_is_head=self.is_head,
            client_http10=self.client_http10,
            keep_alive=self.keep_alive,
            request_complete=self.request_complete,
            draining=self.server.draining,
        )
        self.client.write(
            render_response_head(
                head,
                colour_line=self.colour_line,
                request_id=self.request_id,
                content_length=length,
                chunked=self.response_chunked,
                keep_alive=self.keep_alive,
                client_http10=self.client_http10,
                upgrade=upgrade,
            )
        )
        if upgrade:
            self._open_tunnel()
        elif self.early:
            # Declined: what the client sent for the tunnel is dropped, never forwarded, and
            # the connection closes after this response (see response_framing).
            log.info("upgrade declined, dropping %d early bytes", sum(map(len, self.early)))
            self.early = None

    def response_body(self, data: bytes) -> None:
        """Forward a piece of the response body."""
        self.bytes_out += len(data)
        if self.shadow is not None:
            self.shadow.live_body(data)
        if self.response_chunked:
            self.client.writelines(chunk(data))
        else:
            self.client.write(data)

    def splice_target(self) -> int | None:
        """The client's socket for the rest of the body, unless the proxy must see the bytes.

        A shadow digests the live body, and a re-chunked body needs its framing written.
        """
        if self.shadow is not None or self.response_chunked:
            return None
        return self.client.splice_fd()

    def body_spliced(self, size: int) -> None:
        """Count body bytes that went to the client without passing through the process."""
        self.bytes_out += size

    def client_write_failed(self) -> None:
        """The client's socket refused the spliced body: close it, as a failed write would."""
        self.client.abort()

    def response_complete(self, conn: UpstreamConnection) -> None:
        """Finish the response, return the upstream connection to its pool, record metrics."""
        if self.response_chunked:
            self.client.write(LAST_CHUNK)
        self.conn = None
        if not self.request_complete or (self.has_body and (self.is_head or self.method == b"GET")):
            # A GET or HEAD with a body is forwarded (as nginx does), but an upstream that
            # ignores such a body would read it as the next request: never reused.
            conn.reusable = False
        assert self.pool is not None
        self.pool.release(conn)
        self._record(self.status)
        self.client.exchange_finished(self)

    def tunnel_from_upstream(self, data: bytes) -> None:
        """Forward bytes of an upgraded connection to the client."""
        self.bytes_out += len(data)
        self.client.write(data)
        tracker = self.ws_to_client
        if tracker is not None:
            tracker.feed(data)
            if self.phase is CLOSING and tracker.at_boundary:
                # go_away() was waiting for the frame in progress to end.
                self._send_going_away()

    def ended_by_proxy(self, reason: str) -> None:
        """Say why the proxy is about to cut this exchange's client (for its access log line)."""
        self.going_away = reason

    def go_away(self, reason: str) -> None:
        """End a tunnel that must not stay open (drain after a switch, or shutdown).

        A WebSocket gets a Close frame with code 1001 (going away) both ways, sent between two
        frames, so both ends see a clean close and the client knows to reconnect; if a frame is
        still in progress after a second, the tunnel is cut. Any other tunnel is cut at once.
        """
        tracker = self.ws_to_client
        if tracker is None:
            self.going_away = reason
            self.client.abort()
            return
        if self.phase is not TUNNEL:
            return  # already ending, or ended
        self.phase = CLOSING
        self.going_away = reason
        if tracker.at_boundary:
            self._send_going_away()
        else:
            self.server.loop.call_later(1.0, self.client.abort)

    def tunnel_closed_by_upstream(self) -> None:
        """The upstream closed a tunnel: close the client side too."""
        self.conn = None
        self._record(self.status)
        self.client.close()

    def upstream_failed(self, kind: FailureKind, message: str, *, response_seen: bool) -> None:
        """Report a broken upstream: an error response if nothing was sent, else cut the client.

        A client that got part of a response must never see it as complete, so after the head
        the only honest signal is closing the connection.
        """
        if self.phase is FINISHED:
            return
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.detach()
        server = self.server
        if may_retry(
            kind,
            retries=self.retries,
            max_retries=self.table.retry.max_retries,
            elapsed=perf_counter() - self.started_at,
            retry_timeout=self.table.retry.timeout,
            response_seen=response_seen or self.phase >= RESPONDING,
            has_body=self.has_body,
            method=self.method,
        ):
            self.retries += 1
            server.stats.upstream_retry(self.route.colour, METRIC_KIND[kind])
            if not sent_nothing(kind):
                # The head went out on the failed connection; a connect failure sent nothing,
                # and everything read so far is still pending.
                self.pending = [self.head]
            log.debug(
                "retrying on a new connection colour=%s after=%s request_id=%s",
                self.route.colour,
                kind,
                self.request_id.decode("ascii"),
            )
            assert self.pool is not None
            self.phase = CONNECTING
            self._connect_in_background(self.pool)
            return
        server.stats.upstream_error(self.route.colour, METRIC_KIND[kind])
        log.warning(
            "upstream failure colour=%s upstream=%s kind=%s detail=%r request_id=%s",
            self.route.colour,
            self.upstream.url,
            kind,
            message,
            self.request_id.decode("ascii"),
        )
        if self.phase >= RESPONDING:
            # The client sees a cut response: the upstream ended it, not the proxy.
            self._record(self.status, UPSTREAM, f"{kind}: {message}")
            self.client.abort()
            return
        status = self.status = failure_status(kind)
        text = f"bluegreen: colour {self.route.colour} ({self.upstream.url}) {message}"
        self.client.write(
            simple_response(status, text, colour=self.route.colour, request_id=self.request_id)
        )
        self._record(status, PROXY, f"{kind}: {message}")
        self.client.close()

    # --- internals --------------------------------------------------------------------------

    def _hold(self, size: int) -> None:
        """Count bytes held for later; past the bound, stop reading the client."""
        self.pending_size += size
        if self.pending_size > PENDING_BODY_LIMIT:
            self.client.reading.block(PENDING_BODY)

    def _release_held(self) -> None:
        """The held bytes went out: read the client again."""
        self.pending_size = 0
        self.client.reading.unblock(PENDING_BODY)

    def _open_tunnel(self) -> None:
        """After a 101: hand the client connection over to the tunnel, then send early bytes."""
        self.phase = TUNNEL
        self.client.start_tunnel(self)
        early, self.early = self.early, None
        if early:
            if self.pending_size:
                self._release_held()
            for data in early:
                self.tunnel_from_client(data)

    def _send_going_away(self) -> None:
        """Send Close 1001 to both ends (to the upstream only between frames), then close."""
        reason = self.going_away or "going away"
        conn, self.conn = self.conn, None
        if conn is not None:
            to_upstream = self.ws_to_upstream
            if to_upstream is not None and to_upstream.at_boundary:
                conn.write(close_frame(GOING_AWAY, reason, masked=True))
            conn.close_after_write()
        self.client.write(close_frame(GOING_AWAY, reason, masked=False))
        self.client.close()

    def _overloaded(self, limit: int) -> None:
        self.server.stats.upstream_error(self.route.colour, METRIC_KIND["overload"])
        self.status = 503
        self.phase = RESPONDING
        # Without the whole body read, the connection cannot carry another request.
        self.keep_alive = self.keep_alive and self.request_complete
        self.client.write(
            simple_response(
                503,
                f"bluegreen: colour {self.route.colour} has {limit} requests in flight, its "
                "limit (pool.maxInflight); retry shortly",
                colour=self.route.colour,
                close=not self.keep_alive,
                extra_headers=((b"Retry-After", b"1"),),
                request_id=self.request_id,
            )
        )
        self._record(503, PROXY, f"overload: {limit} requests in flight (pool.maxInflight)")
        self.client.exchange_finished(self)

    def _connect_in_background(self, pool: UpstreamPool) -> None:
        # The event loop keeps only a weak reference to tasks: hold this one until it is done.
        task = self.server.loop.create_task(self._connect(pool))
        _connecting.add(task)
        task.add_done_callback(_connecting.discard)

    async def _connect(self, pool: UpstreamPool) -> None:
        timeout = self.table.timeouts.connect
        try:
            conn = await pool.connect(timeout)
        except TimeoutError:
            self._connect_failed("connect_timeout", f"connect timed out after {timeout:g}s")
            return
        except OSError as error:
            # asyncio's message repeats the address; the errno's text says what happened.
            reason = os.strerror(error.errno) if error.errno else str(error) or "connect failed"
            self._connect_failed("connect", f"unreachable: {reason.lower()}")
            return
        if self.phase is FINISHED or self.client.closed:
            pool.release(conn)
            return
        self._attach(conn)

    def _connect_failed(self, kind: FailureKind, message: str) -> None:
        if self.phase is not FINISHED and not self.client.closed:
            self.upstream_failed(kind, message, response_seen=False)

    def _attach(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        self.phase = SENT
        conn.attach(self, self.table.timeouts.read)
        pending = self.pending
        self.pending = []
        if pending:
            conn.write(pending[0] if len(pending) == 1 else b"".join(pending))
        if self.pending_size:
            self._release_held()

    def _record(self, status: int, ended_by: str = UPSTREAM, reason: str | None = None) -> None:
        """Count the finished request (once), and hand it to the access log when it is on."""
        if self.phase is FINISHED:
            return
        self.phase = FINISHED
        elapsed = perf_counter() - self.started_at
        shadow = self.shadow
        if shadow is not None:
            self.shadow = None
            # Only a complete answer of the colour is compared: not one the proxy wrote, nor
            # one cut short.
            answered = ended_by == UPSTREAM and reason is None and self.ttfb >= 0
            shadow.live_done(status, elapsed, answered=answered)
        self.server.stats.request_finished(
            self.route.colour,
            self.route.kind,
            status,
            elapsed,
            ttfb=self.ttfb,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
        )
        if self.access is not None:
            self._log_access(self.access, status, ended_by, reason, elapsed)

    def _log_access(
        self, record: AccessRecord, status: int, ended_by: str, reason: str | None, elapsed: float
    ) -> None:
        """Complete the access log record begun when the head arrived, and queue it."""
        access_log = self.server.access_log
        if access_log is None:
            return
        record.ended = time.time()
        record.duration = elapsed
        record.ttfb = self.ttfb if self.ttfb >= 0 else None
        record.status = status
        record.bytes_in = self.bytes_in
        record.bytes_out = self.bytes_out
        record.colour = self.route.colour
        record.route = self.route.kind
        record.upstream = self.upstream.address
        record.retries = self.retries
        record.ended_by = ended_by
        record.reason = reason
        if self.table.access_log.keeps(status, record.duration):
            access_log.log(record)


class LocalAnswer(Exchange):
    """A request the proxy answers itself (the preview link), in its turn on the connection.

    It waits in the connection's queue like any exchange, so that pipelined requests in front of
    it are answered first, and then writes its response without reaching a colour: no upstream,
    no pool, and nothing counted as a colour's request.
    """

    __slots__ = ("response",)

    def __init__(
        self,
        client: ClientSide,
        table: RoutingTable,
        response: bytes,
        *,
        keep_alive: bool,
        request_id: bytes,
    ) -> None:
        # Exchange.__init__ is not called: it would pick an upstream and count the request as
        # in flight to a colour. These are the attributes the connection reads off a queued
        # exchange.
        self.client = client
        self.table = table
        self.route = table.live_route
        self.response = response
        self.keep_alive = keep_alive
        self.phase = QUEUED
        self.conn = None
        self.pending = []
        self.pending_size = 0
        self.request_complete = False
        self.body_chunked = False
        self.is_upgrade = False
        self.early = None
        self.request_id = request_id
        self.access = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.shadow = None

    def start(self) -> None:
        """Write the answer; the connection then goes on with the next request."""
        self.phase = FINISHED
        self.client.write(self.response)
        self.client.exchange_finished(self)

    def cancel(self, status: int, reason: str | None = None, ended_by: str = PROXY) -> None:
        """Nothing upstream to abandon and nothing counted: just finish."""
        self.phase = FINISHED
