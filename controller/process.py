"""Wires one bluegreen process: config source -> routing table -> proxy, plus the admin server.

Both planes share one event loop. The source calls `apply` or `reject` for every version it
sees; `apply` builds the immutable routing table and swaps it into the proxy in one assignment.

The config is the desired state; what is served is the desired colour unless a decision
recorded for that same desired config says otherwise (controller/decision.py). Refusals and
rollbacks record such a decision; they never rewrite the config.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from controller.build import BuildInfo
from controller.config import Config, ConfigError
from controller.configmap_source import ConfigMapSource, ConfigMapSpec
from controller.decision import ServedDecision, served_colour
from controller.file_source import FileSource
from controller.guard import SwitchGuard, policy_of
from controller.health import HealthChecker
from controller.health_state import Health, HealthState
from controller.history import recorded_reason
from controller.metrics import ControlMetrics, build_registry
from controller.rollback import Action, Decision, RollbackKind, shadow_note
from controller.scaling import ScaleHost, Scaler
from controller.source import ConfigSource
from controller.state import ControlState, utc_now
from proxy.admin import build_admin_app
from proxy.metrics import TrafficStats
from proxy.server import ProxyServer, ServerSettings
from proxy.session_affinity import drain_after

# ConfigMapSpec is part of how a process is made (the CLI and tests import it from here).
__all__ = ["ConfigMapSpec", "Endpoint", "ProxyProcess", "ShutdownSettings"]

log = logging.getLogger(__name__)

_UNHEALTHY: RollbackKind = "unhealthy"
_SHADOW_MISMATCH: RollbackKind = "shadow_mismatch"


def _event_of(decision: Decision) -> str:
    """The Event reason of a refused switch: the colour failed its checks, or its shadows."""
    return "ShadowMismatch" if decision.kind == _SHADOW_MISMATCH else "TargetUnhealthy"


# How often the guard looks at the colour switched to (health and error rate since the switch).
GUARD_INTERVAL = 0.02  # a check reads a few counters: 50 a second cost nothing


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A host and port to listen on."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse `HOST:PORT` (or `[v6]:PORT`, or `:PORT` for every address)."""
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{text!r} is not HOST:PORT (for example 0.0.0.0:8080)")
        host = host.strip("[]") or "0.0.0.0"
        return cls(host, int(port))


@dataclass(frozen=True, slots=True)
class ShutdownSettings:
    """How SIGTERM is handled: readiness fails at once, the listener closes after `delay`."""

    delay: float = 0.0  # time for endpoints to stop sending new connections to this replica
    grace: float = 25.0  # how long in-flight requests may take to finish


@dataclass(frozen=True, slots=True)
class LocalHold:
    """A colour this replica will not serve live traffic, on its own health checks alone.

    A replica that does not hold the Lease refuses a switch to a colour its probes say is
    unhealthy, and leaves a colour that turns unhealthy after a switch, at once and by itself;
    it records nothing (the leader records the decision, the Event and the history). The hold
    ends when the leader's recorded decision covers it, when the config stops asking for
    `colour` (a person's next switch), or when this replica's own checks say `colour` is healthy
    again; a replica that starts leading while it holds records the decision itself.
    """

    colour: str  # the colour the config asks for, held back
    serving: str  # the colour served instead
    decision: Decision  # the refusal or rollback, as the leader would have decided it
    event: str  # the Event the leader records for such a decision


class ProxyProcess:
    """One running proxy fed by a local config file or a ConfigMap."""

    def __init__(
        self,
        config: Path | ConfigMapSpec,
        listen: Endpoint,
        admin_listen: Endpoint,
        shutdown: ShutdownSettings | None = None,
        server_settings: ServerSettings | None = None,
    ) -> None:
        self.config = config
        self.listen = listen
        self.admin_listen = admin_listen
        self.shutdown_settings = shutdown or ShutdownSettings()
        self.server_settings = server_settings
        self._last_rejection: str | None = None  # logged once until a config is accepted
        self.stats = TrafficStats()
        self.registry, self.metrics = build_registry(self.stats)
        self.metrics.show_build(BuildInfo.current().labels())
        self.source: ConfigSource = (
            ConfigMapSource(config, self.apply, self.reject)
            if isinstance(config, ConfigMapSpec)
            else FileSource(config, self.apply, self.reject)
        )
        self.state = ControlState(source=self.source.label)
        self.metrics.leader.set_function(lambda: 1.0 if self.decides else 0.0)
        self.server: ProxyServer | None = None
        self.health = HealthChecker(on_change=self._health_changed)
        self.guard = SwitchGuard(self.stats, self.health.health, time.monotonic)
        self.config_applied: Config | None = None
        self.desired: tuple[Config, str] | None = None  # the source's last valid config
        # The recorded decision that applies to the desired config, if one does.
        self.decision: ServedDecision | None = None
        self.hold: LocalHold | None = None
        self.shadow_gate: str | None = None  # what the shadow gate said of the last switch
        # Scaling the idle colour (scale.* keys) needs the API server: only with a ConfigMap.
        self.scaler = (
            Scaler(
                ScaleHost(
                    self._decides,
                    self._served,
                    self._desired_config,
                    self.health.health,
                    self._refuse_scaled_switch,
                ),
                self.source,
                self.metrics,
            )
            if isinstance(self.source, ConfigMapSource)
            else None
        )
        self._health_shown: set[str] = set()
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()
        self.proxy_port = 0
        self.admin_port = 0

    @property
    def decides(self) -> bool:
        """Whether this process makes preflight and rollback decisions (see ConfigSource)."""
        return self.source.decides

    def apply(self, config: Config, version: str) -> None:
        """Swap in the routing table of an accepted config and record what changed.

        The colour served is the config's `active` (desired), unless the source's recorded
        decision applies to this very config: then it is the decision's colour, on every
        replica, and re-applying the same config changes nothing. A change of the served
        colour otherwise is preflighted first, on every replica with its own health checks: a
        switch to a colour failing them is refused, so no replica sends it a live request. Only
        the replica that decides records the refusal; any other holds locally (`LocalHold`).
        """
        self.desired = (config, version)
        self.metrics.show_desired(tuple(config.upstreams), config.active)
        self._last_rejection = None
        previous = self.state.table.active if self.state.table is not None else None
        served, why = served_colour(config, self.source.recorded_decision())
        if why is not None:
            self.decision = self.source.recorded_decision()
            self.hold = None  # the recorded decision covers what this replica held back
            self.guard.mark_failed(config.active, why)
            self._swap(replace(config, active=served), version, reason=why)
            return
        self.decision = None
        self._end_hold_if_resolved(config)
        if previous is not None and config.active != previous:
            waiting = self.scaler.waits_for(config) if self.scaler is not None else None
            if waiting is not None:
                # Scaled down by bluegreen: serve `previous` until the Lease holder has scaled
                # it up and removed the record (a new version of the ConfigMap).
                log.info("switch to colour=%s waits: %s", config.active, waiting)
                self._swap(replace(config, active=previous), version, reason="manual")
                return
            decision = self.guard.before_switch(config.active, policy_of(config), config.shadow)
            if decision.action is Action.REFUSE:
                if self.decides:
                    self._refuse(config, version, previous, decision)
                else:
                    self._hold(config, version, previous, decision, _event_of(decision))
                return
            self._note_shadow_gate(config)
        self._swap(config, version, reason=self._recorded_reason(previous, config.active))

    def _note_shadow_gate(self, config: Config) -> None:
        """Say what the shadow gate made of an allowed switch, when shadow traffic is on."""
        if config.shadow.percent <= 0 or not config.rollback.enabled:
            return
        evidence = self.guard.shadow_evidence(config.active, config.shadow)
        self.shadow_gate = shadow_note(config.active, evidence)
        log.info("%s", self.shadow_gate)

    def _end_hold_if_resolved(self, config: Config) -> None:
        """End the local hold once the config no longer asks for the held colour.

        When the leader's write-back explains the change (its history entry for this very
        change), the colour is marked failed here too, as on the leader.
        """
        hold = self.hold
        if hold is None or config.active == hold.colour:
            return
        self.hold = None
        reason = self._recorded_reason(hold.colour, config.active)
        if reason.startswith(("rollback:", "refused:")):
            self.guard.mark_failed(hold.colour, reason)
        log.info("local hold ended colour=%s config_active=%s", hold.colour, config.active)

    def _hold(
        self, config: Config, version: str, serving: str, decision: Decision, event: str
    ) -> None:
        """Serve `serving` instead of `config.active`, without recording (not the leader)."""
        again = self.hold is not None and self.hold.colour == config.active
        self.hold = LocalHold(config.active, serving, decision, event)
        self.guard.mark_failed(config.active, decision.reason)  # on this replica, for now
        if not again:
            log.warning(
                "not serving colour=%s on this replica's health checks reason=%r "
                "(the leader records the decision)",
                config.active,
                decision.reason,
            )
            if decision.action is Action.REFUSE:
                self.state.refused(serving, config.active, decision.reason)
        self._swap(replace(config, active=serving), version, reason=decision.reason)

    def _resume_if_healthy(self) -> None:
        """Serve the held colour again once this replica's own checks say it is healthy."""
        hold, desired = self.hold, self.desired
        if hold is None or desired is None or self.health.health(hold.colour) is not Health.HEALTHY:
            return
        if hold.decision.kind == _SHADOW_MISMATCH:
            return  # healthy, but it answers wrongly: held until the config changes
        log.info("colour=%s healthy again on this replica's checks: serving it", hold.colour)
        self.hold = None
        config, version = desired
        self._swap(config, version, reason="manual")

    def _record_hold(self) -> None:
        """Record a local hold made before this replica led, as the leader records decisions."""
        hold, desired = self.hold, self.desired
        if hold is None or desired is None:
            return
        self.hold = None
        decision = hold.decision
        config = desired[0]
        log.warning("now leading: recording colour=%s reason=%r", hold.colour, decision.reason)
        self.guard.mark_failed(hold.colour, decision.reason)
        self.metrics.rollbacks.labels(decision.kind).inc()
        if config.active == hold.colour:
            self._record(config, hold.serving, decision, hold.event)

    def _recorded_reason(self, previous: str | None, active: str) -> str:
        """Why the active colour changed, as the source's writer recorded it; else manual."""
        return recorded_reason(self.source.recorded_switches(), previous, active, utc_now())

    def _swap(self, config: Config, version: str, reason: str) -> None:
        """Publish the config's routing table; watch the switch it makes if a person made it.

        With session affinity, a switch a person made opens a drain window for the colour it
        leaves; a rollback or a refusal opens none (everyone moves at once).
        """
        previous = self.state.table
        drain = drain_after(
            config.session,
            previous.active if previous is not None else None,
            previous.drain if previous is not None else None,
            config.active,
            config.colours,
            manual=reason == "manual",
            old_unhealthy=previous is not None
            and self.health.health(previous.active) is Health.UNHEALTHY,
            now=time.time(),
        )
        table = config.to_routing_table(version, drain)
        assert self.server is not None
        self.server.swap_table(table)
        self.config_applied = config
        self.health.update(config)
        for gone in set(self._health_shown) - set(table.colours):
            self._show_health(gone, Health.UNKNOWN)
        record = self.state.accepted(table, reason)
        _count_accepted(self.metrics, table.colours, table.active)
        if record is not None:
            self.metrics.switches.labels(record.from_colour, record.to_colour).inc()
            self.guard.switched(record.from_colour, record.to_colour, manual=reason == "manual")
            if reason == "manual" and self.decides:
                self.source.record_switch(record.from_colour, record.to_colour)
            if reason.startswith(("rollback:", "refused:")):
                # Followers learn of the leader's decision from the history annotation.
                self.guard.mark_failed(record.from_colour, reason)
            log.info(
                "switched from=%s to=%s reason=%r version=%s",
                record.from_colour,
                record.to_colour,
                record.reason,
                version,
            )
        else:
            log.info("config applied version=%s active=%s", version, table.active)

    def _refuse(self, config: Config, version: str, previous: str, decision: Decision) -> None:
        log.warning("switch refused to=%s reason=%r", config.active, decision.reason)
        self.state.refused(previous, config.active, decision.reason)
        self.guard.mark_failed(config.active, decision.reason)
        self.metrics.rollbacks.labels(decision.kind).inc()
        self._swap(replace(config, active=previous), version, reason=decision.reason)
        self._record(config, previous, decision, _event_of(decision))

    def _decides(self) -> bool:
        return self.decides

    def _served(self) -> str | None:
        return self.state.table.active if self.state.table is not None else None

    def _desired_config(self) -> Config | None:
        return self.desired[0] if self.desired is not None else None

    def _refuse_scaled_switch(self, colour: str, reason: str) -> None:
        """A switch to a scaled-down colour that did not get ready in time: traffic stays."""
        served, desired = self._served(), self._desired_config()
        if served is None or desired is None or not self.decides:
            return
        self.state.refused(served, colour, reason)
        self.guard.mark_failed(colour, reason)
        self.metrics.rollbacks.labels("scale_up_timeout").inc()
        decision = Decision(Action.REFUSE, None, reason, "scale_up_timeout")
        if desired.active == colour:  # recorded for the desired config that asked for it
            self._record(desired, served, decision, "ScaleUpTimedOut")

    def _roll_back(self, decision: Decision) -> None:
        table = self.state.table
        if self.desired is None or table is None or decision.target is None:
            return
        config, _ = self.desired
        log.warning(
            "rolling back from=%s to=%s reason=%r", table.active, decision.target, decision.reason
        )
        self.guard.mark_failed(table.active, decision.reason)
        self.metrics.rollbacks.labels(decision.kind).inc()
        failed = table.active
        self._swap(replace(config, active=decision.target), table.version, reason=decision.reason)
        if failed == config.active:  # the colour watched is the desired one: always, so far
            self._record(config, decision.target, decision, "RolledBack")

    def _record(self, config: Config, served: str, decision: Decision, event: str) -> None:
        """Record that `served` is served instead of the desired `config.active`, and why."""
        recorded = ServedDecision(config.active, served, config.fingerprint, decision.reason)
        self.decision = recorded
        self.source.record_decision(recorded, event)

    async def _guard_loop(self) -> None:
        while True:
            await asyncio.sleep(GUARD_INTERVAL)
            self.guard_once()

    def guard_once(self) -> None:
        """Look once at the switch under watch and at a local hold (every GUARD_INTERVAL).

        The deciding replica rolls back on health or error rate and records it. Any other
        replica leaves a colour its own checks say is unhealthy at once, without recording
        (the error-rate decision is the leader's: its count is the one that is written), and
        serves a held colour again when its checks say it is healthy.
        """
        config = self.config_applied
        if config is None:
            return
        if self.decides:
            self._record_hold()
        else:
            self._resume_if_healthy()
        decision = self.guard.check(policy_of(config))
        if decision.action is not Action.ROLLBACK:
            return
        if self.decides:
            self._roll_back(decision)
        elif decision.kind == _UNHEALTHY and decision.target is not None:
            # config.active is the colour under watch: a rollback swaps nothing else first.
            self._hold(config, self._version(), decision.target, decision, "RolledBack")

    def _version(self) -> str:
        return self.state.table.version if self.state.table is not None else ""

    def status(self) -> dict[str, Any]:
        """Return the `/status` JSON: the state's snapshot, with the desired colour and why.

        `active` is the colour served; `desired` is the config's `active`, and
        `desired_reason` says why it is not served when they differ; `decision` is the
        recorded decision that holds (controller/decision.py), or null.
        """
        snapshot = self.state.snapshot(self.stats, self.health_of, self.guard.failed)
        desired = self.desired[0].active if self.desired is not None else None
        snapshot["desired"] = desired
        snapshot["desired_reason"] = self._why_not_desired(desired, snapshot["active"])
        snapshot["shadow"] = self._shadow_status()
        if self.scaler is not None:
            snapshot["scale"] = self.scaler.status()
        snapshot["decision"] = self.decision.as_json() if self.decision is not None else None
        return snapshot

    def _shadow_status(self) -> dict[str, Any]:
        """Shadow figures per idle colour, the mismatching paths, and the gate's settings."""
        config = self.config_applied
        shadow = self.stats.shadow
        document = shadow.snapshot(time.monotonic())
        if config is not None:
            settings = config.shadow
            document["percent"] = settings.percent
            document["window_seconds"] = settings.window
            document["gate"] = {
                "max_mismatch_rate": settings.max_mismatch_rate,
                "min_requests": settings.min_requests,
                "last": self.shadow_gate,
            }
        return document

    def _why_not_desired(self, desired: str | None, served: str | None) -> str | None:
        if desired is None or desired == served:
            return None
        if self.decision is not None:
            return self.decision.reason
        waiting = self.scaler.waits_for(self.desired[0]) if self.scaler and self.desired else None
        if waiting is not None:
            return waiting
        hold = self.hold
        if hold is not None and hold.colour == desired:
            return f"{hold.decision.reason} (this replica's health checks)"
        switches = self.state.switches
        return switches[0].reason if switches else None

    def health_of(self, colour: str) -> tuple[str, str | None]:
        """Return a colour's health and the last probe error, for /status."""
        state = self.health.states.get(colour)
        if state is None:
            return Health.UNKNOWN.value, None
        return state.health.value, state.last_error

    def _health_changed(self, colour: str, before: HealthState, after: HealthState) -> None:
        self._show_health(colour, after.health)
        table = self.state.table
        if (
            after.health is Health.UNHEALTHY
            and table is not None
            and table.drain is not None
            and table.drain.colour == colour
            and self.server is not None
        ):
            # Sessions kept on the old colour move to the active one: it no longer answers.
            log.warning("session drain ended early colour=%s reason=unhealthy", colour)
            table = replace(table, drain=None)
            self.server.swap_table(table)
            self.state.table = table

    def _show_health(self, colour: str, health: Health) -> None:
        gauge = self.metrics.upstream_healthy
        if health is Health.UNKNOWN:
            if colour in self._health_shown:
                gauge.remove(colour)
                self._health_shown.discard(colour)
            return
        gauge.labels(colour).set(1 if health is Health.HEALTHY else 0)
        self._health_shown.add(colour)

    def reject(self, error: ConfigError) -> None:
        """Keep the last good table and report why this version was refused."""
        self.state.rejected(str(error))
        self.metrics.config_reloads.labels("rejected").inc()
        self.metrics.config_last_reload_successful.set(0)
        current = self.state.table.version if self.state.table is not None else None
        message = str(error)
        if message == self._last_rejection:
            # The same config seen again (a re-list, a reconnect): logged once, counted each time.
            log.debug("config rejected again, keeping version=%s", current)
            return
        self._last_rejection = message
        log.error("config rejected, keeping version=%s error=%r", current, message)

    async def run(self) -> None:
        """Load the config, serve until SIGTERM or SIGINT, then shut down gracefully.

        Start-up: the config is loaded, the admin port opens (`/healthz` answers from then
        on), then the proxy listener; `/readyz` answers 200 only once the listener accepts
        connections (`ControlState.readiness`). Raises ConfigError when the file is invalid at
        start: the process never runs on a half-valid config. Raises OSError when a port cannot
        be bound, after closing what was opened, so `/readyz` never said ready.
        """
        self.server = ProxyServer(self.stats, settings=self.server_settings)
        source = self.source
        await source.start()
        admin_runner = web.AppRunner(
            build_admin_app(
                self.registry,
                self.status,
                self.state.readiness,
            ),
            access_log=None,
        )
        try:
            await admin_runner.setup()
            admin_site = web.TCPSite(admin_runner, self.admin_listen.host, self.admin_listen.port)
            await admin_site.start()
            self.admin_port = _bound_port(admin_site)
            listener = await self.server.listen(self.listen.host, self.listen.port)
        except BaseException:
            await self._abandon_start(admin_runner)
            raise
        self.proxy_port = int(listener.sockets[0].getsockname()[1])
        self.state.listening = True  # /readyz may say ready from now on
        watch = asyncio.create_task(source.run(), name="config-source")
        guard = asyncio.create_task(self._guard_loop(), name="switch-guard")
        scaling = asyncio.create_task(self.scaler.run(), name="scaling") if self.scaler else None
        self._install_signal_handlers()
        log.info(
            "serving proxy=%s:%d admin=%s:%d source=%s",
            self.listen.host,
            self.proxy_port,
            self.admin_listen.host,
            self.admin_port,
            self.state.source,
        )
        self.ready.set()
        try:
            await self.stopping.wait()
        finally:
            guard.cancel()
            if scaling is not None:
                scaling.cancel()
            # Before the drain, so another replica decides while this one finishes.
            await source.resign()
            await self._shutdown(watch, admin_runner)
            await source.close()

    async def _abandon_start(self, admin_runner: web.AppRunner) -> None:
        """Close what a start-up that failed had opened: the admin port, probes, the source."""
        await admin_runner.cleanup()
        await self.health.close()
        await self.source.close()

    def stop(self) -> None:
        """Ask the process to shut down (what SIGTERM does)."""
        self.stopping.set()

    async def _shutdown(self, watch: asyncio.Task[None], admin_runner: web.AppRunner) -> None:
        settings = self.shutdown_settings
        self.state.shutting_down = True  # /readyz fails from now on
        log.info("shutting down delay=%gs grace=%gs", settings.delay, settings.grace)
        if settings.delay > 0:
            await asyncio.sleep(settings.delay)
        watch.cancel()
        await self.health.close()
        if self.server is not None:
            await self.server.shutdown(settings.grace)
        await admin_runner.cleanup()
        log.info("stopped")

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError):
                # Not the main thread (tests run the process in-loop): stop() still works.
                return


def _count_accepted(metrics: ControlMetrics, colours: tuple[str, ...], active: str) -> None:
    metrics.config_reloads.labels("accepted").inc()
    metrics.config_last_success.set_to_current_time()
    metrics.config_last_reload_successful.set(1)
    metrics.show_active(colours, active)


def _bound_port(site: web.TCPSite) -> int:
    # aiohttp keeps the asyncio (or uvloop) server here and has no public accessor for it.
    sockets = getattr(site._server, "sockets", None)
    return int(sockets[0].getsockname()[1]) if sockets else 0
