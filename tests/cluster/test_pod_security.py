"""The Pods run as deploy/ says, checked inside the running containers, not in the manifests.

bluegreen: the process (PID 1 of its container, `bluegreen run`) runs as uid and gid 10001,
with no capability in any set, no_new_privs and a seccomp filter; its root filesystem is
read-only and only the /tmp emptyDir is writable. Its ServiceAccount token, the one mounted in
the pod, gets exactly what the Role grants: its ConfigMap, Events and its Lease; Secrets, other
ConfigMaps and Pods are refused. myapp pods get no token at all.
"""

from __future__ import annotations

from tests.cluster.example import NAMESPACE, Example

TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
SERVICE_ACCOUNT = f"system:serviceaccount:{NAMESPACE}:bluegreen"


def proc_status(example: Example, pod: str) -> dict[str, str]:
    """/proc/1/status of the pod's container, as a dict (read with kubectl exec)."""
    text = example.cluster.kubectl("exec", pod, "--", "cat", "/proc/1/status")
    return {
        key.strip(): value.strip()
        for key, _, value in (line.partition(":") for line in text.splitlines())
    }


def test_bluegreen_runs_as_10001_without_capabilities(example: Example) -> None:
    pods = example.pods()
    assert len(pods) == 2
    for pod in pods:
        command = example.cluster.kubectl("exec", pod, "--", "cat", "/proc/1/cmdline")
        # The console script under the image's python3: PID 1 is bluegreen itself.
        assert command.split("\0")[1:4] == ["/usr/local/bin/bluegreen", "run", "--configmap"]
        status = proc_status(example, pod)
        assert status["Uid"].split() == ["10001"] * 4  # real, effective, saved, filesystem
        assert status["Gid"].split() == ["10001"] * 4
        assert status["Groups"].split() == ["10001"]  # its own group only, never 0
        for capabilities in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(status[capabilities], 16) == 0, (pod, capabilities, status[capabilities])
        assert status["NoNewPrivs"] == "1"  # allowPrivilegeEscalation: false
        assert status["Seccomp"] == "2"  # RuntimeDefault: a filter is in force


def test_bluegreen_root_filesystem_is_read_only(example: Example) -> None:
    for pod in example.pods():
        mounts = example.cluster.kubectl("exec", pod, "--", "cat", "/proc/1/mountinfo")
        root = [line.split() for line in mounts.splitlines() if line.split()[4] == "/"]
        assert root and "ro" in root[0][5].split(","), root
        write = example.cluster.kubectl_result("exec", pod, "--", "touch", "/usr/local/probe")
        assert write.returncode != 0 and "Read-only file system" in write.stderr, write
        # The one writable place is the small in-memory /tmp of the manifest.
        example.cluster.kubectl("exec", pod, "--", "touch", "/tmp/probe")
        example.cluster.kubectl("exec", pod, "--", "rm", "/tmp/probe")


def test_the_pod_token_gets_the_role_and_nothing_more(example: Example) -> None:
    pod = next(iter(example.pods()))
    token = example.cluster.kubectl("exec", pod, "--", "cat", TOKEN).strip()
    assert token
    base = f"/api/v1/namespaces/{NAMESPACE}"
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"
    allowed = [f"{base}/configmaps/bluegreen", f"{leases}/bluegreen-leader"]
    refused = [
        f"{base}/secrets",
        "/api/v1/secrets",
        f"{base}/configmaps",  # listing all of them: only the one by name
        f"{base}/configmaps/kube-root-ca.crt",
        f"{base}/pods",
        f"{base}/serviceaccounts/bluegreen",
        f"{leases}/someone-else",
    ]
    for path in allowed:
        status, _ = example.cluster.api_call(path, token=token)
        assert status == 200, path
    for path in refused:
        status, document = example.cluster.api_call(path, token=token)
        assert status == 403, (path, status, document)
        assert SERVICE_ACCOUNT in document["message"]
    # The same, as the API server's authorizer answers for the ServiceAccount.
    for verb, resource in [("get", "secrets"), ("list", "secrets"), ("watch", "secrets")]:
        answer = example.cluster.kubectl_result(
            "auth", "can-i", verb, resource, "--as", SERVICE_ACCOUNT
        )
        assert answer.stdout.strip() == "no", (verb, resource, answer)
    answer = example.cluster.kubectl_result(
        "auth", "can-i", "patch", "configmap/bluegreen", "--as", SERVICE_ACCOUNT
    )
    assert answer.stdout.strip() == "yes", answer


def test_myapp_pods_get_no_token(example: Example) -> None:
    pod = next(iter(example.pods("app=myapp,version=v1")))
    answer = example.cluster.kubectl_result("exec", pod, "--", "cat", TOKEN)
    assert answer.returncode != 0 and "No such file or directory" in answer.stderr, answer
    assert proc_status(example, pod)["NoNewPrivs"] == "1"
