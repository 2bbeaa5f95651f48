"""What each colour's Deployment is doing, as /status says it (tables, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controller.scale_plan import ScaleRecord
from controller.scale_state import ColourFacts, ColourState, ScaleState, colour_state

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
