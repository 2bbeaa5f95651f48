"""Switch latency and request latency through NodePort 30080 and kube-proxy, on a real cluster.

Run (root; the cluster of tests/cluster/node.py, started if it is not up and then taken down):

    flock -x /work/wt/bench.lock .venv/bin/python benchmarks/cluster_switch.py [--switches 50]

It applies deploy/examples/myapp as the tests do (Example.reset), then:

1. Switch latency with 2 and then 3 bluegreen replicas (``kubectl scale``). Clients on
   NODE:30080 (keep-alive ones and ones opening a connection per request, so kube-proxy spreads
   them over every replica) keep requesting while the ConfigMap's ``active`` is patched back and
   forth. For each switch: the time from the PATCH's answer (and from the moment it was sent)
   until the last request answered by the old colour was sent, i.e. after which every request
   went to the new colour, whichever replica kube-proxy picked. Median and p99 (nearest rank:
   with 50 switches, the worst one).
2. Request latency through the NodePort, in the same run: GET / on NODE:30080 (kube-proxy ->
   a bluegreen pod -> the Service myapp-blue -> kube-proxy -> a v1 pod) against a plain NodePort
   Service on 30081 selecting the same v1 pods (kube-proxy -> a v1 pod), one client, keep-alive
   and a fresh connection per request, in interleaved rounds.

Everything it changes goes back: the replicas to 2, the plain Service deleted, ``active: blue``.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.proxy_process import percentile
from tests.cluster.example import Example
from tests.cluster.node import NODE_PORT, Cluster
from tests.cluster.traffic import Load, wait_until

PLAIN_PORT = 30081
PLAIN_SERVICE = f"""
apiVersion: v1
kind: Service
metadata: {{name: myapp-plain}}
spec:
  type: NodePort
  selector: {{app: myapp, version: v1}}
  ports: [{{port: 80, targetPort: 80, nodePort: {PLAIN_PORT}}}]
"""


def last_old_answer(load: Load, colour: str, sent_from: float) -> float | None:
    """Send time of the last request sent since `sent_from` that `colour` did not answer."""
    stale = [a.sent for a in load.since(sent_from) if a.colour != colour]
    return max(stale, default=None)


def switch_latencies(
    example: Example, replicas: int, switches: int
) -> tuple[list[float], list[float], Load]:
    """`switches` switches under load with `replicas` replicas: (from answer, from send, load)."""
    cluster = example.cluster
    cluster.kubectl("scale", "deployment/bluegreen", f"--replicas={replicas}")
    example.rollout("bluegreen")
    if example.configmap()["data"]["active"] != "blue":
        example.patch_active("blue")
    wait_until(f"{replicas} replicas on blue", lambda: len(example.pods()) == replicas, 120)
    wait_until("all healthy", lambda: example.replicas_on("blue"), 60)
    from_answer: list[float] = []
    from_send: list[float] = []
    # No pause between requests: the gap between two sends bounds the resolution.
    load = Load(cluster.node_address, NODE_PORT, keepalive_clients=3, fresh_clients=3, pause=0)
    load.start()
    try:
        wait_until("the load running", lambda: len(load.answers) > 100, 30)
        colour = "blue"
        for _ in range(switches):
            colour = "green" if colour == "blue" else "blue"
            sent = time.monotonic()
            answered = example.patch_active(colour)
            # Long enough for any straggler, and for every client to have sent a few requests.
            time.sleep(0.6)
            last = last_old_answer(load, colour, sent)
            from_answer.append(max(0.0, (last or answered) - answered))
            from_send.append((last or sent) - sent)
    finally:
        load.stop()
    return from_answer, from_send, load


def request_latencies(host: str, port: int, keepalive: bool, count: int) -> list[float]:
    """`count` sequential GET / (one connection, or one per request); seconds each."""
    seconds: list[float] = []
    connection = http.client.HTTPConnection(host, port, timeout=10)
    for _ in range(count):
        if not keepalive:
            connection = http.client.HTTPConnection(host, port, timeout=10)
        started = time.perf_counter()
        connection.request("GET", "/", headers={} if keepalive else {"Connection": "close"})
        response = connection.getresponse()
        body = response.read().decode()
        seconds.append(time.perf_counter() - started)
        if response.status != 200 or not body.startswith("myapp v1"):
            raise RuntimeError(f"port {port}: {response.status} {body[:80]!r}")
        if not keepalive:
            connection.close()
    connection.close()
    return seconds


def ms(value: float) -> str:
    """Milliseconds, one decimal."""
    return f"{value * 1000:7.1f}"


def run(switches: int, rounds: int, per_round: int) -> None:
    """Measure and print both tables."""
    cluster = Cluster()
    was_up = cluster.is_up()
    cluster.up()
    example = Example(cluster)
    try:
        example.reset()
        print(f"# switch latency over NodePort {NODE_PORT}, {switches} switches per row")
        print("replicas | from PATCH answer: p50    p99    max | from PATCH sent: p50    p99 | "
              "requests/s  failed")  # fmt: skip
        for replicas in (2, 3):
            answer, send, load = switch_latencies(example, replicas, switches)
            sent = [a.sent for a in load.answers]
            rate = len(sent) / (max(sent) - min(sent))
            print(
                f"{replicas:8} |              {ms(statistics.median(answer))} "
                f"{ms(percentile(answer, 0.99))} {ms(max(answer))} |        "
                f"{ms(statistics.median(send))} {ms(percentile(send, 0.99))} | "
                f"{rate:10.0f} {len(load.failures):7}"
            )
        cluster.kubectl("scale", "deployment/bluegreen", "--replicas=2")
        example.patch_active("blue")
        example.rollout("bluegreen")
        wait_until("2 replicas on blue", lambda: example.replicas_on("blue"), 120)
        cluster.kubectl("apply", "-f", "-", input_text=PLAIN_SERVICE)
        host = cluster.node_address
        wait_until(
            "the plain Service on its NodePort",
            lambda: _answers(host, PLAIN_PORT),
            60,
        )
        figures: dict[tuple[str, bool], list[float]] = {}
        for _ in range(rounds):
            for keepalive in (True, False):
                for label, port in (("bluegreen", NODE_PORT), ("plain Service", PLAIN_PORT)):
                    figures.setdefault((label, keepalive), []).extend(
                        request_latencies(host, port, keepalive, per_round)
                    )
        print()
        print(f"# request latency GET / through NodePort, {rounds} x {per_round} per row, ms")
        print("path                         connection |   p50     p90     p99")
        for (label, keepalive), values in figures.items():
            kind = "keep-alive" if keepalive else "new each  "
            print(
                f"{label:28} {kind} | {ms(statistics.median(values))} "
                f"{ms(percentile(values, 0.9))} {ms(percentile(values, 0.99))}"
            )
    finally:
        cluster.kubectl("delete", "service", "myapp-plain", "--ignore-not-found", check=False)
        cluster.kubectl("scale", "deployment/bluegreen", "--replicas=2", check=False)
        if not was_up:
            cluster.down()


def _answers(host: str, port: int) -> bool:
    try:
        request_latencies(host, port, False, 5)
    except (OSError, RuntimeError, http.client.HTTPException):
        return False
    return True


def main() -> None:
    """Parse the flags and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--switches", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    parser.add_argument("--per-round", type=int, default=200, help="requests per target, round")
    args = parser.parse_args()
    run(args.switches, args.rounds, args.per_round)


if __name__ == "__main__":
    main()
