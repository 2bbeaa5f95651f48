"""The control plane's metrics: active colour, switches, config reloads, rollbacks, health.

These change a few times a day, so they are ordinary prometheus-client objects, which is clearer
and costs nothing that matters; the per-request traffic counts are proxy/metrics.py's.
"""

from __future__ import annotations

from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge

from controller.rollback import RollbackKind
from proxy.metrics import TrafficStats, traffic_registry

# The `reason` values of bluegreen_rollbacks_total: the kinds of decision rollback.py makes.
ROLLBACK_REASONS: tuple[str, ...] = get_args(RollbackKind)


class ControlMetrics:
    """Metrics of the control plane: active colour, switches and config reloads."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.active_colour = Gauge(
            "bluegreen_active_colour",
            "1 for the colour that receives live traffic, 0 for the others.",
            ("colour",),
            registry=registry,
        )
        self.desired_colour = Gauge(
            "bluegreen_desired_colour",
            "1 for the colour the config asks for (its `active`), 0 for the others; differs "
            "from bluegreen_active_colour while a refusal or rollback holds.",
            ("colour",),
            registry=registry,
        )
        self.switches = Counter(
            "bluegreen_switches",
            "Changes of the active colour that were applied.",
            ("from_colour", "to_colour"),
            registry=registry,
        )
        self.config_reloads = Counter(
            "bluegreen_config_reloads",
            "Config versions seen, by result: accepted or rejected.",
            ("result",),
            registry=registry,
        )
        self.config_last_success = Gauge(
            "bluegreen_config_last_reload_success_timestamp_seconds",
            "Unix time of the last accepted config.",
            registry=registry,
        )
        self.config_last_reload_successful = Gauge(
            "bluegreen_config_last_reload_successful",
            "1 when the last config version seen was accepted, 0 while it is rejected (the last "
            "good config keeps routing).",
            registry=registry,
        )
        # Unknown until the first version is seen: NaN, so that `== 0` is not true at start-up.
        self.config_last_reload_successful.set(float("nan"))
        self.rollbacks = Counter(
            "bluegreen_rollbacks",
            "Automatic rollbacks and refused switches, by reason: unhealthy, error_rate, "
            "target_unhealthy, shadow_mismatch, scale_up_timeout.",
            ("reason",),
            registry=registry,
        )
        self.upstream_healthy = Gauge(
            "bluegreen_upstream_healthy",
            "1 when a colour passes its active health checks, 0 when it fails them; "
            "absent while unknown.",
            ("colour",),
            registry=registry,
        )
        self.build_info = Gauge(
            "bluegreen_build_info",
            "Always 1; the labels say what this process runs: version, revision, python, and "
            "compiled (true for the mypyc-compiled proxy, false for the pure-Python one).",
            ("version", "revision", "python", "compiled"),
            registry=registry,
        )
        self.leader = Gauge(
            "bluegreen_leader",
            "1 while this process makes the switch and rollback decisions: it holds the Lease "
            "(with a ConfigMap), always 1 from a config file.",
            registry=registry,
        )
        self.colour_desired_replicas = Gauge(
            "bluegreen_colour_desired_replicas",
            "spec.replicas of the Deployment behind a colour (scale.<colour>), as read every "
            "second; absent for colours without one.",
            ("colour",),
            registry=registry,
        )
        self.colour_ready_replicas = Gauge(
            "bluegreen_colour_ready_replicas",
            "Ready replicas of the Deployment behind a colour (status.readyReplicas).",
            ("colour",),
            registry=registry,
        )
        self.colour_scaled_down = Gauge(
            "bluegreen_colour_scaled_down",
            "1 while bluegreen has scaled a colour down (its count recorded in the ConfigMap, to "
            "be restored before a switch to it), 0 otherwise.",
            ("colour",),
            registry=registry,
        )
        self.colour_scaling_up = Gauge(
            "bluegreen_colour_scaling_up",
            "1 while a colour bluegreen scaled down is the desired one and is being scaled up "
            "before the switch to it (live traffic stays on the previous colour), 0 otherwise.",
            ("colour",),
            registry=registry,
        )
        self.colour_scale_up_deadline = Gauge(
            "bluegreen_colour_scale_up_deadline_timestamp_seconds",
            "Unix time at which the scale-up in progress gives up (scale.timeout): the switch is "
            "then refused and the colour scaled back; absent while no scale-up runs.",
            ("colour",),
            registry=registry,
        )
        # Every label value exists from the start at 0, so that increase() sees the first one.
        for result in ("accepted", "rejected"):
            self.config_reloads.labels(result)
        for reason in ROLLBACK_REASONS:
            self.rollbacks.labels(reason)

    def show_build(self, labels: dict[str, str]) -> None:
        """Export the process's build identity as the one series of `bluegreen_build_info`."""
        self.build_info.clear()
        self.build_info.labels(**labels).set(1)

    def show_active(self, colours: tuple[str, ...], active: str) -> None:
        """Set the active-colour gauge: 1 for `active`, 0 for every other colour."""
        for colour in colours:
            self.active_colour.labels(colour).set(1 if colour == active else 0)

    def show_desired(self, colours: tuple[str, ...], desired: str) -> None:
        """Set the desired-colour gauge: 1 for `desired`, 0 for every other colour."""
        for colour in colours:
            self.desired_colour.labels(colour).set(1 if colour == desired else 0)


def build_registry(stats: TrafficStats) -> tuple[CollectorRegistry, ControlMetrics]:
    """Create the process's registry holding the traffic collector and the control metrics."""
    registry = traffic_registry(stats)
    return registry, ControlMetrics(registry)
