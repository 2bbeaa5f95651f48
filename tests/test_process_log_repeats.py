"""The process log of a real `bluegreen run` under repeats: what keeps happening is said a few
times, counted in full by the metrics, and a rejected config is logged once however often it is
seen.

The access log is the per-request record; the process log (stderr, logfmt here) must not grow
with the request rate when a colour is down.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from tests.support.colours import ColourApp
from tests.support.files import atomic_write
from tests.support.net import free_port
from tests.support.process import Proxy, config_text, sample

BURST = 10  # controller.log_format.RepeatFilter: records of one message shown per 10 s


def lines_with(path: Path, words: str) -> list[str]:
    """The process log lines (stderr) that contain `words`."""
    return [line for line in path.read_text().splitlines() if words in line]


async def metrics_text(proxy: Proxy) -> str:
    async with aiohttp.ClientSession() as session, session.get(proxy.admin + "/metrics") as r:
        assert r.status == 200
        return await r.text()


async def test_failed_upstream_requests_are_logged_a_few_times_and_counted_in_full(
    colours: dict[str, ColourApp], tmp_path: Path
) -> None:
    dead = free_port()  # nothing listens there: every request to blue fails to connect
    config = tmp_path / "bluegreen.yaml"
    config.write_text(
        config_text(colours, "blue").replace(colours["blue"].url, f"http://127.0.0.1:{dead}")
        + "health.path: /healthz\nrollback.enabled: false\nretry.maxRetries: 0\n"
    )
    stderr = tmp_path / "stderr.log"
    with stderr.open("wb") as output:
        proxy = Proxy(config, stderr=output)
        proxy.start()
        try:
            await proxy.wait_ready()
            started = time.monotonic()
            async with aiohttp.ClientSession() as session:
                for _ in range(40):
                    async with session.get(proxy.url + "/") as response:
                        assert response.status == 502
            elapsed = time.monotonic() - started
            text = await metrics_text(proxy)
        finally:
            assert proxy.stop() == 0
    assert sample(text, "bluegreen_upstream_errors_total", colour="blue", kind="connect") == 40
    failures = lines_with(stderr, "upstream failure")
    assert failures, stderr.read_text()
    if elapsed < 10:  # one window of the filter (40 local requests take well under a second)
        assert len(failures) <= BURST, failures
    for line in failures:
        assert "colour=blue" in line and "request_id=" in line, line


async def test_a_rejected_config_is_logged_once_while_it_stays(
    colours: dict[str, ColourApp], tmp_path: Path
) -> None:
    config = tmp_path / "bluegreen.yaml"
    good = config_text(colours, "blue")
    config.write_text(good)
    stderr = tmp_path / "stderr.log"
    with stderr.open("wb") as output:
        proxy = Proxy(config, stderr=output)
        proxy.start()
        try:
            await proxy.wait_ready()
            bad = good.replace("active: blue", "active: red")
            for _ in range(3):  # the same invalid config written again: a new file each time
                atomic_write(config, bad)
                await asyncio.sleep(0.4)  # several polls of the file
            rejected_once = lines_with(stderr, "config rejected")
            atomic_write(config, good.replace("active: blue", "active: purple"))
            deadline = time.monotonic() + 10
            while len(lines_with(stderr, "config rejected")) < 2:
                assert time.monotonic() < deadline, stderr.read_text()
                await asyncio.sleep(0.05)
            text = await metrics_text(proxy)
        finally:
            assert proxy.stop() == 0
    assert len(rejected_once) == 1, rejected_once
    assert "red" in rejected_once[0]
    rejected = lines_with(stderr, "config rejected")
    assert len(rejected) == 2 and "purple" in rejected[1], rejected
    # Counted every time it was seen, logged once per distinct problem.
    assert sample(text, "bluegreen_config_reloads_total", result="rejected") >= 2
    assert sample(text, "bluegreen_config_last_reload_successful") == 0
