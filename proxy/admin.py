"""The admin server: /healthz, /readyz, /metrics and /status, on its own port.

It is an ordinary aiohttp application: admin traffic is light, and aiohttp's conveniences (content
negotiation, JSON) are worth more here than raw speed. What the status page shows comes from the
controller through two callables, so this module knows nothing of where configs come from.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
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


# The page's only script and style are inline; the policy allows exactly those (by hash) and
# fetches from this origin, so even a string that slipped into markup could not run or load.
_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


@functools.cache
def status_page() -> tuple[str, str]:
    """Return the status page's HTML and the Content-Security-Policy that lets it run."""
    html = resources.files("proxy").joinpath("status.html").read_text(encoding="utf-8")
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for kind, body in _INLINE.findall(html):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        hashes[kind].append(f"'sha256-{digest}'")
    policy = "; ".join(
        [
            "default-src 'none'",
            "script-src " + " ".join(hashes["script"] or ["'none'"]),
            "style-src " + " ".join(hashes["style"] or ["'none'"]),
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return html, policy


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process and its event loop answer."""
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 200 once a valid config is served (the controller decides), else 503."""
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
        html, policy = status_page()
        return web.Response(
            text=html,
            content_type="text/html",
            headers={
                "Cache-Control": "no-store",
                "Vary": "Accept",
                "Content-Security-Policy": policy,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            },
        )
    snapshot = request.app[STATUS_KEY]()
    return web.Response(
        text=json.dumps(snapshot, indent=2, sort_keys=False) + "\n",
        content_type="application/json",
        headers={"Cache-Control": "no-store", "Vary": "Accept"},
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
