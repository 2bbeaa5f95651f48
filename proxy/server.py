"""The proxy server: listeners, the routing-table holder, upstream pools and graceful drain.

`ProxyServer.table` is the one place the routing table lives. The controller replaces it with
`swap_table`, a single attribute assignment; every request reads it once when its head is
complete. That is what makes a switch instant and lock-free.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from proxy.access_log import AccessLog
from proxy.downstream import ClientConnection
from proxy.exchange import Exchange
from proxy.metrics import TrafficStats
from proxy.proxy_header_reader import ProxyHeaderReader
from proxy.routing import DEFAULT_LIMITS, LIVE, ClientLimits, RoutingTable, Upstream
from proxy.shadow import ShadowMirror
from proxy.upstream import UpstreamPool

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Settings of the server that do not come from the config.

    The client limits themselves (sizes, timeouts, connections) are config keys and travel in
    the routing table, so that they can be changed without a restart.
    """

    # The longest pause between two sweeps for timed-out connections; a sweep runs at least ten
    # times per request-head timeout, so a slow client is closed close to its deadline.
    sweep_interval: float = 1.0


class ProxyServer:
    """Accepts client connections and forwards their requests by the current routing table."""

    def __init__(
        self,
        stats: TrafficStats,
        table: RoutingTable | None = None,
        settings: ServerSettings | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.stats = stats
        self.table = table
        self.settings = settings or ServerSettings()
        self.pools: dict[tuple[str, int], UpstreamPool] = {}
        self.shadows = ShadowMirror(self.loop, stats.shadow)
        self.connections: set[ClientConnection] = set()
        self.tunnels: dict[ClientConnection, Exchange] = {}
        self.draining = False
        # Made when a config first turns the access log on; kept (and reconfigured) after.
        self.access_log: AccessLog | None = None
        self._servers: list[asyncio.Server] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._drain_timers: set[asyncio.TimerHandle] = set()
        self._all_closed = asyncio.Event()
        stats.connections = self.connection_counts
        if table is not None:
            # A server made with its table (tests, benchmarks/hot_path.py) logs as that table
            # says, as one that gets its first table from swap_table does.
            self._configure_access_log(table)

    # --- the routing table ------------------------------------------------------------------

    def swap_table(self, table: RoutingTable) -> RoutingTable | None:
        """Make `table` current for every request whose head completes from now on.

        Requests in flight keep the table they started with. Tunnels and long responses of live
        traffic on a colour that is no longer active get `drain.timeout` to finish, then are
        closed so their clients reconnect to the new colour. Returns the previous table.
        """
        self._configure_access_log(table)
        previous, self.table = self.table, table
        for pool in self.pools.values():
            pool.settings = table.pool
        if previous is not None and previous.active != table.active:
            self._schedule_drain(table)
        self._close_unused_pools(table)
        self.shadows.close_unused(table)
        return previous

    def _configure_access_log(self, table: RoutingTable) -> None:
        """Start the access log when `table` turns it on; pass changed settings to it."""
        settings = table.access_log
        access_log = self.access_log
        if access_log is None:
            if settings.enabled:
                self.access_log = self.stats.access_log = AccessLog(self.loop, settings)
        elif access_log.settings != settings:
            access_log.configure(settings)

    def pool_for(self, upstream: Upstream, table: RoutingTable) -> UpstreamPool:
        """Return the keep-alive pool for an upstream address, creating it on first use."""
        key = (upstream.host, upstream.port)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = UpstreamPool(
                upstream.host, upstream.port, self.loop, table.pool
            )
        return pool

    # --- listeners and connections ----------------------------------------------------------

    async def listen(self, host: str, port: int) -> asyncio.Server:
        """Start accepting on host:port; returns the asyncio server (its sockets give the port)."""
        server = await self.loop.create_server(
            self._accept, host, port, reuse_address=True, backlog=1024
        )
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.settings.sweep_interval, self._sweep)
        return server

    def _accept(self) -> asyncio.Protocol:
        """The protocol of a new connection: HTTP, or first the PROXY header when it is on."""
        table = self.table
        if table is None or not table.edge.proxy_protocol:
            return ClientConnection(self)
        return ProxyHeaderReader(
            lambda client_ip: ClientConnection(self, client_ip),
            table.trusts_forwarded_for,
            table.limits.head_timeout,
            self.stats.proxy_header_rejected,
        )

    def connection_opened(self, conn: ClientConnection) -> bool:
        """Track a client connection for timeouts and the drain; say if it is over the limit."""
        limit = self.limits.max_connections
        over_capacity = bool(limit) and len(self.connections) >= limit
        self.connections.add(conn)
        return over_capacity

    def connection_closed(self, conn: ClientConnection) -> None:
        """Forget a client connection."""
        self.connections.discard(conn)
        self.tunnels.pop(conn, None)
        if self.draining and not self.connections:
            self._all_closed.set()

    def tunnel_opened(self, conn: ClientConnection, exchange: Exchange) -> None:
        """Remember an upgraded connection so a switch can drain it."""
        self.tunnels[conn] = exchange

    def connection_counts(self) -> tuple[int, int, dict[str, tuple[int, int]]]:
        """Client connections, their limit, and (open, idle) upstream connections per colour."""
        upstream: dict[str, tuple[int, int]] = {}
        table = self.table
        if table is not None:
            for colour, address in table.upstreams.items():
                pool = self.pools.get((address.host, address.port))
                upstream[colour] = (pool.open, len(pool.idle)) if pool is not None else (0, 0)
        return len(self.connections), self.limits.max_connections, upstream

    @property
    def ports(self) -> list[int]:
        """The ports the listeners are bound to (useful with port 0)."""
        return [int(sock.getsockname()[1]) for server in self._servers for sock in server.sockets]

    async def shutdown(self, grace: float) -> None:
        """Stop gracefully: close listeners, finish in-flight requests, then close the rest.

        Idle keep-alive connections are closed at once; busy ones answer their current request
        with `Connection: close`. Whatever is still open after `grace` seconds is aborted.
        """
        self.draining = True
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            if conn.idle():
                conn.close()
        # A WebSocket never ends by itself: tell its client now to reconnect elsewhere.
        for exchange in list(self.tunnels.values()):
            exchange.go_away("bluegreen: shutting down")
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), grace)
        for conn in list(self.connections):
            conn.abort()
        for server in self._servers:
            await server.wait_closed()
        self.close_pools()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for timer in self._drain_timers:
            timer.cancel()
        if self.access_log is not None:
            self.access_log.close()

    def close_pools(self) -> None:
        """Close every idle upstream connection."""
        for pool in self.pools.values():
            pool.close()
        self.shadows.close()

    # --- internals --------------------------------------------------------------------------

    def _schedule_drain(self, table: RoutingTable) -> None:
        """Close live long-lived connections on old colours once `drain.timeout` has passed."""
        stale: list[tuple[ClientConnection, Exchange]] = []
        for conn in self.connections:
            exchange = conn.exchange_in_progress()
            if (
                exchange is not None
                and exchange.route.kind == LIVE
                and exchange.route.colour != table.active
            ):
                stale.append((conn, exchange))
        if not stale:
            return
        log.info(
            "draining connections on the old colour count=%d timeout=%gs",
            len(stale),
            table.timeouts.drain,
        )
        timer: asyncio.TimerHandle | None = None

        def close_stale() -> None:
            if timer is not None:
                self._drain_timers.discard(timer)
            for conn, exchange in stale:
                if conn.end_for_drain(exchange, f"bluegreen: switched to {table.active}"):
                    log.info(
                        "closing after drain timeout colour=%s peer=%s",
                        exchange.route.colour,
                        conn.peer_ip,
                    )

        timer = self.loop.call_later(table.timeouts.drain, close_stale)
        self._drain_timers.add(timer)

    def _close_unused_pools(self, table: RoutingTable) -> None:
        wanted = {(u.host, u.port) for u in table.upstreams.values()}
        for key in [k for k in self.pools if k not in wanted]:
            self.pools.pop(key).close()

    @property
    def limits(self) -> ClientLimits:
        """The client limits in force: the current table's, or the defaults before any config."""
        table = self.table
        return table.limits if table is not None else DEFAULT_LIMITS

    def _sweep(self) -> None:
        """Close idle keep-alive connections and clients too slow to send a request head."""
        now = self.loop.time()
        limits = self.limits
        head_timeout = limits.head_timeout
        keepalive_timeout = limits.keepalive_timeout
        for conn in list(self.connections):
            if conn.head_started is not None and now - conn.head_started > head_timeout:
                conn.request_timeout()
            elif conn.idle() and now - conn.last_activity > keepalive_timeout:
                conn.close()
        interval = min(self.settings.sweep_interval, head_timeout / 10)
        self._sweeper = self.loop.call_later(interval, self._sweep)
