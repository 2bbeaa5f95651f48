"""`bluegreen status`: the status document of a config file or a ConfigMap, and its renderings.

Pure: documents in, text out (the scale section's "in 4m12s" counts from a `now` it is given,
the clock by default). The document says the desired colour (the config's `active`),
the served colour (what live traffic gets) and why they differ; `exit_code` turns that into the
command's exit status, as `kubectl argo rollouts status` does for a degraded rollout.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import yaml

EXIT_OK = 0
EXIT_INVALID = 3  # the config (file or ConfigMap) does not validate: proxies keep the last good
EXIT_DIVERGED = 4  # the served colour is not the desired one (a refusal or a rollback holds)

OUTPUTS = ("text", "json", "yaml")


def with_served(document: dict[str, Any]) -> dict[str, Any]:
    """Set `desired`, `active` (served) and `served_reason` from what the document holds.

    The served colour is the running proxy's (`running`, from --admin) when there is one, else
    the recorded served state (`served`), else the desired colour.
    """
    desired = document.get("desired", document.get("active"))
    document["desired"] = desired
    running = document.get("running")
    served = document.get("served") or {}
    if isinstance(running, dict) and running.get("active"):
        active = running["active"]
        reason = running.get("desired_reason") or _latest_reason(running, active)
    elif served:  # a recorded decision, or a switch waiting (colour None: not known here)
        active, reason = served.get("colour"), served.get("reason")
    else:
        active, reason = desired, None
    document["active"] = active
    document["served_reason"] = reason if active != desired else None
    return document


def _latest_reason(running: dict[str, Any], active: str) -> str | None:
    for record in running.get("switches") or []:
        if record.get("to") == active or record.get("from") == active:
            return str(record.get("reason"))
    return None


def exit_code(document: dict[str, Any]) -> int:
    """0 when valid and serving the desired colour, else EXIT_INVALID or EXIT_DIVERGED."""
    if not document.get("valid", True):
        return EXIT_INVALID
    if document.get("active") != document.get("desired"):
        return EXIT_DIVERGED
    return EXIT_OK


def render(document: dict[str, Any], output: str) -> str:
    """Render a status document as `text`, `json` or `yaml` (each ends without a newline)."""
    if output == "json":
        return json.dumps(document, indent=2)
    if output == "yaml":
        return yaml.safe_dump(document, sort_keys=False, default_flow_style=False).rstrip()
    return render_text(document)


def render_text(document: dict[str, Any], now: datetime | None = None) -> str:
    """The status as a person reads it: source, desired and served colour, upstreams, history.

    `now` (default: the clock) is what the scale section's "in 4m12s" counts from.
    """
    lines: list[str] = []
    if "configmap" in document:
        lines.append(
            f"configmap     {document['configmap']} (resourceVersion {document['config_version']})"
        )
    else:
        lines.append(f"config file   {document['config']}")
    if not document.get("valid", True):
        lines.append(f"INVALID: the proxies keep their last good config.\n{document['error']}")
    lines.append(f"desired       {document.get('desired')}")
    active = document.get("active")
    if active is None and document.get("served_reason"):
        active = "unknown here (--admin HOST:PORT reads a replica's)"
    served = f"active        {active}"
    if document.get("served_reason"):
        served += f"  (not the desired colour: {document['served_reason']})"
    lines.append(served)
    for colour, url in (document.get("upstreams") or {}).items():
        lines.append(f"  {colour:<12}{url}")
    for record in (document.get("switches") or [])[:5]:
        by = f", by {record['by']}" if record.get("by") else ""
        lines.append(
            f"  {record.get('at')}  {record.get('from')} -> {record.get('to')}  "
            f"({record.get('reason')}{by})"
        )
    for event in (document.get("events") or [])[-5:]:
        lines.append(f"  event {event['at']} {event['reason']}: {event['message']}")
    running = document.get("running")
    # A running replica knows more (replica counts, since when, the deadline): its view wins.
    scale = running.get("scale") if isinstance(running, dict) else None
    scale = scale or document.get("scale")
    if scale:
        lines.extend(scale_lines(scale, now or datetime.now(UTC)))
    if isinstance(running, dict):
        lines.extend(_running_lines(running))
    return "\n".join(lines)


def scale_lines(scale: dict[str, Any], now: datetime) -> list[str]:
    """The scale section: per colour its Deployment, replicas as last seen, and its state."""
    idle = scale.get("idle_replicas")
    settings = (
        f"idle colour scaled to {idle} after {_span(scale.get('after_seconds'))}"
        if idle is not None
        else "idle colour not scaled down (scale.idleReplicas off)"
    )
    timeout = scale.get("timeout_seconds")
    if timeout is not None:
        settings += f"; scale-up timeout {_span(timeout)}"
    if scale.get("leader") is False:
        settings += "; times as this replica saw them (the Lease holder scales)"
    lines = [f"scale         {settings}"]
    for colour, entry in (scale.get("colours") or {}).items():
        replicas = ""
        if entry.get("desired_replicas") is not None:
            replicas = f"  {entry.get('ready_replicas')}/{entry['desired_replicas']} ready"
        lines.append(
            f"  {colour:<12}deployment/{entry.get('deployment')}{replicas}  "
            f"{scale_state_text(colour, entry, now)}"
        )
        if entry.get("note"):
            lines.append(f"    note: {entry['note']}")
    if scale.get("error"):
        lines.append(f"  {scale['error']}")
    return lines


def scale_state_text(colour: str, entry: dict[str, Any], now: datetime) -> str:
    """One colour's scale state in words, with its times (controller/scale_state.py)."""
    state = entry.get("state")
    record = entry.get("scaled_down") or {}
    restore = entry.get("restore_to")
    if state == "serving":
        return "serving"
    if state == "idle":
        due = _moment(entry.get("scale_down_at"))
        if due is None:
            return "idle"
        if due > now:
            return f"idle, scaled down at {_clock(due)} (in {_span((due - now).total_seconds())})"
        return f"idle, scale-down due since {_clock(due)}"
    if state == "scaled_down":
        return (
            f"scaled down to {record.get('idle')} at {record.get('at')} "
            f"(restore to {restore} before a switch to {colour})"
        )
    if state == "scaling_up":
        since, deadline = _moment(entry.get("scaling_up_since")), _moment(entry.get("timeout_at"))
        if since is None or deadline is None:
            return f"scaling up to {restore} (the Lease holder; --admin shows since when)"
        left = (deadline - now).total_seconds()
        return (
            f"scaling up to {restore} since {_clock(since)} "
            f"({_span((now - since).total_seconds())}), timeout at {_clock(deadline)} "
            + (f"(in {_span(left)})" if left > 0 else "(passed)")
        )
    if state == "failed":
        return (
            f"failed: {entry.get('reason')} (still scaled down to {record.get('idle')}; "
            f"`bluegreen switch {colour} --retry` tries again)"
        )
    if state is None:
        return "serving or idle (the ConfigMap does not say: --admin reads a replica's)"
    return str(state)


def _moment(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _clock(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _span(seconds: object) -> str:
    """Seconds as `42s`, `4m12s` or `2h05m`."""
    if not isinstance(seconds, int | float):
        return "?"
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _shadow_lines(shadow: dict[str, Any]) -> list[str]:
    """Shadow figures per idle colour over the window, and the paths that mismatch most."""
    lines: list[str] = []
    window_seconds = shadow.get("window_seconds") or 0
    for colour, figures in (shadow.get("colours") or {}).items():
        window = figures.get("window") or {}
        ratio = window.get("latency_ratio")
        latency = f", latency x{ratio:.2f} of live" if ratio is not None else ""
        lines.append(
            f"  {colour:<12}shadow {window.get('compared', 0)} compared in {window_seconds:g}s: "
            f"mismatch or error {window.get('mismatch_or_error_rate', 0.0):.2f}, "
            f"dropped {window.get('dropped', 0)}{latency}"
        )
        for path in (figures.get("mismatching_paths") or [])[:5]:
            shadow_answer = path.get("shadow_status") or path.get("what")
            lines.append(
                f"    {path.get('count'):>6} x {path.get('path')}  "
                f"live {path.get('live_status')}, {colour} {shadow_answer} ({path.get('what')})"
            )
    gate = shadow.get("gate") or {}
    if gate.get("last"):
        lines.append(f"  {gate['last']}")
    return lines


def _running_lines(running: dict[str, Any]) -> list[str]:
    """What one running proxy reports: its colour, health per colour, last switches."""
    lines = [f"running proxy active={running['active']} version={running['config_version']}"]
    for colour, detail in (running.get("colours") or {}).items():
        why = f" ({detail['health_error']})" if detail.get("health_error") else ""
        lines.append(f"  {colour:<12}health {detail.get('health', 'unknown')}{why}")
    lines.extend(_shadow_lines(running.get("shadow") or {}))
    if running.get("last_error"):
        lines.append(f"last rejected config: {running['last_error']}")
    for record in (running.get("switches") or [])[:5]:
        lines.append(f"  {record['at']}  {record['from']} -> {record['to']}  ({record['reason']})")
    return lines
