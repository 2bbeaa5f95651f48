"""Scaling the idle colour, the pure part: settings, the record of a scale-down, and the plan.

No I/O and no clock: controller/scaling.py gathers what it sees (which colour is served and
desired, how long each has been idle, the records, the Deployments) and carries the plan out
through the `scale` subresource.

The record of a scale-down lives in the ConfigMap's annotation `bluegreen.io/scaled-down`
(JSON, colour -> record), not on the Deployment: writing an annotation on a Deployment needs
`patch` on `deployments`, which would let bluegreen change the pod template (run any image),
while the `scale` subresource lets it change the replica count and nothing else. Every replica
reads the record with the config, so every replica knows that a colour is scaled down and holds
a switch to it until the Lease holder has scaled it up again and removed the record.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

SCALED_DOWN_ANNOTATION = "bluegreen.io/scaled-down"
SCALE_PREFIX = "scale."


@dataclass(frozen=True, slots=True)
class ScaleSettings:
    """The `scale.*` keys: which Deployment backs each colour, and what to do while idle."""

    workloads: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    idle_replicas: int | None = None  # None: never scale down (scale-ups still happen)
    after: float | None = None  # None: the rollback window
    timeout: float = 300.0  # longest wait for a colour to become ready after a scale-up

    def __post_init__(self) -> None:
        object.__setattr__(self, "workloads", MappingProxyType(dict(self.workloads)))


def scale_after(settings: ScaleSettings, rollback_window: float) -> float:
    """Seconds an idle colour waits before it is scaled down (never less than the window)."""
    return max(settings.after or 0.0, rollback_window)


@dataclass(frozen=True, slots=True)
class ScaleRecord:
    """That bluegreen scaled a colour's Deployment down, from how many replicas, to how many."""

    deployment: str
    replicas: int  # to restore when the colour is needed again
    idle: int  # what it was scaled to
    at: str  # RFC 3339, UTC
    by: str  # the replica (Lease holder) that did it

    def as_json(self) -> dict[str, object]:
        """The record as the annotation and `/status` hold it."""
        return {
            "deployment": self.deployment,
            "replicas": self.replicas,
            "idle": self.idle,
            "at": self.at,
            "by": self.by,
        }


def read_records(annotations: Mapping[str, str]) -> dict[str, ScaleRecord]:
    """Return the scale-down records by colour; a damaged annotation or entry reads as none."""
    try:
        raw = json.loads(annotations.get(SCALED_DOWN_ANNOTATION, "{}"))
    except ValueError:
        return {}
    if not isinstance(raw, dict):
        return {}
    records = {}
    for colour, entry in raw.items():
        try:
            records[str(colour)] = ScaleRecord(
                deployment=str(entry["deployment"]),
                replicas=int(entry["replicas"]),
                idle=int(entry["idle"]),
                at=str(entry.get("at", "")),
                by=str(entry.get("by", "")),
            )
        except (KeyError, TypeError, ValueError):
            continue
    return records


def records_annotation(records: Mapping[str, ScaleRecord]) -> dict[str, str | None]:
    """The annotation patch that writes `records` (None removes the annotation when empty)."""
    if not records:
        return {SCALED_DOWN_ANNOTATION: None}
    body = {colour: record.as_json() for colour, record in sorted(records.items())}
    return {SCALED_DOWN_ANNOTATION: json.dumps(body, separators=(",", ":"))}


class Step(enum.Enum):
    """What to do about one colour's Deployment now."""

    NOTHING = "nothing"
    SCALE_DOWN = "scale down"  # idle for long enough: record the count, then scale it down
    SCALE_UP = "scale up"  # desired while scaled down: restore the count, wait, then switch


@dataclass(frozen=True, slots=True)
class ColourView:
    """What is known about one colour with a workload, for `plan`."""

    colour: str
    served: bool  # live traffic goes to it now
    desired: bool  # the config's `active`
    idle_for: float  # seconds since it stopped being served (0 while served)
    record: ScaleRecord | None  # bluegreen scaled it down and owes it `record.replicas`
    scaled_this_idle_period: bool  # already scaled down (or found small) since it went idle
    scaling_up: bool  # a scale-up is in progress


def plan(view: ColourView, idle_replicas: int | None, after: float) -> Step:
    """Decide the step for one colour.

    A colour is scaled down once per idle period (after `after` seconds idle, never while it is
    served or desired), so a person who scales it back up by hand (to try a new version in
    preview) is not fought. A desired colour with a record is scaled up, whatever
    `idle_replicas` says now: the record is a debt.
    """
    if view.scaling_up:
        return Step.NOTHING  # the scale-up itself watches whether it is still wanted
    if view.desired and view.record is not None:
        return Step.SCALE_UP
    if (
        idle_replicas is not None
        and not view.served
        and not view.desired
        and view.record is None
        and not view.scaled_this_idle_period
        and view.idle_for >= after
    ):
        return Step.SCALE_DOWN
    return Step.NOTHING


def waiting_reason(colour: str, record: ScaleRecord, ready: int | None) -> str:
    """Why a switch to a scaled-down colour waits, for `/status` and `bluegreen switch --wait`."""
    progress = f"{ready}/{record.replicas} replicas ready" if ready is not None else "starting"
    return (
        f"waiting for {colour} to scale up (deployment/{record.deployment}, scaled down to "
        f"{record.idle} by bluegreen): {progress}"
    )
