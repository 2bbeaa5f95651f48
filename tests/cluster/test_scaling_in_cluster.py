"""The idle colour scaled down once a switch has held, and up again before it is needed: real pods.

The example (deploy/examples/myapp, ten myapp pods per colour, two bluegreen replicas, the
shipped scaling-rbac.yaml) with the scale.* keys of README step 8 patched in, and short windows
so that a test takes seconds: rollback.window and scale.after SHORT. Under a steady load on
NodePort 30080: a switch that holds scales the old colour to 0 (Event ScaledDown), a switch
back with ``bluegreen switch --wait`` scales it up to 10, waits for the ten pods and the health
checks, then moves traffic, and ``bluegreen rollback`` to a colour at 0 does the same; not one
request fails, and the scale-up times are printed. A bad switch within the window rolls back
to a colour still at 10. Without the scaling RoleBinding, nothing is recorded or scaled and the
leader says which rule is missing.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from controller.scale_plan import SCALED_DOWN_ANNOTATION, read_records
from tests.cluster.example import NAMESPACE, Example, pod_post
from tests.cluster.node import REPO
from tests.cluster.test_no_failed_requests import assert_no_failures
from tests.cluster.traffic import all_on_after, load_on, wait_until

SHORT = "6s"  # rollback.window and scale.after: long enough to watch, short enough to wait for
SCALE_KEYS = {
    "scale.blue": "deployment/myapp-v1",
    "scale.green": "deployment/myapp-v2",
    "scale.idleReplicas": "0",
    "scale.after": SHORT,
    "rollback.window": SHORT,
}
GREEN_PODS = "app=myapp,version=v2"


def patch_configmap(example: Example, body: dict[str, Any]) -> None:
    status, document = example.cluster.api_call(
        f"/api/v1/namespaces/{NAMESPACE}/configmaps/bluegreen", method="PATCH", body=body
    )
    assert status == 200, (status, document)


@pytest.fixture
def scaling(example: Example) -> Iterator[Example]:
    """The example with the scale keys; afterwards the keys and any record are removed again
    (the next test's reset re-applies the example, ten replicas each)."""
    try:
        yield example
    finally:
        patch_configmap(
            example,
            {
                "data": dict.fromkeys(SCALE_KEYS),
                "metadata": {"annotations": {SCALED_DOWN_ANNOTATION: None}},
            },
        )
        example.cluster.kubectl(
            "apply", "-f", str(REPO / "deploy/examples/myapp/scaling-rbac.yaml")
        )


def replicas(example: Example, deployment: str) -> tuple[int, int]:
    """(spec.replicas, status.readyReplicas) of a Deployment."""
    document = example.cluster.api(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{deployment}")
    assert document is not None
    return int(document["spec"].get("replicas") or 0), int(
        document.get("status", {}).get("readyReplicas") or 0
    )


def records(example: Example) -> dict[str, Any]:
    annotations = example.configmap()["metadata"].get("annotations") or {}
    return read_records(annotations)


def scaled_down(example: Example, colour: str, deployment: str) -> float:
    """Wait until bluegreen has scaled `deployment` to 0 and recorded it; the seconds it took."""
    took = wait_until(
        f"{deployment} scaled down",
        lambda: replicas(example, deployment)[0] == 0 and colour in records(example),
        60,
    )
    assert records(example)[colour].replicas == 10
    return took


def bluegreen(example: Example, *args: str) -> subprocess.CompletedProcess[str]:
    """The bluegreen CLI from the host, on the cluster's kubeconfig."""
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", *args, "--configmap", "default/bluegreen",
         "--kubeconfig", str(example.cluster.kubeconfig)],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip


def test_the_old_colour_is_scaled_down_and_back_up_before_it_is_needed(
    scaling: Example,
) -> None:
    example = scaling
    with load_on(example.cluster.node_address, 30080) as load:
        wait_until("the load running", lambda: len(load.answers) > 50, 30)
        patched = time.monotonic()
        patch_configmap(example, {"data": {**SCALE_KEYS, "active": "green"}})
        wait_until("live traffic on green", lambda: all_on_after(load, "green", patched), 15)
        time.sleep(2)
        assert replicas(example, "myapp-v1") == (10, 10), "scaled down within the window"
        scaled_down(example, "blue", "myapp-v1")
        print(
            f"blue scaled down {time.monotonic() - patched:.1f} s after the switch "
            f"(scale.after {SHORT})"
        )
        [event] = [e for e in example.events("ScaledDown") if "myapp-v1" in e["message"]]
        assert event["message"].startswith("blue (deployment/myapp-v1) scaled down 10 -> 0")
        wait_until("blue's pods gone", lambda: replicas(example, "myapp-v1")[1] == 0, 90)

        # A switch back: blue is scaled up, its ten pods get ready, then traffic moves.
        started = time.monotonic()
        switched = bluegreen(example, "switch", "blue", "--wait", "--timeout", "3m")
        assert switched.returncode == 0, switched.stdout + switched.stderr
        assert "waiting for blue to scale up" in switched.stderr, switched.stderr
        moved = wait_until("live traffic on blue", lambda: all_on_after(load, "blue", started))
        on_blue = all_on_after(load, "blue", started)
        assert on_blue is not None
        print(f"switch to blue at 0 replicas: traffic on blue {on_blue - started:.1f} s later")
        assert [a for a in load.since(started) if a.sent < on_blue and a.colour == "green"]
        assert replicas(example, "myapp-v1") == (10, 10)
        assert "blue" not in records(example)
        assert any("myapp-v1" in e["message"] for e in example.events("ScaledUp")), moved

        # Green is scaled down in its turn; a manual rollback to it takes the scale-up time.
        scaled_down(example, "green", "myapp-v2")
        wait_until("green's pods gone", lambda: replicas(example, "myapp-v2")[1] == 0, 90)
        started = time.monotonic()
        rolled = bluegreen(example, "rollback")
        assert rolled.returncode == 0, rolled.stdout + rolled.stderr
        wait_until("live traffic on green", lambda: all_on_after(load, "green", started), 180)
        on_green = all_on_after(load, "green", started)
        assert on_green is not None
        print(f"rollback to green at 0 replicas: traffic on green {on_green - started:.1f} s later")
        time.sleep(1)
    assert_no_failures(load, stale_retries_allowed=True)


def test_a_bad_switch_within_the_window_rolls_back_to_a_colour_at_full_size(
    scaling: Example,
) -> None:
    example = scaling
    green = example.pods(GREEN_PODS)
    try:
        with load_on(example.cluster.node_address, 30080) as load:
            wait_until("the load running", lambda: len(load.answers) > 50, 30)
            patched = time.monotonic()
            # The keys with the switch: green, idle since bluegreen started, is wanted at once.
            window = {"rollback.window": "30s", "scale.after": "30s"}
            patch_configmap(example, {"data": {**SCALE_KEYS, **window, "active": "green"}})
            wait_until("live traffic on green", lambda: all_on_after(load, "green", patched), 15)
            for ip in green.values():
                assert pod_post(ip, 80, "/fail") == 200
            failed_at = time.monotonic()
            wait_until("live traffic back on blue", lambda: all_on_after(load, "blue", failed_at))
        assert replicas(example, "myapp-v1") == (10, 10)
        assert "blue" not in records(example)
        back = all_on_after(load, "blue", failed_at)
        assert back is not None
        print(f"rolled back to blue at 10 replicas {back - failed_at:.1f} s after green failed")
        assert not [a for a in load.since(back) if a.error], load.summary()
    finally:
        for ip in green.values():
            with contextlib.suppress(OSError):
                pod_post(ip, 80, "/recover")


def test_without_the_scaling_role_nothing_is_scaled_and_the_leader_says_why(
    scaling: Example,
) -> None:
    example = scaling
    example.cluster.kubectl("delete", "rolebinding", "bluegreen-scale")
    patch_configmap(example, {"data": {**SCALE_KEYS, "active": "green"}})
    leader = wait_until("a leader", lambda: example.leader() is not None, 30)
    assert leader is not None

    def error() -> str | None:
        name = example.leader()
        if name is None:
            return None
        status = example.status_of(example.pods()[name])
        message: str | None = status.get("scale", {}).get("error")
        return message

    wait_until("the leader's scaling error", error, 30)
    message = error() or ""
    print(message)
    assert message.startswith("scaling is off: this service account may not get "), message
    assert "deployments/scale myapp-v1" in message
    time.sleep(8)  # past scale.after
    assert replicas(example, "myapp-v1") == (10, 10)
    assert records(example) == {}
    assert example.events("ScaleForbidden")
