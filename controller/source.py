"""What the process needs of a config source, whichever it is: a local file or a ConfigMap.

controller/process.py wires one `ConfigSource` and never asks which kind it has; the two kinds
are controller/file_source.py and controller/configmap_source.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from controller.config import Config, ConfigError
from controller.decision import ServedDecision

# Called with every new valid version (the config and its version label), and with every fault.
OnConfig = Callable[[Config, str], None]
OnError = Callable[[ConfigError], None]


class ConfigSource(Protocol):
    """Where the config comes from, and where decisions about it are written back."""

    @property
    def label(self) -> str:
        """What /status and the logs call the source: `file:PATH` or `configmap:NS/NAME`."""
        ...

    @property
    def decides(self) -> bool:
        """Whether this process makes preflight and rollback decisions now.

        A file's process always does; with a ConfigMap only the replica holding the Lease does.
        """
        ...

    async def start(self) -> None:
        """Get ready to `run`; a file's source raises ConfigError for an invalid file.

        A file is loaded and handed over; a ConfigMap source connects to the API server (its
        first version arrives in `run`).
        """
        ...

    async def run(self) -> None:
        """Follow the source until cancelled, handing over each new version or fault."""
        ...

    def recorded_switches(self) -> list[dict[str, str]]:
        """The switches recorded with the current version, newest first (none for a file)."""
        ...

    def recorded_decision(self) -> ServedDecision | None:
        """The proxies' decision recorded with the current version, if any.

        A ConfigMap's is its `bluegreen.io/decision` annotation (or the one this replica is
        writing); a file's lives in the process's memory. It may be stale (made on another
        desired config): `ServedDecision.applies_to` says.
        """
        ...

    def record_decision(self, decision: ServedDecision, event: str) -> None:
        """Record that `decision.served` is served instead of the desired `decision.desired`.

        The desired config itself is never written. `event` is the Kubernetes Event's reason
        (`RolledBack`, `TargetUnhealthy`). Never raises: a write that fails is logged, since
        routing has already moved.
        """
        ...

    def record_switch(self, previous: str, active: str) -> None:
        """Record that the served colour moved from `previous` to `active` (a person's switch).

        So that `bluegreen rollback` knows where to go back to after any switch, whoever made
        it (a `kubectl patch` records nothing itself). Only the deciding replica calls it.
        Never raises.
        """
        ...

    async def resign(self) -> None:
        """Stop deciding (release the Lease), before the process drains."""
        ...

    async def close(self) -> None:
        """Release what `start` opened; the last step of shutting down."""
        ...
