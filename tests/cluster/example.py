"""deploy/examples/myapp on the test cluster: applied, reset and looked at, for the cluster tests.

`Example.reset()` brings the namespace back to what ``kubectl apply -k deploy/examples/myapp``
gives on a fresh cluster (whatever an earlier test changed): every object of the example
applied (the image tag too), the tutorial's plain Service gone, ``active: blue`` with no
switch history, every Deployment rolled out, each bluegreen replica serving blue with both
colours healthy, and NodePort 30080 answering from blue.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from controller.decision import DECISION_ANNOTATION, ServedDecision, read_decision
from controller.history import HISTORY_ANNOTATION, PREVIOUS_ANNOTATION
from tests.cluster.node import NODE_PORT, REPO, Cluster, ClusterError
from tests.cluster.traffic import check_answer, wait_until

NAMESPACE = "default"
PROXY_SELECTOR = "app.kubernetes.io/name=bluegreen,app.kubernetes.io/component=proxy"
LEASE = "bluegreen-leader"
ADMIN_PORT = 9090
PROXY_PORT = 8080
# kubectl 1.20 cannot create the policy/v1 PodDisruptionBudget (Kubernetes >= 1.21, as
# deploy/README.md says); everything else of the kustomization is applied.
PDB_ON_1_20 = 'no matches for kind "PodDisruptionBudget" in version "policy/v1"'
DEPLOYMENTS = ("bluegreen", "myapp-v1", "myapp-v2")


def apply_example(cluster: Cluster) -> None:
    """``kubectl apply -k deploy/examples/myapp``, no overlay; fail on any error but the PDB's."""
    result = cluster.kubectl_result("apply", "-k", str(REPO / "deploy/examples/myapp"))
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    unexpected = [line for line in errors if PDB_ON_1_20 not in line]
    assert not unexpected, f"kubectl apply failed: {result.stderr}"


def pod_get(ip: str, port: int, path: str, timeout: float = 2) -> tuple[int, str]:
    """GET http://ip:port/path straight to a pod (the host reaches pod IPs on the bridge)."""
    request = urllib.request.Request(f"http://{ip}:{port}{path}", headers={"Accept": "*/*"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode(errors="replace")


def pod_post(ip: str, port: int, path: str, timeout: float = 2) -> int:
    """POST an empty body to a pod; the status."""
    request = urllib.request.Request(f"http://{ip}:{port}{path}", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return int(response.status)


@dataclass
class Example:
    """The example's objects in the cluster, and what the tests ask of them."""

    cluster: Cluster

    @property
    def url(self) -> str:
        """The entry point: NodePort 30080 on the node address."""
        return f"http://{self.cluster.node_address}:{NODE_PORT}/"

    # -- reading ------------------------------------------------------------------------------

    def pods(self, selector: str = PROXY_SELECTOR, *, ready_only: bool = True) -> dict[str, str]:
        """Pod name -> IP of the pods matching `selector` (Ready, not terminating, by default)."""
        listing = self.cluster.api(
            f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector={selector.replace('=', '%3D')}"
        )
        pods: dict[str, str] = {}
        for pod in (listing or {}).get("items", []):
            status = pod.get("status", {})
            ready = any(
                c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])
            )
            terminating = pod["metadata"].get("deletionTimestamp") is not None
            if not ready_only or (ready and not terminating and status.get("podIP")):
                pods[pod["metadata"]["name"]] = status.get("podIP", "")
        return pods

    def status_of(self, ip: str) -> dict[str, Any]:
        """The /status JSON of the replica at `ip`."""
        status, text = pod_get(ip, ADMIN_PORT, "/status")
        if status != 200:
            raise ClusterError(f"/status of {ip}: {status} {text[:200]}")
        document: dict[str, Any] = json.loads(text)
        return document

    def configmap(self) -> dict[str, Any]:
        """The ConfigMap ``bluegreen`` as the API returns it."""
        document = self.cluster.api(f"/api/v1/namespaces/{NAMESPACE}/configmaps/bluegreen")
        if document is None:
            raise ClusterError("the ConfigMap bluegreen cannot be read")
        return dict(document)

    def history(self) -> list[dict[str, str]]:
        """The switch history annotation, newest first."""
        annotations = self.configmap()["metadata"].get("annotations") or {}
        entries: list[dict[str, str]] = json.loads(annotations.get(HISTORY_ANNOTATION, "[]"))
        return entries

    def decision(self) -> ServedDecision | None:
        """The proxies' recorded decision (controller/decision.py), if any."""
        return read_decision(self.configmap()["metadata"].get("annotations") or {})

    def events(self, reason: str) -> list[dict[str, Any]]:
        """Events about the ConfigMap with this reason."""
        selector = "involvedObject.kind%3DConfigMap,involvedObject.name%3Dbluegreen"
        listing = self.cluster.api(
            f"/api/v1/namespaces/{NAMESPACE}/events?fieldSelector={selector}"
        )
        return [e for e in (listing or {}).get("items", []) if e.get("reason") == reason]

    def leader(self) -> str | None:
        """The Ready pod holding the Lease (holderIdentity is the pod name, a dash, a suffix)."""
        lease = self.cluster.api(
            f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{LEASE}"
        )
        holder = str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")
        return next((pod for pod in self.pods() if holder.startswith(f"{pod}-")), None)

    # -- changing -----------------------------------------------------------------------------

    def patch_active(self, colour: str) -> float:
        """Merge-patch ``active`` as ``kubectl patch`` does; the monotonic time of the answer."""
        status, document = self.cluster.api_call(
            f"/api/v1/namespaces/{NAMESPACE}/configmaps/bluegreen",
            method="PATCH",
            body={"data": {"active": colour}},
        )
        answered = time.monotonic()
        if status != 200:
            raise ClusterError(f"PATCH active={colour}: {status} {document}")
        return answered

    def replicas_on(self, colour: str | None) -> bool:
        """Whether every Ready replica serves `colour` (any, if None), both colours healthy."""
        pods = self.pods()
        if not pods:
            return False
        try:
            statuses = [self.status_of(ip) for ip in pods.values()]
        except (OSError, ClusterError, ValueError):
            return False
        return all(
            colour in (None, s["active"])
            and all(c["health"] == "healthy" for c in s["colours"].values())
            for s in statuses
        )

    def serves(self, colour: str, count: int = 20) -> bool:
        """Whether `count` fresh GETs on NodePort 30080 are all answered right by `colour`."""
        from tests.cluster.node import http_get  # noqa: PLC0415 - keeps the import list short

        try:
            for _ in range(count):
                status, head, body = http_get(self.url, timeout=3)
                answered = head.get("x-bluegreen-colour", "-")
                if answered != colour or check_answer(status, answered, body) is not None:
                    return False
        except OSError:
            return False
        return True

    def rollout(self, deployment: str, timeout: int = 240) -> None:
        """``kubectl rollout status`` until the Deployment is fully rolled out."""
        self.cluster.kubectl(
            "rollout", "status", f"deployment/{deployment}", f"--timeout={timeout}s",
            timeout=timeout + 20,
        )  # fmt: skip

    def reset(self) -> None:
        """Back to the freshly applied example: see the module's docstring."""
        kubectl = self.cluster.kubectl
        kubectl("delete", "service", "myapp", "--ignore-not-found")
        apply_example(self.cluster)
        for deployment in DEPLOYMENTS:
            self.rollout(deployment)
        # Only once both colours are healthy: a switch to a colour without Ready pods (v1 just
        # re-created) would rightly be refused.
        wait_until("both colours healthy on every replica", lambda: self.replicas_on(None))
        status, document = self.cluster.api_call(
            f"/api/v1/namespaces/{NAMESPACE}/configmaps/bluegreen",
            method="PATCH",
            body={
                "metadata": {
                    "annotations": {
                        HISTORY_ANNOTATION: None,
                        PREVIOUS_ANNOTATION: None,
                        DECISION_ANNOTATION: None,
                    }
                },
                "data": {"active": "blue"},
            },
        )
        if status != 200:
            raise ClusterError(f"resetting the ConfigMap: {status} {document}")
        wait_until("every replica on blue", lambda: self.replicas_on("blue"), 30)
        wait_until("NodePort 30080 answering from blue", lambda: self.serves("blue"), 60)
