"""Real HTTP servers standing in for the colours' Services, on loopback.

`ColourApp` is the full-featured colour (echo, big bodies, chunked, slow, WebSocket) for the
forwarding tests; `BreakableColour` is one whose health, answers and connections a test can
break, for health checks, rollbacks and the metrics a failure leaves behind.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from proxy.routing import Upstream


@dataclass
class ColourApp:
    """A real HTTP server standing in for one colour's Service."""

    colour: str
    port: int = 0
    peers: set[tuple[str, int]] = field(default_factory=set)
    requests: list[web.Request] = field(default_factory=list)
    seen_headers: list[dict[str, str]] = field(default_factory=list)
    ws_close_codes: list[int | None] = field(default_factory=list)  # as each WebSocket ended

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def upstream(self) -> Upstream:
        return Upstream(self.colour, self.url, "127.0.0.1", self.port)

    def app(self) -> web.Application:
        return colour_application(self)


def colour_application(state: ColourApp) -> web.Application:
    """Endpoints the tests need: echo, headers, big bodies, chunked, slow, WebSocket."""

    async def remember(request: web.Request) -> None:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            state.peers.add((str(peer[0]), int(peer[1])))
        state.seen_headers.append(dict(request.headers))

    async def hello(request: web.Request) -> web.Response:
        await remember(request)
        return web.Response(text=f"hello from {state.colour}\n")

    async def echo(request: web.Request) -> web.StreamResponse:
        """Stream the request body back, counting it, without holding it whole."""
        await remember(request)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        async for piece in request.content.iter_chunked(256 * 1024):
            await response.write(piece)
        await response.write_eof()
        return response

    async def count(request: web.Request) -> web.Response:
        """Read the body in pieces and answer its size: a large upload, never held whole."""
        await remember(request)
        size = 0
        async for piece in request.content.iter_chunked(256 * 1024):
            size += len(piece)
        return web.Response(text=str(size))

    async def download(request: web.Request) -> web.StreamResponse:
        """Send `size` bytes, with Content-Length unless ?chunked=1."""
        await remember(request)
        size = int(request.query.get("size", "1000"))
        response = web.StreamResponse()
        if request.query.get("chunked"):
            response.enable_chunked_encoding()
        else:
            response.content_length = size
        await response.prepare(request)
        block = b"x" * (256 * 1024)
        left = size
        while left > 0:
            piece = block[: min(left, len(block))]
            await response.write(piece)
            left -= len(piece)
        await response.write_eof()
        return response

    async def ticks(request: web.Request) -> web.StreamResponse:
        """Stream `<colour> tick N` lines, one every `interval` seconds: a long-lived response."""
        await remember(request)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        interval = float(request.query.get("interval", "0.05"))
        for n in range(int(request.query.get("count", "1000"))):
            await response.write(f"{state.colour} tick {n}\n".encode())
            await asyncio.sleep(interval)
        await response.write_eof()
        return response

    async def headers(request: web.Request) -> web.Response:
        await remember(request)
        return web.json_response(
            {"colour": state.colour, "headers": [[k, v] for k, v in request.headers.items()]},
            headers={
                "Connection": "keep-alive, X-Secret-Hop",
                "X-Secret-Hop": "must not pass",
                "Keep-Alive": "timeout=5",
                "Proxy-Authenticate": "Basic",
                "X-Kept": "yes",
            },
        )

    async def slow(request: web.Request) -> web.Response:
        await remember(request)
        await asyncio.sleep(float(request.query.get("delay", "5")))
        return web.Response(text=f"slow {state.colour}\n")

    async def ws(request: web.Request) -> web.WebSocketResponse:
        await remember(request)
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for message in socket:
            if message.type == WSMsgType.TEXT:
                await socket.send_str(f"{state.colour}: {message.data}")
        state.ws_close_codes.append(socket.close_code)
        return socket

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def missing(request: web.Request) -> web.Response:
        await remember(request)
        return web.Response(status=404, text=f"not found on {state.colour}\n")

    app = web.Application(client_max_size=1024**3)
    app.router.add_get("/", hello)
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/count", count)
    app.router.add_get("/download", download)
    app.router.add_get("/headers", headers)
    app.router.add_get("/slow", slow)
    app.router.add_get("/ticks", ticks)
    app.router.add_get("/ws", ws)
    app.router.add_get("/missing", missing)
    app.router.add_route("*", "/{tail:.*}", hello)
    return app


class BreakableColour:
    """A colour app whose health, whose answers to live traffic, and whose connections the
    test can break: /healthz follows `healthy`, every page answers 500 while `failing`, and
    /hang-up closes the connection without a response."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.healthy = True
        self.failing = False
        self.failing_under: str | None = None  # pages under this path answer 500 too
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        async def healthz(request: web.Request) -> web.Response:
            return web.Response(status=200 if self.healthy else 503, text="health\n")

        async def hang_up(request: web.Request) -> web.Response:
            # Close without a response: bluegreen counts an upstream error and answers 502.
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=200)  # never sent: the connection is gone

        async def page(request: web.Request) -> web.Response:
            under = self.failing_under
            failing = self.failing or (under is not None and request.path.startswith(under))
            return web.Response(status=500 if failing else 200, text=f"{self.name}\n")

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/hang-up", hang_up)
        app.router.add_get("/{tail:.*}", page)
        return app


# Health checks fast enough for a test to see a colour turn unhealthy and a rollback happen
# within a second, and that a loaded machine does not fail by accident. A test breaks a colour
# deterministically (/healthz answers 503), never by being slow, so the timeout only bounds a
# healthy probe: as long as the config allows (the interval), since the colour apps, the probes
# and the proxy share one event loop, which a loaded machine stalls for a moment now and then.
# Three misses in a row are needed: one stall does not make a healthy colour unhealthy.
FAST_INTERVAL = 0.2  # seconds
FAST_FAILURE_THRESHOLD = 3
FAST_HEALTH_CHECKS = (
    f"health.interval: {FAST_INTERVAL * 1000:g}ms\nhealth.timeout: {FAST_INTERVAL * 1000:g}ms\n"
    f"health.failureThreshold: {FAST_FAILURE_THRESHOLD}\nhealth.successThreshold: 1\n"
)


def breakable_config(colours: dict[str, BreakableColour], active: str, extra: str = "") -> str:
    """A config over two breakable colours with fast health checks."""
    return (
        f"active: {active}\n"
        f"upstream.blue: {colours['blue'].url}\n"
        f"upstream.green: {colours['green'].url}\n" + FAST_HEALTH_CHECKS + extra
    )


async def start_app(app: web.Application, port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve `app` on 127.0.0.1 and return its runner and bound port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    server = site._server  # aiohttp has no public accessor for the bound port
    assert server is not None
    return runner, int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
