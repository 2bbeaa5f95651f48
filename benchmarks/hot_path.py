"""The proxy's own Python cost per request, without sockets: a steady figure to optimise.

Run: .venv/bin/python benchmarks/hot_path.py

wrk figures on a 2-core VM swing by +-20% between runs; this drives the real protocol objects
(ClientConnection, Exchange, UpstreamConnection, the pool, the metrics) with in-memory transports
and prints microseconds of Python per proxied request. Syscalls and the event loop are not in it:
run.py measures the whole.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import uvloop

from proxy.access_log import AccessLogSettings
from proxy.downstream import ClientConnection
from proxy.metrics import TrafficStats
from proxy.preview_cookie import issue
from proxy.routing import RoutingTable, Upstream
from proxy.server import ProxyServer
from proxy.session_affinity import DrainWindow, SessionPolicy
from proxy.upstream import UpstreamConnection

REQUEST = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
BROWSER_REQUEST = (
    b"GET /products/42?ref=home HTTP/1.1\r\nHost: shop.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-GB,en;q=0.9\r\nAccept-Encoding: gzip, deflate, br\r\n"
    b"Cookie: session=abcdef0123456789; theme=dark\r\nReferer: https://shop.example.com/\r\n"
    b"Sec-Fetch-Mode: navigate\r\nSec-Fetch-Site: same-origin\r\nUpgrade-Insecure-Requests: 1\r\n"
    b"Connection: keep-alive\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 19:45:54 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 100\r\n"
    b"Last-Modified: Thu, 26 Nov 2026 19:33:13 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "6b088979-64"\r\nAccept-Ranges: bytes\r\n\r\n' + b"s" * 100
)


class MemoryTransport(asyncio.Transport):
    """A transport that only counts what is written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def write(self, data: Any) -> None:
        self.written += len(data)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.written += len(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def measure(request: bytes, count: int, access_log: str = "off", session: str = "off") -> float:
    """Return microseconds of Python per request over `count` requests on one connection.

    With `access_log` (json or clf) every request is logged, and the loop runs every 64
    requests so that the lines are formatted and written (to stdout: send it to /dev/null).
    `session` turns session.affinity on: `cookie` with blue live, and a request that has a
    Cookie field carries a fresh session cookie for blue (a browser's steady state; one without
    gets a Set-Cookie on every response, as wrk does); `drain` just after a switch to green,
    the cookie keeping the request on blue.
    """
    loop = uvloop.new_event_loop()  # what production runs on
    try:
        upstreams = {
            "blue": Upstream("blue", "http://127.0.0.1:1", "127.0.0.1", 1),
            "green": Upstream("green", "http://127.0.0.1:2", "127.0.0.1", 2),
        }
        policy = SessionPolicy(affinity="cookie" if session != "off" else "none")
        draining = session == "drain"
        table = RoutingTable(
            "v",
            "green" if draining else "blue",
            "blue" if draining else "green",
            upstreams,
            access_log=AccessLogSettings(format=access_log),
            session=policy,
            drain=DrainWindow("blue", time.time() + 3600) if draining else None,
        )
        if draining and b"Cookie: " not in request:
            raise ValueError("session drain: only a request with a Cookie field stays on blue")
        if session != "off":
            value = issue(policy.key(table.preview.cookie_key), "blue", time.time() + 300)
            request = request.replace(b"Cookie: ", b"Cookie: bluegreen_session=%s; " % value)
        server = ProxyServer(TrafficStats(), table, loop=loop)
        pool = server.pool_for(upstreams["blue"], server.table)  # type: ignore[arg-type]
        upstream = UpstreamConnection(pool)
        upstream.connection_made(MemoryTransport())
        pool.release(upstream)
        client = ClientConnection(server)
        client.connection_made(MemoryTransport())
        started = time.perf_counter()
        logging = server.access_log is not None
        for n in range(count):
            client.data_received(request)
            upstream.data_received(RESPONSE)
            if logging and n % 64 == 63:
                loop.call_soon(loop.stop)
                loop.run_forever()  # the access log's drain runs, as it would between reads
        elapsed = time.perf_counter() - started
        assert sum(server.stats.request_count(c) for c in upstreams) == count
        if access_log != "off":
            # Every request was logged: formatted and written, or queued since the last drain.
            assert server.access_log is not None, "the access log is not on"
            assert server.access_log.dropped == 0
            assert server.access_log.written + server.access_log.pending == count
        if pool.sweeper is not None:
            pool.sweeper.cancel()
        return elapsed / count * 1e6
    finally:
        loop.close()


def main() -> None:
    """Print the median of several measurements for a minimal and a browser-like request."""
    for name, request in (("wrk-like request", REQUEST), ("browser request", BROWSER_REQUEST)):
        figures = [measure(request, 20_000) for _ in range(7)]
        print(f"{name:18} {statistics.median(figures):6.2f} us of Python per proxied request")


if __name__ == "__main__":
    main()
