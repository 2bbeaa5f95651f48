"""Desired state and served state, kept apart: the proxies' recorded decision, pure, no I/O.

The config's `active` is the *desired* colour, owned by people and by Git (Argo CD, Flux); the
proxies never rewrite it. When they refuse a switch or roll one back, the replica that decides
records a `ServedDecision` in the ConfigMap annotation `bluegreen.io/decision` (in file mode: in
the process's memory). A decision names the desired config it was made on by its fingerprint
(controller.config.config_fingerprint: every data key, `active` included), so:

- every replica serves the desired colour, unless a decision recorded for that same desired
  config says to serve another (`served_colour`);
- re-applying the same desired config (a GitOps sync, `kubectl apply` of an unchanged overlay)
  leaves the fingerprint, and so the decision, as it was: traffic stays where it is;
- any change of the desired config (a new `active`, `upstream.*`, `revision`...) makes the
  decision stale, and the desired colour is served (as a new switch, preflighted and watched);
- `bluegreen switch COLOUR --retry` deletes the annotation: the same config is tried again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime

from controller.config import Config

DECISION_ANNOTATION = "bluegreen.io/decision"


@dataclass(frozen=True, slots=True)
class ServedDecision:
    """What the proxies decided about one desired config: serve `served` instead of `desired`."""

    desired: str  # the config's `active` that is not served
    served: str  # the colour live traffic gets instead
    fingerprint: str  # of the desired config decided on (config_fingerprint)
    reason: str  # `rollback: ...` or `refused: ...`, as in the switch history
    by: str = ""  # who recorded it: the pod holding the Lease, or the file's process
    at: str = ""  # when, RFC 3339 in UTC, seconds precision

    def applies_to(self, config: Config) -> bool:
        """Whether this decision holds for `config`: the very desired config it was made on."""
        return (
            self.fingerprint == config.fingerprint
            and self.desired == config.active
            and self.served in config.upstreams
            and self.served != self.desired
        )

    def to_annotation(self) -> str:
        """The annotation's value: compact JSON with every field."""
        return json.dumps(asdict(self), separators=(",", ":"))

    def stamped(self, by: str, at: datetime) -> ServedDecision:
        """The same decision, saying who recorded it and when."""
        return ServedDecision(
            self.desired,
            self.served,
            self.fingerprint,
            self.reason,
            by,
            at.isoformat(timespec="seconds"),
        )

    def as_json(self) -> dict[str, str]:
        """The decision as `/status` and `bluegreen status` show it."""
        return asdict(self)


def read_decision(annotations: Mapping[str, str]) -> ServedDecision | None:
    """Return the recorded decision, or None when there is none or it is damaged.

    A damaged annotation (edited by hand) reads as no decision: the desired colour is served,
    which is what the person who edited it can see and fix.
    """
    raw = annotations.get(DECISION_ANNOTATION)
    if not raw:
        return None
    try:
        document = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    fields = ("desired", "served", "fingerprint", "reason")
    if not all(isinstance(document.get(name), str) and document[name] for name in fields):
        return None
    return ServedDecision(
        desired=document["desired"],
        served=document["served"],
        fingerprint=document["fingerprint"],
        reason=document["reason"],
        by=str(document.get("by", "")),
        at=str(document.get("at", "")),
    )


def served_colour(config: Config, decision: ServedDecision | None) -> tuple[str, str | None]:
    """Return the colour to serve for a desired `config`, and why when it is not the desired one.

    The desired colour, unless `decision` was recorded for this same desired config.
    """
    if decision is not None and decision.applies_to(config):
        return decision.served, decision.reason
    return config.active, None
