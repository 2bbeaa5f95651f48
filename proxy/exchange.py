"""One request and its response, from a complete request head to the last response byte.

The exchange is the glue between the client connection (downstream) and one upstream
connection. It keeps the routing decision made when the head arrived, so a request finishes on
the colour it started on whatever the routing table says later.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

from proxy.headers import LAST_CHUNK, ResponseHead, chunk, render_response_head, simple_response
from proxy.routing import Route, RoutingTable, Upstream
from proxy.upstream import UpstreamConnection, UpstreamPool
from proxy.websocket import GOING_AWAY, FrameTracker, close_frame, is_websocket_request

if TYPE_CHECKING:
    from proxy.downstream import ClientConnection

log = logging.getLogger(__name__)

# Reading from the client stops while this many request-body bytes wait for an upstream
# connection, so a fast uploader cannot make the proxy buffer a whole body.
PENDING_BODY_LIMIT = 256 * 1024
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

# Connection attempts in progress, referenced so that they are not garbage-collected.
_connecting: set[asyncio.Task[None]] = set()

# Reasons a client connection stops reading, as bits of one mask.
BLOCK_UPSTREAM_BUSY = 1
BLOCK_PENDING_BODY = 2
BLOCK_PIPELINE = 4


class Exchange:
    """Forwards one request to its colour and the response back to the client."""

    __slots__ = (
        "body_chunked",
        "client",
        "client_http10",
        "colour_line",
        "conn",
        "conn_reused",
        "early",
        "finished",
        "going_away",
        "has_body",
        "head",
        "is_head",
        "is_upgrade",
        "keep_alive",
        "method",
        "pending",
        "pending_size",
        "pool",
        "request_complete",
        "response_chunked",
        "response_started",
        "retries",
        "route",
        "started",
        "started_at",
        "status",
        "table",
        "upstream",
        "ws_to_client",
        "ws_to_upstream",
    )

    def __init__(
        self,
        client: ClientConnection,
        table: RoutingTable,
        route: Route,
        head: bytes,
        *,
        method: bytes,
        has_body: bool,
        body_chunked: bool,
        is_upgrade: bool,
        keep_alive: bool,
        client_http10: bool,
    ) -> None:
        self.client = client
        self.table = table
        self.route = route
        self.upstream: Upstream = table.upstreams[route.colour]
        self.colour_line = route.colour_line
        self.pool: UpstreamPool | None = None
        self.head = head
        self.method = method
        self.is_head = method == b"HEAD"
        self.has_body = has_body
        self.body_chunked = body_chunked
        self.is_upgrade = is_upgrade
        self.keep_alive = keep_alive
        self.client_http10 = client_http10
        self.conn: UpstreamConnection | None = None
        self.conn_reused = False
        # Bytes waiting for an upstream connection; None once attached, then bytes go straight out.
        self.pending: list[bytes] | None = [head]
        self.pending_size = 0
        self.request_complete = False
        self.response_started = False
        self.response_chunked = False
        self.finished = False
        self.retries = 0
        self.started = False
        self.status = 0
        # Frame boundaries of a WebSocket tunnel, so it can be ended with a Close frame.
        self.ws_to_client: FrameTracker | None = None
        self.ws_to_upstream: FrameTracker | None = None
        self.going_away: str | None = None  # why the tunnel is being ended, once it is
        # Bytes a client sent after an upgrade request, before the upstream accepted it: held
        # until the 101, so that a declined upgrade can never smuggle them in as a request.
        self.early: list[bytes] | None = [] if is_upgrade else None
        if is_upgrade and is_websocket_request(head):
            self.ws_to_client = FrameTracker()
            self.ws_to_upstream = FrameTracker()
        self.started_at = client.loop.time()
        client.server.stats.request_started(route.colour)

    # --- request side, driven by the client connection --------------------------------------

    def start(self) -> None:
        """Send the request upstream: on an idle pooled connection, or on a new one.

        Past `pool.max_inflight` requests in flight to the colour, answer 503 with Retry-After
        at once: a queue would only add latency to an overloaded colour.
        """
        self.started = True
        limit = self.table.pool.max_inflight
        if limit and self.client.server.stats.inflight.get(self.route.colour, 0) > limit:
            self._overloaded(limit)
            return
        pool = self.pool = self.client.server.pool_for(self.upstream, self.table)
        conn = pool.take_idle()
        if conn is not None:
            self.conn_reused = True
            self._attach(conn)
        else:
            self.conn_reused = False
            self._connect_in_background(pool)

    def request_body(self, data: bytes) -> None:
        """Forward a piece of the request body, framing it again when chunked."""
        parts = chunk(data) if self.body_chunked else [data]
        conn = self.conn
        if conn is not None and self.pending is None:
            conn.writelines(parts)
        elif self.pending is not None:
            self.pending += parts
            self.pending_size += len(data)
            if self.pending_size > PENDING_BODY_LIMIT:
                self.client.block_reading(BLOCK_PENDING_BODY)

    def request_done(self) -> None:
        """The whole request has been read from the client."""
        self.request_complete = True
        if self.body_chunked:
            conn = self.conn
            if conn is not None and self.pending is None:
                conn.write(LAST_CHUNK)
            elif self.pending is not None:
                self.pending.append(LAST_CHUNK)

    def tunnel_from_client(self, data: bytes) -> None:
        """Forward bytes of an upgraded connection; hold those sent before the 101."""
        early = self.early
        if early is not None:
            early.append(data)
            self.pending_size += len(data)
            if self.pending_size > PENDING_BODY_LIMIT:
                self.client.block_reading(BLOCK_PENDING_BODY)
            return
        if self.ws_to_upstream is not None:
            self.ws_to_upstream.feed(data)
        conn = self.conn
        if conn is not None and self.pending is None:
            conn.write(data)
        elif self.pending is not None:
            self.pending.append(data)

    def waiting_for_client(self) -> bool:
        """Say whether progress waits on the client (slow upload, or slow reading of ours).

        An upload counts as the client's delay only while everything it sent has reached the
        upstream; an upstream that stops reading the body is stalled like one that stops
        answering.
        """
        if not self.request_complete and not self.response_started:
            conn = self.conn
            transport = conn.transport if conn is not None else None
            return transport is None or transport.get_write_buffer_size() == 0
        return self.client.writing_paused

    def cancel(self, status: int) -> None:
        """Abandon the request (the client sent something invalid); count it as `status`."""
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.close()
        self._record(status)

    def client_lost(self) -> None:
        """The client went away: the upstream connection is mid-message and cannot be reused."""
        if not self.finished:
            self.cancel(self.status if self.response_started else 499)

    # --- response side, driven by the upstream connection -----------------------------------

    def informational_response(self, head: ResponseHead) -> None:
        """Forward a 1xx (100 Continue, 103 Early Hints) to HTTP/1.1 clients."""
        if self.client_http10:
            return
        self.client.write(
            render_response_head(
                head,
                colour_line=self.colour_line,
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
        self.response_started = True
        if self.is_upgrade and not upgrade:
            # The upstream declined the upgrade; the client may have sent tunnel bytes already.
            self.keep_alive = False
        if not self.request_complete and not upgrade:
            # The upstream answered before the whole body arrived: the rest of the body is
            # never read, so neither connection can carry another request.
            self.keep_alive = False
        if self.client.server.draining:
            self.keep_alive = False
        length = head.content_length
        use_chunked = False
        if no_body:
            # A HEAD response keeps the upstream's Content-Length: it describes the GET body.
            if not self.is_head:
                length = None
        elif length is None:
            # Chunked or close-delimited upstream: chunked to HTTP/1.1 clients, close-delimited
            # to HTTP/1.0 clients, who do not know chunked.
            use_chunked = not self.client_http10
            if self.client_http10:
                self.keep_alive = False
        self.response_chunked = use_chunked
        self.client.write(
            render_response_head(
                head,
                colour_line=self.colour_line,
                content_length=length,
                chunked=use_chunked,
                keep_alive=self.keep_alive,
                client_http10=self.client_http10,
                upgrade=upgrade,
            )
        )
        early, self.early = self.early, None
        if upgrade:
            self.client.start_tunnel(self)
            if early:
                self.pending_size = 0
                self.client.unblock_reading(BLOCK_PENDING_BODY)
                for data in early:
                    self.tunnel_from_client(data)
        elif early:
            # Declined: what the client sent for the tunnel is dropped, never forwarded, and
            # the connection closes after this response (keep_alive is off, see above).
            log.info("upgrade declined, dropping %d early bytes", sum(map(len, early)))

    def response_body(self, data: bytes) -> None:
        """Forward a piece of the response body."""
        if self.response_chunked:
            self.client.writelines(chunk(data))
        else:
            self.client.write(data)

    def response_complete(self, conn: UpstreamConnection) -> None:
        """Finish the response, return the upstream connection to its pool, record metrics."""
        if self.response_chunked:
            self.client.write(LAST_CHUNK)
        self.conn = None
        if not self.request_complete:
            conn.reusable = False
        assert self.pool is not None
        self.pool.release(conn)
        self._record(self.status)
        self.client.exchange_finished(self)

    def tunnel_from_upstream(self, data: bytes) -> None:
        """Forward bytes of an upgraded connection to the client."""
        self.client.write(data)
        tracker = self.ws_to_client
        if tracker is not None:
            tracker.feed(data)
            if self.going_away is not None and tracker.at_boundary:
                # go_away() was waiting for the frame in progress to end.
                self._send_going_away()

    def go_away(self, reason: str) -> None:
        """End a tunnel that must not stay open (drain after a switch, or shutdown).

        A WebSocket gets a Close frame with code 1001 (going away) both ways, sent between two
        frames, so both ends see a clean close and the client knows to reconnect; if a frame is
        still in progress after a second, the tunnel is cut. Any other tunnel is cut at once.
        """
        tracker = self.ws_to_client
        if tracker is None:
            self.client.abort()
            return
        if self.finished or self.going_away is not None:
            return
        self.going_away = reason
        if tracker.at_boundary:
            self._send_going_away()
        else:
            self.client.loop.call_later(1.0, self.client.abort)

    def tunnel_closed_by_upstream(self) -> None:
        """The upstream closed a tunnel: close the client side too."""
        self.conn = None
        self._record(self.status)
        self.client.close()

    def upstream_failed(
        self, kind: str, message: str, *, response_seen: bool, timed_out: bool = False
    ) -> None:
        """Report a broken upstream: an error response if nothing was sent, else cut the client.

        A client that got part of a response must never see it as complete, so after the head
        the only honest signal is closing the connection.
        """
        if self.finished:
            return
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.detach()
        stats = self.client.server.stats
        if self._should_retry(kind, response_seen):
            self.retries += 1
            stats.upstream_retry(self.route.colour, kind)
            if kind != "connect":
                # The head went out on the failed connection; a connect failure sent nothing,
                # and everything read so far is still pending.
                self.pending = [self.head]
            log.debug("retrying on a new connection colour=%s after=%s", self.route.colour, kind)
            assert self.pool is not None
            self.conn_reused = False
            self._connect_in_background(self.pool)
            return
        stats.upstream_error(self.route.colour, kind)
        log.warning(
            "upstream failure colour=%s upstream=%s kind=%s detail=%r",
            self.route.colour,
            self.upstream.url,
            kind,
            message,
        )
        if self.response_started:
            self._record(self.status)
            self.client.abort()
            return
        status = 504 if timed_out else 502
        self.status = status
        text = f"bluegreen: colour {self.route.colour} ({self.upstream.url}) {message}"
        self.client.write(simple_response(status, text, colour=self.route.colour))
        self._record(status)
        self.client.close()

    # --- internals --------------------------------------------------------------------------

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
        self.client.server.stats.upstream_error(self.route.colour, "overload")
        self.status = 503
        self.response_started = True
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
            )
        )
        self._record(503)
        self.client.exchange_finished(self)

    def _connect_in_background(self, pool: UpstreamPool) -> None:
        # The event loop keeps only a weak reference to tasks: hold this one until it is done.
        task = self.client.loop.create_task(self._connect(pool))
        _connecting.add(task)
        task.add_done_callback(_connecting.discard)

    async def _connect(self, pool: UpstreamPool) -> None:
        timeout = self.table.timeouts.connect
        try:
            conn = await pool.connect(timeout)
        except TimeoutError:
            self._connect_failed("timeout", f"connect timed out after {timeout:g}s", True)
            return
        except OSError as error:
            # asyncio's message repeats the address; the errno's text says what happened.
            reason = os.strerror(error.errno) if error.errno else str(error) or "connect failed"
            self._connect_failed("connect", f"unreachable: {reason.lower()}", False)
            return
        if self.finished or self.client.closed:
            pool.release(conn)
            return
        self._attach(conn)

    def _connect_failed(self, kind: str, message: str, timed_out: bool) -> None:
        if not self.finished and not self.client.closed:
            self.upstream_failed(kind, message, response_seen=False, timed_out=timed_out)

    def _attach(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        conn.attach(self, self.table.timeouts.read)
        pending = self.pending
        self.pending = None
        if pending:
            conn.write(pending[0] if len(pending) == 1 else b"".join(pending))
        if self.pending_size:
            self.pending_size = 0
            self.client.unblock_reading(BLOCK_PENDING_BODY)

    def _should_retry(self, kind: str, response_seen: bool) -> bool:
        """Say whether a failed attempt may be made again, within `retry.*` count and time.

        A refused connection sent nothing, so any request may go again: its head and body are
        still pending. A connection closed or reset after the head went out (a pooled one the
        upstream had just closed, or an upstream that died) may have been processed, so only an
        idempotent request without a body (which is streamed, not kept) is sent again, and only
        while no byte of a response has reached the client.
        """
        policy = self.table.retry
        if (
            self.retries >= policy.max_retries
            or self.response_started
            or response_seen
            or self.client.loop.time() - self.started_at >= policy.timeout
        ):
            return False
        if kind == "connect":
            return True
        return (
            kind in ("closed", "reset") and not self.has_body and self.method in IDEMPOTENT_METHODS
        )

    def _record(self, status: int) -> None:
        if self.finished:
            return
        self.finished = True
        elapsed = self.client.loop.time() - self.started_at
        self.client.server.stats.request_finished(
            self.route.colour, self.route.kind, status, elapsed
        )
