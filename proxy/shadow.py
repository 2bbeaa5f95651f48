"""Shadow traffic: a share of live requests mirrored to the idle colour, answered, compared.

The mirrored request is the live request as forwarded (the same head, body and X-Request-Id)
plus `X-Bluegreen-Shadow: 1`, so the application can skip side effects. Its response is read,
compared with the live one (proxy/shadow_compare.py) and discarded.

Isolation is the point. A shadow starts when its live request starts and never holds it up:
it has its own connection pools (one per idle address), no retries, one deadline
(`shadow.timeout`) over connect and response, and a bound on shadows in flight
(`shadow.maxInflight`) past which new ones are dropped and counted, never queued. Memory per
shadow is bounded: the request (at most `shadow.maxBodySize` of body, else not mirrored), the
upstream connection's response head buffer (64 KiB), and a digest instead of the response
body; a response body longer than `shadow.maxBodySize` ends the shadow there (compared by
status) and closes its connection, so a colour that sends 10 MiB slowly costs nothing more.

This module knows nothing above it: the live exchange calls `ShadowRequest` (request_body,
live_body, live_done), and the server owns the `ShadowMirror`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from time import monotonic, perf_counter
from typing import Final

from proxy.flow import ReadGate
from proxy.framing import FailureKind
from proxy.headers import ResponseHead
from proxy.routing import PoolSettings, RoutingTable, ShadowSettings, Upstream
from proxy.shadow_compare import Answer, ShadowStats, path_of
from proxy.upstream import UpstreamConnection, UpstreamPool

log = logging.getLogger(__name__)

SHADOW_FIELD: Final = b"X-Bluegreen-Shadow: 1\r\n"
# The live side ended without an answer of its colour: nothing to compare with (dropped).
NO_LIVE_ANSWER: Final = "no live answer"
_GET: Final = b"GET"
_HEAD: Final = b"HEAD"

# What an upstream failure is called in the comparison and the mismatch list.
_FAILURE_WORD: Final[dict[str, str]] = {
    "connect": "connect",
    "connect_timeout": "timeout",
    "read_timeout": "timeout",
    "reset": "reset",
    "closed": "reset",
    "protocol": "protocol",
}


class _Discard:
    """The "client" of a shadow's upstream connection: nothing is written anywhere.

    Its read gate is never opened on a transport, so an upstream that reads the request
    slowly pauses no client: live clients are never slowed by a shadow.
    """

    __slots__ = ("reading",)

    def __init__(self) -> None:
        self.reading = ReadGate()

    def cork(self) -> None:
        """Nothing to hold."""

    def uncork(self) -> None:
        """Nothing to send."""


class ShadowMirror:
    """Chooses the requests to mirror, and owns the shadows' pools and in-flight count."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stats: ShadowStats) -> None:
        self.loop = loop
        self.stats = stats
        self.pools: dict[tuple[str, int], UpstreamPool] = {}
        self.active: set[ShadowRequest] = set()  # sent or waiting to be, not finished
        # Sampling by credit, not at random: 10% mirrors exactly every tenth eligible request,
        # with no random number drawn per request.
        self.credit = 0.0
        self.discard = _Discard()
        self.tasks: set[asyncio.Task[None]] = set()  # connection attempts, held until done

    def mirror(
        self,
        table: RoutingTable,
        head: bytes,
        method: bytes,
        target: bytes,
        content_length: int | None,
        *,
        chunked: bool,
        upgrade: bool,
    ) -> ShadowRequest | None:
        """Return the shadow of a live request, or None when this one is not mirrored.

        Mirrored: a method in `shadow.methods`, no upgrade, no chunked body (its size is not
        known in advance), a body of at most `shadow.maxBodySize`, an idle colour to send it
        to, and its share of `shadow.percent`. Past `shadow.maxInflight` it is dropped and
        counted instead.
        """
        settings = table.shadow
        colour = table.idle
        if (
            colour is None
            or upgrade
            or chunked
            or method not in settings.methods
            or (content_length is not None and content_length > settings.max_body_size)
        ):
            return None
        self.credit += settings.percent
        if self.credit < 100.0:
            return None
        self.credit -= 100.0
        self.stats.window = settings.window
        if self.inflight >= settings.max_inflight:
            self.stats.drop(colour, monotonic())
            return None
        return ShadowRequest(
            self,
            table,
            colour=colour,
            head=head,
            method=method,
            target=target,
            body_size=content_length or 0,
            settings=settings,
        )

    @property
    def inflight(self) -> int:
        """Shadows made and not finished: what `shadow.maxInflight` bounds."""
        return len(self.active)

    def pool_for(self, upstream: Upstream, table: RoutingTable) -> UpstreamPool:
        """The shadows' own keep-alive pool for an idle address, made on first use."""
        key = (upstream.host, upstream.port)
        settings = PoolSettings(
            max_idle=min(table.pool.max_idle, table.shadow.max_inflight),
            idle_timeout=table.pool.idle_timeout,
            max_inflight=0,
        )
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = UpstreamPool(upstream.host, upstream.port, self.loop, settings)
        elif pool.settings != settings:
            pool.settings = settings
        return pool

    def close_unused(self, table: RoutingTable) -> None:
        """Close the pools of addresses no longer in the config."""
        wanted = {(u.host, u.port) for u in table.upstreams.values()}
        for key in [k for k in self.pools if k not in wanted]:
            self.pools.pop(key).close()

    def close(self) -> None:
        """End every shadow in flight (counted as dropped) and close the pools (shutdown)."""
        for shadow in list(self.active):
            shadow.abandon()
        for pool in self.pools.values():
            pool.close()
        for task in list(self.tasks):
            task.cancel()


class ShadowRequest:
    """One mirrored request: sent to the idle colour, its answer paired with the live one.

    Implements what an `UpstreamConnection` calls on the exchange it serves.
    """

    __slots__ = (
        "body",
        "body_missing",
        "body_seen",
        "colour",
        "conn",
        "deadline",
        "digest",
        "done",
        "head",
        "is_head",
        "is_upgrade",
        "live",
        "live_digest",
        "live_seen",
        "live_started",
        "mirror",
        "path",
        "pool",
        "reuse_unsafe",
        "sent",
        "settings",
        "shadow",
        "started_at",
        "status",
        "table",
        "task",
    )

    def __init__(
        self,
        mirror: ShadowMirror,
        table: RoutingTable,
        *,
        colour: str,
        head: bytes,
        method: bytes,
        target: bytes,
        body_size: int,
        settings: ShadowSettings,
    ) -> None:
        mirror.active.add(self)
        self.mirror = mirror
        self.table = table
        self.colour = colour
        self.settings = settings
        # The head as forwarded ends with its blank line: the marker goes just before it.
        self.head = head[:-2] + SHADOW_FIELD + b"\r\n"
        self.path = path_of(target)
        self.is_head = method == _HEAD
        self.is_upgrade = False
        self.reuse_unsafe = body_size > 0 and method in (_GET, _HEAD)
        self.body: list[bytes] = []
        self.body_missing = body_size
        self.body_seen = 0
        self.live_seen = 0
        self.digest: hashlib._Hash | None = hashlib.sha256() if settings.compare_body else None
        self.live_digest: hashlib._Hash | None = hashlib.sha256() if settings.compare_body else None
        self.live_started = False
        self.sent = False
        self.done = False  # the shadow side has its answer (or failure)
        self.live: Answer | None = None
        self.shadow: Answer | None = None
        self.conn: UpstreamConnection | None = None
        self.pool: UpstreamPool | None = None
        self.task: asyncio.Task[None] | None = None
        self.deadline: asyncio.TimerHandle | None = None
        self.started_at = 0.0
        self.status = 0

    @property
    def client(self) -> _Discard:
        """Where the upstream connection would write: nowhere."""
        return self.mirror.discard

    # --- driven by the live exchange --------------------------------------------------------

    def start(self) -> None:
        """The live request starts upstream: send the shadow too, once its body is complete."""
        self.live_started = True
        if self.body_missing <= 0:
            self._send()

    def request_body(self, data: bytes) -> None:
        """A piece of the live request's body (kept until the whole body is here)."""
        if self.sent or self.done:
            return
        self.body.append(data)
        self.body_missing -= len(data)
        if self.body_missing <= 0 and self.live_started:
            self._send()

    def live_body(self, data: bytes) -> None:
        """A piece of the live response's body, digested when bodies are compared."""
        digest = self.live_digest
        if digest is None:
            return
        self.live_seen += len(data)
        if self.live_seen > self.settings.max_body_size:
            self.live_digest = None  # too large to compare: by status only
        else:
            digest.update(data)

    def live_done(self, status: int, seconds: float, *, answered: bool) -> None:
        """The live request is finished; `answered`: with a complete answer of its colour."""
        digest = self.live_digest
        self.live = Answer(
            status,
            seconds,
            digest.digest() if digest is not None else None,
            "" if answered else NO_LIVE_ANSWER,
        )
        if not self.sent and not self.done:
            # Cancelled before the shadow went out (a malformed pipelined request, a client
            # that left mid-body): nothing was sent, nothing to compare.
            self._finish(None)
            return
        self._compare()

    def abandon(self) -> None:
        """End the shadow now, uncompared (the proxy shuts down)."""
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()
        self._finish(None)

    # --- what an UpstreamConnection calls ---------------------------------------------------

    def informational_response(self, head: ResponseHead) -> None:
        """A 100 or 103: ignored, the final response follows."""

    def response_head(
        self, status: int, head: ResponseHead, *, no_body: bool, upgrade: bool
    ) -> None:
        """Keep the idle colour's status."""
        self.status = status

    def response_body(self, data: bytes) -> None:
        """Digest the body; past `shadow.maxBodySize`, stop reading and compare by status."""
        self.body_seen += len(data)
        if self.body_seen > self.settings.max_body_size:
            conn, self.conn = self.conn, None
            if conn is not None:
                conn.close()
            self._finish(Answer(self.status, perf_counter() - self.started_at))
            return
        digest = self.digest
        if digest is not None:
            digest.update(data)

    def splice_target(self) -> int | None:
        """Never: the shadow's body is digested (or only counted), so it must pass through here."""
        return None

    def body_spliced(self, size: int) -> None:
        """Count spliced bytes like read ones (never called: splice_target says no)."""
        self.body_seen += size

    def client_write_failed(self) -> None:
        """There is no client to fail (never called: splice_target says no)."""

    def response_complete(self, conn: UpstreamConnection) -> None:
        """The idle colour answered in full: free the connection, then compare."""
        self.conn = None
        if self.reuse_unsafe:
            # As for the live request: an upstream that ignores a GET's body would read it
            # as the next request.
            conn.reusable = False
        assert self.pool is not None
        self.pool.release(conn)
        digest = self.digest
        self._finish(
            Answer(
                self.status,
                perf_counter() - self.started_at,
                digest.digest() if digest is not None else None,
            )
        )

    def tunnel_from_upstream(self, data: bytes) -> None:
        """Never called: upgrades are not mirrored."""

    def tunnel_closed_by_upstream(self) -> None:
        """Never called: upgrades are not mirrored."""

    def upstream_failed(self, kind: FailureKind, message: str, *, response_seen: bool) -> None:
        """The idle colour failed: an error, and its connection is not reused."""
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()
        self._fail(_FAILURE_WORD.get(kind, kind))

    def waiting_for_client(self) -> bool:
        """Never: the whole shadow request is written at once."""
        return False

    # --- internals --------------------------------------------------------------------------

    def _send(self) -> None:
        self.sent = True
        self.started_at = perf_counter()
        mirror = self.mirror
        self.deadline = mirror.loop.call_later(self.settings.timeout, self._expired)
        pool = self.pool = mirror.pool_for(self.table.upstreams[self.colour], self.table)
        conn = pool.take_idle()
        if conn is not None:
            self._attach(conn)
            return
        task = self.task = mirror.loop.create_task(self._connect(pool))
        mirror.tasks.add(task)
        task.add_done_callback(mirror.tasks.discard)

    async def _connect(self, pool: UpstreamPool) -> None:
        try:
            conn = await pool.connect(self.settings.timeout)
        except TimeoutError:
            self._fail("timeout")
            return
        except OSError:
            self._fail("connect")
            return
        self.task = None
        if self.done:
            pool.release(conn)
            return
        self._attach(conn)

    def _attach(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        conn.attach(self, self.settings.timeout)
        body, self.body = self.body, []
        conn.write(self.head if not body else b"".join([self.head, *body]))

    def _expired(self) -> None:
        """`shadow.timeout` passed without a complete answer."""
        self.deadline = None
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()
        self._fail("timeout")

    def _fail(self, word: str) -> None:
        self._finish(Answer(0, perf_counter() - self.started_at, None, word))

    def _finish(self, answer: Answer | None) -> None:
        """The shadow side is over (None: it was never sent); free its slot, then compare."""
        if self.done:
            return
        self.done = True
        self.mirror.active.discard(self)
        self.body = []
        self.digest = None
        deadline, self.deadline = self.deadline, None
        if deadline is not None:
            deadline.cancel()
        if answer is None:
            self.mirror.stats.drop(self.colour, monotonic())
            return
        self.shadow = answer
        self._compare()

    def _compare(self) -> None:
        live, shadow = self.live, self.shadow
        if live is None or shadow is None:
            return
        self.shadow = None  # compared once
        outcome = self.mirror.stats.record(self.colour, self.path, live, shadow, monotonic())
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "shadow colour=%s path=%s outcome=%s live=%d shadow=%d",
                self.colour,
                self.path,
                outcome,
                live.status,
                shadow.status,
            )
