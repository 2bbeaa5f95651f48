"""Active health checks of every colour: probes (I/O) feeding the pure state of health_state.py.

Every colour is probed whether it is active or idle, so its state is known before a switch:
`GET health.path` every `health.interval`, with `health.timeout`. A colour turns unhealthy after
`failureThreshold` consecutive failures and healthy after `successThreshold` consecutive
successes; until either happens it is unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from controller.config import Config
from controller.health_state import Health, HealthState

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """Where and how one colour is probed."""

    colour: str
    url: str
    interval: float
    timeout: float
    success_threshold: int
    failure_threshold: int


def probe_targets(config: Config) -> dict[str, ProbeTarget]:
    """Derive each colour's probe from a config."""
    probe = config.health
    return {
        colour: ProbeTarget(
            colour,
            url.rstrip("/") + probe.path,
            probe.interval,
            probe.timeout,
            probe.success_threshold,
            probe.failure_threshold,
        )
        for colour, url in config.upstreams.items()
    }


OnChange = Callable[[str, HealthState, HealthState], None]


class HealthChecker:
    """Runs one probe loop per colour and keeps each colour's `HealthState`."""

    def __init__(self, on_change: OnChange | None = None) -> None:
        self.states: dict[str, HealthState] = {}
        self.on_change = on_change
        self._targets: dict[str, ProbeTarget] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None

    def health(self, colour: str) -> Health:
        """Return a colour's current health (unknown for a colour never probed)."""
        state = self.states.get(colour)
        return state.health if state is not None else Health.UNKNOWN

    def update(self, config: Config) -> None:
        """Follow a new config: start, restart or stop probe loops where targets changed.

        A colour whose probe did not change keeps its state and its loop.
        """
        targets = probe_targets(config)
        for colour in list(self._tasks):
            if targets.get(colour) != self._targets.get(colour):
                self._tasks.pop(colour).cancel()
                if colour not in targets:
                    self.states.pop(colour, None)
        for colour, target in targets.items():
            if colour not in self._tasks:
                if self._targets.get(colour, target).url != target.url:
                    self.states[colour] = HealthState()  # a new address starts unknown
                self.states.setdefault(colour, HealthState())
                self._tasks[colour] = asyncio.create_task(
                    self._probe_loop(target), name=f"health-{colour}"
                )
        self._targets = targets

    async def close(self) -> None:
        """Stop every probe loop and the HTTP client."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _probe_loop(self, target: ProbeTarget) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            ok, error = await self._probe(target)
            self._record(target, ok, error)
            await asyncio.sleep(max(0.0, target.interval - (loop.time() - started)))

    async def _probe(self, target: ProbeTarget) -> tuple[bool, str | None]:
        if self._session is None:
            # No pooling across probes: each probe also proves a new connection can be made.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        try:
            async with self._session.get(
                target.url,
                timeout=aiohttp.ClientTimeout(total=target.timeout),
                allow_redirects=False,
            ) as response:
                await response.read()
                if 200 <= response.status < 400:
                    return True, None
                return False, f"{target.url} answered {response.status}"
        except TimeoutError:
            return False, f"{target.url} did not answer within {target.timeout:g}s"
        except (aiohttp.ClientError, OSError) as error:
            return False, f"{target.url}: {error or type(error).__name__}"

    def _record(self, target: ProbeTarget, ok: bool, error: str | None) -> None:
        before = self.states.get(target.colour, HealthState())
        after = before.observe(ok, error, target.success_threshold, target.failure_threshold)
        self.states[target.colour] = after
        if after.health is not before.health:
            log.log(
                logging.WARNING if after.health is Health.UNHEALTHY else logging.INFO,
                "health changed colour=%s from=%s to=%s error=%r",
                target.colour,
                before.health.value,
                after.health.value,
                after.last_error,
            )
            if self.on_change is not None:
                self.on_change(target.colour, before, after)
