"""`bluegreen switch COLOUR --wait`: wait until every ready replica serves COLOUR, or say why not.

A switch is a write of the desired colour; whether users get it is the replicas' answer. The
wait reads, every `poll` seconds, the config (has a refusal or a rollback of COLOUR been
recorded since the switch, or did someone switch again?) and each ready replica's `/status`
(which colour it serves). It ends with success only when every replica seen serves COLOUR.
The verdict itself is pure (`verdict`); reading is the callers' (see `wait_for_switch`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DECISION_PREFIXES = ("refused:", "rollback:")


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """What one replica's `/status` says: the colour it serves, the desired one, and why."""

    name: str
    active: str | None
    desired: str | None = None
    reason: str | None = None

    @classmethod
    def from_status(cls, name: str, status: Mapping[str, Any]) -> ReplicaState:
        """Read a replica's `/status` JSON document."""
        return cls(name, status.get("active"), status.get("desired"), status.get("desired_reason"))

    def describe(self) -> str:
        """One line for the person waiting: `NAME serves blue (desired green: reason)`."""
        text = f"{self.name} serves {self.active or 'nothing'}"
        if self.desired is not None and self.desired != self.active:
            text += f" (desired {self.desired}" + (f": {self.reason})" if self.reason else ")")
        return text


@dataclass(frozen=True, slots=True)
class WaitResult:
    """How the wait ended: whether COLOUR is served everywhere, and the message saying so."""

    served: bool
    message: str
    decided: bool = False  # refused, rolled back or switched again: waiting longer cannot help


@dataclass(frozen=True, slots=True)
class Observed:
    """One look at the config: its `active` now, and a decision against COLOUR since the switch."""

    active: str | None
    decision: Mapping[str, str] | None = None


def decision_since(
    history: Sequence[Mapping[str, str]], colour: str, own: Mapping[str, str] | None
) -> Mapping[str, str] | None:
    """Return the newest refusal or rollback of `colour` recorded after the entry `own`.

    History is newest first; entries before `own` (the switch's own entry, matched on `by`,
    `to` and `at`) are newer than the switch. Without `own` (a file keeps no history) the
    newest entry counts if it is such a decision.
    """
    for entry in history:
        if own is not None and all(entry.get(key) == own.get(key) for key in ("by", "to", "at")):
            return None
        if entry.get("from") == colour and entry.get("reason", "").startswith(DECISION_PREFIXES):
            return entry
        if own is None:
            return None
    return None


def verdict(colour: str, observed: Observed, replicas: Sequence[ReplicaState]) -> WaitResult | None:
    """Decide whether the wait is over (None: not yet).

    A recorded refusal or rollback of `colour`, or another colour in the config, ends it with
    failure; every replica seen serving `colour` ends it with success.
    """
    decision = observed.decision
    if decision is not None:
        who = f" (by {decision['by']})" if decision.get("by") else ""
        when = f" at {decision['at']}" if decision.get("at") else ""
        return WaitResult(False, f"{decision.get('reason')}{who}{when}", decided=True)
    if observed.active != colour:
        return WaitResult(
            False,
            f"the config says active: {observed.active} now; it was changed again after the switch",
            decided=True,
        )
    if replicas and all(replica.active == colour for replica in replicas):
        count = len(replicas)
        return WaitResult(True, f"{colour} is served by every ready replica ({count})")
    return None


async def wait_for_switch(
    colour: str,
    observe: Callable[[], Awaitable[Observed]],
    replicas: Callable[[], Awaitable[list[ReplicaState]]],
    timeout: float,
    *,
    poll: float = 0.2,
    progress: Callable[[str], None] | None = None,
) -> WaitResult:
    """Poll `observe` and `replicas` until `verdict` says the wait is over, or `timeout`.

    A failed read (OSError, or what the callers turn into one) is retried until the timeout;
    the last one is named in the timeout's message. `progress` is told, whenever it changes,
    why replicas do not serve `colour` yet (a scale-up's ready replicas, say).
    """
    deadline = time.monotonic() + timeout
    seen: list[ReplicaState] = []
    problem = ""
    shown = ""
    while True:
        try:
            observed = await observe()
            seen = await replicas()
        except OSError as error:
            problem = str(error) or type(error).__name__
        else:
            problem = ""
            result = verdict(colour, observed, seen)
            if result is not None:
                return result
            waiting = "; ".join(r.describe() for r in seen if r.active != colour and r.reason)
            if progress is not None and waiting and waiting != shown:
                progress(waiting)
            shown = waiting
        if time.monotonic() >= deadline:
            return WaitResult(False, _timed_out(colour, timeout, seen, problem))
        await asyncio.sleep(poll)


def _timed_out(colour: str, timeout: float, seen: Sequence[ReplicaState], problem: str) -> str:
    head = f"{colour} is not served by every ready replica after {timeout:g}s"
    if problem:
        return f"{head}: {problem}"
    if not seen:
        return f"{head}: no ready replica was found"
    return head + ":\n" + "\n".join(f"  {replica.describe()}" for replica in seen)
