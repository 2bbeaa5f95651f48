"""The access log's formats, filters and its bounded, never-blocking queue over a real pipe."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.access_log import (
    CLF,
    JSON,
    PROXY,
    UPSTREAM,
    AccessLog,
    AccessLogSettings,
    AccessRecord,
    format_clf,
    format_json,
    refused_headers,
)
from proxy.access_log import _Memo as Memo
from proxy.request_id import (
    MAX_REQUEST_ID_LENGTH,
    new_request_id,
    new_traceparent,
    trace_id_of,
    valid_request_id,
)

# 2026-12-02T10:12:50.123Z, the head arrived 250 ms before the response ended.
ENDED = 1796206370.373
DURATION = 0.25


def record(**changes: object) -> AccessRecord:
    fields: dict[str, object] = {
        "ended": ENDED,
        "duration": DURATION,
        "client": "203.0.113.7",
        "method": b"GET",
        "target": b"/cart?item=42",
        "version": "1.1",
        "status": 200,
        "bytes_in": 3,
        "bytes_out": 512,
        "ttfb": 0.002,
        "colour": "blue",
        "route": "live",
        "upstream": "127.0.0.1:8081",
        "retries": 1,
        "request_id": b"4bf92f3577b34da6a3ce929d",
        "user_agent": b"curl/8.5",
        "referer": b"http://shop/",
        "ended_by": UPSTREAM,
        "reason": None,
        "trace_id": b"4bf92f3577b34da6a3ce929d0e0e4736",
        "headers": (("x-tenant", b"acme"), ("x-absent", None)),
    }
    fields.update(changes)
    return AccessRecord(**fields)  # type: ignore[arg-type]


def test_json_line_holds_every_field() -> None:
    line = format_json(record(), AccessLogSettings(format=JSON), Memo())
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2026-12-02T10:12:50.123Z",
        "client": "203.0.113.7",
        "method": "GET",
        "target": "/cart?item=42",
        "protocol": "HTTP/1.1",
        "status": 200,
        "bytes_in": 3,
        "bytes_out": 512,
        "duration": 0.25,
        "upstream_ttfb": 0.002,
        "colour": "blue",
        "route": "live",
        "upstream": "127.0.0.1:8081",
        "retries": 1,
        "request_id": "4bf92f3577b34da6a3ce929d",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "user_agent": "curl/8.5",
        "referer": "http://shop/",
        "ended_by": "upstream",
        "reason": None,
        "headers": {"x-tenant": "acme", "x-absent": None},
    }


def test_json_escapes_hostile_bytes_and_shows_unknowns_as_null() -> None:
    hostile = b'/"}\n\x00\\\xff'
    line = format_json(
        record(
            target=hostile,
            user_agent=b'x"\r\ny',
            ttfb=None,
            colour=None,
            route=None,
            upstream=None,
            request_id=None,
            trace_id=None,
            ended_by=PROXY,
            reason="bad request: missing Host header",
            headers=(),
        ),
        AccessLogSettings(format=JSON),
        Memo(),
    )
    assert line.isascii() and "\n" not in line
    parsed = json.loads(line)
    assert parsed["target"] == hostile.decode("latin-1")
    assert parsed["user_agent"] == 'x"\r\ny'
    for key in ("upstream_ttfb", "colour", "route", "upstream", "request_id", "trace_id"):
        assert parsed[key] is None, key
    assert parsed["ended_by"] == "proxy"
    assert parsed["reason"] == "bad request: missing Host header"
    assert "headers" not in parsed


@pytest.mark.parametrize(
    ("seconds", "six", "three"),
    [
        (0.0, "0.000000", "0.000"),
        (0.000075, "0.000075", "0.000"),
        (0.0004, "0.000400", "0.000"),
        (0.25, "0.250000", "0.250"),
        (0.9999996, "1.000000", "1.000"),
        (1.0, "1.000000", "1.000"),
        (12.3456789, "12.345679", "12.346"),
        (3600.5, "3600.500000", "3600.500"),
    ],
)
def test_durations_are_written_with_fixed_decimals(seconds: float, six: str, three: str) -> None:
    line = json.loads(
        format_json(record(duration=seconds, ttfb=seconds), AccessLogSettings(format=JSON), Memo())
    )
    assert (line["duration"], line["upstream_ttfb"]) == (float(six), float(six))
    assert f'"duration":{six},' in format_json(
        record(duration=seconds), AccessLogSettings(format=JSON), Memo()
    )
    clf = format_clf(record(duration=seconds / 1000), AccessLogSettings(format=CLF), Memo())
    assert f" duration_ms={three} " in clf


def test_the_memo_of_repeated_values_is_bounded_and_never_changes_a_line() -> None:
    memo = Memo()
    settings = AccessLogSettings(format=JSON)
    # More distinct user agents and clients than the memo keeps, then the first ones again:
    # every line says what its own record holds.
    agents = [b'agent "%d"\xff' % n for n in range(3000)]
    for n, agent in enumerate(agents + agents[:10]):
        client = f"198.51.100.{n % 2000}"
        line = json.loads(format_json(record(user_agent=agent, client=client), settings, memo))
        assert line["user_agent"] == agent.decode("latin-1")
        assert line["client"] == client
    line = json.loads(format_json(record(colour='x"y', method=b"PURGE"), settings, memo))
    assert (line["colour"], line["method"]) == ('x"y', "PURGE")


def test_timestamps_follow_the_clock_across_milliseconds_and_seconds() -> None:
    memo = Memo()
    settings = AccessLogSettings(format=JSON)
    stamps = [
        json.loads(format_json(record(ended=ENDED + offset), settings, memo))["time"]
        for offset in (0.0, 0.0004, 0.0015, 0.8775, 0.8785, 1.0005, -0.1995)
    ]
    assert stamps == [
        "2026-12-02T10:12:50.123Z",
        "2026-12-02T10:12:50.123Z",
        "2026-12-02T10:12:50.124Z",
        "2026-12-02T10:12:51.000Z",
        "2026-12-02T10:12:51.001Z",
        "2026-12-02T10:12:51.123Z",
        "2026-12-02T10:12:49.923Z",
    ]


CLF_LINE = re.compile(
    r'(?P<client>\S+) - - \[(?P<time>[^\]]+)\] "(?P<method>\S+) (?P<target>\S+) (?P<proto>[^"]+)" '
    r'(?P<status>\d{3}) (?P<bytes>\d+|-) "(?P<referer>[^"]*)" "(?P<ua>(?:[^"\\]|\\.)*)"'
    r'(?P<headers>(?: "[^"]*")*) (?P<pairs>.*)'
)


def test_clf_line_is_combined_log_format_plus_bluegreen_fields() -> None:
    line = format_clf(record(), AccessLogSettings(format=CLF), Memo())
    match = CLF_LINE.fullmatch(line)
    assert match is not None, line
    assert match["client"] == "203.0.113.7"
    assert match["time"] == "02/Dec/2026:10:12:50 +0000"
    assert (match["method"], match["target"], match["proto"]) == (
        "GET",
        "/cart?item=42",
        "HTTP/1.1",
    )
    assert (match["status"], match["bytes"]) == ("200", "512")
    assert (match["referer"], match["ua"]) == ("http://shop/", "curl/8.5")
    assert match["headers"] == ' "acme" "-"'
    pairs = dict(pair.split("=", 1) for pair in match["pairs"].split(" "))
    assert pairs == {
        "colour": "blue",
        "route": "live",
        "upstream": "127.0.0.1:8081",
        "duration_ms": "250.000",
        "ttfb_ms": "2.000",
        "bytes_in": "3",
        "retries": "1",
        "request_id": "4bf92f3577b34da6a3ce929d",
        "ended_by": "upstream",
        "reason": '"-"',
    }


def test_clf_escapes_quotes_and_control_bytes_like_apache() -> None:
    line = format_clf(
        record(user_agent=b'a"b\\c\n\xff', bytes_out=0), AccessLogSettings(format=CLF), Memo()
    )
    assert '"a\\"b\\\\c\\x0a\\xff"' in line
    assert " 200 - " in line  # no body: "-", as Apache writes it
    assert "\n" not in line


@pytest.mark.parametrize("fmt", [format_json, format_clf])
def test_drop_query_writes_the_path_only(fmt: object) -> None:
    assert callable(fmt)
    settings = AccessLogSettings(format=JSON, drop_query=True)
    line = fmt(record(), settings, Memo())
    assert "/cart" in line and "item=42" not in line


@pytest.mark.parametrize(
    ("min_status", "min_duration", "status", "seconds", "kept"),
    [
        (0, 0.0, 200, 0.001, True),  # no filter: everything
        (500, 0.0, 200, 9.0, False),
        (500, 0.0, 502, 0.001, True),
        (0, 1.0, 200, 0.5, False),
        (0, 1.0, 200, 1.0, True),
        (400, 1.0, 200, 2.0, True),  # either filter keeps a line
        (400, 1.0, 404, 0.1, True),
        (400, 1.0, 200, 0.1, False),
    ],
)
def test_filters_keep_errors_or_slow_requests(
    min_status: int, min_duration: float, status: int, seconds: float, kept: bool
) -> None:
    settings = AccessLogSettings(format=JSON, min_status=min_status, min_duration=min_duration)
    assert settings.keeps(status, seconds) is kept


def test_credentials_and_the_preview_header_are_refused() -> None:
    names = ["X-Tenant", "Authorization", "cookie", "Proxy-Authorization", "X-Bluegreen-Preview"]
    assert refused_headers(names, "x-bluegreen-preview") == names[1:]
    assert refused_headers(["x-token"], "X-Token") == ["x-token"]
    assert refused_headers(["x-tenant", "user-agent"], "x-bluegreen-preview") == []


def test_settings_refuse_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="use one of off, json, clf"):
        AccessLogSettings(format="yaml")


# --- the queue and stdout -------------------------------------------------------------------


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        with contextlib.suppress(OSError):
            os.close(fd)


def read_available(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


async def wait_for(condition: object, timeout: float = 10.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_lines_reach_the_pipe_in_order_and_stdout_itself_stays_blocking(
    pipe: tuple[int, int],
) -> None:
    read_fd, write_fd = pipe
    access_log = AccessLog(asyncio.get_running_loop(), AccessLogSettings(format=JSON), fd=write_fd)
    for n in range(50):
        access_log.log(record(status=200 + n))
    assert access_log.pending == 50  # nothing formatted or written on the request path
    await wait_for(lambda: access_log.written == 50)
    lines = read_available(read_fd).splitlines()
    assert [json.loads(line)["status"] for line in lines] == list(range(200, 250))
    # The log writes through a description of its own: the shared one (stderr may be the same
    # pipe) is still blocking for every other writer.
    assert os.get_blocking(write_fd)
    access_log.close()


async def test_a_full_stdout_drops_and_counts_but_never_blocks(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    loop = asyncio.get_running_loop()
    access_log = AccessLog(
        loop, AccessLogSettings(format=JSON, buffer_size=100), fd=write_fd, max_unwritten=4096
    )
    # Nobody reads the pipe (a stuck log collector): it fills, then the queue fills.
    total = 0
    slowest = 0.0
    for _ in range(200):
        for _ in range(100):
            started = time.perf_counter()
            access_log.log(record())
            slowest = max(slowest, time.perf_counter() - started)
            total += 1
        await asyncio.sleep(0)  # let the loop drain what it can
    assert access_log.dropped > 0
    assert access_log.pending <= 100
    assert slowest < 0.05, f"a log call took {slowest * 1000:.1f} ms"
    # The collector catches up: the rest of the queue is written as the pipe has room.
    received = bytearray()
    deadline = time.monotonic() + 10
    while access_log.pending or access_log.unwritten:
        assert time.monotonic() < deadline, "the queue was not written out"
        received += read_available(read_fd)
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.01)
    received += read_available(read_fd)
    lines = bytes(received).splitlines()
    for line in lines:
        json.loads(line)  # no line is cut or interleaved
    # Nothing is lost silently: every record was written or counted as dropped.
    assert len(lines) + access_log.dropped == total
    access_log.close()


async def test_close_writes_what_is_queued(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    access_log = AccessLog(asyncio.get_running_loop(), AccessLogSettings(format=CLF), fd=write_fd)
    for _ in range(10):
        access_log.log(record())
    access_log.close()
    assert read_available(read_fd).count(b"\n") == 10
    access_log.log(record())
    assert access_log.dropped == 1  # after close, counted, not written


async def test_a_closed_stdout_stops_the_log_without_errors(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    os.close(read_fd)  # the reader is gone: writes fail with EPIPE
    access_log = AccessLog(asyncio.get_running_loop(), AccessLogSettings(format=JSON), fd=write_fd)
    access_log.log(record())
    await wait_for(lambda: access_log.dropped == 1)
    access_log.log(record())
    assert access_log.dropped == 2


async def test_a_regular_file_is_written_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        access_log = AccessLog(asyncio.get_running_loop(), AccessLogSettings(format=JSON), fd=fd)
        access_log.log(record())
        await wait_for(lambda: access_log.written == 1)
        access_log.close()
    finally:
        os.close(fd)
    assert json.loads(path.read_text())["status"] == 200


# --- request IDs and trace context ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (b"4bf92f3577b34da6a3ce929d", True),
        (b"f81d4fae-7dec-11d0-a765-00a0c91e6bf6", True),  # a UUID
        (b"Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8", True),
        (b"a" * MAX_REQUEST_ID_LENGTH, True),
        (b"a" * (MAX_REQUEST_ID_LENGTH + 1), False),
        (b"", False),
        (b"has space", False),
        (b'quote"', False),
        (b"back\\slash", False),
        (b"new\nline", False),
        ("caf\u00e9".encode(), False),
    ],
)
def test_client_request_ids_are_kept_only_when_short_and_safe(value: bytes, valid: bool) -> None:
    assert valid_request_id(value) is valid


def test_made_request_ids_are_compact_valid_and_distinct() -> None:
    ids = {new_request_id() for _ in range(10000)}
    assert len(ids) == 10000
    assert all(len(i) == 24 and valid_request_id(i) for i in ids)


def test_started_traces_are_valid_traceparents() -> None:
    value = new_traceparent()
    assert re.fullmatch(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-01", value)
    assert trace_id_of(value) == value[3:35]
    assert trace_id_of(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") == (
        b"4bf92f3577b34da6a3ce929d0e0e4736"
    )
    assert trace_id_of(b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01") is None
    assert trace_id_of(b"garbage") is None
