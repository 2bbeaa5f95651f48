"""The switch guard: gathers observations for controller/rollback.py and keeps what it watches.

It holds the switch under watch, the live-traffic counts at the moment of the switch (so the
error rate covers only what the new colour answered since), and the colours that failed.
Carrying a decision out (swapping the table, writing the config) is the process's job.
"""

from __future__ import annotations

from collections.abc import Callable

from controller.config import Config
from controller.health_state import Health
from controller.rollback import (
    Decision,
    Observation,
    Policy,
    ShadowEvidence,
    Watch,
    decide,
    preflight,
)
from proxy.metrics import TrafficStats
from proxy.routing import LIVE, ShadowSettings


def policy_of(config: Config) -> Policy:
    """Return the rollback policy a config sets."""
    return config.rollback


def live_counts(stats: TrafficStats, colour: str) -> tuple[int, int]:
    """Return (live requests, live 5xx answers) counted so far for a colour."""
    total = failures = 0
    for (c, route, code), n in stats.requests.items():
        if c == colour and route == LIVE:
            total += n
            if code >= 500:  # 5xx, and anything past 599 an upstream might send
                failures += n
    return total, failures


class SwitchGuard:
    """Watches the colour switched to, and remembers the colours that failed."""

    def __init__(
        self, stats: TrafficStats, health: Callable[[str], Health], clock: Callable[[], float]
    ) -> None:
        self.stats = stats
        self.health = health
        self.clock = clock
        self.watch: Watch | None = None
        self.baseline = (0, 0)
        self.failed: dict[str, str] = {}  # colour -> why it was rolled back or refused

    def before_switch(
        self, target: str, policy: Policy, shadow: ShadowSettings | None = None
    ) -> Decision:
        """Preflight a switch to `target` (with the shadow gate when `shadow` is given)."""
        evidence = self.shadow_evidence(target, shadow) if shadow is not None else None
        return preflight(target, self.health(target), policy, evidence)

    def shadow_evidence(self, target: str, shadow: ShadowSettings) -> ShadowEvidence:
        """What this process's shadow traffic says about `target`, over `shadow.window`."""
        figures = self.stats.shadow.figures(target, self.clock(), shadow.window)
        return ShadowEvidence(
            compared=figures.compared,
            bad_rate=figures.bad_rate,
            max_rate=shadow.max_mismatch_rate,
            min_requests=shadow.min_requests,
        )

    def switched(self, previous: str, active: str, *, manual: bool) -> None:
        """Start watching a manual switch; an automatic one (a rollback) is not watched.

        A person switching to a colour clears its failed mark: they decided to try again.
        """
        if manual:
            self.failed.pop(active, None)
            self.watch = Watch(previous, active, self.clock())
            self.baseline = live_counts(self.stats, active)
        else:
            self.watch = None

    def check(self, policy: Policy) -> Decision:
        """Decide now about the switch under watch."""
        watch = self.watch
        if watch is None:
            return decide(None, Observation(self.clock(), Health.UNKNOWN, 0, 0), policy)
        total, failures = live_counts(self.stats, watch.active)
        observation = Observation(
            now=self.clock(),
            active_health=self.health(watch.active),
            live_requests=total - self.baseline[0],
            live_failures=failures - self.baseline[1],
        )
        return decide(watch, observation, policy)

    def mark_failed(self, colour: str, reason: str) -> None:
        """Remember that a colour was rolled back from or refused, until a person retries it."""
        self.failed[colour] = reason
        self.watch = None
