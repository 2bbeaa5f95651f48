"""The preview link and cookie over real sockets, and the cookie's signing and parsing, pure.

A browser gets preview through `GET /.well-known/bluegreen/preview?token=T&next=/path`: the proxy
answers it itself with a signed cookie and a redirect, requests with the cookie go to the idle
colour, and the colour never sees the preview cookie. Nothing under the path reaches a colour.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json

import pytest

from controller.state import ControlState
from proxy.preview_cookie import (
    EXPIRED,
    FORGED,
    MALFORMED,
    VALID,
    WRONG_COLOUR,
    check,
    derive_key,
    issue,
    remove_cookie,
)
from proxy.routing import PreviewPolicy
from tests.support.colours import ColourApp
from tests.support.net import RunningProxy, TableFactory, raw_exchange

LINK = b"/.well-known/bluegreen/preview"
TOKEN = b"t0k"
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
ELSEWHERE = (ipaddress.ip_network("10.0.0.0/8"),)
KEY = derive_key(TOKEN)


def use_policy(proxy: RunningProxy, make_table: TableFactory, **policy: object) -> None:
    """Serve a table with this preview policy (blue live, green idle)."""
    proxy.server.swap_table(make_table(preview=PreviewPolicy(**policy)))  # type: ignore[arg-type]


async def get(
    port: int, target: bytes, fields: bytes = b""
) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """One GET with Connection: close; (status line, fields lower-cased, body)."""
    raw = await raw_exchange(
        port,
        b"GET "
        + target
        + b" HTTP/1.1\r\nHost: app.example\r\n"
        + fields
        + b"Connection: close\r\n\r\n",
    )
    return split_response(raw)


def split_response(raw: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """A response's status line, fields (lower-case names) and body."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    fields = {}
    for line in lines:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    return status, fields, body


def cookie_value(set_cookie: bytes) -> bytes:
    """The value of a Set-Cookie field (before its attributes)."""
    pair = set_cookie.split(b";", 1)[0]
    name, _, value = pair.partition(b"=")
    assert name == b"bluegreen_preview"
    return value


async def link_cookie(port: int, token: bytes = TOKEN) -> bytes:
    """Follow the link as a browser would and return the cookie value it set."""
    status, fields, _ = await get(port, LINK + b"?token=" + token)
    assert status == b"HTTP/1.1 303 See Other", status
    return cookie_value(fields[b"set-cookie"])


async def seen(port: int, cookie: bytes) -> dict[str, object]:
    """GET /headers with this Cookie field; what the colour answered (colour, its fields)."""
    status, _, body = await get(port, b"/headers", b"Cookie: " + cookie + b"\r\n")
    assert status == b"HTTP/1.1 200 OK", status
    answer: dict[str, object] = json.loads(body)
    return answer


def nothing_reached_a_colour(colours: dict[str, ColourApp]) -> bool:
    """Say whether no colour has seen any request."""
    return all(not app.seen_headers for app in colours.values())


async def test_link_sets_a_signed_cookie_and_redirects_without_reaching_a_colour(
    proxy: RunningProxy, make_table: TableFactory, colours: dict[str, ColourApp]
) -> None:
    use_policy(proxy, make_table, token=TOKEN)
    status, fields, body = await get(proxy.port, LINK + b"?token=t0k&next=/cart%3Fx%3D1")
    assert status == b"HTTP/1.1 303 See Other"
    assert fields[b"location"] == b"/cart?x=1"
    assert fields[b"cache-control"] == b"no-store"
    set_cookie = fields[b"set-cookie"]
    attributes = set_cookie.split(b"; ")[1:]
    assert attributes == [b"Path=/", b"Max-Age=28800", b"HttpOnly", b"SameSite=Lax"]
    assert check(KEY, cookie_value(set_cookie), "green", now=0) == VALID
    assert b"green" in body
    assert nothing_reached_a_colour(colours)
    assert proxy.server.stats.preview_links["on"] == 1


async def test_cookie_reaches_the_idle_colour_which_never_sees_it(
    proxy: RunningProxy, make_table: TableFactory
) -> None:
    use_policy(proxy, make_table, token=TOKEN)
    value = await link_cookie(proxy.port)
    answer = await seen(proxy.port, b"a=1; bluegreen_preview=" + value + b";b=2 ;c")
    assert answer["colour"] == "green"
    fields = {name.lower(): v for name, v in answer["headers"]}  # type: ignore[attr-defined]
    # The other cookies byte for byte, separators included.
    assert fields["cookie"] == "a=1;b=2 ;c"
    only = await seen(proxy.port, b"bluegreen_preview=" + value)
    assert only["colour"] == "green"
    assert all(name.lower() != "cookie" for name, _ in only["headers"])  # type: ignore[attr-defined]
    assert proxy.server.stats.preview_cookies[VALID] == 2


@pytest.mark.parametrize(
    ("cookie", "outcome"),
    [
        (b"green.99999999999.AAAAAAAAAAAAAAAAAAAAAA", FORGED),
        (issue(derive_key(b"another token"), "green", 99999999999), FORGED),
        (issue(KEY, "green", 1000), EXPIRED),
        (issue(KEY, "blue", 99999999999), WRONG_COLOUR),
        (b"garbage", MALFORMED),
        (b"", MALFORMED),
    ],
)
async def test_forged_expired_and_wrong_colour_cookies_go_live_and_are_counted(
    proxy: RunningProxy, make_table: TableFactory, cookie: bytes, outcome: str
) -> None:
    use_policy(proxy, make_table, token=TOKEN)
    answer = await seen(proxy.port, b"x=1; bluegreen_preview=" + cookie)
    assert answer["colour"] == "blue"
    fields = {name.lower(): v for name, v in answer["headers"]}  # type: ignore[attr-defined]
    assert fields["cookie"] == "x=1"
    assert proxy.server.stats.preview_cookies[outcome] == 1


async def test_a_cookie_for_the_colour_that_went_live_is_no_preview(
    proxy: RunningProxy, make_table: TableFactory
) -> None:
    use_policy(proxy, make_table, token=TOKEN)
    value = await link_cookie(proxy.port)  # issued for green, the idle colour then
    proxy.server.swap_table(make_table("green", preview=PreviewPolicy(token=TOKEN)))
    answer = await seen(proxy.port, b"bluegreen_preview=" + value)
    assert answer["colour"] == "green"  # live now, not preview
    assert proxy.server.stats.preview_cookies[WRONG_COLOUR] == 1


async def test_trusted_networks_gate_the_link_and_the_cookie(
    proxy: RunningProxy, make_table: TableFactory
) -> None:
    use_policy(proxy, make_table, token=TOKEN, trusted_networks=LOOPBACK)
    value = await link_cookie(proxy.port)
    use_policy(proxy, make_table, token=TOKEN, trusted_networks=ELSEWHERE)
    status, fields, _ = await get(proxy.port, LINK + b"?token=t0k")
    assert status == b"HTTP/1.1 403 Forbidden"
    assert b"set-cookie" not in fields
    answer = await seen(proxy.port, b"bluegreen_preview=" + value)
    assert answer["colour"] == "blue"
    assert proxy.server.stats.preview_cookies["untrusted_peer"] == 1


@pytest.mark.parametrize("token", [b"", b"t0", b"t0kk", b"T0K", b"t0k%00"])
async def test_wrong_token_is_refused(
    proxy: RunningProxy, make_table: TableFactory, colours: dict[str, ColourApp], token: bytes
) -> None:
    use_policy(proxy, make_table, token=TOKEN)
    status, fields, _ = await get(proxy.port, LINK + b"?token=" + token)
    assert status == b"HTTP/1.1 403 Forbidden"
    assert b"set-cookie" not in fields
    assert nothing_reached_a_colour(colours)
    assert proxy.server.stats.preview_links["refused"] == 1


async def test_without_a_token_the_link_needs_none(
    proxy: RunningProxy, make_table: TableFactory
) -> None:
    use_policy(proxy, make_table)
    value = await link_cookie(proxy.port, token=b"")
    assert (await seen(proxy.port, b"bluegreen_preview=" + value))["colour"] == "green"


@pytest.mark.parametrize(
    "next_",
    [
        b"https://evil.example/",
        b"//evil.example/",
        b"%2F%2Fevil.example",
        b"/%5Cevil.example",
        b"/\\evil.example",
        b"evil.example",
        b"javascript:alert(1)",
        b"/a%0d%0aSet-Cookie:%20x=1",
    ],
)
async def test_open_redirects_are_refused(
    proxy: RunningProxy, make_table: TableFactory, next_: bytes
) -> None:
    use_policy(proxy, make_table, token=TOKEN)
    status, fields, body = await get(proxy.port, LINK + b"?token=t0k&next=" + next_)
    assert status == b"HTTP/1.1 400 Bad Request", (next_, status)
    assert b"location" not in fields
    assert b"set-cookie" not in fields
    assert b"same site" in body or b"this site" in body


async def test_off_clears_the_cookie_for_anyone(
    proxy: RunningProxy, make_table: TableFactory
) -> None:
    use_policy(proxy, make_table, token=TOKEN, trusted_networks=ELSEWHERE)
    status, fields, _ = await get(proxy.port, LINK + b"/off?next=/shop")
    assert status == b"HTTP/1.1 303 See Other"
    assert fields[b"location"] == b"/shop"
    assert fields[b"set-cookie"].startswith(b"bluegreen_preview=; Path=/; Max-Age=0;")


async def test_secure_when_a_trusted_balancer_says_https(
    proxy: RunningProxy, make_table: TableFactory
) -> None:
    table = make_table(preview=PreviewPolicy(token=TOKEN))
    proxy.server.swap_table(dataclasses.replace(table, forwarded_trusted=LOOPBACK))
    _, fields, _ = await get(proxy.port, LINK + b"?token=t0k", b"X-Forwarded-Proto: https\r\n")
    assert fields[b"set-cookie"].endswith(b"; Secure")
    # From a peer that is not trusted, its X-Forwarded-Proto says nothing.
    proxy.server.swap_table(table)
    _, fields, _ = await get(proxy.port, LINK + b"?token=t0k", b"X-Forwarded-Proto: https\r\n")
    assert not fields[b"set-cookie"].endswith(b"; Secure")


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (b"POST " + LINK + b"?token=t0k HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"405"),
        (b"GET " + LINK + b"/other HTTP/1.1\r\n\r\n", b"404"),
        (b"GET " + LINK + b"?token=t0k HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", b"400"),
        (b"GET " + LINK + b"?token=t0k&next=/%FF HTTP/1.1\r\n\r\n", b"400"),
    ],
)
async def test_other_requests_under_the_path_are_answered_by_the_proxy(
    proxy: RunningProxy,
    make_table: TableFactory,
    colours: dict[str, ColourApp],
    request_: bytes,
    status: bytes,
) -> None:
    use_policy(proxy, make_table, token=TOKEN)
    line, _, rest = request_.partition(b"\r\n")
    raw = await raw_exchange(
        proxy.port, line + b"\r\nHost: app.example\r\nConnection: close\r\n" + rest
    )
    assert raw.startswith(b"HTTP/1.1 " + status), raw
    assert nothing_reached_a_colour(colours)


async def test_a_longer_path_is_not_the_link(
    proxy: RunningProxy, colours: dict[str, ColourApp]
) -> None:
    status, _, body = await get(proxy.port, LINK + b"er")
    assert status == b"HTTP/1.1 200 OK"
    assert body == b"hello from blue\n"


async def test_head_gets_no_body_and_the_connection_stays_open(
    proxy: RunningProxy, make_table: TableFactory
) -> None:
    use_policy(proxy, make_table, token=TOKEN)
    # Pipelined: a request to blue, the link (HEAD), then blue again, on one connection. The
    # answers come in order and the link's does not close the connection.
    raw = await raw_exchange(
        proxy.port,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        b"HEAD " + LINK + b"?token=t0k HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    first, rest = raw.split(b"hello from blue\n", 1)
    assert first.startswith(b"HTTP/1.1 200 OK")
    assert rest.startswith(b"HTTP/1.1 303 See Other\r\n")
    link_head, _, last = rest.partition(b"\r\n\r\n")
    assert b"Connection: close" not in link_head
    assert last.startswith(b"HTTP/1.1 200 OK") and last.endswith(b"hello from blue\n")


def test_cookie_check_outcomes() -> None:
    value = issue(KEY, "green", expires_at=2000)
    assert check(KEY, value, "green", now=1999) == VALID
    assert check(KEY, value, "green", now=2000) == EXPIRED
    assert check(KEY, value, "blue", now=0) == WRONG_COLOUR
    assert check(KEY, value, None, now=0) == WRONG_COLOUR
    assert check(derive_key(None), value, "green", now=0) == FORGED
    extended = value.replace(b".2000.", b".9000.")
    assert check(KEY, extended, "green", now=0) == FORGED
    assert check(KEY, b"green.x.sig", "green", now=0) == MALFORMED
    assert check(KEY, b"a.b.c.d", "green", now=0) == MALFORMED


@pytest.mark.parametrize(
    ("field", "kept", "found"),
    [
        (b"a=1", b"a=1", None),
        (b"bluegreen_preview=v", b"", b"v"),
        (b"a=1; bluegreen_preview=v; b=2", b"a=1; b=2", b"v"),
        (b"bluegreen_preview=v; b=2", b"b=2", b"v"),
        (b"a=1;bluegreen_preview=v", b"a=1", b"v"),
        (b"xbluegreen_preview=v; a=1", b"xbluegreen_preview=v; a=1", None),
        (b"bluegreen_preview=old; bluegreen_preview=new", b"", b"new"),
    ],
)
def test_remove_cookie(field: bytes, kept: bytes, found: bytes | None) -> None:
    assert remove_cookie(field, b"bluegreen_preview") == (kept, found)


def test_status_shows_the_link_never_the_token(make_table: TableFactory) -> None:
    state = ControlState("file test.yaml")
    state.accepted(make_table(preview=PreviewPolicy(token_from_file=b"s3cr3t")))
    document = state.snapshot()
    assert document["preview_link"] == {
        "on": "/.well-known/bluegreen/preview?token=<preview.token>&next=/",
        "off": "/.well-known/bluegreen/preview/off",
        "cookie": "bluegreen_preview",
        "colour": "green",
    }
    assert "s3cr3t" not in json.dumps(document)
