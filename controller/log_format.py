"""Process logs a log pipeline parses without a regex: logfmt or JSON lines, UTC timestamps.

Every module logs as before, `log.warning("upstream failure colour=%s kind=%s", ...)`: a few
words, then `key=%s` pairs. The formatters here turn such a record into fields: `time` (UTC,
RFC 3339 with milliseconds), `level`, `logger`, `msg` (the words), then each pair with its
value as text (`%r` gives the plain value, never a Python-quoted one). A message that is not of
that shape is kept whole in `msg`. An exception's traceback goes into `error`.

`RepeatFilter` rate-limits repeated messages (every failed upstream request, every rejected
request): past a burst, records of the same message are dropped and counted, and the next one
let through carries `suppressed=N`. The access log (proxy/access_log.py) is the per-request
record; the process log says what kept happening.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, Final

LOGFMT: Final = "logfmt"
JSON: Final = "json"
FORMATS = (LOGFMT, JSON)

# `key=%s` (any printf conversion) after a space, up to the next space or the end.
_PAIR = re.compile(r" ([A-Za-z_][\w.-]*)=(%[-#0 +]*\d*(?:\.\d+)?[sdirfgeExX])(?= |$)")
_SPEC = re.compile(r"%[-#0 +]*\d*(?:\.\d+)?[sdirfgeExXc%]")
# go-logfmt's rules: quote a value with a space, control character, `=` or `"` (or `null`);
# inside the quotes \\ \" \n \r \t, other control characters as \u00XX.
_LOGFMT_NEEDS_QUOTE = re.compile(r'[\x00-\x20="\x7f]')
_LOGFMT_ESCAPE = re.compile(r'[\x00-\x1f"\\\x7f]')
_LOGFMT_NAMED = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def utc_timestamp(created: float) -> str:
    """`2026-12-03T07:30:00.123Z`: UTC, RFC 3339 with milliseconds."""
    millis = int(created * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000)) + (
        f".{millis % 1000:03d}Z"
    )


def record_fields(record: logging.LogRecord) -> list[tuple[str, object]]:
    """The fields of one record, in order: time, level, logger, msg, the message's pairs."""
    fields: list[tuple[str, object]] = [
        ("time", utc_timestamp(record.created)),
        ("level", record.levelname.lower()),
        ("logger", record.name),
    ]
    fields += _message_fields(record)
    suppressed = getattr(record, "suppressed", 0)
    if suppressed:
        fields.append(("suppressed", suppressed))
    if record.exc_info:
        fields.append(("error", logging.Formatter().formatException(record.exc_info)))
    elif record.exc_text:
        fields.append(("error", record.exc_text))
    return fields


def _message_fields(record: logging.LogRecord) -> list[tuple[str, object]]:
    """`msg` and the `key=%s` pairs of the message, or the whole message when not that shape."""
    template = record.msg
    args = record.args
    if not isinstance(template, str) or not isinstance(args, tuple):
        return [("msg", record.getMessage())]
    first = _PAIR.search(template)
    if first is None:
        return [("msg", record.getMessage())]
    words = template[: first.start()]
    taken = sum(1 for spec in _SPEC.findall(words) if spec != "%%")
    pairs = _PAIR.findall(template, first.start())
    rebuilt = words + "".join(f" {key}={spec}" for key, spec in pairs)
    if rebuilt != template or taken + len(pairs) != len(args):
        return [("msg", record.getMessage())]
    try:
        fields: list[tuple[str, object]] = [("msg", words % args[:taken] if taken else words)]
        for (key, spec), value in zip(pairs, args[taken:], strict=True):
            fields.append((key, _value(spec, value)))
    except (TypeError, ValueError):
        return [("msg", record.getMessage())]
    return fields


def _value(spec: str, value: object) -> object:
    """A pair's value: numbers, booleans and None as they are, the rest as text (`%r` as `%s`)."""
    conversion = spec[-1]
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        if conversion in "dis":
            return value
        if conversion in "fgeE":
            return float(spec % (value,))
    if conversion == "r":
        spec = spec[:-1] + "s"
    return spec % (value,)


def _logfmt_value(value: object) -> str:
    """A value as go-logfmt writes it: bare when it can be, else quoted with short escapes."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if text != "null" and _LOGFMT_NEEDS_QUOTE.search(text) is None:
        return text
    return '"' + _LOGFMT_ESCAPE.sub(_logfmt_escape, text) + '"'


def _logfmt_escape(match: re.Match[str]) -> str:
    char = match.group()
    return _LOGFMT_NAMED.get(char) or f"\\u{ord(char):04x}"


class LogfmtFormatter(logging.Formatter):
    """`time=... level=info logger=proxy.exchange msg="upstream failure" colour=blue ...`."""

    def format(self, record: logging.LogRecord) -> str:
        """One logfmt line: values with spaces, quotes or `=` are double-quoted and escaped."""
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in record_fields(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the same fields as the logfmt lines."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON object; a key repeated in a message keeps its first value."""
        document: dict[str, Any] = {}
        for key, value in record_fields(record):
            document.setdefault(key, value)
        return json.dumps(document, ensure_ascii=False, default=str)


class RepeatFilter(logging.Filter):
    """Let through `burst` records of one message per `window` seconds; count the rest.

    A message is its logger and template (`record.msg`), so "upstream failure colour=%s ..."
    is one message whatever its values. Errors and worse always pass. The first record let
    through after some were dropped carries `suppressed` (the count since the last one shown).
    """

    def __init__(self, burst: int = 10, window: float = 10.0) -> None:
        super().__init__()
        self.burst = burst
        self.window = window
        self._seen: dict[tuple[str, str], list[float | int]] = {}  # start, shown, suppressed

    def filter(self, record: logging.LogRecord) -> bool:
        """Say whether `record` is written; drop and count repeats past the burst."""
        if record.levelno >= logging.ERROR:
            return True
        key = (record.name, str(record.msg))
        now = record.created
        state = self._seen.get(key)
        if state is None or now - state[0] >= self.window:
            suppressed = int(state[2]) if state is not None else 0
            if len(self._seen) > 1000:
                self._seen.clear()  # bounded: templates are few, but never let it grow
            self._seen[key] = [now, 1, 0]
            if suppressed:
                record.suppressed = suppressed
            return True
        if state[1] < self.burst:
            state[1] += 1
            if state[2]:
                record.suppressed, state[2] = int(state[2]), 0
            return True
        state[2] += 1
        return False


def configure(level: str, fmt: str = LOGFMT) -> None:
    """Send the process log to stderr as `fmt` lines (logfmt or json), repeats rate-limited."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == JSON else LogfmtFormatter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
