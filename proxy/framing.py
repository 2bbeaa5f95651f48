"""Pure decisions of one exchange: how a response is framed to the client, and when to retry.

No I/O and no state: the exchange (proxy/exchange.py) gathers the facts and acts on the answer,
so each rule can be read in one place and tested as a table (tests/test_framing.py).
"""

from __future__ import annotations

from typing import Final, Literal

# Why an attempt to reach or read a colour failed. The two timeouts are told apart here (a
# colour that never accepts is not one that accepts and then stalls); the metric label
# joins them, see METRIC_KIND.
FailureKind = Literal[
    "connect",  # refused or unreachable: nothing was sent
    "connect_timeout",  # timeout.connect passed before the connection was made
    "read_timeout",  # timeout.read passed with no response byte (or in the middle of one)
    "closed",  # closed by the colour before any byte of a response
    "reset",  # closed or reset in the middle of a response
    "protocol",  # an invalid or oversized response head, or conflicting framing
    "overload",  # pool.maxInflight requests already in flight to the colour
]

# The `kind` label of bluegreen_upstream_errors_total and _retries_total (docs/metrics.md).
METRIC_KIND: Final[dict[FailureKind, str]] = {
    "connect": "connect",
    "connect_timeout": "timeout",
    "read_timeout": "timeout",
    "closed": "closed",
    "reset": "reset",
    "protocol": "protocol",
    "overload": "overload",
}

IDEMPOTENT_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


def failure_status(kind: FailureKind) -> int:
    """The status the client gets when a failure of `kind` ends its request before a response.

    504 when the colour was too slow, 502 when it failed otherwise (503 for overload is the
    proxy's own answer, written before any attempt).
    """
    return 504 if kind in ("connect_timeout", "read_timeout") else 502


def sent_nothing(kind: FailureKind) -> bool:
    """Say whether a failure of `kind` happened before any request byte went out."""
    return kind in ("connect", "connect_timeout")


def may_retry(
    kind: FailureKind,
    *,
    retries: int,
    max_retries: int,
    elapsed: float,
    retry_timeout: float,
    response_seen: bool,
    has_body: bool,
    method: bytes,
) -> bool:
    """Say whether a failed attempt may be made again, within `retry.*` count and time.

    A refused connection sent nothing, so any request may go again: its head and body are
    still pending. A connection closed or reset after the head went out (a pooled one the
    upstream had just closed, or an upstream that died) may have been processed, so only an
    idempotent request without a body (which is streamed, not kept) is sent again, and only
    while no byte of a response has been seen. Timeouts are never retried: the colour is slow,
    and a second attempt would double the wait.
    """
    if retries >= max_retries or response_seen or elapsed >= retry_timeout:
        return False
    if kind == "connect":
        return True
    return kind in ("closed", "reset") and not has_body and method in IDEMPOTENT_METHODS


# What `response_framing` decides: the Content-Length to send (None for none), whether the body
# is chunked to the client, and whether the client connection stays open after the response.
# A plain tuple: it is built once per response on the hot path.
Framing = tuple[int | None, bool, bool]


def response_framing(
    upstream_length: int | None,
    *,
    no_body: bool,
    request_is_head: bool,
    client_http10: bool,
    keep_alive: bool,
    request_complete: bool,
    draining: bool,
) -> Framing:
    """Decide how the response is framed to the client and whether its connection stays open.

    The proxy always frames a response itself, never passing the upstream's framing through:
    a known length stays a Content-Length; a chunked or close-delimited body is chunked to an
    HTTP/1.1 client and close-delimited to an HTTP/1.0 one, which does not know chunked. A
    response without a body has no length, except to HEAD, where the upstream's length
    describes the GET body and is kept.

    `keep_alive` is what the request asked for; an upgrade request never asks (its connection
    becomes a tunnel, or closes after a refusal, since the client may have sent tunnel bytes
    already). The connection also closes when the upstream answered before the whole request
    body arrived (the rest is never read), while the proxy drains, and after a close-delimited
    body.
    """
    if draining or not request_complete:
        keep_alive = False
    if no_body:
        return (upstream_length if request_is_head else None), False, keep_alive
    if upstream_length is not None:
        return upstream_length, False, keep_alive
    if client_http10:
        return None, False, False
    return None, True, keep_alive
