"""Scaling the idle colour: down once a switch has held, up again before a switch to it.

Level-triggered: every `POLL` seconds each replica reads the Deployments behind the colours
(for `/status` and the metrics), and the replica holding the Lease compares what it sees with
the plan of controller/scale_plan.py and carries out the steps, one task per colour. Every
step starts from a fresh read, so it is idempotent and a new Lease holder simply carries on.

Replica counts change only through each Deployment's `scale` subresource. The count to restore
is written to the ConfigMap (`bluegreen.io/scaled-down`) before a scale-down and removed after
a scale-up has become ready: every replica holds a switch to a colour that has a record (see
`Scaler.waits_for`), so the record's removal is what lets every replica switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp

from controller.config import Config
from controller.configmap_source import ConfigMapSource
from controller.health_state import Health
from controller.kube import (
    ConfigMapVersion,
    ConflictError,
    DeploymentReplicas,
    Deployments,
    ForbiddenError,
    KubeError,
)
from controller.metrics import ControlMetrics
from controller.scale_plan import (
    ColourView,
    ScaleRecord,
    Step,
    plan,
    read_records,
    records_annotation,
    scale_after,
    waiting_reason,
)
from controller.scale_state import ColourFacts, ColourState, ScaleState, colour_state
from controller.state import iso, utc_now

log = logging.getLogger(__name__)

POLL = 1.0  # seconds between looks at the Deployments (a GET each: nothing for the API server)
UP_POLL = 0.25  # while a scale-up is waited for: the switch follows readiness closely
RECHECK_RIGHTS = 10.0  # the Role is asked about again this often (4 reviews per Deployment)
WRITE_ATTEMPTS = 5  # of a guarded ConfigMap write that conflicts with another writer
_API_ERRORS = (KubeError, aiohttp.ClientError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class ScaleHost:
    """What the scaler needs of the process that runs it."""

    decides: Callable[[], bool]  # holds the Lease
    served: Callable[[], str | None]  # the colour live traffic goes to now
    desired: Callable[[], Config | None]  # the config as the source last gave it
    health: Callable[[str], Health]  # this replica's health checks of a colour
    refuse: Callable[[str, str], None]  # give a switch to `colour` up, with the reason


def required_rules(config: Config) -> list[tuple[str, str, str]]:
    """The (verb, resource, name) this config needs; resource as the Role writes it."""
    rules: list[tuple[str, str, str]] = []
    for name in config.scale.workloads.values():
        rules += [
            ("get", "deployments/scale", name),
            ("patch", "deployments/scale", name),
            ("get", "deployments", name),
        ]
    rules.append(("list", "horizontalpodautoscalers", ""))
    return rules


def missing_rules_message(missing: list[tuple[str, str, str]]) -> str:
    """Say which rules the Role lacks, and how to add them (deploy/base/rbac.yaml)."""
    listed = ", ".join(
        f"{verb} {resource}{f' {name}' if name else ''}" for verb, resource, name in missing
    )
    return (
        f"scaling is off: this service account may not {listed}; add to the Role (as the "
        "commented rules in deploy/base/rbac.yaml show, resourceNames = the scale.<colour> "
        "Deployments): apiGroups [apps], resources [deployments/scale], verbs [get, patch]; "
        "resources [deployments], verbs [get]; apiGroups [autoscaling], resources "
        "[horizontalpodautoscalers], verbs [list]. Nothing was recorded or scaled"
    )


class Scaler:
    """Follows the Deployments behind the colours; the Lease holder scales them."""

    def __init__(
        self,
        host: ScaleHost,
        source: ConfigMapSource,
        metrics: ControlMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.source = source
        self.metrics = metrics
        self.clock = clock
        self.idle_since: dict[str, float] = {}
        self.scaled_this_period: set[str] = set()
        self.replicas: dict[str, DeploymentReplicas] = {}
        self.notes: dict[str, str] = {}  # colour -> why it is not scaled (an autoscaler, ...)
        self.last_scale_up: dict[str, float] = {}  # colour -> seconds the last scale-up took
        # colour -> when its scale-up started (self.clock): on the Lease holder when its step
        # began, on any other replica when it first saw the desired colour still scaled down.
        self.up_started: dict[str, float] = {}
        self.seen_at: dict[str, datetime] = {}  # colour -> when its Deployment was last read
        self.error: str | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._served: str | None = None
        self._rights: tuple[tuple[tuple[str, str, str], ...], float, bool] | None = None
        self._shown: set[str] = set()

    @property
    def deployments(self) -> Deployments:
        """The Deployments client, in the ConfigMap's namespace."""
        return Deployments(self.source.kube.api, self.source.spec.ref.namespace)

    def records(self) -> dict[str, ScaleRecord]:
        """The scale-down records of the ConfigMap version handled last."""
        applied = self.source.applied
        return read_records(applied.annotations) if applied is not None else {}

    def waits_for(self, config: Config) -> str | None:
        """Why a switch to `config.active` must wait (it is scaled down), or None.

        Asked on every replica before a switch: a colour with a record is held until the Lease
        holder has scaled it up, seen it ready and removed the record.
        """
        colour = config.active
        if colour not in config.scale.workloads:
            return None
        record = self.records().get(colour)
        if record is None:
            return None
        seen = self.replicas.get(colour)
        return waiting_reason(colour, record, seen.ready if seen is not None else None)

    async def run(self) -> None:
        """Look and act every POLL seconds until cancelled; API trouble is logged, not raised."""
        try:
            while True:
                try:
                    await self.tick()
                except _API_ERRORS as error:
                    log.warning("scaling: API server trouble, retrying error=%r", str(error))
                await asyncio.sleep(POLL)
        finally:
            for task in list(self._tasks.values()):
                task.cancel()

    async def tick(self) -> None:
        """One look: follow the served colour, read the Deployments, act if leading."""
        config = self.host.desired()
        if config is None or not config.scale.workloads:
            self._show({}, {})
            return
        self._follow_served(config)
        await self._read_replicas(config)
        records = self.records()
        held = self._held(config) is not None
        self._follow_scale_ups(config, records, held)
        self._show(records, self.states(config, records))
        if not self.host.decides():
            return
        if not await self._permitted(config):
            return
        records = self.records()
        after = scale_after(config.scale, config.rollback.window)
        for colour, name in config.scale.workloads.items():
            view = ColourView(
                colour=colour,
                served=colour == self._served,
                desired=colour == config.active,
                idle_for=self.clock() - self.idle_since.get(colour, self.clock()),
                record=records.get(colour),
                scaled_this_idle_period=colour in self.scaled_this_period,
                scaling_up=colour in self._tasks,
            )
            step = plan(view, config.scale.idle_replicas, after)
            if step is Step.SCALE_DOWN and config.scale.idle_replicas is not None:
                self._start(colour, self._scale_down(colour, name, config.scale.idle_replicas))
            elif step is Step.SCALE_UP and not held:
                record = records[colour]
                self._start(colour, self._scale_up(colour, name, record, config.scale.timeout))

    def status(self) -> dict[str, Any]:
        """The `scale` part of `/status`: per colour its Deployment, replicas, record and state.

        `state` and its times come from controller/scale_state.py. On a replica that does not
        hold the Lease (`leader` false) the times are its own view: when it saw the colour go
        idle, when it first saw the switch waiting; the Lease holder's clock decides.
        """
        config = self.host.desired()
        workloads = config.scale.workloads if config is not None else {}
        records = self.records()
        states = self.states(config, records) if config is not None else {}
        colours = {}
        for colour, name in workloads.items():
            seen = self.replicas.get(colour)
            record = records.get(colour)
            colours[colour] = {
                "deployment": name,
                "desired_replicas": seen.desired if seen is not None else None,
                "ready_replicas": seen.ready if seen is not None else None,
                "replicas_seen_at": iso(self.seen_at.get(colour)),
                "scaled_down": record.as_json() if record is not None else None,
                "scaling_up": colour in self._tasks and record is not None,
                **states[colour].as_json(),
                "last_scale_up_seconds": self.last_scale_up.get(colour),
                "note": self.notes.get(colour),
            }
        return {
            "leader": self.host.decides(),
            "idle_replicas": config.scale.idle_replicas if config is not None else None,
            "after_seconds": (
                scale_after(config.scale, config.rollback.window) if config is not None else None
            ),
            "timeout_seconds": config.scale.timeout if config is not None else None,
            "colours": colours,
            "error": self.error,
        }

    def states(self, config: Config, records: Mapping[str, ScaleRecord]) -> dict[str, ColourState]:
        """What each colour's Deployment is doing now, as far as this replica knows."""
        now, moment = self.clock(), utc_now()
        held = self._held(config)
        served = self.host.served()
        after = scale_after(config.scale, config.rollback.window)
        states = {}
        for colour in config.scale.workloads:
            started = self.up_started.get(colour)
            facts = ColourFacts(
                served=colour == served,
                desired=colour == config.active,
                record=records.get(colour),
                held=held if colour == config.active else None,
                scale_down_in=self._scale_down_in(
                    colour, config, served=served, records=records, after=after, now=now
                ),
                scaling_up_for=now - started if started is not None else None,
                timeout=config.scale.timeout,
            )
            states[colour] = colour_state(facts, moment)
        return states

    # -- looking --------------------------------------------------------------------------

    def _held(self, config: Config) -> str | None:
        """The reason of the recorded decision that holds this desired config, if one does.

        A recorded decision (a timed-out scale-up, a rollback) keeps its colour unserved: no
        scale-up until the config changes or `switch --retry`.
        """
        decision = self.source.recorded_decision()
        return decision.reason if decision is not None and decision.applies_to(config) else None

    def _follow_scale_ups(
        self, config: Config, records: Mapping[str, ScaleRecord], held: bool
    ) -> None:
        """Note when the desired colour started waiting for its scale-up, and forget the rest."""
        for colour in config.scale.workloads:
            if colour == config.active and colour in records and not held:
                self.up_started.setdefault(colour, self.clock())
            else:
                self.up_started.pop(colour, None)

    def _scale_down_in(
        self,
        colour: str,
        config: Config,
        *,
        served: str | None,
        records: Mapping[str, ScaleRecord],
        after: float,
        now: float,
    ) -> float | None:
        """Seconds until the Lease holder scales `colour` down (negative: due), or None."""
        idle = config.scale.idle_replicas
        if (
            idle is None
            or colour in (served, config.active)
            or colour in records
            or colour in self.scaled_this_period
        ):
            return None
        seen = self.replicas.get(colour)
        since = self.idle_since.get(colour)
        if since is None or (seen is not None and seen.desired <= idle):
            return None  # not seen idle yet, or already as small as scale.idleReplicas
        return after - (now - since)

    def _follow_served(self, config: Config) -> None:
        served = self.host.served()
        now = self.clock()
        if served != self._served:
            self._served = served
            self.scaled_this_period.discard(served or "")
            self.idle_since.pop(served or "", None)
        for colour in config.scale.workloads:
            if colour != served:
                self.idle_since.setdefault(colour, now)

    async def _read_replicas(self, config: Config) -> None:
        for colour, name in config.scale.workloads.items():
            try:
                self.replicas[colour] = await self.deployments.replicas(name)
                self.seen_at[colour] = utc_now()
            except ForbiddenError as error:
                self.replicas.pop(colour, None)
                self.notes[colour] = f"cannot read deployment/{name}: {error}"

    def _show(self, records: Mapping[str, ScaleRecord], states: Mapping[str, ColourState]) -> None:
        """Set the per-colour gauges; a colour no longer configured loses its series."""
        metrics = self.metrics
        for gone in self._shown - set(states):
            for gauge in (
                metrics.colour_desired_replicas,
                metrics.colour_ready_replicas,
                metrics.colour_scaled_down,
                metrics.colour_scaling_up,
                metrics.colour_scale_up_deadline,
            ):
                with contextlib.suppress(KeyError):
                    gauge.remove(gone)
        self._shown = set(states)
        for colour, state in states.items():
            seen = self.replicas.get(colour)
            if seen is not None:
                metrics.colour_desired_replicas.labels(colour).set(seen.desired)
                metrics.colour_ready_replicas.labels(colour).set(seen.ready)
            metrics.colour_scaled_down.labels(colour).set(1 if colour in records else 0)
            scaling_up = state.state is ScaleState.SCALING_UP
            metrics.colour_scaling_up.labels(colour).set(1 if scaling_up else 0)
            if state.timeout_at is not None:
                metrics.colour_scale_up_deadline.labels(colour).set(state.timeout_at.timestamp())
            else:
                with contextlib.suppress(KeyError):
                    metrics.colour_scale_up_deadline.remove(colour)

    async def _permitted(self, config: Config) -> bool:
        """Whether the Role allows every scale step, asked before anything is changed."""
        rules = tuple(required_rules(config))
        now = self.clock()
        known = self._rights
        # Asked again now and then, allowed or not: a Role can be fixed, or taken away.
        if known is not None and known[0] == rules and now - known[1] < RECHECK_RIGHTS:
            return known[2]
        deployments = self.deployments
        missing = [rule for rule in rules if not await deployments.allowed(*rule)]
        self._rights = (rules, now, not missing)
        if not missing:
            if self.error is not None:
                log.info("scaling: the Role now allows it")
            self.error = None
            return True
        message = missing_rules_message(missing)
        if message != self.error:
            log.error("%s", message)
            await self._event("ScaleForbidden", message, warning=True)
        self.error = message
        return False

    # -- acting ---------------------------------------------------------------------------

    def _start(self, colour: str, step: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(self._guarded(colour, step), name=f"scale-{colour}")
        self._tasks[colour] = task

    async def _guarded(self, colour: str, step: Coroutine[Any, Any, None]) -> None:
        try:
            await step
        except _API_ERRORS as error:
            log.error("scaling colour=%s failed error=%r", colour, str(error))
            self.notes[colour] = f"the last scale step failed: {error}"
            if isinstance(error, ForbiddenError):
                self._rights = None  # the next look asks again, and says what is missing
        finally:
            self._tasks.pop(colour, None)

    async def _scale_down(self, colour: str, name: str, idle: int) -> None:
        """Record the count, then scale to `idle`; undo the record if the scale write fails."""
        deployments = self.deployments
        if idle > 0:
            autoscalers = await deployments.autoscalers_of(name)
            if autoscalers:
                self.scaled_this_period.add(colour)
                note = (
                    f"not scaled down: HorizontalPodAutoscaler {', '.join(autoscalers)} owns "
                    f"deployment/{name}'s replicas and would undo scale.idleReplicas {idle}; "
                    "lower its minReplicas, or use scale.idleReplicas 0 (an HPA leaves a "
                    "Deployment at zero alone)"
                )
                self.notes[colour] = note
                log.warning("scaling colour=%s: %s", colour, note)
                await self._event("ScaleSkipped", f"{colour}: {note}", warning=True, about=colour)
                return
        scale = await deployments.scale(name)
        if scale.replicas <= idle:
            self.scaled_this_period.add(colour)
            return
        record = ScaleRecord(name, scale.replicas, idle, iso(utc_now()) or "", self._identity())

        def add(records: dict[str, ScaleRecord]) -> dict[str, ScaleRecord] | None:
            return None if colour in records else {**records, colour: record}

        written = await self._update_records(add)
        if written is None:
            self.scaled_this_period.add(colour)  # another writer recorded it first
            return
        try:
            await deployments.set_replicas(name, idle, scale.resource_version)
        except _API_ERRORS:
            # No partial state: a record without the scale-down would hold switches to it.
            await self._update_records(lambda r: _without(r, colour))
            raise
        self.scaled_this_period.add(colour)
        self.notes.pop(colour, None)
        config = self.host.desired()
        held = scale_after(config.scale, config.rollback.window) if config is not None else 0.0
        message = (
            f"{colour} (deployment/{name}) scaled down {scale.replicas} -> {idle} replicas: "
            f"not served for {held:g}s (scale.after); a switch to {colour} scales it back up "
            "first"
        )
        log.info("%s", message)
        await self._event("ScaledDown", message, version=written, about=colour)

    async def _scale_up(self, colour: str, name: str, record: ScaleRecord, timeout: float) -> None:
        """Restore the count, wait until ready and healthy, then remove the record (the go)."""
        deployments = self.deployments
        started = self.clock()
        if colour not in read_records((await self.source.kube.read()).annotations):
            return  # done already: this replica's copy of the ConfigMap is behind
        self.up_started[colour] = started  # the clock scale.timeout runs on, for /status
        scale = await deployments.scale(name)
        target = max(record.replicas, scale.replicas)
        if scale.replicas < target:
            await deployments.set_replicas(name, target)
        await self._event(
            "ScalingUp",
            f"{colour} (deployment/{name}) scaling up {scale.replicas} -> {target} replicas "
            f"before the switch to it (at most {timeout:g}s, scale.timeout)",
            about=colour,
        )
        log.info("scaling up colour=%s deployment=%s to=%d", colour, name, target)
        while True:
            config = self.host.desired()
            if not self.host.decides():
                return  # the next Lease holder carries on from what it sees
            if config is None or config.active != colour:
                await deployments.set_replicas(name, record.idle)
                log.info("scale-up of colour=%s no longer wanted: back to %d", colour, record.idle)
                return
            seen = await deployments.replicas(name)
            self.replicas[colour] = seen
            ready = seen.observed and seen.ready >= target
            if ready and self.host.health(colour) is Health.HEALTHY:
                break
            if self.clock() - started > timeout:
                await deployments.set_replicas(name, record.idle)
                reason = (
                    f"refused: {colour} not ready after {timeout:g}s: {seen.ready}/{target} "
                    "replicas ready (scale.timeout); scaled back down, traffic stays"
                )
                log.warning("%s", reason)
                self.host.refuse(colour, reason)
                return
            await asyncio.sleep(UP_POLL)
        took = self.clock() - started
        written = await self._update_records(lambda r: _without(r, colour))
        self.last_scale_up[colour] = took
        self.notes.pop(colour, None)
        message = (
            f"{colour} (deployment/{name}) scaled up {scale.replicas} -> {target} replicas, "
            f"ready and healthy after {took:.1f}s: switching to {colour}"
        )
        log.info("%s", message)
        await self._event("ScaledUp", message, version=written, about=colour)

    async def _update_records(
        self, change: Callable[[dict[str, ScaleRecord]], dict[str, ScaleRecord] | None]
    ) -> ConfigMapVersion | None:
        """Read, change and write the records, guarded by resourceVersion; None: no change."""
        kube = self.source.kube
        for _ in range(WRITE_ATTEMPTS):
            current = await kube.read()
            changed = change(read_records(current.annotations))
            if changed is None:
                return None
            try:
                return await kube.patch(
                    current.resource_version, annotations=records_annotation(changed)
                )
            except ConflictError:
                continue  # someone wrote in between: read again and decide again
        raise KubeError(f"the ConfigMap kept changing; {WRITE_ATTEMPTS} writes conflicted")

    async def _event(
        self,
        reason: str,
        message: str,
        *,
        warning: bool = False,
        version: ConfigMapVersion | None = None,
        about: str = "",
    ) -> None:
        on = version or self.source.applied
        if on is None:
            return
        try:
            await self.source.kube.event(on, reason, message, warning=warning, about=about)
        except _API_ERRORS as error:
            log.warning("could not record Event reason=%s error=%r", reason, str(error))

    def _identity(self) -> str:
        leadership = self.source.leadership
        return leadership.identity if leadership is not None else "bluegreen"


def _without(records: dict[str, ScaleRecord], colour: str) -> dict[str, ScaleRecord] | None:
    if colour not in records:
        return None
    return {c: r for c, r in records.items() if c != colour}
