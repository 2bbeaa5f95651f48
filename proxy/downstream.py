"""The client side: parse requests strictly, route each one, hand it to an `Exchange`.

llhttp (through httptools) parses with its strict defaults: no leniency flag is ever set, so
Content-Length with Transfer-Encoding, repeated Content-Length, obs-fold and stray CR or NUL in
a head are all parse errors, answered with 400 and a closed connection.

Pipelined requests queue as exchanges; only the first talks to an upstream, the others keep
their (bounded) bytes until it is their turn, so responses go back in request order.

This module knows nothing of the server above it: what it needs of it is the `ServerSide`
protocol below (proxy/server.py implements it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Final, Protocol, cast

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from proxy.access_log import PROXY, AccessRecord
from proxy.exchange import QUEUED, Exchange, ExchangeContext, LocalAnswer
from proxy.flow import PEER_BACKED_UP, PIPELINE, ReadGate
from proxy.headers import (
    RequestHeadError,
    UpstreamRequest,
    build_upstream_request,
    simple_response,
)
from proxy.preview_link import answer_link, is_link
from proxy.request_id import REQUEST_ID_HEADER, new_request_id, trace_id_of, valid_request_id
from proxy.routing import DEFAULT_LIMITS, LIVE, ClientLimits, Route, RoutingTable
from proxy.shadow import ShadowMirror
from proxy.splice import transport_fd

log = logging.getLogger(__name__)

# Beyond this many queued pipelined requests, stop reading until the first ones are answered.
MAX_PIPELINED = 16
# How a request line ends when the protocol is one the proxy speaks. llhttp also accepts RTSP/,
# ICE/ and the versions 0.9 and 2.0, which must not be relabelled HTTP/1.1 and forwarded.
_HTTP11: Final = b" HTTP/1.1"
_HTTP10: Final = b" HTTP/1.0"
RETRY_AFTER = ((b"Retry-After", b"1"),)


class ServerSide(ExchangeContext, Protocol):
    """What a client connection needs of the server that accepted it."""

    @property
    def table(self) -> RoutingTable | None:
        """The routing table current now (None before the first valid config)."""
        ...

    @property
    def limits(self) -> ClientLimits:
        """The client limits in force now."""
        ...

    @property
    def shadows(self) -> ShadowMirror:
        """Where live requests are mirrored to the idle colour (proxy/shadow.py)."""
        ...

    def connection_opened(self, conn: ClientConnection) -> bool:
        """Track a new connection; say whether it is past `limits.connections`."""
        ...

    def connection_closed(self, conn: ClientConnection) -> None:
        """Forget a closed connection."""
        ...

    def tunnel_opened(self, conn: ClientConnection, exchange: Exchange) -> None:
        """Remember an upgraded connection, so that a switch or a shutdown can end it."""
        ...


class ClientConnection(asyncio.Protocol):
    """One connection from a client (or a load balancer in front of the proxy)."""

    def __init__(self, server: ServerSide, client_ip: str | None = None) -> None:
        """`client_ip`, when given, is the peer (from a PROXY protocol header), not the socket's."""
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.peer_ip: str | None = client_ip
        self.peer: bytes | None = None  # peer_ip as bytes, for X-Forwarded-For
        self.parser = HttpRequestParser(self)
        self.parser_stale = False
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.parsing: Exchange | None = None  # the request whose body is being read
        self.body_remaining: int | None = None
        self.pass_through = 0
        self.queue: deque[Exchange] = deque()
        self.tunnel: Exchange | None = None
        self.upgrade_pending: Exchange | None = None
        # Closed while the upstream reads slowly, a body waits, or the pipeline is full.
        self.reading = ReadGate()
        self.writing_paused = False
        self.corked: list[bytes] | None = None
        self.fd = -1  # the socket's descriptor, once a splice asked for it (splice_fd)
        self.closed = False
        self.eof = False
        # When the connection last became idle (opened, or a response finished): the keep-alive
        # timeout counts from here. Not touched per read, which would cost a clock call.
        self.last_activity = 0.0
        self.head_started: float | None = None
        self.head_began = 0.0  # when the latest request head started (for its log line if refused)
        self.head_bytes = 0  # bytes read while a head was incomplete
        self.head_size = 0  # bytes of the current head's target and fields, while measured
        # Where the request line is read from, for its protocol (see _protocol_is_http10): the
        # read being parsed; whether it starts at a message boundary; the read the current
        # request starts at the head of (None: pipelined behind another); the earlier reads
        # of a head that took several.
        self.feeding = b""
        self.at_boundary = False
        self.line_from: bytes | None = None
        self.partial: list[bytes] | None = None
        self.measure_head = False  # count field sizes: only when a read could pass the limit
        self.body_size = 0  # bytes of the current request's body so far
        self.limits = server.limits  # snapshot per request head: the table may change
        self.over_capacity = False

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register with the server and note the peer for X-Forwarded-For and preview checks."""
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=512 * 1024, low=128 * 1024)
        self.reading.open(transport)
        if self.peer_ip is None:
            peer = transport.get_extra_info("peername")
            if isinstance(peer, tuple) and peer:
                self.peer_ip = str(peer[0])
        if self.peer_ip is not None:
            self.peer = self.peer_ip.encode("ascii")
        self.last_activity = self.loop.time()
        # Past the limit the connection is still read, so that its request gets a 503 with
        # Retry-After rather than a reset that a client could not tell from a crash.
        self.over_capacity = self.server.connection_opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        """Abandon every exchange still in flight; their upstream connections are closed."""
        self.closed = True
        self.reading.close()
        self.server.connection_closed(self)
        if self.tunnel is not None:
            exchange, self.tunnel = self.tunnel, None
            exchange.client_lost()
        while self.queue:
            self.queue.popleft().client_lost()

    def eof_received(self) -> bool:
        """A client half-closed: finish the responses it is owed, then close."""
        self.eof = True
        if self.tunnel is not None:
            return False
        return bool(self.queue)

    def pause_writing(self) -> None:
        """The client reads slower than the upstream sends: stop reading the upstream."""
        self.writing_paused = True
        exchange = self.exchange_in_progress()
        if exchange is not None and exchange.conn is not None:
            exchange.conn.reading.block(PEER_BACKED_UP)

    def resume_writing(self) -> None:
        """The client caught up: read the upstream again."""
        self.writing_paused = False
        exchange = self.exchange_in_progress()
        if exchange is not None and exchange.conn is not None:
            exchange.conn.reading.unblock(PEER_BACKED_UP)

    def data_received(self, data: bytes) -> None:
        """Feed the parser, or pass body and tunnel bytes straight on."""
        if self.tunnel is not None:
            self.tunnel.tunnel_from_client(data)
            return
        if self.upgrade_pending is not None:
            self.upgrade_pending.tunnel_from_client(data)
            return
        if self.pass_through:
            data = self._pass_body_through(data)
            if not data:
                return
        if self.head_bytes + len(data) > self.limits.max_head_size:
            # This read could carry a head past the limit: count field sizes as they come.
            # Smaller reads cannot, so the common case pays nothing per field.
            self._start_measuring_head()
        elif self.measure_head:
            self.measure_head = False
        self.feeding = data
        self.at_boundary = self.head_started is None and self.parsing is None
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as upgrade:
            self._upgrade_requested(data[upgrade.args[0] :])
            self._start_first()
            return
        except HttpParserError as error:
            # An exception raised in a parser callback arrives as the context of a parser error.
            cause = error.__context__
            if isinstance(cause, RequestHeadError):
                self._reject(cause.status, str(cause), cause.headers)
            else:
                self._reject(400, f"bad request: {str(error).strip() or type(error).__name__}")
            return
        self.feeding = b""
        if self.head_started is not None:
            # A head still incomplete after this read: llhttp sets no size limit of its own.
            self.head_bytes += len(data)
            if self.partial is None:
                self.partial = [data]
            else:
                self.partial.append(data)
            if self.head_bytes > self.limits.max_head_size:
                self._reject(431, _too_large("request head", self.limits.max_head_size))
                return
        if self.parsing is not None and self.body_remaining:
            # The rest of this body is forwarded without the parser (see proxy/upstream.py).
            self.pass_through = self.body_remaining
            self.parser_stale = True
        # Only now, with the whole read parsed cleanly, does anything go upstream: a request
        # that turns out malformed later in the same read never reaches a colour.
        self._start_first()

    # --- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        """Start a new request head."""
        self.url = b""
        self.headers = []
        self.head_started = self.head_began = self.loop.time()
        self.head_bytes = 0
        self.body_size = 0
        self.head_size = 0
        self.line_from = self.feeding if self.at_boundary else None
        self.at_boundary = False
        if self.partial is not None:
            self.partial = None
        table = self.server.table
        self.limits = table.limits if table is not None else DEFAULT_LIMITS

    def on_url(self, url: bytes) -> None:
        """Collect the request target (llhttp may hand it over in pieces)."""
        self.url += url
        self.head_size = size = len(self.url)
        if size > self.limits.max_uri_size:
            raise RequestHeadError(_too_large("request target", self.limits.max_uri_size), 414)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Collect one header field (its size counted only while a head may be too large)."""
        self.headers.append((name, value))
        if self.measure_head:
            self.head_size += len(name) + len(value) + 4
            if self.head_size > self.limits.max_head_size:
                raise RequestHeadError(_too_large("request head", self.limits.max_head_size), 431)

    def on_headers_complete(self) -> None:
        """Route the request with the table current now and queue its exchange."""
        self.head_started = None
        parser = self.parser
        server = self.server
        table = server.table
        method = parser.get_method()
        if method == b"CONNECT":
            raise RequestHeadError("bad request: CONNECT is not supported by a reverse proxy")
        if self.url[:1] == b"*" and (method != b"OPTIONS" or self.url != b"*"):
            # RFC 9112 3.2.4: asterisk-form is `OPTIONS *` and nothing else.
            raise RequestHeadError("bad request: a '*' target is only valid as OPTIONS *")
        http10 = self._is_http10(method)
        if table is None:
            raise RequestHeadError("bluegreen: no valid config loaded yet", status=503)
        if len(self.headers) > self.limits.max_header_count:
            # Checked once per head: their total size is bounded by the head size limit.
            raise RequestHeadError(
                f"request header fields: more than {self.limits.max_header_count}", 431
            )
        if self.over_capacity:
            raise RequestHeadError(
                f"bluegreen: {self.limits.max_connections} client connections open, the limit "
                "(limits.connections); retry shortly",
                503,
                RETRY_AFTER,
            )
        upgrade = parser.should_upgrade()
        trusted_peer = bool(table.forwarded_trusted) and table.trusts_forwarded_for(self.peer_ip)
        url = self.url
        request = build_upstream_request(
            method,
            url,
            self.headers,
            peer=self.peer,
            preview_header=table.preview_header,
            upgrade=upgrade,
            trusted_peer=trusted_peer,
            allow_underscores=table.edge.allow_underscores,
            start_trace=table.tracing.generate,
            preview_cookie=table.preview_cookie,
            session_cookie=table.session_cookie,
        )
        if request.dropped:
            server.stats.dropped_request_fields("underscore", request.dropped)
        if http10 and request.chunked:
            # RFC 9112 6.1: faulty framing, whatever Connection says; for a request, 400 (6.3).
            raise RequestHeadError("bad request: Transfer-Encoding in an HTTP/1.0 request")
        chunked = request.chunked
        content_length = request.content_length
        # The second byte first: an int comparison, where bytes.startswith would cost a method
        # call with argument parsing on every request (callgrind: ~550 instructions).
        if (
            len(url) > 1
            and url[1] == table.preview_path_second
            and is_link(url, table.preview.path_bytes)
        ):
            if chunked or content_length or upgrade:
                raise RequestHeadError("bad request: the preview link takes no body or upgrade")
            self._answer_link(method, table, trusted_peer, request.request_id)
            return
        route = table.choose(request.preview_value, self.peer_ip)
        if request.preview_cookie is not None and route is table.live_route:
            route, outcome = table.choose_by_cookie(
                request.preview_cookie, self.peer_ip, time.time()
            )
            server.stats.preview_cookie(outcome)
        if table.affinity is not None and route is table.live_route and not upgrade:
            route = self._route_by_session(table, request, trusted_peer)
        max_body = self.limits.max_body_size
        if max_body and content_length is not None and content_length > max_body:
            raise RequestHeadError(_too_large("request body", max_body), 413)
        exchange = Exchange(
            self,
            server,
            table,
            route,
            request.head,
            method=method,
            request_id=request.request_id,
            has_body=chunked or bool(content_length),
            body_chunked=chunked,
            is_upgrade=request.upgrade,
            keep_alive=parser.should_keep_alive() and not upgrade,
            client_http10=http10,
        )
        if table.logs_access:
            exchange.access = self._begin_access(table, method, request, http10)
        # Not `is table.live_route`: a live answer that sets the session cookie has a route of
        # its own (session.affinity); a session kept on the old colour is not mirrored.
        if table.shadowing and route.kind == LIVE and route.colour == table.active:
            exchange.shadow = server.shadows.mirror(
                table, request.head, method, url, content_length, chunked=chunked, upgrade=upgrade
            )
        self.parsing = exchange
        self.body_remaining = content_length
        self.queue.append(exchange)
        if len(self.queue) >= MAX_PIPELINED:
            self.reading.block(PIPELINE)

    def _route_by_session(
        self, table: RoutingTable, request: UpstreamRequest, trusted_peer: bool
    ) -> Route:
        """Route a live request by its session cookie (session.affinity, proxy/session_affinity.py).

        Upgrades are not kept: a tunnel opened on the drained colour would outlive the window.
        """
        route, outcome = table.choose_by_session(
            request.session_cookie, time.time(), trusted_peer, self.headers
        )
        if outcome is not None:
            self.server.stats.session_cookie(route.colour, outcome)
        return route

    def _answer_link(
        self, method: bytes, table: RoutingTable, trusted_peer: bool, request_id: bytes
    ) -> None:
        """Queue the proxy's own answer to a preview link request (proxy/preview_link.py)."""
        parser = self.parser
        keep_alive = parser.should_keep_alive() and parser.get_http_version() != "1.0"
        answer = answer_link(
            method,
            self.url,
            self.headers,
            table,
            peer_ip=self.peer_ip,
            trusted_peer=trusted_peer,
            keep_alive=keep_alive,
            now=time.time(),
            request_id=request_id,
        )
        self.server.stats.preview_link(answer.action)
        exchange = LocalAnswer(
            self, table, answer.response, keep_alive=keep_alive, request_id=request_id
        )
        self.parsing = exchange
        self.body_remaining = None
        self.queue.append(exchange)
        if len(self.queue) >= MAX_PIPELINED:
            self.reading.block(PIPELINE)

    def on_body(self, body: bytes) -> None:
        """Forward a piece of the request body, within the body size limit."""
        if self.body_remaining is not None:
            self.body_remaining -= len(body)
        else:
            # A chunked body: its size is known only as it streams. Past the limit, what was
            # forwarded is abandoned with the upstream connection (see _reject).
            self.body_size += len(body)
            max_body = self.limits.max_body_size
            if max_body and self.body_size > max_body:
                raise RequestHeadError(_too_large("request body", max_body), 413)
        if self.parsing is not None:
            self.parsing.request_body(body)

    def on_message_complete(self) -> None:
        """The request is fully read."""
        exchange, self.parsing = self.parsing, None
        self.body_remaining = None
        if exchange is not None:
            exchange.request_done()

    # --- used by exchanges and the server ---------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send response bytes to the client (held back while corked)."""
        if self.corked is not None:
            self.corked.append(data)
        elif self.transport is not None and not self.closed:
            self.transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        """Send several pieces of response bytes to the client at once."""
        if self.corked is not None:
            self.corked += parts
        elif self.transport is not None and not self.closed:
            self.transport.writelines(parts)

    def splice_fd(self) -> int | None:
        """The socket's descriptor while nothing waits to be written to it (see proxy/splice.py).

        Bytes still buffered, held by `cork`, or a closing connection: None, since a splice
        writes past the transport and would overtake them.
        """
        transport = self.transport
        if (
            transport is None
            or self.closed
            or self.corked is not None
            or transport.is_closing()
            or transport.get_write_buffer_size()
        ):
            return None
        if self.fd < 0:
            fd = transport_fd(transport)
            if fd is None:
                return None
            self.fd = fd
        return self.fd

    def cork(self) -> None:
        """Hold writes until `uncork`, to send what one upstream read produced in one syscall.

        A small response is a head and a body produced by one parse; written separately they
        cost two sends and two packets, which on small responses is a large part of the time.
        """
        if self.corked is None:
            self.corked = []

    def uncork(self) -> None:
        """Send everything held since `cork`."""
        corked, self.corked = self.corked, None
        if corked and self.transport is not None and not self.closed:
            # One joined write: uvloop's writelines costs more than a join of small pieces.
            self.transport.write(corked[0] if len(corked) == 1 else b"".join(corked))

    def exchange_finished(self, exchange: Exchange) -> None:
        """Start the next pipelined request, or close when the connection cannot be reused."""
        if self.queue and self.queue[0] is exchange:
            self.queue.popleft()
        self.last_activity = self.loop.time()
        if not exchange.keep_alive or self.closed:
            self.close()
            return
        if self.reading.reasons and len(self.queue) < MAX_PIPELINED:
            # Most connections are never blocked: checked here, a call per request would cost
            # ~0.4% of the hot path (callgrind, benchmarks/hot_path.py).
            self.reading.unblock(PIPELINE)
        if self.queue:
            self.queue[0].start()
        elif self.eof or self.server.draining:
            self.close()

    def start_tunnel(self, exchange: Exchange) -> None:
        """Switch to tunnelling after a 101: bytes now flow unparsed both ways."""
        self.upgrade_pending = None
        self.tunnel = exchange
        if self.queue and self.queue[0] is exchange:
            self.queue.popleft()
        self.server.tunnel_opened(self, exchange)

    def exchange_in_progress(self) -> Exchange | None:
        """The exchange the client is being answered by now: its tunnel, or the first request.

        Back-pressure applies to its upstream connection, and a drain after a switch ends it.
        """
        if self.tunnel is not None:
            return self.tunnel
        return self.queue[0] if self.queue else None

    def end_for_drain(self, exchange: Exchange, reason: str) -> bool:
        """End `exchange` if it is still in progress here; say whether it was.

        A tunnel is told to go away (a WebSocket gets Close 1001); a long response is cut, so
        that the client reconnects and reaches the colour that is current now.
        """
        if self.closed or self.exchange_in_progress() is not exchange:
            return False
        if self.tunnel is exchange:
            exchange.go_away(reason)
        else:
            exchange.ended_by_proxy(reason)
            self.abort()
        return True

    def idle(self) -> bool:
        """Say whether no request is in progress (for keep-alive timeouts and the drain)."""
        return (
            not self.queue
            and self.tunnel is None
            and self.upgrade_pending is None
            and self.parsing is None
            and self.head_started is None
        )

    def request_timeout(self) -> None:
        """The request head did not arrive in time (a slow or stuck client): 408 and close."""
        self.head_started = None
        self._reject(408, "request head not received in time")

    def close(self) -> None:
        """Close after the buffered bytes are written."""
        self.uncork()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.reading.close()
            self.transport.close()

    def abort(self) -> None:
        """Close at once, discarding buffered bytes: the client must see a cut response."""
        self.corked = None
        if self.transport is not None and not self.closed:
            self.closed = True
            self.reading.close()
            self.transport.abort()

    # --- internals --------------------------------------------------------------------------

    def _start_measuring_head(self) -> None:
        """Count the size of the head in progress from now on, starting with what it has."""
        self.measure_head = True
        if self.head_started is not None:
            self.head_size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)

    def _pass_body_through(self, data: bytes) -> bytes:
        """Forward up to `pass_through` body bytes unparsed; return the bytes after the body."""
        exchange = self.parsing
        size = len(data)
        if size <= self.pass_through:
            body, rest = data, b""
        else:
            body, rest = data[: self.pass_through], data[self.pass_through :]
        self.pass_through -= len(body)
        if exchange is not None:
            exchange.request_body(body)
        if self.pass_through == 0:
            self.body_remaining = 0
            self.on_message_complete()
            # The old parser stopped mid-body; the next request needs a fresh one.
            self.parser = HttpRequestParser(self)
            self.parser_stale = False
        return rest

    def _upgrade_requested(self, early_bytes: bytes) -> None:
        """Keep an upgrade request's exchange aside until the upstream answers it."""
        exchange = self.queue[-1] if self.queue else None
        if exchange is None:
            self._reject(400, "bad request: unexpected upgrade")
            return
        # Held like any upgrade until the upstream answers, also when nothing was left to ask
        # for (h2c dropped): the bytes after it were sent for another protocol.
        self.upgrade_pending = exchange
        self.parsing = None
        if early_bytes:
            exchange.tunnel_from_client(early_bytes)

    def _is_http10(self, method: bytes) -> bool:
        """The request's protocol: True for HTTP/1.0, False for HTTP/1.1; else RequestHeadError.

        Read from the request line itself: llhttp reports RTSP/1.1 as version 1.1.
        """
        line_from = self.line_from
        protocol = b""
        if line_from is not None:
            self.line_from = None
            end = line_from.find(b"\r\n")
            if end >= 9:
                protocol = line_from[end - 9 : end]
        if protocol == _HTTP11:
            return False
        if protocol == _HTTP10:
            return True
        return self._protocol_is_http10(method)

    def _protocol_is_http10(self, method: bytes) -> bool:
        """The protocol of a request line the common check could not see: True for HTTP/1.0.

        That check reads it from the read the request starts at the head of. A request
        pipelined behind another, or whose request line took several reads, is looked for in
        those reads instead: any line `METHOD SP target SP` there not followed by `HTTP/` (an
        earlier body that holds such a line too) is refused as well, erring on the strict side.
        Raises RequestHeadError with 505 for anything but HTTP/1.0 and HTTP/1.1.
        """
        # Typed here: httptools ships its types, but a build environment without it (pip's
        # isolated one) sees Any, and mypyc would refuse the bool return below.
        version: str = self.parser.get_http_version()
        if version not in ("1.0", "1.1"):
            raise RequestHeadError(f"HTTP/{version} is not supported; use HTTP/1.1", 505)
        window = b"".join([*(self.partial or ()), self.feeding])
        needle = method + b" " + self.url + b" "
        position = window.find(needle)
        if position < 0:
            raise RequestHeadError("bad request: request line not found", 400)
        while position >= 0:
            after = position + len(needle)
            if window[after : after + 5] != b"HTTP/":
                raise RequestHeadError("only HTTP/1.0 and HTTP/1.1 are supported", 505)
            position = window.find(needle, after)
        return version == "1.0"

    def _start_first(self) -> None:
        if self.queue and self.queue[0].phase is QUEUED:
            self.queue[0].start()

    def _begin_access(
        self, table: RoutingTable, method: bytes, request: UpstreamRequest, http10: bool
    ) -> AccessRecord:
        """Start the access log record of a request whose head arrived (the log is on).

        The fields it logs were picked out while the upstream head was built, in the same pass;
        only `accessLog.headers` (when set) needs another look at the client's fields.
        """
        wanted = table.access_log.headers
        headers: tuple[tuple[str, bytes | None], ...] = ()
        if wanted:
            headers = _wanted_fields(table, self.headers)
        traceparent = request.traceparent
        forwarded = request.forwarded_for
        return AccessRecord(
            ended=0.0,
            duration=0.0,
            client=self.peer_ip if forwarded is None else self._logged_client(table, forwarded),
            method=method,
            target=self.url,
            version="1.0" if http10 else "1.1",
            status=0,
            bytes_in=0,
            bytes_out=0,
            ttfb=None,
            colour=None,
            route=None,
            upstream=None,
            retries=0,
            request_id=request.request_id,
            user_agent=request.user_agent,
            referer=request.referer,
            ended_by=PROXY,
            reason=None,
            trace_id=trace_id_of(traceparent) if traceparent is not None else None,
            headers=headers,
        )

    def _logged_client(self, table: RoutingTable, forwarded: list[bytes]) -> str | None:
        """The client address for the log, from a trusted peer's X-Forwarded-For values.

        The chain is read from the right and the first address not in `forwarded.trustedCIDRs`
        is the client (nginx's `real_ip_recursive`). build_upstream_request keeps the values
        only from a trusted peer: an untrusted peer's X-Forwarded-For could name anyone, so that
        peer is the client.
        """
        hops = [hop.strip().decode("latin-1") for hop in b",".join(forwarded).split(b",")]
        for hop in reversed(hops):
            if hop and not table.trusts_forwarded_for(hop):
                return hop
        return hops[0] or self.peer_ip

    def _reject(
        self, status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        """Answer a request the proxy will not forward, then close the connection."""
        self.server.stats.rejected_request(status)
        request_id = self._request_id_of_head()
        log.info(
            "rejected request peer=%s status=%d reason=%r request_id=%s",
            self.peer_ip,
            status,
            message,
            request_id.decode("ascii"),
        )
        if self.queue and self.queue[0].response_started:
            # Answering now would cut into a response in progress; closing is the safe answer.
            self.abort()
            return
        # Requests queued on this connection (a body that turned out malformed, or pipelined
        # behind it) are abandoned: their upstream connections are closed mid-request, so no
        # colour ever sees them complete.
        rejected = self.parsing  # a request whose body was refused: the exchange logs it
        if rejected is not None:
            request_id = rejected.request_id
        while self.queue:
            self.queue.popleft().cancel(status, message)
        self.parsing = None
        table = self.server.table
        if rejected is None and table is not None and table.logs_access:
            self._log_rejected_head(table, status, message, request_id)
        self.write(simple_response(status, message, extra_headers=headers, request_id=request_id))
        self.close()

    def _request_id_of_head(self) -> bytes:
        """The ID of the request being refused: its exchange's, the client's valid one, or new."""
        if self.parsing is not None:
            return self.parsing.request_id
        sent = [value for name, value in self.headers if name.lower() == REQUEST_ID_HEADER]
        if len(sent) == 1 and valid_request_id(sent[0]):
            return sent[0]
        return new_request_id()

    def _log_rejected_head(
        self, table: RoutingTable, status: int, message: str, request_id: bytes
    ) -> None:
        """Write the access log line of a request refused at its head (no exchange was made)."""
        access_log = self.server.access_log
        if access_log is None:
            return
        try:
            method: bytes = self.parser.get_method()
            version: str = self.parser.get_http_version()
        except HttpParserError:
            method, version = b"-", "1.1"
        fields: dict[bytes, bytes] = {}
        for name, value in self.headers:
            fields.setdefault(name.lower(), value)
        duration = self.loop.time() - self.head_began if self.head_began else 0.0
        record = AccessRecord(
            ended=time.time(),
            duration=max(duration, 0.0),
            client=self.peer_ip,
            method=method or b"-",
            target=self.url,
            version=version or "1.1",
            status=status,
            bytes_in=0,
            bytes_out=0,
            ttfb=None,
            colour=None,
            route=None,
            upstream=None,
            retries=0,
            request_id=request_id,
            user_agent=fields.get(b"user-agent"),
            referer=fields.get(b"referer"),
            ended_by=PROXY,
            reason=message,
            headers=_wanted_fields(table, self.headers),
        )
        if table.access_log.keeps(status, record.duration):
            access_log.log(record)


def _wanted_fields(
    table: RoutingTable, headers: list[tuple[bytes, bytes]]
) -> tuple[tuple[str, bytes | None], ...]:
    """The configured `accessLog.headers` of a request, as (name, first value or None) in order."""
    found: dict[str, bytes] = {}
    wanted = table.access_log.headers
    for name, value in headers:
        key = name.lower().decode("latin-1")
        if key in wanted and key not in found:
            found[key] = value
    return tuple([(name, found.get(name)) for name in wanted])


def _too_large(what: str, limit: int) -> str:
    """Say which limit a request went past, in the unit it is most likely configured in."""
    if limit % (1024 * 1024) == 0:
        shown = f"{limit // (1024 * 1024)} MiB"
    elif limit % 1024 == 0:
        shown = f"{limit // 1024} KiB"
    else:
        shown = f"{limit} bytes"
    return f"{what} larger than {shown}"
