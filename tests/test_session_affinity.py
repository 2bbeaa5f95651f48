"""Sessions that survive a switch (session.affinity: cookie), over real sockets and pure.

Live responses set a signed cookie naming the colour that answered. For session.drainTimeout
after a switch a person made, a request with a valid cookie for the colour active before it
stays there; one without goes to the new colour at once; a rollback moves everyone back; a
cookie for a colour that was not live in that window is ignored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import itertools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from controller.config import ConfigError, parse_config
from controller.process import ProxyProcess
from proxy.preview_cookie import _remove_every, issue, remove_cookie
from proxy.routing import PreviewPolicy, RoutingTable
from proxy.session_affinity import (
    CURRENT,
    INVALID,
    KEPT,
    MOVED,
    DrainWindow,
    SessionCookies,
    SessionPolicy,
    cookie_colour,
    drain_after,
)
from tests.support.colours import BreakableColour, ColourApp, breakable_config
from tests.support.in_process import breakable_colours, in_process_proxy
from tests.support.net import RunningProxy, TableFactory, raw_exchange
from tests.support.waiting import wait_for

ON = SessionPolicy(affinity="cookie", drain_timeout=60.0)
KEY = ON.key(PreviewPolicy().cookie_key)
FAR = 99999999999
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def with_session(
    make_table: TableFactory,
    active: str = "blue",
    drain: DrainWindow | None = None,
    policy: SessionPolicy = ON,
) -> RoutingTable:
    """A table over the test colours with session affinity on (and a drain window)."""
    return dataclasses.replace(make_table(active), session=policy, drain=drain)


async def get(
    port: int, cookie: bytes | None = None, target: bytes = b"/headers", fields: bytes = b""
) -> tuple[bytes, dict[bytes, list[bytes]], bytes]:
    """One GET with Connection: close: (status line, fields by lower-case name, body)."""
    cookie_line = b"Cookie: " + cookie + b"\r\n" if cookie is not None else b""
    raw = await raw_exchange(
        port,
        b"GET "
        + target
        + b" HTTP/1.1\r\nHost: app.example\r\n"
        + cookie_line
        + fields
        + b"Connection: close\r\n\r\n",
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    found: dict[bytes, list[bytes]] = {}
    for line in lines:
        name, _, value = line.partition(b":")
        found.setdefault(name.strip().lower(), []).append(value.strip())
    return status, found, body


def session_value(fields: dict[bytes, list[bytes]]) -> bytes | None:
    """The session cookie a response set, or None."""
    for line in fields.get(b"set-cookie", []):
        name, _, rest = line.partition(b"=")
        if name == b"bluegreen_session":
            return rest.split(b";", 1)[0]
    return None


async def colour_of(port: int, cookie: bytes | None) -> str:
    """Which colour answered a request with this Cookie field."""
    status, fields, _ = await get(port, cookie)
    assert status == b"HTTP/1.1 200 OK", status
    return fields[b"x-bluegreen-colour"][0].decode()


# --- pure: the window and the decision ------------------------------------------------------


@pytest.mark.parametrize(
    ("previous", "window", "active", "colours", "manual", "unhealthy", "expected"),
    [
        # A switch a person made opens a window for the colour it leaves.
        ("blue", None, "green", ("blue", "green"), True, False, DrainWindow("blue", 1060.0)),
        # A rollback or a refusal (not manual) opens none: everyone moves at once.
        ("green", DrainWindow("blue", 1030.0), "blue", ("blue", "green"), False, False, None),
        # The old colour unhealthy, or gone from the config: none.
        ("blue", None, "green", ("blue", "green"), True, True, None),
        ("blue", None, "green", ("green", "red"), True, False, None),
        # A reload that keeps the active colour keeps the window while it lasts.
        (
            "green",
            DrainWindow("blue", 1030.0),
            "green",
            ("blue", "green"),
            True,
            False,
            DrainWindow("blue", 1030.0),
        ),
        ("green", DrainWindow("blue", 999.0), "green", ("blue", "green"), True, False, None),
        ("green", DrainWindow("blue", 1030.0), "green", ("green", "red"), True, False, None),
        # A second switch drains the colour it leaves, not the first one's.
        (
            "green",
            DrainWindow("blue", 1030.0),
            "red",
            ("blue", "green", "red"),
            True,
            False,
            DrainWindow("green", 1060.0),
        ),
        # The first config has nothing to drain.
        (None, None, "blue", ("blue", "green"), True, False, None),
    ],
)
def test_drain_window(
    previous: str | None,
    window: DrainWindow | None,
    active: str,
    colours: tuple[str, ...],
    manual: bool,
    unhealthy: bool,
    expected: DrainWindow | None,
) -> None:
    got = drain_after(
        ON, previous, window, active, colours, manual=manual, old_unhealthy=unhealthy, now=1000.0
    )
    assert got == expected


def test_no_window_with_affinity_off() -> None:
    got = drain_after(
        SessionPolicy(),
        "blue",
        None,
        "green",
        ("blue", "green"),
        manual=True,
        old_unhealthy=False,
        now=0.0,
    )
    assert got is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, (False, None, True)),
        (b"garbage", (False, INVALID, True)),
        (b"blue..sig", (False, INVALID, True)),
        (b"blue.12x.sig", (False, INVALID, True)),
        # The active colour: kept as it is while fresh, renewed near expiry.
        (issue(KEY, "green", 1100), (False, CURRENT, False)),
        (issue(KEY, "green", 1010), (False, CURRENT, True)),
        # The drained colour: signed and unexpired keeps it there.
        (issue(KEY, "blue", 1100), (True, KEPT, False)),
        (issue(KEY, "blue", 999), (False, INVALID, True)),
        (b"blue.1100.AAAAAAAAAAAAAAAAAAAAAA", (False, INVALID, True)),
        (issue(b"k" * 32, "blue", 1100), (False, INVALID, True)),
        # Any other colour: never live in the window, ignored.
        (issue(KEY, "red", 1100), (False, MOVED, True)),
    ],
)
def test_decide(value: bytes | None, expected: tuple[bool, str | None, bool]) -> None:
    cookies = SessionCookies(ON, KEY, "green", DrainWindow("blue", 1050.0))
    assert cookies.decide(value, 1000.0) == expected


def test_decide_after_the_window() -> None:
    cookies = SessionCookies(ON, KEY, "green", DrainWindow("blue", 1050.0))
    assert cookies.decide(issue(KEY, "blue", 2000), 1050.0) == (False, MOVED, True)


def test_one_set_cookie_value_is_shared_for_a_few_seconds() -> None:
    cookies = SessionCookies(ON, KEY, "blue", None)
    line = cookies.set_cookie("blue", 1000.0, secure=False)
    assert cookies.set_cookie("blue", 1004.0, secure=False) is line
    assert cookies.set_cookie("blue", 1005.0, secure=False) != line
    assert line.endswith(b"; Path=/; Max-Age=60; HttpOnly; SameSite=Lax\r\n")
    assert cookies.set_cookie("blue", 1000.0, secure=True).endswith(b"; Secure\r\n")
    value = line.split(b"=", 1)[1].split(b";", 1)[0]
    assert cookie_colour(value) == (b"blue", 1060)


def test_remove_cookie_fast_path_matches_the_piecewise_one() -> None:
    # Every field of up to four pieces from these: the name at the start, in the middle, twice,
    # inside another name, after a tab, with nothing after it.
    pieces = [b"a=1", b" b=2", b"bg=v", b" bg=w", b"xbg=z", b"", b" ", b"\tbg=t", b"c", b" bg=q "]
    for size in range(1, 5):
        for combo in itertools.product(pieces, repeat=size):
            field = b";".join(combo)
            assert remove_cookie(field, b"bg") == _remove_every(field, b"bg="), field


def test_the_session_key_is_not_the_preview_key() -> None:
    preview_key = PreviewPolicy(token=b"t0k").cookie_key
    assert ON.key(preview_key) != preview_key
    own = dataclasses.replace(ON, cookie_key_from_file=b"s" * 32)
    assert own.key(preview_key) != ON.key(preview_key)


def test_config_keys() -> None:
    base = {"active": "blue", "upstream.blue": "http://b:80", "upstream.green": "http://g:80"}
    config = parse_config({**base, "session.affinity": "Cookie", "session.drainTimeout": "90s"})
    assert config.session == SessionPolicy(affinity="cookie", drain_timeout=90.0)
    assert parse_config(base).to_routing_table("v1").affinity is None
    with pytest.raises(ConfigError, match=r"session\.affinity: 'sticky' is not a session affinity"):
        parse_config({**base, "session.affinity": "sticky"})
    with pytest.raises(ConfigError, match=r"session\.cookie: 'bluegreen_preview' is also preview"):
        parse_config({**base, "session.affinity": "cookie", "session.cookie": "bluegreen_preview"})


# --- over real sockets: a ProxyServer in front of two colour apps --------------------------


async def test_live_responses_set_the_cookie_and_the_colour_never_sees_it(
    proxy: RunningProxy, make_table: TableFactory, colours: dict[str, ColourApp]
) -> None:
    proxy.server.swap_table(with_session(make_table))
    status, fields, body = await get(proxy.port, b"a=1; theme=dark")
    assert status == b"HTTP/1.1 200 OK"
    [set_cookie] = fields[b"set-cookie"]
    assert set_cookie.split(b"; ")[1:] == [b"Path=/", b"Max-Age=60", b"HttpOnly", b"SameSite=Lax"]
    value = session_value(fields)
    assert value is not None and value.startswith(b"blue.")
    # Sent back fresh: no new Set-Cookie, and the colour sees the other cookies byte for byte.
    status, fields, body = await get(proxy.port, b"a=1; bluegreen_session=" + value + b";b=2")
    assert b"set-cookie" not in fields
    seen = {name.lower(): v for name, v in json.loads(body)["headers"]}
    assert seen["cookie"] == "a=1;b=2"
    _, _, body = await get(proxy.port, b"bluegreen_session=" + value)
    assert all(name.lower() != "cookie" for name, _ in json.loads(body)["headers"])
    # Behind a trusted balancer that says https, the cookie is Secure.
    proxy.server.swap_table(
        dataclasses.replace(with_session(make_table), forwarded_trusted=(LOOPBACK,))
    )
    _, fields, _ = await get(proxy.port, fields=b"X-Forwarded-Proto: https\r\n")
    assert fields[b"set-cookie"][0].endswith(b"; Secure")
    # Preview answers set none.
    _, fields, _ = await get(proxy.port, fields=b"X-Bluegreen-Preview: 1\r\n")
    assert fields[b"x-bluegreen-colour"] == [b"green"] and b"set-cookie" not in fields


async def test_affinity_off_sets_nothing_and_forwards_cookie_as_is(
    proxy: RunningProxy, colours: dict[str, ColourApp]
) -> None:
    cookie = b"bluegreen_session=" + issue(KEY, "green", FAR)
    _, fields, body = await get(proxy.port, cookie)
    assert b"set-cookie" not in fields
    assert fields[b"x-bluegreen-colour"] == [b"blue"]
    seen = {name.lower(): v for name, v in json.loads(body)["headers"]}
    assert seen["cookie"] == cookie.decode()


async def test_a_session_stays_on_blue_across_a_switch_until_the_drain_timeout(
    proxy: RunningProxy, make_table: TableFactory
) -> None:
    proxy.server.swap_table(with_session(make_table))
    _, fields, _ = await get(proxy.port)
    blue = session_value(fields)
    assert blue is not None
    cookie = b"bluegreen_session=" + blue
    # The switch: green is live, blue drains for 1.5 s.
    proxy.server.swap_table(
        with_session(make_table, "green", DrainWindow("blue", time.time() + 1.5))
    )
    assert await colour_of(proxy.port, cookie) == "blue"
    assert await colour_of(proxy.port, cookie) == "blue"
    assert await colour_of(proxy.port, None) == "green"  # a new session: the new colour at once
    assert await colour_of(proxy.port, b"other=1") == "green"
    stats = proxy.server.stats.session_cookies
    assert stats[("blue", KEPT)] == 2
    await asyncio.sleep(1.6)
    _, fields, _ = await get(proxy.port, cookie)
    assert fields[b"x-bluegreen-colour"] == [b"green"]
    # And the session is handed a cookie for the colour it is on now.
    moved = session_value(fields)
    assert moved is not None and moved.startswith(b"green.")
    assert stats[("green", MOVED)] == 1
    assert await colour_of(proxy.port, b"bluegreen_session=" + moved) == "green"
    assert stats[("green", CURRENT)] == 1


async def test_a_cookie_for_a_colour_never_live_is_ignored(
    proxy: RunningProxy, make_table: TableFactory
) -> None:
    # Signed with the right key, but green was never live: no preview bypass.
    proxy.server.swap_table(with_session(make_table))
    green = b"bluegreen_session=" + issue(KEY, "green", FAR)
    assert await colour_of(proxy.port, green) == "blue"
    # In a window, only the drained colour is kept: green is live, red was never.
    red_table = with_session(make_table, "green", DrainWindow("blue", time.time() + 60))
    proxy.server.swap_table(red_table)
    assert await colour_of(proxy.port, b"bluegreen_session=" + issue(KEY, "red", FAR)) == "green"
    assert proxy.server.stats.session_cookies[("blue", MOVED)] == 1
    assert proxy.server.stats.session_cookies[("green", MOVED)] == 1


@pytest.mark.parametrize(
    "value",
    [
        b"blue.99999999999.AAAAAAAAAAAAAAAAAAAAAA",  # forged
        issue(b"another key, of thirty-two bytes", "blue", FAR),  # another key
        issue(KEY, "blue", 1000),  # expired
        b"blue",  # malformed
    ],
)
async def test_forged_or_expired_cookies_go_to_the_new_colour(
    proxy: RunningProxy, make_table: TableFactory, value: bytes
) -> None:
    proxy.server.swap_table(
        with_session(make_table, "green", DrainWindow("blue", time.time() + 60))
    )
    assert await colour_of(proxy.port, b"bluegreen_session=" + value) == "green"
    assert proxy.server.stats.session_cookies == {("green", INVALID): 1}


# --- a whole process: switches, rollback, health, /status and metrics -----------------------


@pytest.fixture
async def process(
    tmp_path: Path,
) -> AsyncIterator[tuple[ProxyProcess, dict[str, BreakableColour], Path]]:
    """A bluegreen process with session affinity (blue live) over two breakable colours."""
    async with breakable_colours() as colours:
        config = tmp_path / "bluegreen.yaml"
        config.write_text(config_text(colours, "blue"))
        async with in_process_proxy(config) as running:
            yield running, colours, config


SESSION_KEYS = "session.affinity: cookie\nsession.drainTimeout: 5m\n"


def config_text(colours: dict[str, BreakableColour], active: str) -> str:
    """Session affinity on; health checks fast enough to see a colour fail within a second."""
    return breakable_config(colours, active, SESSION_KEYS)


def switch(config: Path, colours: dict[str, BreakableColour], active: str) -> None:
    config.write_text(config_text(colours, active))


async def cookie_from(port: int) -> bytes:
    _, fields, _ = await get(port, target=b"/page")
    value = session_value(fields)
    assert value is not None
    return b"bluegreen_session=" + value


async def page_colour(port: int, cookie: bytes | None) -> str:
    status, _, body = await get(port, cookie, target=b"/page")
    assert status == b"HTTP/1.1 200 OK", status
    return body.decode().strip()


async def blue_session_across_a_switch(
    process: tuple[ProxyProcess, dict[str, BreakableColour], Path],
) -> tuple[int, bytes]:
    """Take a session cookie on blue, switch to green, and see that cookie still kept on blue;
    return the proxy's port and the cookie."""
    running, colours, config = process
    port = running.proxy_port
    blue = await cookie_from(port)
    switch(config, colours, "green")
    await wait_for(
        lambda: running.state.table is not None and running.state.table.active == "green",
        5,
        "switch",
    )
    assert await page_colour(port, blue) == "blue"
    return port, blue


async def test_switch_keeps_sessions_and_a_rollback_moves_everyone_back(
    process: tuple[ProxyProcess, dict[str, BreakableColour], Path],
) -> None:
    running, colours, _ = process
    port, blue = await blue_session_across_a_switch(process)
    assert await page_colour(port, None) == "green"
    green = await cookie_from(port)
    assert green.startswith(b"bluegreen_session=green.")
    status = await admin_json(running, "/status")
    draining = status["session_affinity"]["draining"]
    assert draining["colour"] == "blue" and 290 < draining["seconds_left"] <= 300
    assert draining["kept_requests"] == 1
    metrics = await admin_text(running, "/metrics")
    assert 'bluegreen_session_cookie_requests_total{colour="blue",outcome="kept"} 1.0' in metrics
    # Green fails its checks: rolled back to blue, and everyone with it, green's cookie too.
    colours["green"].healthy = False
    await wait_for(
        lambda: running.state.table is not None and running.state.table.active == "blue",
        5,
        "rollback",
    )
    assert running.state.table is not None and running.state.table.drain is None
    assert await page_colour(port, green) == "blue"
    assert await page_colour(port, blue) == "blue"
    assert (await admin_json(running, "/status"))["session_affinity"]["draining"] is None


async def test_an_unhealthy_old_colour_ends_the_window(
    process: tuple[ProxyProcess, dict[str, BreakableColour], Path],
) -> None:
    running, colours, _ = process
    port, blue = await blue_session_across_a_switch(process)
    colours["blue"].healthy = False
    await wait_for(
        lambda: running.state.table is not None and running.state.table.drain is None,
        5,
        "window ended",
    )
    assert await page_colour(port, blue) == "green"


async def admin_json(running: ProxyProcess, path: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(await admin_text(running, path))
    return document


async def admin_text(running: ProxyProcess, path: str) -> str:
    url = f"http://127.0.0.1:{running.admin_port}{path}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.text()
