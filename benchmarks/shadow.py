"""Shadow traffic's cost to live traffic (issue 16): req/s and p99 with shadow off and on.

One `bluegreen run` process (compiled, as bin/setup builds it) in front of a live colour and
an idle one, all on loopback. Four scenarios, side by side in the same run, in interleaved
rounds (each round in another order, so that drift hits every scenario alike):

- `off`: shadow.percent 0;
- `10%`: shadow.percent 10, a healthy idle colour;
- `100%`: shadow.percent 100, a healthy idle colour;
- `100% dead`: shadow.percent 100, an idle colour that accepts connections and never answers.

The config file is rewritten between scenarios (the proxy follows it within 50 ms); wrk loads
small GETs for `--duration` seconds. Printed: medians over the rounds of req/s and p99, their
ratio to `off`, the proxy's RSS after each scenario and its peak (VmHWM), and the shadow
outcomes the proxy counted. The colours are small uvloop servers in their own processes.

    .venv/bin/python -m benchmarks.shadow --rounds 5 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.proxy_process import start_proxy, wait_ready
from benchmarks.run import WrkParseError, parse_wrk, rotated
from tests.support.net import free_port

BODY = b"ok\n"

# A colour: answers every request with a small body, keep-alive (or, `dead`, never answers).
COLOUR_SERVER = """
import asyncio, sys, uvloop

BODY = b"ok\\n"
RESPONSE = b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n%s" % (len(BODY), BODY)


class Answering(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""

    def data_received(self, data):
        self.buffer += data
        while True:
            end = self.buffer.find(b"\\r\\n\\r\\n")
            if end < 0:
                return
            self.buffer = self.buffer[end + 4:]
            self.transport.write(RESPONSE)


class Silent(asyncio.Protocol):
    def data_received(self, data):
        pass  # read and never answer


async def main(port, dead):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        Silent if dead else Answering, "127.0.0.1", port, backlog=4096
    )
    await server.serve_forever()


uvloop.run(main(int(sys.argv[1]), sys.argv[2] == "dead"))
"""


@dataclass(frozen=True)
class Scenario:
    name: str
    percent: float
    idle_dead: bool


SCENARIOS = (
    Scenario("off", 0, False),
    Scenario("10%", 10, False),
    Scenario("100%", 100, False),
    Scenario("100% dead", 100, True),
)


@dataclass
class Figures:
    rps: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    errors: int = 0


def config_text(live: int, idle: int, percent: float) -> str:
    return (
        "active: blue\n"
        f"upstream.blue: http://127.0.0.1:{live}\n"
        f"upstream.green: http://127.0.0.1:{idle}\n"
        f"shadow.percent: {percent:g}\n"
        # The benchmark keeps the health checks quiet: they are not what is measured.
        "health.interval: 10s\nhealth.timeout: 1s\n"
    )


def admin_json(admin_port: int, path: str) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}{path}", timeout=5) as response:
        document: dict[str, object] = json.load(response)
        return document


def wait_for_config(admin_port: int, percent: float, idle_port: int) -> None:
    """Wait until the proxy serves the config just written (its shadow percent and idle URL)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status = admin_json(admin_port, "/status")
        shadow = status.get("shadow")
        colours = status.get("colours")
        if (
            isinstance(shadow, dict)
            and shadow.get("percent") == percent
            and isinstance(colours, dict)
            and str(idle_port) in str(colours.get("green"))
        ):
            return
        time.sleep(0.05)
    raise SystemExit("the proxy did not take the new config within 10 s")


def rss_mib(pid: int) -> tuple[float, float]:
    """The process's resident set now and at its peak (VmRSS, VmHWM), in MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def wrk(wrk_path: str, url: str, duration: float, connections: int) -> tuple[float, float, int]:
    """Run wrk; return req/s, p99 in ms, and socket errors plus non-2xx answers."""
    out = subprocess.run(
        [wrk_path, "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=False,
    )
    try:
        result = parse_wrk(out.stdout + out.stderr)
    except WrkParseError as error:
        raise SystemExit(str(error)) from error
    errors = (
        result.connect_errors
        + result.read_errors
        + result.write_errors
        + result.timeouts
        + result.non2xx
    )
    return result.rps, result.p99_ms, errors


def run(rounds: int, duration: float, connections: int) -> None:
    wrk_path = shutil.which("wrk")
    if wrk_path is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    live_port, idle_port, dead_port = free_port(), free_port(), free_port()
    colours = [
        subprocess.Popen([sys.executable, "-c", COLOUR_SERVER, str(port), kind])
        for port, kind in ((live_port, "live"), (idle_port, "live"), (dead_port, "dead"))
    ]
    config = Path(tempfile.mkdtemp(prefix="bluegreen-shadow-")) / "bluegreen.yaml"
    config.write_text(config_text(live_port, idle_port, 0))
    proxy = start_proxy(["--config", str(config)])
    figures = {scenario.name: Figures() for scenario in SCENARIOS}
    try:
        asyncio.run(wait_ready(proxy))
        url = f"http://127.0.0.1:{proxy.port}/"
        wrk(wrk_path, url, 2, connections)  # warm-up
        for round_ in range(rounds):
            for name in rotated([s.name for s in SCENARIOS], round_):
                scenario = next(s for s in SCENARIOS if s.name == name)
                idle = dead_port if scenario.idle_dead else idle_port
                config.write_text(config_text(live_port, idle, scenario.percent))
                wait_for_config(proxy.admin_port, scenario.percent, idle)
                rps, p99, errors = wrk(wrk_path, url, duration, connections)
                kept = figures[name]
                kept.rps.append(rps)
                kept.p99_ms.append(p99)
                kept.rss_mib.append(rss_mib(proxy.process.pid)[0])
                kept.errors += errors
                print(
                    f"round {round_ + 1} {name:<10} {rps:>9.0f} req/s  p99 {p99:6.2f} ms  "
                    f"RSS {kept.rss_mib[-1]:6.1f} MiB",
                    flush=True,
                )
        _, peak = rss_mib(proxy.process.pid)
        shadow = admin_json(proxy.admin_port, "/status").get("shadow")
    finally:
        proxy.stop()
        for colour in colours:
            colour.terminate()
            colour.wait(timeout=10)
    off = figures["off"]
    base_rps, base_p99 = statistics.median(off.rps), statistics.median(off.p99_ms)
    print(f"\n{rounds} rounds x {duration:g} s, wrk -t1 -c{connections}, small GET ({len(BODY)} B)")
    print(
        f"{'scenario':<11}{'req/s':>10}{'ratio':>8}{'p99 ms':>9}{'ratio':>8}{'RSS MiB':>9}  errors"
    )
    for scenario in SCENARIOS:
        kept = figures[scenario.name]
        rps, p99 = statistics.median(kept.rps), statistics.median(kept.p99_ms)
        print(
            f"{scenario.name:<11}{rps:>10.0f}{rps / base_rps:>8.3f}{p99:>9.2f}"
            f"{p99 / base_p99:>8.3f}{max(kept.rss_mib):>9.1f}  {kept.errors}"
        )
    print(f"peak RSS (VmHWM) of the proxy over the run: {peak:.1f} MiB")
    if isinstance(shadow, dict):
        for colour, shown in (shadow.get("colours") or {}).items():
            print(f"shadow outcomes of {colour} (whole run): {shown.get('total')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    run(args.rounds, args.duration, args.connections)


if __name__ == "__main__":
    main()
