"""What each colour's Deployment is doing, and how `bluegreen status` says it (pure, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controller.scale_plan import ScaleRecord
from controller.scale_state import ColourFacts, ColourState, ScaleState, colour_state
from controller.status_report import EXIT_DIVERGED, exit_code, scale_lines, with_served

NOW = datetime(2026, 12, 3, 19, 0, 0, tzinfo=UTC)
RECORD = ScaleRecord("myapp-v1", 10, 0, "2026-12-03T18:00:00+00:00", "pod-a-1f2e3d")
REFUSED = "refused: blue not ready after 300s: 3/10 replicas ready (scale.timeout)"


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        # Served: whatever else is true, it is serving (never scaled down while served).
        ({"served": True, "desired": True}, ColourState(ScaleState.SERVING)),
        ({"served": True, "record": RECORD}, ColourState(ScaleState.SERVING)),
        # Idle and never to be scaled down (idleReplicas off, already small, done this period).
        ({}, ColourState(ScaleState.IDLE)),
        ({"scaling_up_for": 5.0}, ColourState(ScaleState.IDLE)),
        # Idle, scaled down once scale.after has passed since it went idle; due when negative.
        ({"scale_down_in": 42.0}, ColourState(ScaleState.IDLE, scale_down_at=at(42))),
        ({"scale_down_in": -3.0}, ColourState(ScaleState.IDLE, scale_down_at=at(-3))),
        # Scaled down by bluegreen, not wanted: it owes the recorded count.
        ({"record": RECORD}, ColourState(ScaleState.SCALED_DOWN, restore_to=10)),
        (
            {"record": RECORD, "held": REFUSED},  # the decision is about another colour
            ColourState(ScaleState.SCALED_DOWN, restore_to=10),
        ),
        # Desired while scaled down: scaling up, with the deadline of scale.timeout.
        (
            {"desired": True, "record": RECORD, "scaling_up_for": 20.0, "timeout": 300.0},
            ColourState(
                ScaleState.SCALING_UP,
                scaling_up_since=at(-20),
                timeout_at=at(280),
                restore_to=10,
            ),
        ),
        # ...since when unknown (the CLI from the ConfigMap alone): no times.
        (
            {"desired": True, "record": RECORD, "timeout": 300.0},
            ColourState(ScaleState.SCALING_UP, restore_to=10),
        ),
        # Desired, still scaled down, held by a recorded decision: the scale-up failed.
        (
            {"desired": True, "record": RECORD, "held": REFUSED, "scaling_up_for": 300.0},
            ColourState(ScaleState.FAILED, restore_to=10, reason=REFUSED),
        ),
        # Desired and not scaled down, but not served (a refusal): not a scale matter.
        ({"desired": True, "held": REFUSED}, ColourState(ScaleState.IDLE)),
    ],
)
def test_colour_state(facts: dict[str, Any], expected: ColourState) -> None:
    given = {"served": False, "desired": False, "record": None, **facts}
    assert colour_state(ColourFacts(**given), NOW) == expected


def test_the_state_as_status_holds_it() -> None:
    state = colour_state(
        ColourFacts(False, True, RECORD, scaling_up_for=20.0, timeout=300.0),
        NOW,
    )
    assert state.as_json() == {
        "state": "scaling_up",
        "scale_down_at": None,
        "scaling_up_since": "2026-12-03T18:59:40+00:00",
        "timeout_at": "2026-12-03T19:04:40+00:00",
        "restore_to": 10,
        "reason": None,
    }


def test_bluegreen_status_prints_each_colour_s_scale_state() -> None:
    record = RECORD.as_json()
    scale: dict[str, Any] = {
        "leader": False,
        "idle_replicas": 0,
        "after_seconds": 300.0,
        "timeout_seconds": 300.0,
        "colours": {
            "blue": {
                "deployment": "myapp-v1",
                "desired_replicas": 10,
                "ready_replicas": 3,
                "scaled_down": record,
                "state": "scaling_up",
                "scaling_up_since": "2026-12-03T18:59:12+00:00",
                "timeout_at": "2026-12-03T19:04:12+00:00",
                "restore_to": 10,
                "note": None,
            },
            "green": {"deployment": "myapp-v2", "desired_replicas": 10, "ready_replicas": 10,
                      "state": "serving"},
            "red": {"deployment": "myapp-v3", "state": "idle",
                    "scale_down_at": "2026-12-03T19:01:30+00:00"},
            "grey": {"deployment": "myapp-v4", "state": "scaled_down", "scaled_down": record,
                     "restore_to": 10, "note": "the last scale step failed: 503"},
            "white": {"deployment": "myapp-v5", "state": "failed", "scaled_down": record,
                      "reason": REFUSED, "restore_to": 10},
            "black": {"deployment": "myapp-v6", "state": None},
        },
        "error": None,
    }  # fmt: skip
    assert scale_lines(scale, NOW) == [
        "scale         idle colour scaled to 0 after 5m00s; scale-up timeout 5m00s; times as this "
        "replica saw them (the Lease holder scales)",
        "  blue        deployment/myapp-v1  3/10 ready  scaling up to 10 since "
        "2026-12-03T18:59:12+00:00 (48s), timeout at 2026-12-03T19:04:12+00:00 (in 4m12s)",
        "  green       deployment/myapp-v2  10/10 ready  serving",
        "  red         deployment/myapp-v3  idle, scaled down at 2026-12-03T19:01:30+00:00 "
        "(in 1m30s)",
        "  grey        deployment/myapp-v4  scaled down to 0 at 2026-12-03T18:00:00+00:00 "
        "(restore to 10 before a switch to grey)",
        "    note: the last scale step failed: 503",
        f"  white       deployment/myapp-v5  failed: {REFUSED} (still scaled down to 0; "
        "`bluegreen switch white --retry` tries again)",
        "  black       deployment/myapp-v6  serving or idle (the ConfigMap does not say: --admin "
        "reads a replica's)",
    ]
    scale["colours"]["blue"].update(scaling_up_since=None, timeout_at=None)
    assert scale_lines(scale, NOW)[1].endswith(
        "scaling up to 10 (the Lease holder; --admin shows since when)"
    )
    scale["colours"]["red"]["scale_down_at"] = "2026-12-03T18:58:00+00:00"
    assert scale_lines(scale, NOW)[3].endswith(
        "idle, scale-down due since 2026-12-03T18:58:00+00:00"
    )


def test_a_switch_waiting_on_a_scale_up_is_not_served_even_when_the_colour_served_is_unknown() -> (
    None
):
    document = with_served(
        {"active": "blue", "served": {"colour": None, "reason": "waiting for blue to scale up"}}
    )
    assert (document["desired"], document["active"]) == ("blue", None)
    assert document["served_reason"] == "waiting for blue to scale up"
    assert exit_code(document) == EXIT_DIVERGED
