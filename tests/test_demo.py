"""`bluegreen demo` does what it prints: blue live, green on preview, switch, green live."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.net import free_port


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[str, str]:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.headers["X-Bluegreen-Colour"], response.read().decode()


def test_demo_follows_its_own_instructions(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(4)]
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "controller.cli",
            "demo",
            "--port",
            str(ports[0]),
            "--admin-port",
            str(ports[1]),
            "--blue-port",
            str(ports[2]),
            "--green-port",
            str(ports[3]),
            "--workdir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert demo.stdout is not None
        printed = ""
        deadline = time.monotonic() + 30
        while "Press Ctrl-C" not in printed and time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            printed += line
        assert "Press Ctrl-C" in printed, printed
        proxy = f"http://127.0.0.1:{ports[0]}/"
        assert proxy in printed

        assert fetch(proxy) == ("blue", "myapp v1 (blue) answered /\n")
        assert fetch(proxy, {"X-Bluegreen-Preview": "1"})[0] == "green"

        switch_line = next(line for line in printed.splitlines() if "switch green" in line)
        command = shlex.split(switch_line.split("#")[0])
        assert command[1:3] == ["switch", "green"]
        subprocess.run(
            [sys.executable, "-m", "controller.cli", *command[1:]], check=True, timeout=30
        )
        deadline = time.monotonic() + 5
        colour = "blue"
        while colour != "green" and time.monotonic() < deadline:
            colour, body = fetch(proxy)
            time.sleep(0.02)
        assert (colour, body) == ("green", "myapp v2 (green) answered /\n")
        assert re.search(r"status page\s+http://127\.0\.0\.1:\d+/status", printed)
    finally:
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=15) == 0
