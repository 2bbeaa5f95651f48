"""The switch history kept in the ConfigMap's annotations: pure functions, no I/O.

`bluegreen.io/switch-history` holds the last HISTORY_LENGTH switches as JSON, newest first, each
with from, to, reason, at and by (who wrote it: a user's CLI or a proxy pod).
`bluegreen.io/previous-active` names the colour that `bluegreen rollback` returns to.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

HISTORY_ANNOTATION = "bluegreen.io/switch-history"
PREVIOUS_ANNOTATION = "bluegreen.io/previous-active"
HISTORY_LENGTH = 10
# A history entry older than this does not explain a change of the ConfigMap's active colour.
RECORDED_REASON_AGE = 120.0


def read_history(annotations: Mapping[str, str]) -> list[dict[str, str]]:
    """Return the recorded switches, newest first; a damaged annotation reads as empty."""
    try:
        entries = json.loads(annotations.get(HISTORY_ANNOTATION, "[]"))
    except ValueError:
        return []
    if not isinstance(entries, list):
        return []
    return [
        {str(k): str(v) for k, v in entry.items()} for entry in entries if isinstance(entry, dict)
    ]


def switch_annotations(
    annotations: Mapping[str, str],
    from_colour: str,
    to_colour: str,
    *,
    reason: str,
    by: str,
    at: datetime | None = None,
) -> dict[str, str]:
    """Return the annotations to write with a switch: history with it first, and the previous."""
    moment = (at or datetime.now(UTC)).isoformat(timespec="seconds")
    entry = {"from": from_colour, "to": to_colour, "reason": reason, "at": moment, "by": by}
    history = [entry, *read_history(annotations)][:HISTORY_LENGTH]
    return {
        HISTORY_ANNOTATION: json.dumps(history, separators=(",", ":")),
        PREVIOUS_ANNOTATION: from_colour,
    }


def recorded_reason(
    history: Sequence[Mapping[str, str]],
    previous: str | None,
    active: str,
    now: datetime,
    max_age: float = RECORDED_REASON_AGE,
) -> str:
    """Say why the active colour changed from `previous` to `active`, as its writer recorded it.

    A rollback written by the leader carries its reason in the newest history entry, so the other
    replicas show the same reason and do not start watching the rolled-back switch. Only a recent
    entry (younger than `max_age` seconds at `now`) for this very change counts: a plain kubectl
    edit leaves none, and then the change is "manual".
    """
    if not history:
        return "manual"
    latest = history[0]
    if latest.get("from") != previous or latest.get("to") != active:
        return "manual"
    try:
        age = (now - datetime.fromisoformat(latest.get("at", ""))).total_seconds()
    except (ValueError, TypeError):  # not a time, or one without a timezone (edited by hand)
        return "manual"
    return latest.get("reason", "manual") if age < max_age else "manual"
