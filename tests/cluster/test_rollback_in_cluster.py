"""Rollback in the cluster: green's pods turn bad after the switch, and live traffic goes back.

Two bluegreen replicas behind kube-proxy, the example's ten myapp pods per colour. After the
switch to green every green pod is made to answer 500 (tests/cluster/myapp: ``POST /fail``).
The replica holding the Lease rolls back; every replica serves blue again, the ConfigMap holds
exactly one rollback entry (written by the leader) and there is exactly one RolledBack Event,
whichever replica leads: as first elected, under live traffic (the error rate decides), and
after the leader's Pod was deleted and the Lease handed over, with no live traffic on green
(its health checks decide).
"""

from __future__ import annotations

import contextlib
import time

import pytest

from tests.cluster.example import Example, pod_post
from tests.cluster.traffic import all_on_after, load_on, wait_until

GREEN_PODS = "app=myapp,version=v2"


def hand_the_lease_over(example: Example) -> str:
    """Delete the leader's Pod; wait until another replica leads and two serve blue."""
    leader = example.leader()
    assert leader is not None
    example.cluster.kubectl("delete", "pod", leader, "--wait=false")
    took = wait_until("another replica leading", lambda: example.leader() not in (None, leader), 60)
    print(f"{leader} deleted; the Lease was taken over {took:.1f} s later")
    wait_until("two replicas on blue", lambda: len(example.pods()) == 2, 90)
    wait_until("both healthy on blue", lambda: example.replicas_on("blue"), 60)
    return leader


@pytest.mark.parametrize(
    ("handover", "live_traffic"),
    [(False, True), (True, False)],
    ids=["as-elected-by-error-rate", "after-handover-by-health-check"],
)
def test_green_failing_after_the_switch_is_rolled_back_once(
    example: Example, handover: bool, live_traffic: bool
) -> None:
    if handover:
        hand_the_lease_over(example)
    wait_until("a leader", lambda: example.leader() is not None, 30)
    leader = example.leader()
    events_before = {e["metadata"]["name"] for e in example.events("RolledBack")}
    green = example.pods(GREEN_PODS)
    assert len(green) == 10
    try:
        with load_on(example.cluster.node_address, 30080) as load:
            wait_until("the load running", lambda: len(load.answers) > 50, 30)
            patched = example.patch_active("green")
            wait_until("live traffic on green", lambda: all_on_after(load, "green", patched), 15)
            if not live_traffic:
                load.stop()  # no live request reaches green now: only its health checks fail
            for ip in green.values():
                assert pod_post(ip, 80, "/fail") == 200
            failed_at = time.monotonic()
            took = wait_until("every replica on blue", lambda: all_replicas_rolled_back(example))
            print(f"every replica back on blue {took:.1f} s after green failed")
            if live_traffic:
                wait_until("live traffic on blue", lambda: all_on_after(load, "blue", failed_at))
        if live_traffic:
            back = all_on_after(load, "blue", failed_at)
            assert back is not None, load.summary()
            print(f"every new request on blue {back - failed_at:.1f} s after green failed")
            # Only green failed: blue answered every request it got.
            assert {a.colour for a in load.failures} <= {"green", "-"}, load.summary()
            assert not [a for a in load.since(back) if a.error], load.summary()
        else:
            assert not load.failures, load.summary()
        assert example.serves("blue", 50)

        # `active` is desired and stays green; the decision to serve blue is the annotation's.
        assert example.configmap()["data"]["active"] == "green"
        decision = example.decision()
        assert decision is not None and (decision.desired, decision.served) == ("green", "blue")
        rollbacks = [h for h in example.history() if h["reason"].startswith("rollback:")]
        assert len(rollbacks) == 1, example.history()
        assert (rollbacks[0]["from"], rollbacks[0]["to"]) == ("green", "blue")
        expected = "rollback: error rate" if live_traffic else "rollback: green unhealthy"
        assert rollbacks[0]["reason"].startswith(expected), rollbacks
        assert leader is not None and rollbacks[0]["by"].startswith(f"{leader}-"), rollbacks
        time.sleep(3)  # the other replica has had every chance to record one too
        new_events = [
            e for e in example.events("RolledBack") if e["metadata"]["name"] not in events_before
        ]
        assert len(new_events) == 1, new_events
        assert new_events[0]["message"].startswith(expected), new_events
        # The switch was a plain PATCH: the leader recorded it as observed (so that `bluegreen
        # rollback` knows the previous colour), and the rollback came after it.
        switched, rolled_back = example.history()[1], example.history()[0]
        assert rolled_back == rollbacks[0], example.history()
        assert (switched["from"], switched["to"], switched["reason"]) == ("blue", "green", "manual")
        assert switched["by"].startswith("observed by "), switched
    finally:
        for ip in green.values():
            with contextlib.suppress(OSError):
                pod_post(ip, 80, "/recover")


def all_replicas_rolled_back(example: Example) -> bool:
    """Whether every Ready replica serves blue, says why, and marks green failed."""
    statuses = [example.status_of(ip) for ip in example.pods().values()]
    return bool(statuses) and all(
        s["active"] == "blue"
        and s["switches"]
        and s["switches"][0]["reason"].startswith("rollback:")
        and s["colours"]["green"]["failed"]
        for s in statuses
    )
