"""The exchange's pure decisions (proxy/framing.py) and the read gate (proxy/flow.py), as tables."""

from __future__ import annotations

from typing import get_args

import pytest

from proxy.flow import PEER_BACKED_UP, PENDING_BODY, PIPELINE, ReadGate
from proxy.framing import (
    METRIC_KIND,
    FailureKind,
    failure_status,
    may_retry,
    response_framing,
    sent_nothing,
)
from tests.support.memory_transport import MemoryTransport

# upstream length, no body, HEAD, HTTP/1.0 client, keep-alive asked, request complete, draining
#   -> (Content-Length sent, chunked, keep-alive)
FRAMING = [
    pytest.param(100, False, False, False, True, True, False, (100, False, True), id="length"),
    pytest.param(None, False, False, False, True, True, False, (None, True, True), id="chunked"),
    pytest.param(None, False, False, True, True, True, False, (None, False, False), id="1.0"),
    pytest.param(100, False, False, True, True, True, False, (100, False, True), id="1.0-len"),
    pytest.param(100, True, True, False, True, True, False, (100, False, True), id="HEAD"),
    pytest.param(None, True, True, False, True, True, False, (None, False, True), id="HEAD-nolen"),
    pytest.param(100, True, False, False, True, True, False, (None, False, True), id="304"),
    pytest.param(None, True, False, True, True, True, False, (None, False, True), id="204-1.0"),
    pytest.param(100, False, False, False, False, True, False, (100, False, False), id="close"),
    pytest.param(100, False, False, False, True, False, False, (100, False, False), id="early"),
    pytest.param(None, False, False, False, True, False, False, (None, True, False), id="early-c"),
    pytest.param(100, False, False, False, True, True, True, (100, False, False), id="draining"),
    pytest.param(None, True, False, False, True, True, True, (None, False, False), id="drain-304"),
]


@pytest.mark.parametrize(
    ("length", "no_body", "head", "http10", "keep_alive", "complete", "draining", "expected"),
    FRAMING,
)
def test_response_framing(
    length: int | None,
    no_body: bool,
    head: bool,
    http10: bool,
    keep_alive: bool,
    complete: bool,
    draining: bool,
    expected: tuple[int | None, bool, bool],
) -> None:
    framing = response_framing(
        length,
        no_body=no_body,
        request_is_head=head,
        client_http10=http10,
        keep_alive=keep_alive,
        request_complete=complete,
        draining=draining,
    )
    assert framing == expected


# kind, retries so far, seconds since the head, response seen, has body, method -> retry?
RETRIES = [
    pytest.param("connect", 0, 0.0, False, True, b"POST", True, id="refused-POST"),
    pytest.param("connect", 1, 0.0, False, False, b"GET", True, id="refused-again"),
    pytest.param("connect", 2, 0.0, False, False, b"GET", False, id="count-spent"),
    pytest.param("connect", 0, 10.0, False, False, b"GET", False, id="time-spent"),
    pytest.param("closed", 0, 0.0, False, False, b"GET", True, id="closed-GET"),
    pytest.param("reset", 0, 0.0, False, False, b"DELETE", True, id="reset-DELETE"),
    pytest.param("closed", 0, 0.0, False, False, b"POST", False, id="closed-POST"),
    pytest.param("closed", 0, 0.0, False, False, b"PATCH", False, id="closed-PATCH"),
    pytest.param("closed", 0, 0.0, False, True, b"PUT", False, id="closed-body"),
    pytest.param("reset", 0, 0.0, True, False, b"GET", False, id="after-response"),
    pytest.param("connect_timeout", 0, 0.0, False, False, b"GET", False, id="connect-slow"),
    pytest.param("read_timeout", 0, 0.0, False, False, b"GET", False, id="read-stall"),
    pytest.param("protocol", 0, 0.0, False, False, b"GET", False, id="bad-response"),
    pytest.param("overload", 0, 0.0, False, False, b"GET", False, id="overload"),
]


@pytest.mark.parametrize(
    ("kind", "retries", "elapsed", "seen", "has_body", "method", "expected"), RETRIES
)
def test_may_retry(
    kind: FailureKind,
    retries: int,
    elapsed: float,
    seen: bool,
    has_body: bool,
    method: bytes,
    expected: bool,
) -> None:
    decision = may_retry(
        kind,
        retries=retries,
        max_retries=2,
        elapsed=elapsed,
        retry_timeout=10.0,
        response_seen=seen,
        has_body=has_body,
        method=method,
    )
    assert decision is expected


# kind -> metric label, status to the client, nothing sent before the failure
KINDS = [
    ("connect", "connect", 502, True),
    ("connect_timeout", "timeout", 504, True),
    ("read_timeout", "timeout", 504, False),
    ("closed", "closed", 502, False),
    ("reset", "reset", 502, False),
    ("protocol", "protocol", 502, False),
    ("overload", "overload", 502, False),
]


@pytest.mark.parametrize(("kind", "label", "status", "nothing_sent"), KINDS)
def test_failure_kinds(kind: FailureKind, label: str, status: int, nothing_sent: bool) -> None:
    assert METRIC_KIND[kind] == label
    assert failure_status(kind) == status
    assert sent_nothing(kind) is nothing_sent


def test_every_failure_kind_has_a_label_and_a_row() -> None:
    kinds = set(get_args(FailureKind))
    assert set(METRIC_KIND) == kinds
    assert {row[0] for row in KINDS} == kinds


def test_the_read_gate_resumes_only_after_its_last_reason() -> None:
    transport = MemoryTransport()
    gate = ReadGate()
    gate.open(transport)
    gate.block(PENDING_BODY)
    gate.block(PEER_BACKED_UP)
    assert not transport.reading and gate.blocked
    gate.unblock(PENDING_BODY)
    assert not transport.reading  # the peer is still backed up
    gate.unblock(PIPELINE)  # never set: changes nothing
    assert not transport.reading
    gate.unblock(PEER_BACKED_UP)
    assert transport.reading and not gate.blocked


def test_a_closed_read_gate_keeps_its_reasons_but_leaves_the_transport_alone() -> None:
    transport = MemoryTransport()
    gate = ReadGate()
    gate.open(transport)
    gate.block(PIPELINE)
    gate.close()
    transport.reading = True  # whatever the transport does from now on is not the gate's
    gate.unblock(PIPELINE)
    gate.block(PENDING_BODY)
    assert transport.reading
    assert gate.blocked
