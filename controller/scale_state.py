"""What each colour's Deployment is doing, in the words of `/status`, its page and the CLI.

Pure: the facts that controller/scaling.py holds about one colour in, one state out. The same
function serves `bluegreen status` without `--admin`, from what the ConfigMap alone says (no
replica counts, no clocks), so both tell the same story:

- `serving`: live traffic goes to it; it is never scaled down while served.
- `idle`: not served, at whatever size it has; `scale_down_at` says when the Lease holder scales
  it down (null when it will not: `scale.idleReplicas` off, already at or below it, or already
  handled once in this idle period).
- `scaled_down`: bluegreen scaled it down and owes it `restore_to` replicas (the ConfigMap's
  `bluegreen.io/scaled-down` record); a switch to it scales it up first.
- `scaling_up`: the desired colour, still recorded as scaled down: the Lease holder is
  restoring it, and every replica serves the previous colour until it is ready and healthy or
  `timeout_at` passes.
- `failed`: the desired colour, still scaled down, held by a recorded decision (the scale-up
  timed out, or another refusal for this desired config): `reason` says why, and
  `bluegreen switch COLOUR --retry` tries again.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from controller.config import Config
from controller.scale_plan import ScaleRecord, scale_after
from controller.state import iso


class ScaleState(enum.Enum):
    """The one word that says what a colour's Deployment is doing (see the module)."""

    SERVING = "serving"
    IDLE = "idle"
    SCALED_DOWN = "scaled_down"
    SCALING_UP = "scaling_up"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ColourFacts:
    """What is known of one colour with a `scale.<colour>` Deployment."""

    served: bool  # live traffic goes to it now
    desired: bool  # the config's `active`
    record: ScaleRecord | None  # bluegreen scaled it down (the ConfigMap's record)
    held: str | None = None  # reason of a recorded decision keeping this desired colour unserved
    scale_down_in: float | None = None  # seconds until it is scaled down; None: it will not be
    scaling_up_for: float | None = None  # seconds since the scale-up started; None: unknown
    timeout: float | None = None  # scale.timeout; None: unknown


@dataclass(frozen=True, slots=True)
class ColourState:
    """A colour's scale state, with the times and counts that go with it."""

    state: ScaleState
    scale_down_at: datetime | None = None
    scaling_up_since: datetime | None = None
    timeout_at: datetime | None = None
    restore_to: int | None = None  # the replica count bluegreen restores (its record)
    reason: str | None = None  # why a scale-up failed

    def as_json(self) -> dict[str, Any]:
        """The state's fields as `/status` holds them (times in RFC 3339, UTC)."""
        return {
            "state": self.state.value,
            "scale_down_at": iso(self.scale_down_at),
            "scaling_up_since": iso(self.scaling_up_since),
            "timeout_at": iso(self.timeout_at),
            "restore_to": self.restore_to,
            "reason": self.reason,
        }


def colour_state(facts: ColourFacts, now: datetime) -> ColourState:
    """Say what a colour's Deployment is doing at `now`, from `facts` (see the module)."""
    record = facts.record
    if facts.served:
        return ColourState(ScaleState.SERVING)
    if record is None:
        if facts.scale_down_in is None:
            return ColourState(ScaleState.IDLE)
        return ColourState(ScaleState.IDLE, scale_down_at=now + _seconds(facts.scale_down_in))
    if not facts.desired:
        return ColourState(ScaleState.SCALED_DOWN, restore_to=record.replicas)
    if facts.held is not None:
        return ColourState(ScaleState.FAILED, restore_to=record.replicas, reason=facts.held)
    since = now - _seconds(facts.scaling_up_for) if facts.scaling_up_for is not None else None
    deadline = since + _seconds(facts.timeout) if since and facts.timeout is not None else None
    return ColourState(
        ScaleState.SCALING_UP,
        scaling_up_since=since,
        timeout_at=deadline,
        restore_to=record.replicas,
    )


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def configmap_section(
    config: Config,
    records: Mapping[str, ScaleRecord],
    held: str | None,
    served: str | None,
    now: datetime,
) -> dict[str, Any]:
    """The `scale` section as the ConfigMap alone tells it (`bluegreen status` without --admin).

    The shape of `/status`'s, with what only a running replica knows left null: the replica
    counts, since when a scale-up runs and its deadline, and when an idle colour is scaled down.
    `served` None (not known from the ConfigMap) leaves the state of a colour that is neither
    desired nor scaled down null too: it may be serving or idle.
    """
    colours = {}
    for colour, name in config.scale.workloads.items():
        record = records.get(colour)
        facts = ColourFacts(
            served=colour == served,
            desired=colour == config.active,
            record=record,
            held=held if colour == config.active else None,
            timeout=config.scale.timeout,
        )
        state = colour_state(facts, now).as_json()
        if served is None and state["state"] == ScaleState.IDLE.value:
            state["state"] = None  # serving or idle: the ConfigMap does not say which
        colours[colour] = {
            "deployment": name,
            "desired_replicas": None,
            "ready_replicas": None,
            "scaled_down": record.as_json() if record is not None else None,
            **state,
        }
    return {
        "idle_replicas": config.scale.idle_replicas,
        "after_seconds": scale_after(config.scale, config.rollback.window),
        "timeout_seconds": config.scale.timeout,
        "colours": colours,
    }
