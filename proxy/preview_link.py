"""The preview link: a URL on the proxy port that turns preview on (or off) for one browser.

`GET <preview.path>?token=T&next=/path` answers 303 to `next` with the signed preview cookie
(proxy/preview_cookie.py); `GET <preview.path>/off` clears it. A browser or a phone cannot set
the preview header without a plug-in; this gives testers the same access from a link, gated by
the same token and trusted networks as the header. Requests under the path are answered here and
never reach a colour.

Pure: the caller passes the request and the time, and writes the bytes returned.
"""

from __future__ import annotations

import hmac
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from proxy.headers import Header, simple_response
from proxy.preview_cookie import LINK_INVALID as INVALID
from proxy.preview_cookie import LINK_OFF as OFF
from proxy.preview_cookie import LINK_ON as ON
from proxy.preview_cookie import LINK_REFUSED as REFUSED
from proxy.preview_cookie import forwarded_https, issue
from proxy.routing import RoutingTable

_MAX_NEXT: Final = 2048
_NEXT_HINT: Final = "next must be a path on this site, such as /cart?x=1"


@dataclass(frozen=True, slots=True)
class LinkAnswer:
    """The proxy's own answer to a request under the preview path."""

    status: int
    response: bytes  # the whole response, ready for the transport
    action: str  # ON, OFF, REFUSED or INVALID


def is_link(target: bytes, path: bytes) -> bool:
    """Say whether a request target lies under the preview path (the path itself or below it)."""
    if not target.startswith(path):
        return False
    rest = target[len(path) : len(path) + 1]
    return rest in (b"", b"/", b"?")


def answer_link(
    method: bytes,
    target: bytes,
    headers: Sequence[Header],
    table: RoutingTable,
    *,
    peer_ip: str | None,
    trusted_peer: bool,
    keep_alive: bool,
    now: float,
    request_id: bytes | None = None,
) -> LinkAnswer:
    """Answer a request whose target `is_link`: set or clear the cookie, or say why not.

    `request_id` goes back in X-Request-Id, as on every answer the proxy makes itself.
    """
    policy = table.preview
    close = not keep_alive
    path_bytes, _, query_bytes = target.partition(b"?")
    endpoint = path_bytes[len(policy.path_bytes) :]
    if endpoint not in (b"", b"/", b"/off"):
        return _text(
            method,
            404,
            INVALID,
            "bluegreen: no such preview link",
            close=close,
            request_id=request_id,
        )
    if method not in (b"GET", b"HEAD"):
        return _text(
            method,
            405,
            INVALID,
            "bluegreen: the preview link takes GET",
            close=close,
            request_id=request_id,
            headers=((b"Allow", b"GET, HEAD"),),
        )
    try:
        query = urllib.parse.parse_qs(
            query_bytes.decode("ascii"),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=8,
        )
    except (UnicodeDecodeError, ValueError):
        message = "bluegreen: the preview link's query is invalid"
        return _text(method, 400, INVALID, message, close=close, request_id=request_id)
    next_path = query.get("next", ["/"])[-1]
    if not _same_origin_path(next_path):
        return _text(
            method, 400, INVALID, f"bluegreen: {_NEXT_HINT}", close=close, request_id=request_id
        )
    secure = trusted_peer and forwarded_https(headers)
    if endpoint == b"/off":
        cookie = _set_cookie(policy.cookie_bytes, b"", 0, secure)
        message = "preview off for this browser"
        return _redirect(
            method, OFF, next_path, cookie, message, close=close, request_id=request_id
        )
    token = query.get("token", [""])[-1].encode("utf-8", "replace")
    allowed = policy.secret is None or hmac.compare_digest(token, policy.secret)
    # Both checks always run, so that timing says nothing about which one failed.
    allowed = policy.allows_peer(peer_ip) and allowed
    if not allowed:
        return _text(
            method,
            403,
            REFUSED,
            "bluegreen: preview link refused",
            close=close,
            request_id=request_id,
        )
    idle = table.idle
    if idle is None:
        message = "bluegreen: no colour to preview now (preview is off)"
        return _text(method, 409, INVALID, message, close=close, request_id=request_id)
    ttl = policy.cookie_ttl
    value = issue(policy.cookie_key, idle, now + ttl)
    cookie = _set_cookie(policy.cookie_bytes, value, int(ttl), secure)
    message = f"preview on: this browser sees colour {idle} for {_hours(ttl)}"
    return _redirect(method, ON, next_path, cookie, message, close=close, request_id=request_id)


def _same_origin_path(text: str) -> bool:
    """A path on this site: no scheme, no `//host`, no backslash (browsers read it as `/`)."""
    if not text.startswith("/") or text.startswith(("//", "/\\")) or len(text) > _MAX_NEXT:
        return False
    return all("!" <= char <= "~" and char != "\\" for char in text)


def _set_cookie(name: bytes, value: bytes, max_age: int, secure: bool) -> bytes:
    attributes = b"; Path=/; Max-Age=%d; HttpOnly; SameSite=Lax" % max_age
    return name + b"=" + value + attributes + (b"; Secure" if secure else b"")


def _redirect(
    method: bytes,
    action: str,
    location: str,
    cookie: bytes,
    message: str,
    *,
    close: bool,
    request_id: bytes | None,
) -> LinkAnswer:
    headers = ((b"Location", location.encode("ascii")), (b"Set-Cookie", cookie))
    return _text(method, 303, action, message, close=close, request_id=request_id, headers=headers)


def _text(
    method: bytes,
    status: int,
    action: str,
    message: str,
    *,
    close: bool,
    request_id: bytes | None,
    headers: tuple[Header, ...] = (),
) -> LinkAnswer:
    response = simple_response(
        status,
        message,
        close=close,
        extra_headers=((b"Cache-Control", b"no-store"), *headers),
        request_id=request_id,
    )
    if method == b"HEAD":
        response = response[: response.index(b"\r\n\r\n") + 4]
    return LinkAnswer(status, response, action)


def _hours(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds)}s"
