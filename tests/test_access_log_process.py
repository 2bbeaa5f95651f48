"""The access log of a real `bluegreen run`, read from its stdout, and request IDs end to end.

The proxy runs as a subprocess with `accessLog.format: json`; its process log goes to a file,
so that stdout holds nothing but access log lines. Every kind of request ends up there: live,
preview, a 404 of the colour, a 502 of a colour that is down, a 400 the proxy answers itself,
a WebSocket and a streamed response.
"""

from __future__ import annotations

import asyncio
import json
import queue
import re
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support.colours import ColourApp, colour_application, start_app
from tests.support.process import Proxy, config_text, sample

RFC3339_MILLIS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
MADE_ID = re.compile(r"[0-9a-f]{24}")
FIELDS = {
    "time",
    "client",
    "method",
    "target",
    "protocol",
    "status",
    "bytes_in",
    "bytes_out",
    "duration",
    "upstream_ttfb",
    "colour",
    "route",
    "upstream",
    "retries",
    "request_id",
    "trace_id",
    "user_agent",
    "referer",
    "ended_by",
    "reason",
    "headers",
}


class AccessLines:
    """The JSON lines a process writes to stdout, read by a thread as they come."""

    def __init__(self, proxy: Proxy) -> None:
        assert proxy.process is not None and proxy.process.stdout is not None
        self._stdout = proxy.process.stdout
        self._lines: queue.Queue[bytes] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stdout:
            self._lines.put(line)

    async def find(self, **match: object) -> dict[str, Any]:
        """Wait for the line whose fields include `match`; every line must be a JSON object."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for entry in self.seen:
                if all(entry.get(k) == v for k, v in match.items()):
                    return entry
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.02)
                continue
            entry = json.loads(line)
            assert set(entry) == FIELDS, line
            assert RFC3339_MILLIS.fullmatch(entry["time"]), line
            self.seen.append(entry)
        raise AssertionError(f"no access log line with {match}; saw {self.seen}")


def sent_to(colour: ColourApp) -> dict[str, str]:
    """The fields of the last request a colour got, by lower-case name."""
    return {name.lower(): value for name, value in colour.seen_headers[-1].items()}


@pytest.fixture
async def green_runner() -> AsyncIterator[tuple[ColourApp, web.AppRunner]]:
    state = ColourApp("green")
    runner, state.port = await start_app(colour_application(state))
    yield state, runner
    await runner.cleanup()


@pytest.fixture
async def logged(
    colours: dict[str, ColourApp],
    green_runner: tuple[ColourApp, web.AppRunner],
    tmp_path: Path,
) -> AsyncIterator[tuple[Proxy, AccessLines]]:
    config = tmp_path / "bluegreen.yaml"
    apps = {"blue": colours["blue"], "green": green_runner[0]}
    config.write_text(
        config_text(apps, "blue", "accessLog.format: json\naccessLog.headers: X-Tenant, X-None\n")
    )
    with (tmp_path / "stderr.log").open("wb") as stderr:
        proxy = Proxy(config, stderr=stderr)
        proxy.start()
        try:
            await proxy.wait_ready()
            yield proxy, AccessLines(proxy)
        finally:
            proxy.stop()


async def test_every_kind_of_request_has_its_line(
    logged: tuple[Proxy, AccessLines],
    colours: dict[str, ColourApp],
    green_runner: tuple[ColourApp, web.AppRunner],
) -> None:
    proxy, lines = logged
    blue, green = colours["blue"], green_runner[0]
    port = proxy.url.rsplit(":", 1)[1]
    async with aiohttp.ClientSession() as session:
        # Live, with the client's own request ID: kept, sent to the colour, returned.
        async with session.get(
            proxy.url + "/shop?item=42",
            headers={
                "X-Request-Id": "client-id-1",
                "User-Agent": "probe/1.0",
                "Referer": "http://shop/",
                "X-Tenant": "acme",
                "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            },
        ) as response:
            assert response.status == 200
            assert response.headers["X-Request-Id"] == "client-id-1"
            await response.read()
        assert sent_to(blue)["x-request-id"] == "client-id-1"
        live = await lines.find(request_id="client-id-1")
        assert live["client"] == "127.0.0.1"
        assert (live["method"], live["target"], live["protocol"]) == (
            "GET",
            "/shop?item=42",
            "HTTP/1.1",
        )
        assert (live["status"], live["colour"], live["route"]) == (200, "blue", "live")
        assert live["upstream"] == f"127.0.0.1:{blue.port}"
        assert (live["bytes_in"], live["bytes_out"]) == (0, len("hello from blue\n"))
        assert 0 < live["upstream_ttfb"] <= live["duration"] < 5
        assert (live["retries"], live["ended_by"], live["reason"]) == (0, "upstream", None)
        assert (live["user_agent"], live["referer"]) == ("probe/1.0", "http://shop/")
        assert live["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert live["headers"] == {"x-tenant": "acme", "x-none": None}

        # Preview, with an invalid request ID: replaced by a made one, everywhere the same.
        async with session.post(
            proxy.url + "/echo",
            data=b"12345",
            headers={"X-Bluegreen-Preview": "1", "X-Request-Id": "bad id"},
        ) as response:
            assert response.status == 200
            assert await response.read() == b"12345"
            made = response.headers["X-Request-Id"]
        assert MADE_ID.fullmatch(made)
        assert sent_to(green)["x-request-id"] == made
        preview = await lines.find(request_id=made)
        assert (preview["method"], preview["colour"], preview["route"]) == (
            "POST",
            "green",
            "preview",
        )
        assert (preview["bytes_in"], preview["bytes_out"], preview["status"]) == (5, 5, 200)
        assert preview["trace_id"] is None and preview["user_agent"].startswith("Python")

        # A 404 of the colour is the colour's answer.
        async with session.get(proxy.url + "/missing") as response:
            assert response.status == 404
            missing_id = response.headers["X-Request-Id"]
        missing = await lines.find(request_id=missing_id)
        assert (missing["status"], missing["ended_by"], missing["colour"]) == (
            404,
            "upstream",
            "blue",
        )

        # A streamed (chunked) response: its body bytes, as the client got them.
        async with session.get(proxy.url + "/ticks?count=5&interval=0.01") as response:
            body = await response.read()
            stream_id = response.headers["X-Request-Id"]
        stream = await lines.find(request_id=stream_id)
        assert (stream["status"], stream["bytes_out"]) == (200, len(body))
        assert stream["duration"] >= 0.04

        # A WebSocket: status 101, tunnel bytes both ways.
        async with session.ws_connect(proxy.url + "/ws") as ws:
            await ws.send_str("hi")
            assert (await ws.receive()).data == "blue: hi"
        websocket = await lines.find(status=101)
        assert websocket["target"] == "/ws" and websocket["ended_by"] in ("client", "upstream")
        assert websocket["bytes_in"] > 0 and websocket["bytes_out"] > 0

        # A colour that is down: 502 made by the proxy, after its retries, with the reason.
        await green_runner[1].cleanup()
        async with session.get(proxy.url + "/", headers={"X-Bluegreen-Preview": "1"}) as response:
            assert response.status == 502
            down_id = response.headers["X-Request-Id"]
        down = await lines.find(request_id=down_id)
        assert (down["colour"], down["route"], down["ended_by"]) == ("green", "preview", "proxy")
        assert down["retries"] == 2 and down["reason"].startswith("connect: unreachable")
        assert down["upstream_ttfb"] is None

    # A request the proxy refuses at its head: 400, its own line, its own request ID.
    reader, writer = await asyncio.open_connection("127.0.0.1", int(port))
    writer.write(b"GET /twice HTTP/1.1\r\nHost: a\r\nHost: b\r\nUser-Agent: raw\r\n\r\n")
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ")
    refused_id = re.search(rb"\r\nX-Request-Id: ([0-9a-f]{24})\r\n", answer)
    assert refused_id is not None
    refused = await lines.find(request_id=refused_id.group(1).decode())
    assert (refused["status"], refused["ended_by"], refused["target"]) == (400, "proxy", "/twice")
    assert refused["reason"] == "bad request: repeated Host header"
    assert (refused["colour"], refused["route"], refused["user_agent"]) == (None, None, "raw")

    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/") as response:  # stays open: keep-alive
            await response.read()
        async with aiohttp.ClientSession() as admin, admin.get(proxy.admin + "/metrics") as scrape:
            metrics = await scrape.text()
    assert sample(metrics, "bluegreen_access_log_lines_total") >= 8
    assert sample(metrics, "bluegreen_access_log_dropped_total") == 0
    # The same requests in the traffic metrics: bytes, time to first byte, the WebSocket (101)
    # counted but not in the duration histogram, connections, and the one deciding process.
    blue_live = {"colour": "blue", "route": "live"}
    assert sample(metrics, "bluegreen_request_bytes_total", colour="green", route="preview") == 5
    assert sample(metrics, "bluegreen_response_bytes_total", **blue_live) >= (
        live["bytes_out"] + missing["bytes_out"] + stream["bytes_out"] + websocket["bytes_out"]
    )
    assert sample(metrics, "bluegreen_upstream_ttfb_seconds_count", **blue_live) == 5
    assert sample(metrics, "bluegreen_request_duration_seconds_count", **blue_live) == 4
    assert 0 < sample(metrics, "bluegreen_upstream_ttfb_seconds_sum", **blue_live) < 5
    assert sample(metrics, "bluegreen_client_connections_limit") == 10000
    assert sample(metrics, "bluegreen_client_connections") == 1  # the keep-alive one above
    assert sample(metrics, "bluegreen_upstream_connections", colour="blue", state="idle") >= 1
    assert sample(metrics, "bluegreen_leader") == 1


async def test_tracing_generate_starts_a_trace_the_colour_and_the_log_share(
    colours: dict[str, ColourApp], tmp_path: Path
) -> None:
    """With `tracing.generate: true` a request without traceparent gets one at the proxy."""
    config = tmp_path / "bluegreen.yaml"
    config.write_text(
        config_text(
            colours,
            "blue",
            "accessLog.format: json\naccessLog.headers: X-Tenant\ntracing.generate: true\n",
        )
    )
    blue = colours["blue"]
    client_trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with (tmp_path / "stderr.log").open("wb") as stderr:
        proxy = Proxy(config, stderr=stderr)
        proxy.start()
        try:
            await proxy.wait_ready()
            lines = AccessLines(proxy)
            async with aiohttp.ClientSession() as session:
                async with session.get(proxy.url + "/", headers={"X-Request-Id": "t-1"}) as r:
                    assert r.status == 200
                started = sent_to(blue)["traceparent"]
                headers = {"X-Request-Id": "t-2", "traceparent": client_trace}
                async with session.get(proxy.url + "/", headers=headers) as r:
                    assert r.status == 200
                kept = sent_to(blue)["traceparent"]
            first = await lines.find(request_id="t-1")
            second = await lines.find(request_id="t-2")
        finally:
            assert proxy.stop() == 0
    # A new sampled trace, whose ID the access log writes: the proxy hop is the trace's root.
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", started), started
    assert first["trace_id"] == started[3:35]
    # The client's own trace passes as sent, and is the one logged.
    assert kept == client_trace
    assert second["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
