"""Pure tests of controller.history: the recorded switch history and the reason it gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from controller.history import (
    HISTORY_ANNOTATION,
    RECORDED_REASON_AGE,
    read_history,
    recorded_reason,
    switch_annotations,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def entry(
    from_colour: str = "green", to: str = "blue", reason: str = "rollback: x", age: float = 5
) -> dict[str, str]:
    at = (NOW - timedelta(seconds=age)).isoformat(timespec="seconds")
    return {"from": from_colour, "to": to, "reason": reason, "at": at, "by": "pod-a"}


@pytest.mark.parametrize(
    ("history", "previous", "active", "reason"),
    [
        ([], "green", "blue", "manual"),  # a file, or a ConfigMap edited by hand
        ([entry()], "green", "blue", "rollback: x"),  # the leader's rollback, seen by a follower
        ([entry(), entry(reason="older")], "green", "blue", "rollback: x"),  # newest first
        ([entry()], "blue", "green", "manual"),  # the entry is about another change
        ([entry()], None, "blue", "manual"),  # the first config: no change at all
        ([entry(age=RECORDED_REASON_AGE + 1)], "green", "blue", "manual"),  # too old
        ([entry(age=RECORDED_REASON_AGE - 1)], "green", "blue", "rollback: x"),
        ([{**entry(), "at": "yesterday"}], "green", "blue", "manual"),  # not a time
        ([{**entry(), "at": "2026-01-02T03:04:00"}], "green", "blue", "manual"),  # no timezone
        ([{"from": "green", "to": "blue", "at": entry()["at"]}], "green", "blue", "manual"),
    ],
)
def test_recorded_reason(
    history: list[dict[str, str]], previous: str | None, active: str, reason: str
) -> None:
    assert recorded_reason(history, previous, active, NOW) == reason


def test_a_written_switch_is_read_back_as_its_reason() -> None:
    written = switch_annotations({}, "green", "blue", reason="refused: green unhealthy", by="p")
    history = read_history(written)
    assert recorded_reason(history, "green", "blue", datetime.now(UTC)) == (
        "refused: green unhealthy"
    )


@pytest.mark.parametrize("damaged", ["{", '{"a": 1}', "[1, 2]"])
def test_a_damaged_history_reads_as_empty(damaged: str) -> None:
    assert read_history({HISTORY_ANNOTATION: damaged}) == []
