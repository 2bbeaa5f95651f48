"""What the control plane knows and reports: config version, rejected configs, switch history.

Pure bookkeeping with no I/O, shared by the admin `/status` endpoint, the CLI and the logs.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from proxy.metrics import TrafficStats
from proxy.routing import RoutingTable
from proxy.session_affinity import KEPT

SWITCH_HISTORY = 20


def utc_now() -> datetime:
    """Return the current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def iso(moment: datetime | None) -> str | None:
    """Format a time for JSON (RFC 3339, seconds precision) or pass None through."""
    return moment.isoformat(timespec="seconds") if moment is not None else None


@dataclass(frozen=True, slots=True)
class SwitchRecord:
    """One change of the active colour, with why it happened."""

    from_colour: str
    to_colour: str
    reason: str
    at: datetime

    def as_json(self) -> dict[str, str | None]:
        """Return the record as the `/status` JSON shows it."""
        return {
            "from": self.from_colour,
            "to": self.to_colour,
            "reason": self.reason,
            "at": iso(self.at),
        }


class ControlState:
    """The control plane's memory, newest events first."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.table: RoutingTable | None = None
        self.config_changed_at: datetime | None = None
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None
        self.switches: deque[SwitchRecord] = deque(maxlen=SWITCH_HISTORY)
        self.listening = False  # the proxy listener accepts connections
        self.shutting_down = False

    def accepted(self, table: RoutingTable, reason: str = "manual") -> SwitchRecord | None:
        """Record an accepted config; return the switch it caused, if the active colour moved.

        Accepting a good config clears `last_error`: the rejected version is no longer current.
        """
        previous = self.table
        self.table = table
        self.config_changed_at = utc_now()
        self.last_error = None
        self.last_error_at = None
        if previous is None or previous.active == table.active:
            return None
        record = SwitchRecord(previous.active, table.active, reason, self.config_changed_at)
        self.switches.appendleft(record)
        return record

    def refused(self, active: str, target: str, reason: str) -> None:
        """Record a switch that was refused: live traffic stayed on `active`."""
        self.switches.appendleft(SwitchRecord(active, target, reason, utc_now()))

    def rejected(self, message: str) -> None:
        """Record the message of a rejected config; the current table stays."""
        self.last_error = message
        self.last_error_at = utc_now()

    def readiness(self) -> tuple[bool, str]:
        """Ready once a valid config is loaded and the proxy listener is open, until shutdown.

        Ready means a connection to the proxy port is accepted and served with the config: a
        file's config is loaded before the listener opens, so the config alone is not enough.
        """
        if self.shutting_down:
            return False, "shutting down"
        if self.table is None:
            return False, "no valid config loaded yet"
        if not self.listening:
            return False, "proxy listener not open yet"
        return True, f"ready: active={self.table.active} version={self.table.version}"

    def snapshot(
        self,
        stats: TrafficStats | None = None,
        health: Callable[[str], tuple[str, str | None]] | None = None,
        failed: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Return the `/status` JSON document; `health` gives (state, last error) per colour."""
        table = self.table
        colours: dict[str, dict[str, Any]] = {}
        if table is not None:
            for colour, upstream in table.upstreams.items():
                state, error = health(colour) if health is not None else ("unknown", None)
                colours[colour] = {
                    "upstream": upstream.url,
                    "health": state,
                    "health_error": error,
                    "requests": stats.request_count(colour) if stats is not None else 0,
                    # Set after a rollback from, or a refused switch to, this colour; cleared
                    # when a person switches to it again.
                    "failed": (failed or {}).get(colour),
                }
        return {
            "source": self.source,
            "active": table.active if table is not None else None,
            "idle": table.idle if table is not None else None,
            "colours": colours,
            "preview_header": table.preview.header if table is not None else None,
            "preview_link": preview_link(table) if table is not None else None,
            "session_affinity": session_affinity(table, stats) if table is not None else None,
            "config_version": table.version if table is not None else None,
            "config_changed_at": iso(self.config_changed_at),
            "last_error": self.last_error,
            "last_error_at": iso(self.last_error_at),
            "switches": [record.as_json() for record in self.switches],
            "ready": self.readiness()[0],
        }


def preview_link(table: RoutingTable) -> dict[str, Any]:
    """How a browser gets preview, for `/status`: the links on and off, the cookie, the colour.

    The token is shown as a placeholder, never its value.
    """
    preview = table.preview
    token = "token=<preview.token>&" if preview.secret is not None else ""
    return {
        "on": f"{preview.path}?{token}next=/",
        "off": f"{preview.path}/off",
        "cookie": preview.cookie,
        "colour": table.idle,
    }


def session_affinity(table: RoutingTable, stats: TrafficStats | None) -> dict[str, Any]:
    """Session affinity for `/status`: the mode, and the colour being drained, if any.

    `draining` is None when no session is kept on another colour: affinity off, no switch in
    the last `session.drainTimeout`, or the window ended (its colour rolled back from,
    unhealthy or removed). `kept_requests` counts requests its cookie kept on that colour since
    start-up; bluegreen_session_cookie_requests_total gives the rate.
    """
    session = table.session
    drain = table.drain
    left = drain.until - time.time() if drain is not None else 0.0
    draining = None
    if drain is not None and left > 0:
        counts = stats.session_cookies if stats is not None else {}
        draining = {
            "colour": drain.colour,
            "until": iso(datetime.fromtimestamp(drain.until, UTC)),
            "seconds_left": round(left),
            "kept_requests": counts.get((drain.colour, KEPT), 0),
        }
    return {
        "mode": session.affinity,
        "cookie": session.cookie if session.enabled else None,
        "drain_timeout_seconds": session.drain_timeout,
        "draining": draining,
    }
