"""The access log: one line per request, written to stdout without ever blocking a request.

A finished request hands an `AccessRecord` (plain values, nothing formatted) to `AccessLog.log`,
which only appends it to a bounded queue. The event loop drains the queue soon after, in one
batch: it formats the lines and writes them to stdout with non-blocking writes. When stdout
cannot take more (a slow log collector), lines wait in the queue; once the queue is full, new
records are dropped and counted (`bluegreen_access_log_dropped_total`): a request is never
slowed by its log line.

Stdout is written through a descriptor of its own (reopened from /proc/self/fd/1) so that
setting it non-blocking does not change stderr, which is often the same pipe.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import select
import socket
import stat
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

log = logging.getLogger(__name__)

OFF: Final = "off"
JSON: Final = "json"
CLF: Final = "clf"
FORMATS = (OFF, JSON, CLF)

# Who ended a request, for the `ended_by` field.
CLIENT: Final = "client"
UPSTREAM: Final = "upstream"
PROXY: Final = "proxy"

# Request fields that carry credentials: never written to a log, whatever the config says.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


@dataclass(frozen=True, slots=True)
class AccessLogSettings:
    """What the access log writes: its format, its filters and the extra request headers.

    A request is logged when no filter is set, or when it passes one of them: a status of at
    least `min_status`, or a duration of at least `min_duration` seconds (so `minStatus: 500`
    with `minDuration: 1s` keeps errors and slow requests). `headers` are lower-case request
    field names; `drop_query` writes the target without its query string.
    """

    format: str = OFF
    min_status: int = 0
    min_duration: float = 0.0
    headers: tuple[str, ...] = ()
    drop_query: bool = False
    buffer_size: int = 10000  # records waiting for stdout before new ones are dropped

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"access log format {self.format!r}: use one of {', '.join(FORMATS)}")
        if self.buffer_size < 1:
            raise ValueError("access log buffer size must be at least 1")

    @property
    def enabled(self) -> bool:
        """Say whether lines are written at all."""
        return self.format != OFF

    def keeps(self, status: int, seconds: float) -> bool:
        """Say whether a request with this status and duration passes the filters."""
        if not self.min_status and not self.min_duration:
            return True
        return bool(
            (self.min_status and status >= self.min_status)
            or (self.min_duration and seconds >= self.min_duration)
        )


def refused_headers(names: Iterable[str], preview_header: str) -> list[str]:
    """Return the names among `names` that may never be logged: credentials and the preview header.

    The preview header's value may be its token, which is a secret like a password.
    """
    secret = SECRET_HEADERS | {preview_header.lower()}
    return [name for name in names if name.lower() in secret]


class AccessRecord:
    """What is known about one finished request; formatting waits until the loop drains."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "client",
        "colour",
        "duration",
        "ended",
        "ended_by",
        "headers",
        "method",
        "reason",
        "referer",
        "request_id",
        "retries",
        "route",
        "status",
        "target",
        "trace_id",
        "ttfb",
        "upstream",
        "user_agent",
        "version",
    )

    def __init__(
        self,
        *,
        ended: float,
        duration: float,
        client: str | None,
        method: bytes,
        target: bytes,
        version: str,
        status: int,
        bytes_in: int,
        bytes_out: int,
        ttfb: float | None,
        colour: str | None,
        route: str | None,
        upstream: str | None,
        retries: int,
        request_id: bytes | None,
        user_agent: bytes | None,
        referer: bytes | None,
        ended_by: str,
        reason: str | None,
        trace_id: bytes | None = None,
        headers: tuple[tuple[str, bytes | None], ...] = (),
    ) -> None:
        self.ended = ended  # wall-clock time.time() when the response ended
        self.duration = duration  # seconds, from the monotonic clock
        self.client = client
        self.method = method
        self.target = target
        self.version = version
        self.status = status
        self.bytes_in = bytes_in
        self.bytes_out = bytes_out
        self.ttfb = ttfb
        self.colour = colour
        self.route = route
        self.upstream = upstream
        self.retries = retries
        self.request_id = request_id
        self.user_agent = user_agent
        self.referer = referer
        self.ended_by = ended_by
        self.reason = reason
        self.trace_id = trace_id
        self.headers = headers


# --- formatting ---------------------------------------------------------------------------------
#
# A line is one f-string of plain `{value}` parts: mypyc builds that in one allocation, while a
# single format spec (`{x:.6f}`) turns the whole line into a str.format call (~30,000
# instructions a line, callgrind). Numbers with decimals are made from integers for that reason.
# Values that can never need JSON escaping (the request ID and trace ID, checked safe
# characters; the method, a token; `ended_by`) are written between quotes as they are; the
# values that come back line after line (colour, route, upstream, client, method, and the user
# agent and referer a browser sends with each request) are quoted once and remembered.

# C-accelerated JSON string quoting; ASCII output, so a line never needs an encoding decision.
_quote: Callable[[str], str] = json.encoder.encode_basestring_ascii
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_CLF_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\]')
# Zeros that pad a fraction: _ZEROS[k] is k zeros (a list: mypyc boxes a tuple to index it).
_ZEROS: Final = ["", "0", "00", "000", "0000", "00000"]
_REMEMBERED: Final = 1024  # quoted values of each kind kept before the memo starts again


def _json_text(value: bytes | None) -> str:
    # latin-1 maps every byte to one code point, so any bytes a client sent survive, escaped.
    return "null" if value is None else _quote(value.decode("latin-1"))


def _safe_text(value: bytes | None) -> str:
    """A JSON string of bytes already checked to be safe characters (no quote, backslash...)."""
    return "null" if value is None else f'"{value.decode("ascii")}"'


def _fixed6(value: float) -> str:
    """`value` (not negative) with six decimals, as f"{value:.6f}" writes it."""
    return _point(str(int(value * 1e6 + 0.5)), 6)


def _fixed3(value: float) -> str:
    """`value` (not negative) with three decimals, as f"{value:.3f}" writes it."""
    return _point(str(int(value * 1e3 + 0.5)), 3)


def _point(digits: str, decimals: int) -> str:
    """The decimal digits of an integer count of 10**-decimals, with the point put in."""
    n = len(digits)
    if n <= decimals:
        return f"0.{_ZEROS[decimals - n]}{digits}"  # most durations: less than a second
    return f"{digits[: n - decimals]}.{digits[n - decimals :]}"


def _clf_escape(value: bytes | None) -> str:
    """Quote-safe text for a CLF field, escaped as Apache httpd does (backslash, then hex)."""
    if value is None:
        return "-"
    text = value.decode("latin-1")
    if _CLF_UNSAFE.search(text) is None:
        return text
    return _CLF_UNSAFE.sub(lambda m: "\\" + m[0] if m[0] in '"\\' else f"\\x{ord(m[0]):02x}", text)


def _target(record: AccessRecord, drop_query: bool) -> bytes:
    if drop_query:
        return record.target.partition(b"?")[0]
    return record.target


class _Memo:
    """What formatting remembers between lines, so that most lines redo little of it.

    The calendar text of the current second (and the last millisecond's timestamp), and the
    written form of values that come back on line after line: colours, routes, upstreams,
    clients, methods, user agents and referers (JSON-quoted, or escaped for CLF). Each kind is
    bounded: past `_REMEMBERED` values, its memo starts again, so that a stream of distinct
    values costs a lookup each, no memory.
    """

    __slots__ = (
        "_clf",
        "_clf_texts",
        "_methods",
        "_millis",
        "_names",
        "_rfc3339",
        "_second",
        "_stamp",
        "_texts",
    )

    def __init__(self) -> None:
        self._second = -1
        self._millis = -1
        self._rfc3339 = ""
        self._stamp = ""
        self._clf = ""
        self._names: dict[str, str] = {}
        self._methods: dict[bytes, str] = {}
        self._texts: dict[bytes, str] = {}
        self._clf_texts: dict[bytes | None, str] = {}

    def _at(self, second: int) -> None:
        if second != self._second:
            t = time.gmtime(second)
            self._second = second
            self._rfc3339 = (
                f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
                f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
            )
            self._clf = (
                f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year:04d}:"
                f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
            )

    def rfc3339(self, when: float) -> str:
        """UTC, RFC 3339 with milliseconds: `2026-12-02T10:12:50.123Z`."""
        millis = int(when * 1000)
        if millis != self._millis:
            self._at(millis // 1000)
            fraction = str(millis % 1000)
            self._stamp = f"{self._rfc3339}.{_ZEROS[3 - len(fraction)]}{fraction}Z"
            self._millis = millis
        return self._stamp

    def clf(self, when: float) -> str:
        """The combined log format's `02/Dec/2026:10:12:50 +0000`."""
        self._at(int(when))
        return self._clf

    def name(self, value: str | None) -> str:
        """`value` as a JSON string (or null), quoted once and then remembered."""
        if value is None:
            return "null"
        names = self._names
        quoted = names.get(value)
        if quoted is None:
            if len(names) >= _REMEMBERED:
                names.clear()
            quoted = names[value] = _quote(value)
        return quoted

    def method(self, value: bytes) -> str:
        """A request method as a JSON string, quoted once and then remembered."""
        methods = self._methods
        quoted = methods.get(value)
        if quoted is None:
            if len(methods) >= _REMEMBERED:
                methods.clear()
            quoted = methods[value] = _json_text(value)
        return quoted

    def text(self, value: bytes | None) -> str:
        """Bytes a client sent (a user agent, a referer) as a JSON string, or null; remembered.

        A browser sends the same User-Agent with every request, so a lookup (a hash of the
        bytes) usually replaces decoding and escaping them.
        """
        if value is None:
            return "null"
        texts = self._texts
        quoted = texts.get(value)
        if quoted is None:
            if len(texts) >= _REMEMBERED:
                texts.clear()
            quoted = texts[value] = _quote(value.decode("latin-1"))
        return quoted

    def clf_text(self, value: bytes | None) -> str:
        """Bytes a client sent (a method, user agent, referer) escaped for CLF; remembered."""
        texts = self._clf_texts
        escaped = texts.get(value)
        if escaped is None:
            if len(texts) >= _REMEMBERED:
                texts.clear()
            escaped = texts[value] = _clf_escape(value)
        return escaped


def format_json(record: AccessRecord, settings: AccessLogSettings, memo: _Memo) -> str:
    """One JSON object on one line; `time` is when the request head had arrived."""
    headers = ""
    if record.headers:
        fields = ",".join([f"{_quote(name)}:{_json_text(value)}" for name, value in record.headers])
        headers = f',"headers":{{{fields}}}'
    ttfb = "null" if record.ttfb is None else _fixed6(record.ttfb)
    reason = "null" if record.reason is None else _quote(record.reason)
    return (
        f'{{"time":"{memo.rfc3339(record.ended - record.duration)}",'
        f'"client":{memo.name(record.client)},'
        f'"method":{memo.method(record.method)},'
        f'"target":{_json_text(_target(record, settings.drop_query))},'
        f'"protocol":"HTTP/{record.version}",'
        f'"status":{record.status},'
        f'"bytes_in":{record.bytes_in},'
        f'"bytes_out":{record.bytes_out},'
        f'"duration":{_fixed6(record.duration)},'
        f'"upstream_ttfb":{ttfb},'
        f'"colour":{memo.name(record.colour)},'
        f'"route":{memo.name(record.route)},'
        f'"upstream":{memo.name(record.upstream)},'
        f'"retries":{record.retries},'
        f'"request_id":{_safe_text(record.request_id)},'
        f'"trace_id":{_safe_text(record.trace_id)},'
        f'"user_agent":{memo.text(record.user_agent)},'
        f'"referer":{memo.text(record.referer)},'
        f'"ended_by":"{record.ended_by}",'
        f'"reason":{reason}{headers}}}'
    )


def format_clf(record: AccessRecord, settings: AccessLogSettings, memo: _Memo) -> str:
    """Apache's combined log format, then bluegreen's own fields as `key=value` pairs."""
    ttfb = "-" if record.ttfb is None else _fixed3(record.ttfb * 1000)
    # positional, in config order, as Apache's %{Name}i
    extra = "".join([f' "{_clf_escape(value)}"' for _, value in record.headers])
    target = _clf_escape(_target(record, settings.drop_query))
    # A str either way: an `int or str` in the f-string would be formatted generically.
    bytes_out = str(record.bytes_out) if record.bytes_out else "-"
    request_id = "-" if record.request_id is None else record.request_id.decode("ascii")
    return (
        f"{record.client or '-'} - - [{memo.clf(record.ended - record.duration)}] "
        f'"{memo.clf_text(record.method)} {target} HTTP/{record.version}" '
        f"{record.status} {bytes_out} "
        f'"{memo.clf_text(record.referer)}" "{memo.clf_text(record.user_agent)}"{extra}'
        f" colour={record.colour or '-'} route={record.route or '-'}"
        f" upstream={record.upstream or '-'} duration_ms={_fixed3(record.duration * 1000)}"
        f" ttfb_ms={ttfb} bytes_in={record.bytes_in} retries={record.retries}"
        f" request_id={request_id} ended_by={record.ended_by}"
        f' reason="{record.reason or "-"}"'
    )


# --- output -------------------------------------------------------------------------------------


class _Output:
    """A descriptor for stdout that can be written without blocking, whatever stdout is.

    Pipes, FIFOs and terminals are reopened through /proc, which gives a file description of
    our own: its O_NONBLOCK leaves stdout and stderr (often the same pipe) blocking for everyone
    else. A socket (journald) is written with MSG_DONTWAIT on a duplicate. A regular file is
    written as it is: a disk write does not wait on a reader.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.sock: socket.socket | None = None
        self.owned = False
        self.nonblocking = False
        mode = os.fstat(fd).st_mode
        if stat.S_ISSOCK(mode):
            self.sock = socket.socket(fileno=os.dup(fd))
            self.nonblocking = True
        elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
            try:
                self.fd = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as error:
                log.warning("access log writes to fd %d blocking: cannot reopen it (%s)", fd, error)
            else:
                self.owned = self.nonblocking = True

    def write(self, data: memoryview) -> int:
        """Write what can be written now; return how many bytes went (0 when it would block)."""
        try:
            if self.sock is not None:
                return self.sock.send(data, socket.MSG_DONTWAIT)
            return os.write(self.fd, data)
        except (BlockingIOError, InterruptedError):
            return 0

    def wait_writable(self, timeout: float) -> bool:
        """Block up to `timeout` seconds for room to write (used only at shutdown)."""
        fileno = self.sock.fileno() if self.sock is not None else self.fd
        return bool(select.select([], [fileno], [], timeout)[1])

    @property
    def fileno(self) -> int:
        """The descriptor the event loop watches for writability."""
        return self.sock.fileno() if self.sock is not None else self.fd

    def close(self) -> None:
        """Close what was opened for the log (never stdout itself)."""
        if self.sock is not None:
            self.sock.close()
        elif self.owned:
            os.close(self.fd)


class AccessLog:
    """A bounded queue of records, drained by the event loop into stdout.

    `log` is the only call on the request path: it appends, or counts a drop, and schedules
    one drain per loop iteration, never per record.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        settings: AccessLogSettings,
        *,
        fd: int = 1,
        max_unwritten: int = 1 << 20,
    ) -> None:
        self.loop = loop
        self.settings = settings
        self.dropped = 0
        self.written = 0  # lines formatted for stdout (some may still wait in `unwritten`)
        self._queue: deque[AccessRecord] = deque()
        self._capacity = settings.buffer_size
        self._json = settings.format != CLF
        self._memo = _Memo()
        self._output: _Output | None = _Output(fd)
        self._unwritten = bytearray()
        self._max_unwritten = max_unwritten
        self._scheduled = False
        self._watching = False
        self._closed = False

    def configure(self, settings: AccessLogSettings) -> None:
        """Apply a new config's settings; records already queued keep their place."""
        self.settings = settings
        self._capacity = settings.buffer_size
        self._json = settings.format != CLF

    @property
    def pending(self) -> int:
        """Records waiting to be formatted and written."""
        return len(self._queue)

    @property
    def unwritten(self) -> int:
        """Bytes of formatted lines that stdout has not taken yet."""
        return len(self._unwritten)

    def log(self, record: AccessRecord) -> None:
        """Queue one record, or drop and count it when the queue is full. Never blocks."""
        if len(self._queue) >= self._capacity or self._closed:
            self.dropped += 1
            return
        self._queue.append(record)
        if not self._scheduled and not self._watching:
            self._scheduled = True
            self.loop.call_soon(self._drain)

    def _drain(self) -> None:
        """Format queued records and write as much as stdout takes without blocking."""
        self._scheduled = False
        output = self._output
        if output is None:
            return
        queue = self._queue
        out = self._unwritten
        settings = self.settings
        memo = self._memo
        as_json = self._json
        # The formatters are called directly, not through a table of them: a call through a
        # Python object costs mypyc a generic call with its argument parsing on every line.
        while queue and len(out) < self._max_unwritten:
            record = queue.popleft()
            if as_json:
                out += format_json(record, settings, memo).encode("ascii")
            else:
                out += format_clf(record, settings, memo).encode("ascii")
            out += b"\n"
            self.written += 1
        if out:
            try:
                sent = output.write(memoryview(out))
            except OSError as error:
                # stdout is gone (EPIPE, a closed collector): nothing more can be logged.
                self.dropped += len(queue) + 1
                log.error("access log stopped: stdout not writable (%s)", error)
                self._stop()
                return
            del out[:sent]
        if (out or queue) and not self._watching:
            # stdout is full: wait until it can take more, while new records queue (bounded).
            if output.nonblocking:
                self._watching = True
                self.loop.add_writer(output.fileno, self._writable)
            else:
                self._scheduled = True
                self.loop.call_soon(self._drain)

    def _writable(self) -> None:
        self._unwatch()
        self._drain()

    def _unwatch(self) -> None:
        if self._watching and self._output is not None:
            self.loop.remove_writer(self._output.fileno)
        self._watching = False

    def _stop(self) -> None:
        self._unwatch()
        self._closed = True
        self._queue.clear()
        self._unwritten.clear()
        if self._output is not None:
            self._output.close()
            self._output = None

    def close(self, timeout: float = 2.0) -> None:
        """Write out what is queued (waiting up to `timeout` seconds for stdout), then stop."""
        self._closed = True
        deadline = time.monotonic() + timeout
        while self._output is not None:
            self._drain()
            self._unwatch()
            if not self._queue and not self._unwritten:
                break
            left = deadline - time.monotonic()
            if left <= 0 or not self._output.wait_writable(left):
                lost = len(self._queue) + (1 if self._unwritten else 0)
                self.dropped += lost
                log.warning("access log: %d lines not written at shutdown (stdout full)", lost)
                break
        self._stop()
