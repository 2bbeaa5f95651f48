"""The ConfigMap source: list, then watch, and feed every new version through validation.

Every version of the ConfigMap goes through `parse_config`, exactly like a file edit: a valid one
is applied (the routing table swap is the caller's), an invalid one is rejected whole and the
last good config stays. Losing the API server never stops traffic: the source only stops
delivering new versions, and reconnects with capped, jittered exponential backoff. A watch that
ends resumes from the last resourceVersion seen; one that is too old (410 Gone) lists again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client

from controller.config import Config, ConfigError, parse_config
from controller.decision import DECISION_ANNOTATION, ServedDecision, read_decision
from controller.history import PREVIOUS_ANNOTATION, read_history, switch_annotations
from controller.kube import (
    ConfigMapRef,
    ConfigMapVersion,
    ConflictError,
    ForbiddenError,
    GoneError,
    KubeClient,
    KubeError,
    load_api_client,
)
from controller.leader import Leadership, LeaseSettings
from controller.source import OnConfig, OnError
from controller.state import utc_now

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConfigMapSpec:
    """Where the config lives in a cluster, and how to reach the API server."""

    ref: ConfigMapRef
    kubeconfig: Path | None = None
    lease: LeaseSettings = field(default_factory=LeaseSettings)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with full jitter (delays in seconds)."""

    initial: float = 0.2
    cap: float = 10.0
    factor: float = 2.0

    def delay(self, attempt: int) -> float:
        """Return the delay before retry number `attempt` (0-based)."""
        return random.uniform(0, min(self.cap, self.initial * self.factor**attempt))


class ConfigMapSource:
    """Follows one ConfigMap and reports each version, valid or not, exactly once.

    It also takes part in the election of the replica that decides (a Lease named
    `<configmap>-leader` beside the ConfigMap) and records that replica's decisions in the
    annotation `bluegreen.io/decision`, never in `data` (see controller/decision.py).
    """

    def __init__(
        self,
        spec: ConfigMapSpec,
        on_config: OnConfig,
        on_error: OnError,
        backoff: Backoff | None = None,
        events: bool = True,
    ) -> None:
        self.spec = spec
        self.on_config = on_config
        self.on_error = on_error
        self.backoff = backoff or Backoff()
        self.events = events
        self.resource_version = ""  # the last version seen, to resume a watch from
        self.applied: ConfigMapVersion | None = None
        self.last_active: str | None = None
        self.connected = asyncio.Event()
        self.relists = 0  # lists after the first: after 410 Gone or an outage
        self.leadership: Leadership | None = None  # from `start`
        self._api: client.ApiClient | None = None
        self._kube: KubeClient | None = None
        self._election: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()
        # The decision this replica is writing: it holds until the written version is seen.
        self._pending: ServedDecision | None = None

    @property
    def label(self) -> str:
        """`configmap:NS/NAME`, for /status and the logs."""
        return f"configmap:{self.spec.ref}"

    @property
    def kube(self) -> KubeClient:
        """The client of the ConfigMap; only after `start`."""
        if self._kube is None:
            raise RuntimeError("ConfigMapSource.start() has not run")
        return self._kube

    @property
    def decides(self) -> bool:
        """Whether this replica holds the Lease, and so makes the decisions."""
        return self.leadership is not None and self.leadership.leading

    async def start(self) -> None:
        """Connect to the API server; versions and the election begin in `run`.

        Until the first valid version arrives the proxy answers 503 and /readyz fails.
        """
        self._api = await load_api_client(self.spec.kubeconfig)
        self._kube = KubeClient(self._api, self.spec.ref)
        ref = self.spec.ref
        self.leadership = Leadership(
            self._api, ref.namespace, f"{ref.name}-leader", self.spec.lease
        )

    async def run(self) -> None:
        """Follow the ConfigMap and stand for election until cancelled (see `follow`)."""
        if self.leadership is not None and self._election is None:
            self._election = asyncio.create_task(self.leadership.run(), name="leader-election")
        try:
            await self.follow()
        finally:
            await self._stop_election()

    async def resign(self) -> None:
        """Stop leading and release the Lease, so another replica decides while this one drains."""
        if await self._stop_election() and self.leadership is not None:
            await self.leadership.release()

    async def close(self) -> None:
        """Close the API client."""
        if self._api is not None:
            await self._api.close()

    async def _stop_election(self) -> bool:
        """Cancel the election task; say whether one was running."""
        election, self._election = self._election, None
        if election is None:
            return False
        if self.leadership is not None:
            self.leadership.leading = False
        election.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await election
        return True

    def recorded_switches(self) -> list[dict[str, str]]:
        """The history annotation of the version handled last, newest first."""
        return read_history(self.applied.annotations) if self.applied is not None else []

    def recorded_decision(self) -> ServedDecision | None:
        """The decision this replica is writing, else the annotation of the version handled last."""
        if self._pending is not None:
            return self._pending
        return read_decision(self.applied.annotations) if self.applied is not None else None

    def record_decision(self, decision: ServedDecision, event: str) -> None:
        """Write the decision annotation (and a history entry) in the background, then the Event.

        Guarded by the resourceVersion decided on, so of many replicas one write wins; `data`
        (the desired config) is never written. A conflict or an API error is logged.
        """
        by = self.leadership.identity if self.leadership is not None else "bluegreen"
        stamped = decision.stamped(by, utc_now())
        self._pending = stamped
        self._background(self._write_decision(stamped, event))

    def _background(self, write: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(write)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    def record_switch(self, previous: str, active: str) -> None:
        """Record `previous` as the colour to roll back to, unless the switch's writer did.

        `bluegreen switch` writes its own history entry; a `kubectl patch` or a GitOps sync
        writes none, so the leader adds one (reason `manual`, by `observed by POD`). Guarded by
        the resourceVersion of the version that made the switch: a decision written on that
        same version wins, and a conflict is only logged.
        """
        based_on = self.applied
        if based_on is None:
            return
        latest = read_history(based_on.annotations)[:1]
        if latest and (latest[0].get("from"), latest[0].get("to")) == (previous, active):
            return
        self._background(self._record_switch(based_on, previous, active))

    async def _record_switch(self, based_on: ConfigMapVersion, previous: str, active: str) -> None:
        kube = self._kube
        if kube is None:
            return
        by = self.leadership.identity if self.leadership is not None else "bluegreen"
        try:
            await kube.patch(
                based_on.resource_version,
                annotations=switch_annotations(
                    based_on.annotations, previous, active, reason="manual", by=f"observed by {by}"
                ),
            )
        except ConflictError:
            log.info(
                "ConfigMap changed since resourceVersion=%s; previous colour not recorded",
                based_on.resource_version,
            )
        except (KubeError, OSError) as error:
            log.warning("could not record the previous colour: %s", error)

    async def _write_decision(self, decision: ServedDecision, event: str) -> None:
        try:
            written = await self._patch_decision(decision, event)
        finally:
            self._pending = None
        if written is None:
            return
        try:
            await self.kube.event(
                written, event, f"{decision.reason} (by {decision.by})", warning=True
            )
        except (KubeError, OSError) as error:
            log.warning("could not record Event reason=%s error=%r", event, str(error))

    async def _patch_decision(
        self, decision: ServedDecision, event: str
    ) -> ConfigMapVersion | None:
        """Patch the decision annotation onto the version decided on; None if not written."""
        based_on, kube = self.applied, self._kube
        if based_on is None or kube is None:
            return None
        for attempt in range(3):
            annotations: dict[str, str | None] = dict(
                switch_annotations(
                    based_on.annotations,
                    decision.desired,
                    decision.served,
                    reason=decision.reason,
                    by=decision.by,
                )
            )
            # `bluegreen rollback` still returns to the colour served before the last
            # person's switch: a decision does not move it.
            annotations.pop(PREVIOUS_ANNOTATION)
            annotations[DECISION_ANNOTATION] = decision.to_annotation()
            try:
                return await kube.patch(based_on.resource_version, annotations=annotations)
            except ConflictError:
                # Retried when the data is unchanged (a re-apply by a GitOps controller, the
                # previous colour recorded a moment ago): the desired config decided on is
                # still the one in force. A change of data (a person's edit) wins.
                current = await self._read_quietly(kube)
                if attempt < 2 and current is not None and current.data == based_on.data:
                    based_on = current
                    continue
                log.warning(
                    "ConfigMap changed since resourceVersion=%s; not recording the %s",
                    based_on.resource_version,
                    event,
                )
                return None
            except (KubeError, OSError) as error:
                log.error("could not record the %s on the ConfigMap: %s", event, error)
                return None
        return None

    def _clear_stale_decision(self, version: ConfigMapVersion, config: Config) -> None:
        """Delete a recorded decision that no longer applies (the desired config changed).

        So that the same desired config coming back later (green, blue, green again by hand) is
        a new switch, not held by an old decision. Only the deciding replica writes; guarded by
        the version's resourceVersion, and a conflict leaves it to the next version.
        """
        recorded = read_decision(version.annotations)
        if not self.decides or self._pending is not None or recorded is None:
            return
        if recorded.applies_to(config):
            return
        self._background(self._clear_decision(version))

    async def _clear_decision(self, version: ConfigMapVersion) -> None:
        try:
            await self.kube.patch(version.resource_version, annotations={DECISION_ANNOTATION: None})
        except ConflictError:
            log.info("ConfigMap changed; the stale decision is left to the next version")
        except (KubeError, OSError) as error:
            log.warning("could not delete the stale decision: %s", error)
        else:
            log.info("deleted the decision made on an earlier desired config")

    @staticmethod
    async def _read_quietly(kube: KubeClient) -> ConfigMapVersion | None:
        try:
            return await kube.read()
        except (KubeError, OSError):
            return None

    async def follow(self) -> None:
        """List and watch forever; never raises for API trouble, only logs and retries."""
        attempt = 0
        relist = True
        while True:
            try:
                if relist:
                    await self._list()
                    relist = False
                self.connected.set()
                attempt = 0
                async for event in self.kube.watch(self.resource_version):
                    self.resource_version = event.resource_version or self.resource_version
                    if event.kind == "DELETED":
                        self._deleted()
                    elif event.version is not None:
                        await self._consider(event.version)
                # The server ended the watch (its timeout): resume from where it stopped.
            except GoneError:
                log.info(
                    "watch expired, listing again configmap=%s resource_version=%s",
                    self.kube.ref,
                    self.resource_version,
                )
                relist = True
            except (KubeError, aiohttp.ClientError, OSError, TimeoutError) as error:
                self.connected.clear()
                delay = self.backoff.delay(attempt)
                attempt += 1
                # A 403 is not an outage: say so, since the fix is RBAC, not the network.
                problem = (
                    "API server refused access (check the Role and RoleBinding)"
                    if isinstance(error, ForbiddenError)
                    else "API server unreachable"
                )
                log.warning(
                    "%s, serving the last good config configmap=%s error=%r retry_in=%.2fs",
                    problem,
                    self.kube.ref,
                    str(error) or type(error).__name__,
                    delay,
                )
                await asyncio.sleep(delay)
                # After an outage the watch may have missed versions; list to be sure.
                relist = True

    async def _list(self) -> None:
        if self.resource_version:
            self.relists += 1
        version, list_version = await self.kube.list_one()
        self.resource_version = list_version
        if version is None:
            self._deleted()
        else:
            await self._consider(version)

    def _deleted(self) -> None:
        message = (
            f"ConfigMap {self.kube.ref} does not exist (deleted?); keeping the last good config"
        )
        log.error("%s", message)
        self.on_error(ConfigError(message, source=str(self.kube.ref)))

    async def _consider(self, version: ConfigMapVersion) -> None:
        """Validate one version and report it, unless it was already handled."""
        if self.applied is not None and version.resource_version == self.applied.resource_version:
            return
        source = f"ConfigMap {self.kube.ref}"
        try:
            config = parse_config(version.data)
        except ConfigError as error:
            rejected = error.with_source(f"{source} version {version.resource_version}")
            self.on_error(rejected)
            self.applied = version
            await self._event(version, "ConfigRejected", str(rejected), warning=True)
            return
        previous = self.last_active
        self.applied = version
        self.last_active = config.active
        self.on_config(config, version.resource_version)
        self._clear_stale_decision(version, config)
        if previous is not None and previous != config.active:
            await self._event(
                version,
                "Switched",
                f"active colour {previous} -> {config.active} "
                f"(resourceVersion {version.resource_version})",
            )

    async def _event(
        self, version: ConfigMapVersion, reason: str, message: str, *, warning: bool = False
    ) -> None:
        if not self.events:
            return
        try:
            await self.kube.event(version, reason, message, warning=warning)
        except (KubeError, aiohttp.ClientError, OSError) as error:
            # Events are a courtesy to operators: never let one stop the config from applying.
            log.warning("could not record Event reason=%s error=%r", reason, str(error))
