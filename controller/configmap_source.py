"""The ConfigMap source: list, then watch, and feed every new version through validation.

Every version of the ConfigMap goes through `parse_config`, exactly like a file edit: a valid one
is applied (the routing table swap is the caller's), an invalid one is rejected whole and the
last good config stays. Losing the API server never stops traffic: the source only stops
delivering new versions, and reconnects with capped, jittered exponential backoff. A watch that
ends resumes from the last resourceVersion seen; one that is too old (410 Gone) lists again.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from controller.config import Config, ConfigError, parse_config
from controller.kube import ConfigMapVersion, ForbiddenError, GoneError, KubeClient, KubeError

log = logging.getLogger(__name__)

OnConfig = Callable[[Config, str], None]
OnError = Callable[[ConfigError], None]


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
    """Follows one ConfigMap and reports each version, valid or not, exactly once."""

    def __init__(
        self,
        kube: KubeClient,
        on_config: OnConfig,
        on_error: OnError,
        backoff: Backoff | None = None,
        events: bool = True,
    ) -> None:
        self.kube = kube
        self.on_config = on_config
        self.on_error = on_error
        self.backoff = backoff or Backoff()
        self.events = events
        self.resource_version = ""  # the last version seen, to resume a watch from
        self.applied: ConfigMapVersion | None = None
        self.last_active: str | None = None
        self.connected = asyncio.Event()
        self.relists = 0  # lists after the first: after 410 Gone or an outage

    async def run(self) -> None:
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
