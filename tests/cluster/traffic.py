"""Clients on NodePort 30080 for the cluster tests and benchmarks/cluster_switch.py.

`Load` runs client threads against one address until stopped: some keep one connection alive
for many requests, some open a fresh connection (``Connection: close``) for each. Every answer
is checked: status 200, an ``X-Bluegreen-Colour`` header, and a body from the version of that
colour (blue is ``myapp v1``, green ``myapp v2``); anything else is a failed request, kept with
what went wrong and when.

One thing a keep-alive client does is not a failure: when a *reused* connection is closed by the
server before any byte of the answer arrives, it sends the GET again on a new connection, as
RFC 9112 section 9.3.1 allows for idempotent requests and as browsers, curl and urllib3 do. That
race (the server closing an idle connection as the client sends on it) is how HTTP/1.1 keep-alive
works; the retries are counted (`stale_retries`) so a test can require none where no proxy
closes connections. Fresh connections get no retry at all.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

VERSION_OF = {"blue": "v1", "green": "v2"}
# A reused connection that the server closed before answering: the stale keep-alive case.
STALE_CONNECTION = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


@dataclass(frozen=True, slots=True)
class Answer:
    """One request: when it was sent (monotonic), how long it took, who answered, what failed."""

    sent: float
    seconds: float
    colour: str
    error: str | None
    keepalive: bool


def check_answer(status: int, colour: str, body: str) -> str | None:
    """Why an answer is wrong (None if it is right): 200 from the version its colour runs."""
    if status != 200:
        return f"status {status}: {body[:120]!r}"
    version = VERSION_OF.get(colour)
    if version is None:
        return f"no or unknown X-Bluegreen-Colour {colour!r}"
    words = body.split()
    if len(words) < 2 or words[:2] != ["myapp", version]:
        return f"colour {colour} answered by {body[:60]!r}"
    return None


@dataclass
class Load:
    """Client threads on host:port; `answers` and `failures` fill as they run."""

    host: str
    port: int
    keepalive_clients: int = 2
    fresh_clients: int = 2
    pause: float = 0.005
    path: str = "/"
    headers: dict[str, str] = field(default_factory=dict)
    answers: list[Answer] = field(default_factory=list)
    stale_retries: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        """Start every client thread."""
        for index in range(self.keepalive_clients + self.fresh_clients):
            keepalive = index < self.keepalive_clients
            thread = threading.Thread(
                target=self._client, args=(keepalive,), name=f"load-{index}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        return self

    def stop(self) -> None:
        """Stop the clients (each finishes its current request)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    @property
    def failures(self) -> list[Answer]:
        """The failed requests so far."""
        with self._lock:
            return [a for a in self.answers if a.error is not None]

    def since(self, moment: float) -> list[Answer]:
        """The answers to requests sent at or after `moment` (monotonic)."""
        with self._lock:
            return [a for a in self.answers if a.sent >= moment]

    def summary(self) -> str:
        """One line: requests, failures (the first few), stale keep-alive retries."""
        with self._lock:
            total = len(self.answers)
            kept = sum(a.keepalive for a in self.answers)
        failures = self.failures
        shown = "; ".join(f"{a.error} (keepalive={a.keepalive})" for a in failures[:5])
        return (
            f"{total} requests ({kept} keep-alive, {total - kept} fresh connections), "
            f"{len(failures)} failed{': ' + shown if shown else ''}, "
            f"{self.stale_retries} stale keep-alive retries"
        )

    def _record(self, answer: Answer) -> None:
        with self._lock:
            self.answers.append(answer)

    def _client(self, keepalive: bool) -> None:
        connection: http.client.HTTPConnection | None = None
        used = 0  # requests answered on `connection`
        while not self._stop.is_set():
            if connection is None:
                connection, used = http.client.HTTPConnection(self.host, self.port, timeout=10), 0
            sent = time.monotonic()
            try:
                try:
                    status, colour, body, close = self._exchange(connection, keepalive)
                except STALE_CONNECTION:
                    if not used:
                        raise
                    with self._lock:
                        self.stale_retries += 1
                    connection.close()
                    connection, used = http.client.HTTPConnection(self.host, self.port, 10), 0
                    status, colour, body, close = self._exchange(connection, keepalive)
            except (OSError, http.client.HTTPException) as error:
                self._record(Answer(sent, time.monotonic() - sent, "-", f"{error!r}", keepalive))
                connection.close()
                connection = None
                time.sleep(self.pause)
                continue
            used += 1
            self._record(
                Answer(
                    sent, time.monotonic() - sent, colour, check_answer(status, colour, body),
                    keepalive,
                )
            )  # fmt: skip
            if close or not keepalive:
                connection.close()
                connection = None
            if self.pause:
                time.sleep(self.pause)
        if connection is not None:
            connection.close()

    def _exchange(
        self, connection: http.client.HTTPConnection, keepalive: bool
    ) -> tuple[int, str, str, bool]:
        headers = dict(self.headers)
        if not keepalive:
            headers["Connection"] = "close"
        connection.request("GET", self.path, headers=headers)
        response = connection.getresponse()
        body = response.read().decode(errors="replace")
        return (
            response.status,
            response.headers.get("X-Bluegreen-Colour", "-"),
            body,
            response.will_close,
        )


@contextlib.contextmanager
def load_on(host: str, port: int, **settings: object) -> Iterator[Load]:
    """Run a `Load` for the duration of the block."""
    load = Load(host, port, **settings)  # type: ignore[arg-type]
    load.start()
    try:
        yield load
    finally:
        load.stop()


def all_on_after(load: Load, colour: str, moment: float, settle: int = 10) -> float | None:
    """The first send time after `moment` from which every answer came from `colour`.

    None until at least `settle` answers in a row (the last ones so far) are on it.
    """
    answers = sorted(load.since(moment), key=lambda a: a.sent)
    start: float | None = None
    streak = 0
    for answer in answers:
        if answer.colour == colour and answer.error is None:
            if start is None:
                start = answer.sent
            streak += 1
        else:
            start, streak = None, 0
    return start if start is not None and streak >= settle else None


def wait_until(what: str, probe: Callable[[], object], timeout: float = 120) -> float:
    """Poll `probe` until it returns something true; the seconds it took (bounded)."""
    started = time.monotonic()
    while not probe():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.1)
    return time.monotonic() - started


def connects(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a TCP connection to host:port is accepted."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
