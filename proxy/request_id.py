"""Request IDs and W3C trace context: made per request, so they are cheap.

A request ID ties the access log line, the process log lines and the colour's own logs of one
request together. A client (or a load balancer in front) may send its own `X-Request-Id`; it is
kept when it is short and made of safe characters, so that it can be written into a log line
as it is, and replaced otherwise.

IDs are cut from a batch of hex digits of `os.urandom`, refilled every 256 IDs: one slice per
request. Formatting a fresh random number per request (`b"%024x" % getrandbits(96)`) costs
about 2,700 instructions in the compiled proxy and `str(uuid.uuid4())` far more; an ID cut
from the batch costs about 350 under callgrind, half of it the batch's share of the hex
conversion (benchmarks/request_ids.py times them). The batch is dropped in a forked child, so
that two processes never hand out the same IDs.
"""

from __future__ import annotations

import os
import re
from binascii import hexlify
from typing import Final

REQUEST_ID_HEADER = b"x-request-id"
# Longer than any ID scheme in use (a UUID is 36, an AWS trace header about 60), short enough
# that a client cannot make every log line about its requests large.
MAX_REQUEST_ID_LENGTH = 128
# Letters, digits and the punctuation of common ID schemes (UUIDs, base64url, Amazon's
# `Root=1-...;Parent=...`); no space, quote, backslash or control byte, so the value needs no
# escaping in logfmt, JSON or the combined log format.
_SAFE_ID = re.compile(rb"[A-Za-z0-9._:;=+/@-]{1,%d}" % MAX_REQUEST_ID_LENGTH)
# version 00: trace-id (32 hex, not all zero), parent-id (16 hex, not all zero), flags.
_TRACEPARENT = re.compile(rb"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_ZERO_TRACE_ID = b"0" * 32
_ZERO_SPAN_ID = b"0" * 16

ID_DIGITS: Final = 24  # hex digits of a request ID: 96 random bits
_BATCH_DIGITS: Final = ID_DIGITS * 256


class _HexBatch:
    """Random hex digits from the OS, handed out in slices."""

    __slots__ = ("digits", "position")

    def __init__(self) -> None:
        self.digits = b""
        self.position = 0

    def take(self, count: int) -> bytes:
        """Return `count` fresh random hex digits (lower case)."""
        position = self.position
        end = position + count
        if end > len(self.digits):
            self.digits = hexlify(os.urandom(_BATCH_DIGITS // 2))
            position = 0
            end = count
        self.position = end
        return self.digits[position:end]

    def reset(self) -> None:
        """Forget the batch (in a forked child, which must not repeat its parent's IDs)."""
        self.digits = b""
        self.position = 0


_BATCH: Final = _HexBatch()
os.register_at_fork(after_in_child=_BATCH.reset)


def new_request_id() -> bytes:
    """Return a fresh request ID: 24 lower-case hex digits (96 random bits)."""
    return _BATCH.take(ID_DIGITS)


def valid_request_id(value: bytes) -> bool:
    """Say whether a client-sent request ID may be kept: 1 to 128 safe characters."""
    return _SAFE_ID.fullmatch(value) is not None


def new_traceparent() -> bytes:
    """Return a `traceparent` value that starts a new, sampled trace at this proxy.

    The proxy's span ID is the parent ID the colour sees, so the colour's spans hang under the
    proxy hop. The sampled flag is set: a trace started here exists to be recorded.
    """
    trace_id = _BATCH.take(32)
    span_id = _BATCH.take(16)
    # The all-zero IDs are invalid; 2**-128 and 2**-64 odds, but a trace must never be invalid.
    if trace_id == _ZERO_TRACE_ID:
        trace_id = b"0" * 31 + b"1"
    if span_id == _ZERO_SPAN_ID:
        span_id = b"0" * 15 + b"1"
    return b"00-" + trace_id + b"-" + span_id + b"-01"


def trace_id_of(traceparent: bytes) -> bytes | None:
    """Return the trace ID of a valid `traceparent` value, or None for an invalid one."""
    match = _TRACEPARENT.fullmatch(traceparent.strip())
    if match is None or match.group(1) == _ZERO_TRACE_ID:
        return None
    return match.group(1)
