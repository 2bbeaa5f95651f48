"""The switch history kept in the ConfigMap's annotations: pure functions, no I/O.

`bluegreen.io/switch-history` holds the last HISTORY_LENGTH switches as JSON, newest first, each
with from, to, reason, at and by (who wrote it: a user's CLI or a proxy pod).
`bluegreen.io/previous-active` names the colour that `bluegreen rollback` returns to.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime

HISTORY_ANNOTATION = "bluegreen.io/switch-history"
PREVIOUS_ANNOTATION = "bluegreen.io/previous-active"
HISTORY_LENGTH = 10


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
