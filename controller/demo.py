"""`bluegreen demo`: two colour apps and the proxy on this machine, from a local config file.

The colour apps stand in for the seed tutorial's `myapp:v1` (blue) and `myapp:v2` (green): each
answers a page naming its version and a `/healthz`. Everything listens on loopback by default.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from controller.process import Endpoint, ProxyProcess

COLOUR_KEY = web.AppKey("colour", str)
VERSION_KEY = web.AppKey("version", str)


async def colour_page(request: web.Request) -> web.Response:
    """The demo app's page: which version answered, and which path was asked."""
    colour, version = request.app[COLOUR_KEY], request.app[VERSION_KEY]
    return web.Response(text=f"myapp {version} ({colour}) answered {request.path}\n")


async def colour_health(request: web.Request) -> web.Response:
    """The demo app's health endpoint."""
    return web.Response(text="ok\n")


def colour_app(colour: str, version: str) -> web.Application:
    """Build one demo colour app."""
    app = web.Application()
    app[COLOUR_KEY] = colour
    app[VERSION_KEY] = version
    app.router.add_get("/healthz", colour_health)
    app.router.add_route("*", "/{tail:.*}", colour_page)
    return app


@dataclass(frozen=True, slots=True)
class DemoPorts:
    """Where the demo listens."""

    host: str = "127.0.0.1"
    proxy: int = 8080
    admin: int = 9090
    blue: int = 8081
    green: int = 8082


def demo_config(ports: DemoPorts) -> str:
    """Return the demo's config file text: blue live, green idle, preview open to loopback."""
    return (
        "# bluegreen demo config: edit `active`, or run `bluegreen switch`, to move live traffic.\n"
        "active: blue\n"
        f"upstream.blue: http://{ports.host}:{ports.blue}\n"
        f"upstream.green: http://{ports.host}:{ports.green}\n"
        "preview.header: X-Bluegreen-Preview\n"
        "drain.timeout: 5s\n"
    )


def instructions(ports: DemoPorts, config_path: Path, program: str) -> str:
    """Return what the demo prints: what to curl and how to switch."""
    proxy = f"http://{ports.host}:{ports.proxy}/"
    cfg = shlex.quote(str(config_path))
    return f"""
bluegreen demo is running.
  blue  (myapp v1)  http://{ports.host}:{ports.blue}/
  green (myapp v2)  http://{ports.host}:{ports.green}/
  proxy             {proxy}
  status page       http://{ports.host}:{ports.admin}/status
  metrics           http://{ports.host}:{ports.admin}/metrics
  config file       {config_path}

In another terminal:
  curl -si {proxy}                              # live traffic: blue answers (myapp v1)
  curl -s -H 'X-Bluegreen-Preview: 1' {proxy}   # preview traffic: green (myapp v2)
  {program} switch green --config {cfg}
  curl -si {proxy}                              # live traffic now: green (myapp v2)
  {program} switch blue --config {cfg}          # and back

Every response carries X-Bluegreen-Colour. Press Ctrl-C to stop.
"""


async def run_demo(ports: DemoPorts, workdir: Path | None = None) -> None:
    """Start both colour apps and the proxy, print the instructions, serve until stopped."""
    runners: list[web.AppRunner] = []
    try:
        for colour, version, port in (
            ("blue", "v1", ports.blue),
            ("green", "v2", ports.green),
        ):
            runner = web.AppRunner(colour_app(colour, version), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, ports.host, port).start()
            runners.append(runner)
        directory = workdir or Path(tempfile.mkdtemp(prefix="bluegreen-demo-"))
        config_path = directory / "bluegreen.yaml"
        config_path.write_text(demo_config(ports), encoding="utf-8")
        process = ProxyProcess(
            config_path,
            Endpoint(ports.host, ports.proxy),
            Endpoint(ports.host, ports.admin),
        )
        run = asyncio.create_task(process.run())
        ready = asyncio.create_task(process.ready.wait())
        await asyncio.wait({run, ready}, return_when=asyncio.FIRST_COMPLETED)
        if run.done():
            ready.cancel()
            await run  # re-raises why the proxy could not start
            return
        program = shlex.quote(sys.argv[0]) if sys.argv[0].endswith("bluegreen") else "bluegreen"
        print(instructions(ports, config_path, program), flush=True)
        await run
    finally:
        for runner in runners:
            await runner.cleanup()
