"""Pure rollback decisions: observations in, a decision out (switch back, refuse, or nothing).

No I/O and no clock: the caller gathers the observation (health, live traffic since the switch,
the time) and carries the decision out (swap the table, write the config, record why).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from controller.health_state import Health

# Why a rollback or refusal happened: the `reason` label of bluegreen_rollbacks_total.
RollbackKind = Literal[
    "unhealthy", "error_rate", "target_unhealthy", "shadow_mismatch", "scale_up_timeout"
]


class Action(enum.Enum):
    """What to do about the active colour."""

    NOTHING = "nothing"
    ROLLBACK = "rollback"  # switch back to the previous colour
    REFUSE = "refuse"  # a switch to an unhealthy (or mismatching) colour: never route to it


@dataclass(frozen=True, slots=True)
class Policy:
    """The `rollback.*` keys."""

    enabled: bool = True
    window: float = 300.0
    max_error_rate: float = 0.05
    min_requests: int = 20


@dataclass(frozen=True, slots=True)
class Watch:
    """A switch under watch: from which colour, to which, and when (seconds, any clock)."""

    previous: str
    active: str
    since: float


@dataclass(frozen=True, slots=True)
class Observation:
    """What is known right now about the colour under watch."""

    now: float
    active_health: Health
    live_requests: int  # to the active colour since the switch
    live_failures: int  # of those: 5xx answers, including unreachable and timed out


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome: an action, the colour to go to, and a reason fit for /status and Events."""

    action: Action
    target: str | None = None
    reason: str = ""
    kind: RollbackKind | Literal[""] = ""  # empty for NOTHING


NOTHING = Decision(Action.NOTHING)


@dataclass(frozen=True, slots=True)
class ShadowEvidence:
    """What shadow traffic says about the target colour, and the gate's `shadow.*` limits."""

    compared: int  # comparisons over shadow.window (drops are not comparisons)
    bad_rate: float  # mismatches and errors over `compared`
    max_rate: float  # shadow.maxMismatchRate
    min_requests: int  # shadow.minRequests


def preflight(
    target: str, target_health: Health, policy: Policy, shadow: ShadowEvidence | None = None
) -> Decision:
    """Decide on a switch before it happens: refuse one to a colour failing its checks.

    A colour whose health is still unknown is allowed: refusing it would block every switch
    made before the first probes have answered. A healthy colour is refused too when its
    shadow traffic mismatched the live answers above `shadow.maxMismatchRate` over at least
    `shadow.minRequests` comparisons; with fewer it is allowed (see `shadow_note`).
    """
    if not policy.enabled:
        return NOTHING
    if target_health is Health.UNHEALTHY:
        return Decision(Action.REFUSE, None, f"refused: {target} unhealthy", "target_unhealthy")
    if (
        shadow is not None
        and shadow.compared >= shadow.min_requests
        and shadow.bad_rate > shadow.max_rate
    ):
        return Decision(
            Action.REFUSE,
            None,
            f"refused: {target} shadow mismatch {shadow.bad_rate:.2f} over "
            f"{shadow.compared} requests",
            "shadow_mismatch",
        )
    return NOTHING


def shadow_note(target: str, shadow: ShadowEvidence) -> str:
    """Say what the shadow gate made of an allowed switch, for the log and /status."""
    if shadow.compared < shadow.min_requests:
        return (
            f"shadow gate: {target} allowed with too few comparisons ({shadow.compared}, "
            f"shadow.minRequests is {shadow.min_requests})"
        )
    return (
        f"shadow gate: {target} passed, mismatch {shadow.bad_rate:.2f} over "
        f"{shadow.compared} requests (limit {shadow.max_rate:g})"
    )


def decide(watch: Watch | None, observation: Observation, policy: Policy) -> Decision:
    """Decide whether the colour switched to must be rolled back.

    Only within `policy.window` after a manual switch. The active health check turning
    unhealthy rolls back at once; the error rate does only over at least `min_requests`.
    """
    if not policy.enabled or watch is None:
        return NOTHING
    if observation.now - watch.since > policy.window:
        return NOTHING
    if observation.active_health is Health.UNHEALTHY:
        return Decision(
            Action.ROLLBACK,
            watch.previous,
            f"rollback: {watch.active} unhealthy (active health check)",
            "unhealthy",
        )
    requests = observation.live_requests
    if requests >= policy.min_requests and requests > 0:
        rate = observation.live_failures / requests
        if rate >= policy.max_error_rate:
            return Decision(
                Action.ROLLBACK,
                watch.previous,
                f"rollback: error rate {rate:.2f} over {requests} requests",
                "error_rate",
            )
    return NOTHING
