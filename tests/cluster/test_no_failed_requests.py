"""Not one failed request on NodePort 30080, keep-alive or not, whatever happens to bluegreen.

Under a steady load (tests/cluster/traffic.py: keep-alive clients and clients opening a fresh
connection per request, every answer checked for status, colour and version): 50 switches; a
rolling update of the bluegreen Deployment to a new image tag; deleting one bluegreen Pod; and
``kubectl rollout restart deployment/bluegreen``, where each old Pod is also watched from the
host to show the order docs/operations.md promises: out of the Service's endpoints at once,
serving through the 5 s preStop sleep, then /readyz failing, then the listener closing.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.cluster.example import ADMIN_PORT, NAMESPACE, PROXY_PORT, Example, pod_get
from tests.cluster.images import BLUEGREEN_REF
from tests.cluster.traffic import Load, all_on_after, connects, load_on, wait_until

SWITCHES = 50
PRESTOP_SECONDS = 5  # deploy/base/deployment.yaml's preStop sleep
NEW_TAG = "0.1.0-rolled"


def assert_no_failures(load: Load, *, stale_retries_allowed: bool) -> None:
    """Zero failed requests, and (unless allowed) no stale keep-alive retry either."""
    print(load.summary())
    assert len(load.answers) > 100, load.summary()
    assert not load.failures, load.summary()
    if not stale_retries_allowed:
        assert load.stale_retries == 0, load.summary()
    keepalive = [a for a in load.answers if a.keepalive]
    assert keepalive and len(keepalive) < len(load.answers)  # both kinds of client ran


def test_fifty_switches_fail_no_request(example: Example) -> None:
    latencies: list[float] = []
    with load_on(example.cluster.node_address, 30080) as load:
        wait_until("the load running", lambda: len(load.answers) > 50, 30)
        colour = "blue"
        for _ in range(SWITCHES):
            colour = "green" if colour == "blue" else "blue"
            patched = example.patch_active(colour)
            moved = wait_until(
                f"every new request on {colour}",
                lambda c=colour, p=patched: all_on_after(load, c, p),  # type: ignore[misc]
                15,
            )
            assert moved
            all_on = all_on_after(load, colour, patched)
            assert all_on is not None
            latencies.append(all_on - patched)
    latencies.sort()
    print(
        f"{SWITCHES} switches: all new requests on the new colour after "
        f"p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms"
    )
    assert_no_failures(load, stale_retries_allowed=False)
    assert example.configmap()["data"]["active"] == colour


def test_a_rolling_update_to_a_new_image_tag_fails_no_request(example: Example) -> None:
    cluster = example.cluster
    tagged = f"{BLUEGREEN_REF.rsplit(':', 1)[0]}:{NEW_TAG}"
    cluster.ctr("images", "tag", "--force", BLUEGREEN_REF, tagged)
    before = set(example.pods())
    try:
        with load_on(cluster.node_address, 30080) as load:
            wait_until("the load running", lambda: len(load.answers) > 50, 30)
            cluster.kubectl(
                "set", "image", "deployment/bluegreen", f"bluegreen=bluegreen:{NEW_TAG}"
            )
            example.rollout("bluegreen")
            wait_until("two new replicas serving", lambda: len(example.pods()) == 2, 60)
            wait_until(
                "the old pods gone",
                lambda: not before & set(example.pods(ready_only=False)),
                120,
            )
            settled = time.monotonic()
            wait_until("a while on the new replicas", lambda: len(load.since(settled)) > 100, 30)
        after = example.pods()
        assert not before & set(after)
        for pod in after:
            image = cluster.kubectl("get", "pod", pod, "-o", "jsonpath={.spec.containers[0].image}")
            assert image == f"bluegreen:{NEW_TAG}"
        assert_no_failures(load, stale_retries_allowed=True)
    finally:
        # The next test's reset applies the manifest's tag again; only the extra tag goes here.
        example.reset()
        cluster.ctr("images", "rm", tagged)


def test_deleting_a_bluegreen_pod_fails_no_request(example: Example) -> None:
    victim, *_ = example.pods()
    with load_on(example.cluster.node_address, 30080) as load:
        wait_until("the load running", lambda: len(load.answers) > 50, 30)
        example.cluster.kubectl("delete", "pod", victim, "--wait=false")
        wait_until(
            "a replacement serving",
            lambda: len(pods := example.pods()) == 2 and victim not in pods,
            90,
        )
        wait_until(f"{victim} gone", lambda: victim not in example.pods(ready_only=False), 90)
        settled = time.monotonic()
        wait_until("a while after", lambda: len(load.since(settled)) > 100, 30)
    assert_no_failures(load, stale_retries_allowed=True)


@dataclass
class Timeline:
    """What the host sees of one terminating bluegreen Pod, polled every few milliseconds."""

    example: Example
    name: str
    ip: str
    terminating: float | None = None  # the API shows deletionTimestamp
    left_endpoints: float | None = None  # its IP is no longer in the Service's endpoints
    readyz_failed: float | None = None  # /readyz answered something else than 200
    listener_closed: float | None = None  # the proxy port refused a connection
    proxy_errors_before_readyz: list[str] = field(default_factory=list)
    # Direct GETs that SIGTERM overtook: the connection failed and /readyz failed right after.
    cut_by_sigterm: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def watch_pod(self) -> None:
        """Poll the API for the Pod's deletion and the endpoints of the Service bluegreen."""
        while not self._stop.is_set() and self.left_endpoints is None:
            now = time.monotonic()
            if self.terminating is None:
                pod: Any = self.example.cluster.api(
                    f"/api/v1/namespaces/{NAMESPACE}/pods/{self.name}"
                )
                if pod is None or pod["metadata"].get("deletionTimestamp"):
                    self.terminating = now
            else:
                endpoints: Any = self.example.cluster.api(
                    f"/api/v1/namespaces/{NAMESPACE}/endpoints/bluegreen"
                )
                addresses = {
                    a["ip"]
                    for subset in (endpoints or {}).get("subsets") or []
                    for a in subset.get("addresses") or []
                }
                if endpoints is not None and self.ip not in addresses:
                    self.left_endpoints = now
            time.sleep(0.05)

    def watch_process(self) -> None:
        """Poll the Pod's /readyz and its proxy port straight from the host.

        During preStop each round also GETs / on the proxy port. The /readyz check and that GET
        are separate requests, and SIGTERM can come between them: the proxy then closes its
        listener and its idle connections, among them the GET's if its request has not arrived
        yet (a fresh connection closed unanswered, `RemoteDisconnected`), or the GET is refused.
        That GET was not answered during preStop but after it, as docs/operations.md says. A
        GET whose connection failed is therefore followed by another /readyz: it fails from the
        moment SIGTERM is handled, before the listener closes, so a 200 means the proxy was
        serving normally when the GET failed, a real failure during preStop. The same goes for
        the listener refusing a connection right after a /readyz that passed.
        """
        while not self._stop.is_set() and self.listener_closed is None:
            now = time.monotonic()
            if self.readyz_failed is None and not self._ready():
                self.readyz_failed = now
            if not connects(self.ip, PROXY_PORT):
                # SIGTERM may also have come right after the /readyz check above.
                if self.readyz_failed is None and not self._ready():
                    self.readyz_failed = time.monotonic()
                self.listener_closed = time.monotonic()
            elif self.readyz_failed is None and self.terminating is not None:
                try:
                    status, body = pod_get(self.ip, PROXY_PORT, "/", timeout=2)
                except OSError as error:
                    status, body = 0, repr(error)
                if status == 0 and not self._ready():
                    self.readyz_failed = time.monotonic()
                    self.cut_by_sigterm.append(body[:80])
                elif status != 200:
                    self.proxy_errors_before_readyz.append(f"{status} {body[:80]}")
            time.sleep(0.02)

    def _ready(self) -> bool:
        """Whether the Pod's /readyz answers 200 now."""
        try:
            status, _ = pod_get(self.ip, ADMIN_PORT, "/readyz", timeout=1)
        except OSError:
            return False
        return status == 200

    def start(self) -> list[threading.Thread]:
        """Both pollers, started."""
        threads = [
            threading.Thread(target=self.watch_pod, daemon=True),
            threading.Thread(target=self.watch_process, daemon=True),
        ]
        for thread in threads:
            thread.start()
        return threads

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()


def test_rollout_restart_under_load_drains_as_documented(example: Example) -> None:
    old = example.pods()
    timelines = [Timeline(example, name, ip) for name, ip in old.items()]
    threads = [thread for timeline in timelines for thread in timeline.start()]
    try:
        with load_on(example.cluster.node_address, 30080) as load:
            wait_until("the load running", lambda: len(load.answers) > 50, 30)
            example.cluster.kubectl("rollout", "restart", "deployment/bluegreen")
            example.rollout("bluegreen")
            wait_until(
                "the old pods gone",
                lambda: not set(old) & set(example.pods(ready_only=False)),
                120,
            )
            settled = time.monotonic()
            wait_until("a while on the new replicas", lambda: len(load.since(settled)) > 100, 30)
    finally:
        for timeline in timelines:
            timeline.stop()
        for thread in threads:
            thread.join(10)
    assert_no_failures(load, stale_retries_allowed=True)
    for t in timelines:
        seen = (
            f"{t.name}: terminating {t.terminating}, out of endpoints {t.left_endpoints}, "
            f"/readyz failed {t.readyz_failed}, listener closed {t.listener_closed}"
        )
        print(seen)
        assert t.terminating and t.left_endpoints and t.readyz_failed and t.listener_closed, seen
        # 1. Out of the endpoints at once, while the preStop sleep runs.
        assert t.left_endpoints - t.terminating < 2, seen
        assert t.left_endpoints < t.readyz_failed, seen
        # The proxy kept serving normally through preStop; SIGTERM came after it.
        assert t.readyz_failed - t.terminating >= PRESTOP_SECONDS - 0.5, seen
        # Every GET during preStop is answered, with a 200 (see Timeline.watch_process for the
        # one whose connection SIGTERM, at the end of preStop, got to first).
        if t.cut_by_sigterm:
            print(f"{t.name}: a GET overtaken by SIGTERM: {t.cut_by_sigterm}")
        assert not t.proxy_errors_before_readyz, (seen, t.proxy_errors_before_readyz)
        # 2. On SIGTERM readiness fails first, then the listener closes.
        assert t.readyz_failed <= t.listener_closed, seen


def test_keep_alive_requests_are_not_held_back(example: Example) -> None:
    """No 40 ms stall per request (Nagle against delayed ACK, as myapp had; see its Handler)."""
    connection = http.client.HTTPConnection(example.cluster.node_address, 30080, timeout=10)
    seconds = []
    try:
        for _ in range(100):
            started = time.perf_counter()
            connection.request("GET", "/")
            response = connection.getresponse()
            assert response.status == 200 and response.read().startswith(b"myapp v1")
            seconds.append(time.perf_counter() - started)
    finally:
        connection.close()
    seconds.sort()
    print(f"keep-alive GET via bluegreen: p50 {seconds[50] * 1000:.1f} ms")
    assert seconds[50] < 0.02, seconds
