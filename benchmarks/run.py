#!/usr/bin/env python3
"""Benchmark bluegreen against nginx, haproxy, Caddy and the asyncio ceiling, in one go.

Starts a static nginx backend, nginx and haproxy proxies (default and large
buffers), Caddy (a Go proxy, one core), a blind uvloop relay that parses nothing
(benchmarks/blind_relay.py: the ceiling of any proxy on this event loop) and
bluegreen in front of it, all on 127.0.0.1 with configs in a temp directory, then
drives each with wrk in interleaved rounds and prints medians and medians of
per-round ratios.  See benchmarks/README.md.

Stdlib only: run it with any Python >= 3.11, e.g. ``.venv/bin/python benchmarks/run.py``; the
relay runs under ``--relay-python`` (default .venv/bin/python, which has uvloop).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import grp
import json
import os
import platform
import pwd
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import types
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
DEFAULT_BLUEGREEN_CMD = str(REPO / ".venv" / "bin" / "bluegreen")
DEFAULT_RELAY_PYTHON = str(REPO / ".venv" / "bin" / "python")
BLIND_RELAY = REPO / "benchmarks" / "blind_relay.py"

SMALL_SIZE = 100
LARGE_SIZE = 1024 * 1024
BODIES: dict[str, int] = {"small": SMALL_SIZE, "large": LARGE_SIZE}

LOAD_WARN_THRESHOLD = 0.5
WRK_THREADS = 1
WRK_CONNECTIONS = 50

# Which targets are measured for which body, in their base order (rotated per round).
# bluegreen-log is bluegreen with `accessLog.format: json` (its stdout into a file): against
# bluegreen in the same round, the cost of the access log.
SMALL_TARGETS = ("direct", "nginx", "haproxy", "caddy", "relay", "bluegreen", "bluegreen-log")
LARGE_TARGETS = (
    "direct",
    "nginx",
    "nginx-bigbuf",
    "haproxy",
    "haproxy-bigbuf",
    "haproxy-splice",
    "caddy",
    "relay",
    "bluegreen",
    "bluegreen-copy",
)
# The references the ratios are computed against, per body.
REFERENCES: dict[str, tuple[str, ...]] = {
    "small": ("nginx", "haproxy", "caddy", "relay", "bluegreen"),
    "large": (
        "nginx",
        "haproxy",
        "nginx-bigbuf",
        "haproxy-bigbuf",
        "haproxy-splice",
        "relay",
        "bluegreen-copy",
    ),
}

APT_PACKAGES = ("nginx-light", "haproxy", "wrk")
# Installed when missing, measured when present: a machine without it still gets the rest.
OPTIONAL_APT_PACKAGES = {"caddy": "caddy"}
SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def warn(msg: str) -> None:
    print(f"WARNING: {msg}", file=sys.stderr, flush=True)


def info(msg: str) -> None:
    print(msg, flush=True)


class BenchError(Exception):
    """A fatal problem setting up the benchmark."""


# --------------------------------------------------------------------------- tools


def find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in SBIN_DIRS:
        cand = Path(d) / name
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return None


def ensure_tools(allow_install: bool) -> dict[str, str]:
    """Return paths of nginx, haproxy and wrk, installing them from Debian if missing."""
    names = ("nginx", "haproxy", "wrk")
    missing = [n for n in names if find_tool(n) is None]
    if missing:
        if not allow_install:
            raise BenchError(f"missing tools {missing} and --no-install given")
        info(f"Missing {', '.join(missing)}: installing {' '.join(APT_PACKAGES)} with apt-get")
        prefix: list[str] = []
        if os.geteuid() != 0:
            sudo = shutil.which("sudo")
            if sudo is None:
                raise BenchError("not root and no sudo: install nginx-light haproxy wrk by hand")
            prefix = [sudo]
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run([*prefix, "apt-get", "update"], check=True, env=env)
        subprocess.run([*prefix, "apt-get", "install", "-y", *APT_PACKAGES], check=True, env=env)
    paths: dict[str, str] = {}
    for n in names:
        p = find_tool(n)
        if p is None:
            raise BenchError(f"{n} still not found after installing")
        paths[n] = p
    for n, package in OPTIONAL_APT_PACKAGES.items():
        p = find_tool(n)
        if p is None and allow_install:
            info(f"Missing {n}: installing {package} with apt-get")
            prefix = [] if os.geteuid() == 0 else [shutil.which("sudo") or "sudo"]
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            done = subprocess.run(
                [*prefix, "apt-get", "install", "-y", package], check=False, env=env
            )
            if done.returncode != 0:
                warn(f"apt-get install {package} failed: measuring without {n}")
            p = find_tool(n)
        if p is None:
            warn(f"{n} not found: its target is not measured")
        else:
            paths[n] = p
    return paths


def relay_python(python: str) -> str | None:
    """The interpreter for the blind relay, or None (with a warning) when it lacks uvloop."""
    try:
        done = subprocess.run(
            [python, "-c", "import uvloop"], capture_output=True, timeout=30, check=False
        )
    except OSError as exc:
        warn(f"--relay-python {python!r} cannot run ({exc}): the relay is not measured")
        return None
    if done.returncode != 0:
        warn(f"--relay-python {python!r} has no uvloop: the relay is not measured")
        return None
    return python


def tool_version(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except OSError as exc:
        return f"unknown ({exc})"
    text = (out.stdout + out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def resolve_bluegreen(cmd: str) -> list[str] | None:
    """Split the --bluegreen-cmd; None if its executable does not exist."""
    argv = shlex.split(cmd)
    if not argv:
        return None
    exe = argv[0]
    if "/" in exe:
        path = Path(exe)
        if not path.is_absolute():
            path = Path.cwd() / path
        if not (path.is_file() and os.access(path, os.X_OK)):
            return None
        argv[0] = str(path)
    else:
        which = shutil.which(exe)
        if which is None:
            return None
        argv[0] = which
    return argv


# --------------------------------------------------------------------------- CPUs


@dataclass(frozen=True)
class Pinning:
    load_cpu: int | None  # wrk and the backend
    proxy_cpu: int | None  # the proxy under test

    def wrap(self, argv: Sequence[str], cpu: int | None) -> list[str]:
        if cpu is None:
            return list(argv)
        return ["taskset", "-c", str(cpu), *argv]

    @property
    def enabled(self) -> bool:
        return self.load_cpu is not None


def choose_pinning(no_pin: bool) -> Pinning:
    if no_pin:
        warn("--no-pin: processes are not pinned to CPUs; figures will be noisier")
        return Pinning(None, None)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        warn(
            f"only {len(cpus)} CPU available: not pinning; wrk, the backend and the proxy "
            "share one CPU, so the figures measure contention more than the proxy"
        )
        return Pinning(None, None)
    if shutil.which("taskset") is None:
        warn("taskset (util-linux) not found: not pinning")
        return Pinning(None, None)
    if 0 in cpus and 1 in cpus:
        return Pinning(0, 1)
    return Pinning(cpus[0], cpus[1])


# --------------------------------------------------------------------------- processes


class Processes:
    """Foreground server processes this script started, stopped by PID at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.logs: list[IO[bytes]] = []

    def log_path(self, name: str) -> Path:
        return self.tmp / f"{name}.out"

    def start(
        self, name: str, argv: Sequence[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = self.log_path(name).open("wb")
        self.logs.append(log)
        log.write(("$ " + shlex.join(argv) + "\n").encode())
        log.flush()
        # A session of its own: a Ctrl-C on the terminal reaches only this script,
        # which then stops the servers itself, in order.
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.tmp,
            env=env,
            start_new_session=True,
        )
        self.procs.append((name, proc))
        return proc

    def tail(self, name: str, lines: int = 20) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    @staticmethod
    def _stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in procs:
            remaining = max(0.1, deadline - time.monotonic())
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=remaining)
            # The process group is the one start_new_session made for this very
            # process (pgid == its pid): this also ends nginx workers left behind.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    def stop_one(self, proc: subprocess.Popen[bytes]) -> None:
        self._stop([proc])

    def stop_all(self) -> None:
        # A second Ctrl-C must not cut the clean-up short.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self._stop([proc for _name, proc in reversed(self.procs)])
            for log in self.logs:
                log.close()
            self.procs.clear()
            self.logs.clear()
        finally:
            signal.signal(signal.SIGINT, old)


def free_ports(n: int) -> list[int]:
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Connection": "close"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_http(
    procs: Processes,
    name: str,
    proc: subprocess.Popen[bytes],
    url: str,
    timeout: float,
    expect_len: int | None = None,
) -> None:
    """Poll url until it answers 200 (with expect_len bytes), or fail with the log tail."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(
                f"{name} exited with status {proc.returncode} while starting; its output:\n"
                + procs.tail(name)
            )
        try:
            status, body = http_get(url, timeout=2)
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        else:
            if status == 200 and (expect_len is None or len(body) == expect_len):
                return
            last = f"status {status}, {len(body)} bytes"
        time.sleep(0.1)
    raise BenchError(
        f"{name} not ready at {url} after {timeout:.0f}s ({last}); its output:\n" + procs.tail(name)
    )


def check_bodies(procs: Processes, name: str, proc: subprocess.Popen[bytes], port: int) -> None:
    for path, size in BODIES.items():
        wait_http(procs, name, proc, f"http://127.0.0.1:{port}/{path}", 15, expect_len=size)


# --------------------------------------------------------------------------- configs


def nginx_user_line() -> str:
    # Workers of a root master switch to `user` (nobody by default), which cannot
    # read the 0700 temp dir; keep them as the current user.  Ignored when not root.
    if os.geteuid() != 0:
        return ""
    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    return f"user {user} {group};"


def nginx_common(root: Path, name: str) -> str:
    return f"""
{nginx_user_line()}
worker_processes 1;
pid {root}/{name}.pid;
error_log {root}/{name}.error.log warn;
events {{
    worker_connections 4096;
}}
"""


def nginx_http_common(root: Path, name: str) -> str:
    t = root / f"{name}.tmp"
    return f"""
    access_log off;
    client_body_temp_path {t}/client_body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
"""


def backend_nginx_conf(root: Path, port: int, www: Path) -> str:
    return (
        nginx_common(root, "backend")
        + f"""
http {{
{nginx_http_common(root, "backend")}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    open_file_cache max=16 inactive=600s;
    server {{
        listen 127.0.0.1:{port} reuseport;
        root {www};
        location / {{ }}
    }}
}}
"""
    )


NGINX_BIGBUF = """
            proxy_buffer_size 256k;
            proxy_buffers 8 256k;
            proxy_busy_buffers_size 512k;
"""


def proxy_nginx_conf(root: Path, name: str, port: int, backend_port: int, bigbuf: bool) -> str:
    return (
        nginx_common(root, name)
        + f"""
http {{
{nginx_http_common(root, name)}
    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
{NGINX_BIGBUF if bigbuf else ""}
        }}
    }}
}}
"""
    )


def haproxy_conf(port: int, backend_port: int, bigbuf: bool, splice: bool = False) -> str:
    tune = "    tune.bufsize 262144\n" if bigbuf else ""
    # Response bodies moved socket to socket in the kernel, as bluegreen does (proxy/splice.py).
    splice_option = "    option splice-response\n" if splice else ""
    return f"""global
    nbthread 1
    maxconn 4096
{tune}
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-request 30s
    timeout http-keep-alive 300s
{splice_option}
frontend fe
    bind 127.0.0.1:{port}
    default_backend be

backend be
    server backend 127.0.0.1:{backend_port}
"""


def caddy_conf(port: int, backend_port: int) -> str:
    """Caddy as a plain reverse proxy: no admin endpoint, no TLS, keep-alive to the backend."""
    return f"""{{
    admin off
    auto_https off
}}
http://127.0.0.1:{port} {{
    bind 127.0.0.1
    reverse_proxy 127.0.0.1:{backend_port} {{
        transport http {{
            keepalive 300s
            keepalive_idle_conns 64
        }}
    }}
}}
"""


def bluegreen_conf(backend_port: int) -> str:
    return (
        "active: blue\n"
        f"upstream.blue: http://127.0.0.1:{backend_port}\n"
        f"upstream.green: http://127.0.0.1:{backend_port}\n"
    )


# --------------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    rps: float
    mbps: float  # decimal megabytes (10**6 bytes) per second
    p50_ms: float
    p99_ms: float
    requests: int
    non2xx: int = 0
    connect_errors: int = 0
    read_errors: int = 0
    write_errors: int = 0
    timeouts: int = 0

    @property
    def errors(self) -> int:
        return (
            self.non2xx + self.connect_errors + self.read_errors + self.write_errors + self.timeouts
        )

    def error_text(self) -> str:
        parts = []
        if self.non2xx:
            parts.append(f"non-2xx/3xx {self.non2xx}")
        for label, n in (
            ("connect", self.connect_errors),
            ("read", self.read_errors),
            ("write", self.write_errors),
            ("timeout", self.timeouts),
        ):
            if n:
                parts.append(f"{label} {n}")
        return ", ".join(parts)


TIME_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
# wrk prints sizes with binary multiples ("MB" is 1024 * 1024 bytes).
SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}

_RE_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_RE_TRANSFER = re.compile(r"^Transfer/sec:\s+([\d.]+)([KMGT]?B)\s*$", re.M)
_RE_PCT = re.compile(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_RE_TOTAL = re.compile(r"^\s*(\d+) requests in ", re.M)
_RE_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_RE_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


class WrkParseError(Exception):
    """wrk's output did not have the expected figures."""


def parse_wrk(out: str) -> WrkResult:
    m_rps = _RE_RPS.search(out)
    m_tr = _RE_TRANSFER.search(out)
    m_total = _RE_TOTAL.search(out)
    pcts = {int(p): float(v) * TIME_UNITS_MS[u] for p, v, u in _RE_PCT.findall(out)}
    if m_rps is None or m_tr is None or m_total is None or 50 not in pcts or 99 not in pcts:
        raise WrkParseError(f"cannot parse wrk output:\n{out}")
    res = WrkResult(
        rps=float(m_rps.group(1)),
        mbps=float(m_tr.group(1)) * SIZE_UNITS[m_tr.group(2)] / 1e6,
        p50_ms=pcts[50],
        p99_ms=pcts[99],
        requests=int(m_total.group(1)),
    )
    m_sock = _RE_SOCKET.search(out)
    if m_sock:
        res.connect_errors, res.read_errors, res.write_errors, res.timeouts = (
            int(g) for g in m_sock.groups()
        )
    m_non = _RE_NON2XX.search(out)
    if m_non:
        res.non2xx = int(m_non.group(1))
    return res


def run_wrk(
    wrk: str, pin: Pinning, url: str, duration: int, latency: bool = True
) -> tuple[str, int]:
    argv = [
        wrk,
        f"-t{WRK_THREADS}",
        f"-c{WRK_CONNECTIONS}",
        f"-d{duration}s",
    ]
    if latency:
        argv.append("--latency")
    argv.append(url)
    proc = subprocess.run(
        pin.wrap(argv, pin.load_cpu),
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=False,
    )
    return proc.stdout + proc.stderr, proc.returncode


# --------------------------------------------------------------------------- run


@dataclass
class Target:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    dead: bool = False


@dataclass
class Measurement:
    round: int
    body: str
    target: str
    result: WrkResult | None
    failure: str | None = None


@dataclass
class Summary:
    body: str
    target: str
    rounds: int
    rps: float | None
    mbps: float | None
    p50_ms: float | None
    p99_ms: float | None
    ratios: dict[str, float | None] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def rotated(seq: Sequence[str], k: int) -> list[str]:
    if not seq:
        return []
    k %= len(seq)
    return [*seq[k:], *seq[:k]]


def median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(measurements: list[Measurement], body: str, targets: Sequence[str]) -> list[Summary]:
    by_round: dict[int, dict[str, WrkResult]] = {}
    for m in measurements:
        if m.body == body and m.result is not None:
            by_round.setdefault(m.round, {})[m.target] = m.result
    out: list[Summary] = []
    for t in targets:
        res = [r[t] for r in by_round.values() if t in r]
        errors: list[str] = []
        for m in measurements:
            if m.body != body or m.target != t:
                continue
            if m.failure:
                errors.append(f"round {m.round}: {m.failure}")
            elif m.result is not None and m.result.errors:
                errors.append(f"round {m.round}: {m.result.error_text()}")
        s = Summary(
            body=body,
            target=t,
            rounds=len(res),
            rps=median_or_none([r.rps for r in res]),
            mbps=median_or_none([r.mbps for r in res]),
            p50_ms=median_or_none([r.p50_ms for r in res]),
            p99_ms=median_or_none([r.p99_ms for r in res]),
            errors=errors,
        )
        for ref in REFERENCES[body]:
            ratios = [
                r[t].rps / r[ref].rps
                for r in by_round.values()
                if t in r and ref in r and r[ref].rps > 0
            ]
            s.ratios[ref] = median_or_none(ratios)
        out.append(s)
    return out


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_summary(summaries: list[Summary], body: str, rounds: int, duration: int) -> None:
    refs = REFERENCES[body]
    info("")
    info(
        f"=== {body} body ({BODIES[body]} B): medians over {rounds} round(s) of {duration}s, "
        f"wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} ==="
    )
    info("ratio columns: median over rounds of (target req/s / reference req/s in the same round)")
    header = f"{'target':<15} {'req/s':>10} {'MB/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
    for ref in refs:
        header += f" {'/' + ref:>15}"
    header += "  flags"
    info(header)
    info("-" * len(header))
    for s in summaries:
        line = (
            f"{s.target:<15} {fmt(s.rps, '10.0f'):>10} {fmt(s.mbps, '9.1f'):>9}"
            f" {fmt(s.p50_ms, '8.3f'):>8} {fmt(s.p99_ms, '8.3f'):>8}"
        )
        for ref in refs:
            v = None if ref == s.target else s.ratios.get(ref)
            line += f" {fmt(v, '15.3f'):>15}"
        flags = []
        if s.errors:
            flags.append("ERRORS")
        if s.rounds < rounds:
            flags.append(f"only {s.rounds}/{rounds} rounds")
        line += "  " + ", ".join(flags)
        info(line)
    for s in summaries:
        for e in s.errors:
            info(f"  ! {s.target}: {e}")
    if any(s.target == "direct" for s in summaries):
        info(
            "  (direct = wrk straight to the backend; wrk and backend share one CPU, so it is "
            "a ceiling reference, not comparable to the proxies)"
        )


def print_raw(measurements: list[Measurement]) -> None:
    info("")
    info("=== raw figures per round ===")
    info(
        f"{'round':>5} {'body':<6} {'target':<15} {'req/s':>10} {'MB/s':>9} "
        f"{'p50 ms':>8} {'p99 ms':>8}  errors"
    )
    for m in sorted(measurements, key=lambda m: (m.round, m.body != "small")):
        r = m.result
        if r is None:
            info(f"{m.round:>5} {m.body:<6} {m.target:<15} FAILED: {m.failure}")
            continue
        info(
            f"{m.round:>5} {m.body:<6} {m.target:<15} {r.rps:>10.0f} {r.mbps:>9.1f} "
            f"{r.p50_ms:>8.3f} {r.p99_ms:>8.3f}  {r.error_text()}"
        )


def describe_result(r: WrkResult) -> str:
    s = f"{r.rps:>10.0f} req/s {r.mbps:>8.1f} MB/s  p50 {r.p50_ms:7.3f} ms  p99 {r.p99_ms:7.3f} ms"
    if r.errors:
        s += f"  ERRORS: {r.error_text()}"
    return s


@contextlib.contextmanager
def terminate_on_signals() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into SystemExit so the finally blocks stop the servers."""

    def handler(signum: int, _frame: types.FrameType | None) -> None:
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def start_servers(
    procs: Processes,
    tmp: Path,
    tools: dict[str, str],
    pin: Pinning,
    bluegreen_argv: list[str] | None,
    relay_argv: list[str] | None,
) -> tuple[dict[str, Target], dict[str, str]]:
    www = tmp / "www"
    www.mkdir()
    (www / "small").write_bytes(b"s" * (SMALL_SIZE - 1) + b"\n")
    (www / "large").write_bytes(os.urandom(LARGE_SIZE))

    # One port per measured target (SMALL_TARGETS and LARGE_TARGETS name them) and one for each
    # bluegreen's admin server.
    measured = dict.fromkeys((*SMALL_TARGETS, *LARGE_TARGETS))
    names = [
        *(name for name in measured if name != "direct"),
        "bg-admin",
        "bg-log-admin",
        "bg-copy-admin",
    ]
    ports = dict(zip(["direct", *names], free_ports(len(names) + 1), strict=True))
    nginx = tools["nginx"]
    targets: dict[str, Target] = {}

    def start_nginx(name: str, conf: str, cpu: int | None) -> subprocess.Popen[bytes]:
        (tmp / f"{name}.tmp").mkdir()
        conf_path = tmp / f"{name}.conf"
        conf_path.write_text(conf)
        argv = [
            nginx,
            "-p",
            str(tmp),
            "-c",
            str(conf_path),
            "-e",
            str(tmp / f"{name}.error.log"),
            "-g",
            "daemon off;",
        ]
        return procs.start(name, pin.wrap(argv, cpu))

    backend = start_nginx("backend", backend_nginx_conf(tmp, ports["direct"], www), pin.load_cpu)
    check_bodies(procs, "backend", backend, ports["direct"])
    targets["direct"] = Target("direct", ports["direct"], backend)

    for name, bigbuf in (("nginx", False), ("nginx-bigbuf", True)):
        conf = proxy_nginx_conf(tmp, name, ports[name], ports["direct"], bigbuf)
        targets[name] = Target(name, ports[name], start_nginx(name, conf, pin.proxy_cpu))

    for name, bigbuf, splice in (
        ("haproxy", False, False),
        ("haproxy-bigbuf", True, False),
        ("haproxy-splice", True, True),
    ):
        conf_path = tmp / f"{name}.cfg"
        conf_path.write_text(haproxy_conf(ports[name], ports["direct"], bigbuf, splice))
        argv = [tools["haproxy"], "-db", "-f", str(conf_path), "-p", str(tmp / f"{name}.pid")]
        targets[name] = Target(name, ports[name], procs.start(name, pin.wrap(argv, pin.proxy_cpu)))

    for name, t in targets.items():
        check_bodies(procs, name, t.proc, t.port)

    failures: dict[str, str] = {}

    def add_checked(name: str, proc: subprocess.Popen[bytes], ready_url: str = "") -> None:
        # A target that not every run needs (bluegreen, caddy, the relay): when it fails its
        # start-up checks, its output is printed, the rest is measured anyway and the run ends
        # non-zero.
        try:
            if ready_url:
                wait_http(procs, name, proc, ready_url, 60)
            check_bodies(procs, name, proc, ports[name])
        except BenchError as exc:
            warn(f"{name} failed its start-up checks, measuring without it: {exc}")
            procs.stop_one(proc)
            failures[name] = str(exc).splitlines()[0]
        else:
            targets[name] = Target(name, ports[name], proc)

    if "caddy" in tools:
        conf_path = tmp / "Caddyfile"
        conf_path.write_text(caddy_conf(ports["caddy"], ports["direct"]))
        home = tmp / "caddy-home"
        home.mkdir()
        # One core, as the other proxies get; its state under the temp dir, not in $HOME.
        env = dict(
            os.environ,
            GOMAXPROCS="1",
            HOME=str(home),
            XDG_CONFIG_HOME=str(home / "config"),
            XDG_DATA_HOME=str(home / "data"),
        )
        argv = [tools["caddy"], "run", "--config", str(conf_path), "--adapter", "caddyfile"]
        proc = procs.start("caddy", pin.wrap(argv, pin.proxy_cpu), env=env)
        add_checked("caddy", proc)

    if relay_argv is not None:
        argv = [
            *relay_argv,
            str(BLIND_RELAY),
            "--listen",
            f"127.0.0.1:{ports['relay']}",
            "--upstream",
            f"127.0.0.1:{ports['direct']}",
        ]
        add_checked("relay", procs.start("relay", pin.wrap(argv, pin.proxy_cpu)))

    # bluegreen-copy: BLUEGREEN_SPLICE=0, so large bodies are copied through the process as
    # before proxy/splice.py; against bluegreen in the same rounds, what splicing gains.
    copy_env: dict[str, str] = dict(os.environ, BLUEGREEN_SPLICE="0")
    bluegreens: tuple[tuple[str, str, str, dict[str, str] | None], ...] = (
        ("bluegreen", "bg-admin", "", None),
        ("bluegreen-log", "bg-log-admin", "accessLog.format: json\n", None),
        ("bluegreen-copy", "bg-copy-admin", "", copy_env),
    )
    for name, admin, extra, bg_env in bluegreens:
        if bluegreen_argv is None:
            break
        conf_path = tmp / f"{name}.yaml"
        conf_path.write_text(bluegreen_conf(ports["direct"]) + extra)
        argv = [
            *bluegreen_argv,
            "run",
            "--config",
            str(conf_path),
            "--listen",
            f"127.0.0.1:{ports[name]}",
            "--admin-listen",
            f"127.0.0.1:{ports[admin]}",
        ]
        proc = procs.start(name, pin.wrap(argv, pin.proxy_cpu), env=bg_env)
        add_checked(name, proc, f"http://127.0.0.1:{ports[admin]}/readyz")
    return targets, failures


def run(args: argparse.Namespace) -> int:
    rounds: int = args.rounds
    duration: int = args.duration
    warmup: int = args.warmup
    if args.quick:
        rounds, duration = 1, 3

    load1 = os.getloadavg()[0]
    if load1 > LOAD_WARN_THRESHOLD:
        warn(
            f"1-minute load average is {load1:.2f} (> {LOAD_WARN_THRESHOLD}): other work is "
            "running on this machine, the figures will be noisy or worthless"
        )

    tools = ensure_tools(not args.no_install)
    pin = choose_pinning(args.no_pin)
    relay = relay_python(args.relay_python)
    relay_argv = None if relay is None else [relay]

    bluegreen_argv: list[str] | None = None
    if args.skip_bluegreen:
        info("Skipping bluegreen (--skip-bluegreen).")
    else:
        bluegreen_argv = resolve_bluegreen(args.bluegreen_cmd)
        if bluegreen_argv is None:
            warn(
                f"bluegreen command {args.bluegreen_cmd!r} not found: skipping the bluegreen "
                "target (install the project with `pip install -e .` in .venv, or pass "
                "--bluegreen-cmd)"
            )

    env_info: dict[str, Any] = {
        "host": platform.node(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "cpus": sorted(os.sched_getaffinity(0)),
        "load_cpu": pin.load_cpu,
        "proxy_cpu": pin.proxy_cpu,
        "loadavg_at_start": list(os.getloadavg()),
        "nginx": tool_version([tools["nginx"], "-v"]),
        "haproxy": tool_version([tools["haproxy"], "-v"]),
        "wrk": tool_version([tools["wrk"], "-v"]),
        "caddy": tool_version([tools["caddy"], "version"]) if "caddy" in tools else None,
        "relay_python": relay,
        "bluegreen_cmd": shlex.join(bluegreen_argv) if bluegreen_argv else None,
    }
    info(
        f"nginx: {env_info['nginx']} | haproxy: {env_info['haproxy']} | wrk: {env_info['wrk']}"
        f" | caddy: {env_info['caddy'] or 'not measured'}"
    )
    if pin.enabled:
        info(
            f"Pinning: wrk + backend on CPU {pin.load_cpu}, proxy under test on CPU {pin.proxy_cpu}"
        )
        # Keep this script off the proxy's CPU too.
        assert pin.load_cpu is not None
        os.sched_setaffinity(0, {pin.load_cpu})
    info(
        f"Plan: {rounds} round(s), {duration}s per run after a {warmup}s warm-up, "
        f"wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} --latency"
    )

    tmp = Path(tempfile.mkdtemp(prefix="bluegreen-bench-"))
    procs = Processes(tmp)
    measurements: list[Measurement] = []
    plan: dict[str, list[str]] = {}
    failures: dict[str, str] = {}
    keep: bool = args.keep_tmp
    try:
        with terminate_on_signals():
            targets, failures = start_servers(procs, tmp, tools, pin, bluegreen_argv, relay_argv)
            keep = keep or bool(failures)
            info(
                f"Servers up (configs and logs in {tmp}): "
                + ", ".join(f"{t.name}=:{t.port}" for t in targets.values())
            )
            plan = {
                "small": [t for t in SMALL_TARGETS if t in targets],
                "large": [t for t in LARGE_TARGETS if t in targets],
            }
            for rnd in range(1, rounds + 1):
                info(f"\n--- round {rnd}/{rounds} ---")
                for body, names in plan.items():
                    for name in rotated(names, rnd - 1):
                        t = targets[name]
                        m = measure(procs, tools["wrk"], pin, t, body, rnd, duration, warmup)
                        measurements.append(m)
    except Exception:
        keep = True  # a real failure: keep configs and logs to look at
        raise
    finally:
        procs.stop_all()
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            info(f"Configs and logs kept in {tmp}")

    all_summaries: list[Summary] = []
    for body, names in plan.items():
        summaries = summarise(measurements, body, names)
        all_summaries.extend(summaries)
        print_summary(summaries, body, rounds, duration)
    print_raw(measurements)

    if args.json is not None:
        path = Path(args.json) if args.json else default_json_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "started": env_info,
            "params": {
                "rounds": rounds,
                "duration_s": duration,
                "warmup_s": warmup,
                "wrk_threads": WRK_THREADS,
                "wrk_connections": WRK_CONNECTIONS,
                "bodies": BODIES,
            },
            "not_measured": failures,
            "summary": [asdict(s) for s in all_summaries],
            "measurements": [asdict(m) for m in measurements],
        }
        path.write_text(json.dumps(doc, indent=2) + "\n")
        info(f"\nJSON results written to {path}")

    for name, why in failures.items():
        info(f"\n!!! {name} NOT MEASURED: {why}")
    if failures:
        return 1
    return 2 if any(s.errors for s in all_summaries) else 0


def default_json_path() -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return RESULTS_DIR / f"{stamp}.json"


def measure(
    procs: Processes,
    wrk: str,
    pin: Pinning,
    t: Target,
    body: str,
    rnd: int,
    duration: int,
    warmup: int,
) -> Measurement:
    label = f"{body:<5} {t.name:<15}"
    if t.dead or t.proc.poll() is not None:
        t.dead = True
        info(f"{label} SKIPPED: the process has exited")
        return Measurement(rnd, body, t.name, None, "process exited")
    url = f"http://127.0.0.1:{t.port}/{body}"
    if warmup > 0:
        run_wrk(wrk, pin, url, warmup, latency=False)
    out, rc = run_wrk(wrk, pin, url, duration)
    if t.proc.poll() is not None:
        t.dead = True
        failure = f"exited with status {t.proc.returncode} during the run"
        info(f"{label} FAILED: {failure}\n{procs.tail(t.name)}")
        return Measurement(rnd, body, t.name, None, failure)
    try:
        res = parse_wrk(out)
    except WrkParseError as exc:
        info(f"{label} FAILED (wrk exit {rc}): {exc}")
        last = out.strip().splitlines()[-1:] or ["no output"]
        return Measurement(rnd, body, t.name, None, f"wrk exit {rc}: {last[0]}")
    info(f"{label} {describe_result(res)}")
    return Measurement(rnd, body, t.name, res)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark bluegreen against nginx, haproxy, Caddy and a blind uvloop relay "
        "(see benchmarks/README.md)."
    )
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    p.add_argument(
        "--warmup", type=int, default=2, help="discarded warm-up seconds per run (default 2)"
    )
    p.add_argument("--quick", action="store_true", help="1 round of 3s: a smoke test of the script")
    p.add_argument(
        "--bluegreen-cmd",
        default=DEFAULT_BLUEGREEN_CMD,
        help="the bluegreen console script, may include arguments "
        f"(default {DEFAULT_BLUEGREEN_CMD})",
    )
    p.add_argument(
        "--skip-bluegreen", action="store_true", help="measure only the reference proxies"
    )
    p.add_argument(
        "--relay-python",
        default=DEFAULT_RELAY_PYTHON,
        help=f"a Python with uvloop for the blind relay target (default {DEFAULT_RELAY_PYTHON})",
    )
    p.add_argument(
        "--json",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="write JSON results to PATH (default benchmarks/results/<timestamp>.json)",
    )
    p.add_argument("--no-install", action="store_true", help="never run apt-get")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir of configs/logs")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.duration < 1 or args.warmup < 0:
        p.error("--rounds and --duration must be >= 1, --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except BenchError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nInterrupted: servers stopped.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
