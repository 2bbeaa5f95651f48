"""The admin server: /healthz, /readyz, /metrics and /status, on its own port.

It is an ordinary aiohttp application: admin traffic is light, and aiohttp's conveniences (content
negotiation, JSON) are worth more here than raw speed. What the status page shows comes from the
controller through two callables, so this module knows nothing of where configs come from.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

StatusProvider = Callable[[], dict[str, Any]]
ReadinessProvider = Callable[[], tuple[bool, str]]

REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)
STATUS_KEY: web.AppKey[StatusProvider] = web.AppKey("status")
READY_KEY: web.AppKey[ReadinessProvider] = web.AppKey("ready")


def _status_page() -> str:
    return resources.files("proxy").joinpath("status.html").read_text(encoding="utf-8")


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process and its event loop answer."""
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 200 once a valid config is loaded and while not shutting down, else 503."""
    ready, reason = request.app[READY_KEY]()
    return web.Response(status=200 if ready else 503, text=reason + "\n")


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of every bluegreen_ metric."""
    body = generate_latest(request.app[REGISTRY_KEY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def wants_html(request: web.Request) -> bool:
    """Say whether the client prefers the HTML page (a browser) to JSON (a tool)."""
    fmt = request.query.get("format")
    if fmt is not None:
        return fmt == "html"
    accept = request.headers.get("Accept", "")
    return "text/html" in accept


async def status(request: web.Request) -> web.Response:
    """Current state: JSON for tools, or a self-refreshing page for people."""
    if wants_html(request):
        return web.Response(text=_status_page(), content_type="text/html")
    snapshot = request.app[STATUS_KEY]()
    return web.Response(
        text=json.dumps(snapshot, indent=2, sort_keys=False) + "\n",
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def build_admin_app(
    registry: CollectorRegistry, status_provider: StatusProvider, ready: ReadinessProvider
) -> web.Application:
    """Create the admin application serving the four endpoints."""
    app = web.Application()
    app[REGISTRY_KEY] = registry
    app[STATUS_KEY] = status_provider
    app[READY_KEY] = ready
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    return app
