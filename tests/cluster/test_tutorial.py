"""The README's tutorial, step by step, on a real node: NodePort 30080, kube-proxy, Pods.

From the problem (a plain Service on 30080 selecting ``app: myapp`` mixes v1 and v2) to
bluegreen: ``kubectl apply -k deploy/examples/myapp`` with no overlay, every live request on
blue, the preview header reaching green, ``kubectl patch`` moving every new request to green on
both replicas, ``bluegreen switch/rollback --configmap`` from the host, and v1 removed at the end.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter

from tests.cluster.example import apply_example
from tests.cluster.node import NODE_PORT, REPO, Cluster, http_get

TUTORIAL_SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: myapp}
spec:
  type: NodePort
  selector: {app: myapp}
  ports: [{port: 80, targetPort: 80, nodePort: 30080}]
"""


def versions(url: str, count: int, headers: dict[str, str] | None = None) -> Counter[str]:
    """`count` GETs on fresh connections; how many answers each (colour, version) gave."""
    seen: Counter[str] = Counter()
    for _ in range(count):
        status, head, body = http_get(url, headers)
        assert status == 200, (status, body)
        seen[f"{head.get('x-bluegreen-colour', '-')} {body.split()[1]}"] += 1
    return seen


def wait_until(what: str, probe: object, timeout: float = 120) -> None:
    """Poll the callable `probe` until it returns true (bounded; the machine is shared)."""
    assert callable(probe)
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.5)


def serves(url: str, expect: str) -> bool:
    """Whether 20 fresh GETs all answer with `expect` (e.g. ``blue v1``)."""
    try:
        return set(versions(url, 20)) == {expect}
    except (OSError, AssertionError, IndexError):
        return False


def mixes(url: str) -> bool:
    """Whether 40 fresh GETs get both versions (False until kube-proxy opens the NodePort)."""
    try:
        return len(versions(url, 40)) == 2
    except (OSError, AssertionError, IndexError):
        return False


def test_the_tutorial_from_the_plain_service_to_bluegreen(cluster: Cluster) -> None:
    url = f"http://{cluster.node_address}:{NODE_PORT}/"
    kubectl = cluster.kubectl
    # The problem: the tutorial's Deployments behind one plain Service mix both versions.
    kubectl("delete", "service", "myapp", "--ignore-not-found")  # left by an interrupted run
    apply_example(cluster)
    kubectl("delete", "service", "bluegreen", "--ignore-not-found")
    kubectl("apply", "-f", "-", input_text=TUTORIAL_SERVICE)
    for deployment in ("myapp-v1", "myapp-v2"):
        kubectl("rollout", "status", f"deployment/{deployment}", "--timeout=180s", timeout=200)
    wait_until("both versions on the plain Service", lambda: mixes(url))

    # bluegreen in its place: delete the tutorial's Service, apply the example.
    kubectl("delete", "service", "myapp")
    apply_example(cluster)
    kubectl("rollout", "status", "deployment/bluegreen", "--timeout=180s", timeout=200)
    wait_until("bluegreen on 30080", lambda: serves(url, "blue v1"))
    assert versions(url, 100) == Counter({"blue v1": 100})
    preview = versions(url, 20, {"X-Bluegreen-Preview": "1"})
    assert preview == Counter({"green v2": 20})

    # Switch with kubectl patch: every new request, whichever replica kube-proxy picks.
    kubectl(
        "patch", "configmap", "bluegreen", "--type", "merge", "-p", '{"data":{"active":"green"}}'
    )
    wait_until("green on 30080", lambda: serves(url, "green v2"), 30)
    assert versions(url, 100) == Counter({"green v2": 100})

    # The same with the bluegreen CLI from the host, and back.
    bluegreen = [str(REPO / ".venv/bin/bluegreen")]
    env_args = ["--configmap", "default/bluegreen", "--kubeconfig", str(cluster.kubeconfig)]
    subprocess.run([*bluegreen, "switch", "blue", *env_args], check=True, timeout=60)
    wait_until("blue again", lambda: serves(url, "blue v1"), 30)
    subprocess.run([*bluegreen, "switch", "green", *env_args], check=True, timeout=60)
    wait_until("green again", lambda: serves(url, "green v2"), 30)
    subprocess.run([*bluegreen, "rollback", *env_args], check=True, timeout=60)
    wait_until("rolled back to blue", lambda: serves(url, "blue v1"), 30)
    subprocess.run([*bluegreen, "switch", "green", *env_args], check=True, timeout=60)
    wait_until("green for good", lambda: serves(url, "green v2"), 30)

    # Remove the old colour by hand (step 8 has bluegreen scale it down instead); green keeps
    # serving.
    kubectl("delete", "deployment", "myapp-v1")
    assert versions(url, 50) == Counter({"green v2": 50})
    history = json.loads(kubectl("get", "configmap", "bluegreen", "-o", "json"))
    assert history["data"]["active"] == "green"
