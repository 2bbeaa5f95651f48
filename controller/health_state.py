"""The pure health state of one colour: what its probe results so far say, with no I/O.

A colour turns unhealthy after `failureThreshold` consecutive failures and healthy after
`successThreshold` consecutive successes; until either happens it is unknown. The probes that
feed it are in controller/health.py; the rollback decisions read it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """The `health.*` keys: what is probed on every colour, how often, and when it flips."""

    path: str = "/healthz"
    interval: float = 2.0  # seconds between probes
    timeout: float = 1.0  # seconds; not longer than the interval
    failure_threshold: int = 3  # consecutive failures before a colour is unhealthy
    success_threshold: int = 2  # consecutive successes before it is healthy again


class Health(enum.Enum):
    """What the probes say about one colour."""

    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True, slots=True)
class HealthState:
    """The pure state machine of one colour's probes; `observe` returns the next state."""

    health: Health = Health.UNKNOWN
    successes: int = 0  # consecutive
    failures: int = 0  # consecutive
    last_error: str | None = None

    def observe(
        self, ok: bool, error: str | None, success_threshold: int, failure_threshold: int
    ) -> HealthState:
        """Return the state after one probe result."""
        if ok:
            successes = self.successes + 1
            health = Health.HEALTHY if successes >= success_threshold else self.health
            return HealthState(health, successes, 0, None)
        failures = self.failures + 1
        health = Health.UNHEALTHY if failures >= failure_threshold else self.health
        return HealthState(health, 0, failures, error)
