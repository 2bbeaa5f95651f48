"""`bluegreen switch --wait` from outside the cluster, as an operator runs it on a workstation.

The CLI gets only the kubeconfig, the ConfigMap's name and the namespace. It writes the switch,
then finds the ready bluegreen pods behind the admin Service and reads each one's `/status`
through the API server's pod proxy (nothing else reaches the pods from a workstation). Two
replicas, as deploy/examples/myapp runs them: a good switch returns 0 once both serve green; a
switch to a colour whose pods all fail is refused by the replicas, and the CLI says so and exits
non-zero while NodePort 30080 keeps answering from blue.
"""

from __future__ import annotations

import contextlib
import subprocess

from controller.status_report import EXIT_DIVERGED
from tests.cluster.example import NAMESPACE, Example, pod_post
from tests.cluster.traffic import wait_until
from tests.support.process import BLUEGREEN

GREEN_PODS = "app=myapp,version=v2"


def switch(example: Example, colour: str, timeout: str) -> subprocess.CompletedProcess[str]:
    """`bluegreen switch COLOUR --configmap bluegreen -n default --kubeconfig K --wait`."""
    return subprocess.run(
        [
            *BLUEGREEN, "switch", colour, "--configmap", "bluegreen", "-n", NAMESPACE,
            "--kubeconfig", str(example.cluster.kubeconfig), "--wait", "--timeout", timeout,
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_switch_wait_reads_every_replica_through_the_api_server(example: Example) -> None:
    replicas = len(example.pods())
    assert replicas == 2

    done = switch(example, "green", "60s")
    assert done.returncode == 0, done.stderr
    assert f"green is served by every ready replica ({replicas})" in done.stdout, done.stdout
    # The CLI's answer is the replicas' own: each one says green now, and users get green.
    assert example.replicas_on("green")
    assert example.serves("green", 20)

    back = switch(example, "blue", "60s")
    assert back.returncode == 0, back.stderr
    assert example.serves("blue", 20)


def test_switch_wait_to_a_failing_colour_says_refused_and_exits_non_zero(
    example: Example,
) -> None:
    green = example.pods(GREEN_PODS)
    assert green
    try:
        for ip in green.values():
            assert pod_post(ip, 80, "/fail") == 200
        wait_until(
            "every replica seeing green unhealthy",
            lambda: all(
                example.status_of(ip)["colours"]["green"]["health"] == "unhealthy"
                for ip in example.pods().values()
            ),
            60,
        )
        refused = switch(example, "green", "30s")
        assert refused.returncode == EXIT_DIVERGED, (refused.stdout, refused.stderr)
        assert "refused" in refused.stderr and "green" in refused.stderr, refused.stderr
        assert example.serves("blue", 20)
        assert all(example.status_of(ip)["active"] == "blue" for ip in example.pods().values())
    finally:
        for ip in green.values():
            with contextlib.suppress(OSError):
                pod_post(ip, 80, "/recover")
