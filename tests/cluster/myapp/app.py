"""myapp: the tutorial's demo application, as the cluster tests run it (a test fixture).

It answers every GET with its version (``myapp v1``), set at image build time in APP_VERSION,
and the pod's name, so a test can tell versions and replicas apart. Its variables are not
named MYAPP_*: the kubelet's service links for the tutorial's Service ``myapp`` set MYAPP_PORT
(``tcp://...``) in every pod of the namespace. ``/healthz`` answers 200
while the app is well; ``/bytes/N`` answers N bytes of `pattern` (at most 64 MiB), for the
large-body tests. ``POST /fail`` makes this one process answer 500 to everything but
``/recover`` (its readiness probe fails too), and ``POST /recover`` makes it well again: that
is how the rollback tests turn a colour bad after a switch. Standard library only, so that the
image is the stand-in base plus this file.
"""

from __future__ import annotations

import http.server
import os
import signal
import socket
import sys
import threading
import types

VERSION = os.environ.get("APP_VERSION", "v0")
POD = os.environ.get("HOSTNAME") or socket.gethostname()
PORT = int(os.environ.get("APP_LISTEN_PORT", "80"))
failing = threading.Event()
MAX_BYTES = 64 * 1024 * 1024
PATTERN = bytes(range(251))  # a prime length: no power-of-two chunking lines up with it


def pattern(size: int) -> bytes:
    """The body of ``/bytes/<size>``: PATTERN repeated and cut to `size`."""
    return (PATTERN * (size // len(PATTERN) + 1))[:size]


class Handler(http.server.BaseHTTPRequestHandler):
    """GET: version (or 500 while failing); POST /fail and /recover: switch the failure on/off."""

    protocol_version = "HTTP/1.1"  # keep-alive, as a real application serves the proxy
    # The head and the body are two writes: with Nagle's algorithm on, the body waits for the
    # client's delayed ACK of the head, 40 ms on every keep-alive request after the first
    # (found by benchmarks/cluster_switch.py: 45 ms p50 against 1.3 ms on fresh connections).
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        """Answer with the version, or 500 while failing."""
        if failing.is_set():
            self._answer(500, f"myapp {VERSION} failing on purpose ({POD})\n")
        elif self.path.startswith("/healthz"):
            self._answer(200, "ok\n")
        elif self.path.startswith("/bytes/") and self.path[7:].isdigit():
            size = int(self.path[7:])
            if size > MAX_BYTES:
                self._answer(400, f"at most {MAX_BYTES} bytes\n")
            else:
                self._send(200, "application/octet-stream", pattern(size))
        else:
            self._answer(200, f"myapp {VERSION} {POD}\n")

    def do_POST(self) -> None:
        """Turn failure on (/fail) or off (/recover) for this process."""
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path == "/fail":
            failing.set()
            self._answer(200, f"failing {POD}\n")
        elif self.path == "/recover":
            failing.clear()
            self._answer(200, f"recovered {POD}\n")
        else:
            self.do_GET()

    def _answer(self, status: int, text: str) -> None:
        self._send(status, "text/plain; charset=utf-8", text.encode())

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Myapp-Version", VERSION)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """No access log: 20 pods under load would fill the node's log directory."""


def main() -> None:
    """Serve on 0.0.0.0:APP_LISTEN_PORT until SIGTERM (PID 1 gets no default SIGTERM action)."""

    def stop(signum: int, frame: types.FrameType | None) -> None:
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    server = http.server.ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
