"""Process log lines: logfmt that a logfmt parser reads, JSON that json reads, repeats limited."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import logfmtkv
import pytest

from controller.log_format import JsonFormatter, LogfmtFormatter, RepeatFilter, utc_timestamp
from tests.support.colours import ColourApp
from tests.support.process import Proxy, config_text

UTC_MILLIS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def make_record(
    msg: str, *args: object, level: int = logging.WARNING, created: float = 1796206370.123
) -> logging.LogRecord:
    record = logging.LogRecord("proxy.exchange", level, __file__, 1, msg, args, None)
    record.created = created
    return record


def parsed_logfmt(line: str) -> dict[str, object]:
    """Parse with a logfmt codec from PyPI, strictly (go-logfmt's rules)."""
    return dict(logfmtkv.parse(line, strict=True))


UPSTREAM_FAILURE = (
    "upstream failure colour=%s upstream=%s kind=%s detail=%r request_id=%s",
    "blue",
    "http://10.0.0.1:80",
    "connect",
    'unreachable: connection "refused"',
    "4bf92f3577b34da6a3ce929d",
)


def test_a_message_with_pairs_becomes_fields_without_python_quotes() -> None:
    record = make_record(*UPSTREAM_FAILURE)
    line = LogfmtFormatter().format(record)
    assert line.startswith("time=2026-12-02T10:12:50.123Z level=warning logger=proxy.exchange ")
    assert parsed_logfmt(line) == {
        "time": "2026-12-02T10:12:50.123Z",
        "level": "warning",
        "logger": "proxy.exchange",
        "msg": "upstream failure",
        "colour": "blue",
        "upstream": "http://10.0.0.1:80",
        "kind": "connect",
        "detail": 'unreachable: connection "refused"',
        "request_id": "4bf92f3577b34da6a3ce929d",
    }
    assert "'" not in line  # %r gave the value, not its Python repr
    document = json.loads(JsonFormatter().format(record))
    assert document["detail"] == 'unreachable: connection "refused"'
    assert document["msg"] == "upstream failure" and document["time"] == "2026-12-02T10:12:50.123Z"


def test_numbers_stay_numbers_in_json_and_words_may_hold_values() -> None:
    record = make_record(
        "draining %d connections count=%d timeout=%gs", 3, 4, 30.0, level=logging.INFO
    )
    # `timeout=%gs` is not a pair (a unit follows): the message is kept whole.
    assert json.loads(JsonFormatter().format(record))["msg"] == (
        "draining 3 connections count=4 timeout=30s"
    )
    record = make_record("probe done colour=%s ms=%.1f ok=%s", "green", 2.25, True)
    document = json.loads(JsonFormatter().format(record))
    assert (document["ms"], document["ok"]) == (2.2, True)
    assert parsed_logfmt(LogfmtFormatter().format(record))["ok"] == "true"


def test_other_messages_are_kept_whole_and_tracebacks_go_into_error() -> None:
    record = make_record("config rejected: %s", "line 3: bad\nvalue")
    line = LogfmtFormatter().format(record)
    assert "\n" not in line
    assert parsed_logfmt(line)["msg"] == "config rejected: line 3: bad\nvalue"
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = make_record("crashed", level=logging.ERROR)
        record.exc_info = sys.exc_info()
    document = json.loads(JsonFormatter().format(record))
    assert "RuntimeError: boom" in document["error"]
    assert "\n" not in LogfmtFormatter().format(record)


def test_timestamps_are_utc_rfc3339_with_milliseconds() -> None:
    assert utc_timestamp(0.0) == "1970-01-01T00:00:00.000Z"
    assert utc_timestamp(1796206370.9999) == "2026-12-02T10:12:50.999Z"


def test_repeats_past_the_burst_are_counted_and_reported_with_the_next_one_shown() -> None:
    repeats = RepeatFilter(burst=3, window=10.0)
    shown = [repeats.filter(make_record(*UPSTREAM_FAILURE, created=100.0 + i)) for i in range(8)]
    assert shown == [True, True, True, False, False, False, False, False]
    other = make_record("rejected request peer=%s", "10.0.0.9", created=105.0)
    assert repeats.filter(other)  # another message has its own budget
    later = make_record(*UPSTREAM_FAILURE, created=111.0)
    assert repeats.filter(later)
    assert getattr(later, "suppressed", 0) == 5
    assert parsed_logfmt(LogfmtFormatter().format(later))["suppressed"] == "5"
    errors = [make_record("fatal", level=logging.ERROR, created=112.0) for _ in range(10)]
    assert all(repeats.filter(record) for record in errors)


@pytest.mark.parametrize("log_format", ["logfmt", "json"])
async def test_bluegreen_run_writes_parseable_lines(
    log_format: str, colours: dict[str, ColourApp], tmp_path: Path
) -> None:
    config = tmp_path / "bluegreen.yaml"
    config.write_text(config_text(colours, "blue"))
    stderr_path = tmp_path / "stderr.log"
    with stderr_path.open("wb") as stderr:
        proxy = Proxy(config, stderr=stderr, global_args=("--log-format", log_format))
        proxy.start()
        try:
            await proxy.wait_ready()
            async with aiohttp.ClientSession() as session, session.get(proxy.url + "/") as answer:
                assert answer.status == 200
        finally:
            assert proxy.stop() == 0
    lines = stderr_path.read_text().splitlines()
    assert len(lines) >= 3, lines
    for line in lines:
        fields = json.loads(line) if log_format == "json" else parsed_logfmt(line)
        assert UTC_MILLIS.fullmatch(str(fields["time"])), line
        assert fields["level"] in ("debug", "info", "warning", "error"), line
        assert fields["logger"] and fields["msg"], line
    assert proxy.process is not None and proxy.process.stdout is not None
    assert proxy.process.stdout.read() == b""  # the access log is off: stdout stays empty


def test_an_unknown_log_format_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "controller.cli", "--log-format", "xml", "status"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and "--log-format" in result.stderr
