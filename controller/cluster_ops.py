"""`bluegreen status | switch | rollback` against a ConfigMap, as a person at a laptop runs them.

Every write is a merge patch of `active` (plus the history annotations) guarded by the
resourceVersion that was read, so a concurrent edit is reported, never overwritten. A switch
also deletes the proxies' recorded decision (controller/decision.py): a person's switch is a new
desired state; `switch COLOUR --retry` deletes it alone, to try the same desired config again.
"""

from __future__ import annotations

import getpass
import json
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from controller.config import Config, ConfigError, parse_config
from controller.decision import DECISION_ANNOTATION, ServedDecision, read_decision
from controller.file_source import load_config_file
from controller.history import PREVIOUS_ANNOTATION, read_history, switch_annotations
from controller.kube import (
    ConfigMapRef,
    ConfigMapVersion,
    ConflictError,
    KubeClient,
    KubeError,
    NotFoundError,
    load_api_client,
    pod_get,
    ready_pods,
)
from controller.scale_plan import read_records, waiting_reason
from controller.scale_state import configmap_section
from controller.switch_wait import (
    DECISION_PREFIXES,
    Observed,
    ReplicaState,
    WaitResult,
    decision_since,
    wait_for_switch,
)


class OperationError(Exception):
    """An operation refused with a message for the person who asked."""


@dataclass(frozen=True, slots=True)
class SwitchResult:
    """What a switch did: the colours, and the ConfigMap version it wrote."""

    previous: str
    current: str
    resource_version: str
    changed: bool
    at: datetime | None = None  # the time in the history entry written (None: nothing written)
    by: str = ""  # who the history entry names


def operator_identity() -> str:
    """Name who is switching, for the history: user@host from a laptop, the pod in a cluster."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


async def read_status(
    ref: ConfigMapRef, kubeconfig: Path | None, context: str | None = None
) -> dict[str, Any]:
    """Read the ConfigMap and its Events: active, upstreams, version, switches, rejections."""
    async with await load_api_client(kubeconfig, context) as api:
        kube = KubeClient(api, ref)
        version = await kube.read()
        events = await kube.events()
    document: dict[str, Any] = {
        "configmap": str(ref),
        "config_version": version.resource_version,
        "active": version.data.get("active"),
        "upstreams": {
            key.removeprefix("upstream."): value
            for key, value in version.data.items()
            if key.startswith("upstream.")
        },
        "switches": read_history(version.annotations),
        "valid": True,
        "error": None,
        "decision": None,
    }
    try:
        config = parse_config(version.data)
    except ConfigError as error:
        document["valid"] = False
        document["error"] = str(error)
    else:
        holding = _holding(config, version)
        if holding is not None:
            document["decision"] = holding.as_json()
            document["served"] = {"colour": holding.served, "reason": holding.reason}
        records = read_records(version.annotations)
        waiting = records.get(config.active) if config.active in config.scale.workloads else None
        if holding is None and waiting is not None:
            # Every replica holds the switch until the Lease holder has scaled it up.
            served = _served_before(document["switches"], config.active)
            reason = waiting_reason(config.active, waiting, None)
            document["served"] = {"colour": served, "reason": reason}
        if config.scale.workloads:
            served = document.get("served", {}).get("colour", config.active)
            held = holding.reason if holding is not None else None
            document["scale"] = configmap_section(config, records, held, served, datetime.now(UTC))
    document["events"] = [
        {
            "reason": event.get("reason"),
            "message": event.get("message"),
            "type": event.get("type"),
            "at": event.get("lastTimestamp") or event.get("firstTimestamp"),
        }
        for event in events[-10:]
    ]
    return document


def _served_before(switches: list[dict[str, str]], desired: str) -> str | None:
    """The colour served while a switch to `desired` waits, from the newest history entry.

    `bluegreen switch` writes its entry with the switch (its `from` is still served); after a
    plain `kubectl patch` the newest entry is the switch before (its `to` is still served).
    """
    if not switches:
        return None
    latest = switches[0]
    return latest.get("from") if latest.get("to") == desired else latest.get("to")


def _holding(config: Config, version: ConfigMapVersion) -> ServedDecision | None:
    """The recorded decision that holds for this version's desired config, if one does."""
    decision = read_decision(version.annotations)
    return decision if decision is not None and decision.applies_to(config) else None


def _held(version: ConfigMapVersion) -> ServedDecision | None:
    try:
        return _holding(parse_config(version.data), version)
    except ConfigError:
        return None


async def switch_colour(
    ref: ConfigMapRef,
    kubeconfig: Path | None,
    colour: str | None,
    *,
    reason: str = "manual",
    context: str | None = None,
    retry: bool = False,
) -> SwitchResult:
    """Make `colour` the desired colour (None: go back, for rollback); idempotent.

    The write deletes any recorded decision of the proxies. When `colour` is already desired
    but a decision holds it back (a refusal or rollback), only `retry` deletes that decision,
    so that the proxies try it again; without `retry` that is an OperationError saying so.
    `colour` None returns to the colour the proxies serve while a decision holds (accepting
    it), else to the previous colour recorded with the last switch. Refuses, before writing
    anything, an unknown colour or a result that would not validate.
    """
    async with await load_api_client(kubeconfig, context) as api:
        kube = KubeClient(api, ref)
        version = await kube.read()
        current = version.data.get("active", "")
        held = _held(version)
        served = held.served if held is not None else current
        if colour is None:
            colour = held.served if held is not None else None
            colour = colour or version.annotations.get(PREVIOUS_ANNOTATION)
            if not colour:
                raise OperationError(
                    f"nothing to roll back to: ConfigMap {ref} records no previous colour "
                    f"(annotation {PREVIOUS_ANNOTATION}); use `bluegreen switch COLOUR`"
                )
        colours = sorted(
            k.removeprefix("upstream.") for k in version.data if k.startswith("upstream.")
        )
        if colour not in colours:
            raise OperationError(
                f"unknown colour {colour!r}: ConfigMap {ref} has {', '.join(colours) or 'none'}"
            )
        if colour == current and held is not None and not retry:
            raise OperationError(
                f"{colour} is already desired but not served: {held.reason} (recorded by "
                f"{held.by or 'a proxy'} at {held.at or 'an unknown time'}); the proxies serve "
                f"{held.served} until the desired config changes. To try {colour} again, run "
                f"`bluegreen switch {colour} --retry`"
            )
        if colour == current and held is None:
            return SwitchResult(current, colour, version.resource_version, changed=False)
        try:
            parse_config({**version.data, "active": colour})
        except ConfigError as error:
            raise OperationError(
                f"switch refused, the result would be invalid:\n{error}"
            ) from error
        at, by = datetime.now(UTC).replace(microsecond=0), operator_identity()
        # The history says what users saw change: from the served colour, or (accepting what
        # a decision serves) from the desired colour that was held back.
        origin = served if served != colour else current
        annotations: dict[str, str | None] = dict(
            switch_annotations(version.annotations, origin, colour, reason=reason, by=by, at=at)
        )
        if DECISION_ANNOTATION in version.annotations:
            annotations[DECISION_ANNOTATION] = None  # a person's switch ends every hold
        try:
            written = await kube.patch(
                version.resource_version,
                data={"active": colour} if colour != current else None,
                annotations=annotations,
            )
        except ConflictError as error:
            raise OperationError(
                f"ConfigMap {ref} changed while switching (it was at resourceVersion "
                f"{version.resource_version}); nothing was written. Check `bluegreen status` "
                "and run the switch again."
            ) from error
        return SwitchResult(origin, colour, written.resource_version, True, at, by)


ADMIN_SERVICE = "bluegreen-admin"


async def replicas_at(session: aiohttp.ClientSession, admins: Sequence[str]) -> list[ReplicaState]:
    """Read `/status` of each admin base URL (a replica each, e.g. through port-forward)."""
    states = []
    for admin in admins:
        url = admin.rstrip("/") + "/status?format=json"
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
                response.raise_for_status()
                document = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            raise OSError(f"cannot read {url}: {error or type(error).__name__}") from error
        states.append(ReplicaState.from_status(admin, document))
    return states


async def replicas_behind(api: Any, namespace: str, service: str) -> list[ReplicaState]:
    """Read `/status` of every ready pod behind the admin Service, through the pod proxy."""
    try:
        pods = await ready_pods(api, namespace, service)
        states = []
        for pod in pods:
            document = json.loads(await pod_get(api, namespace, pod, "status"))
            states.append(ReplicaState.from_status(pod.name, document))
    except NotFoundError as error:
        raise OSError(
            f"no Service {namespace}/{service} to find the replicas by: name the admin Service "
            "with --admin-service, or give each replica's admin URL with --admin"
        ) from error
    except (KubeError, ValueError) as error:
        raise OSError(str(error)) from error
    return states


async def wait_configmap_switch(
    ref: ConfigMapRef,
    kubeconfig: Path | None,
    result: SwitchResult,
    *,
    timeout: float,
    admins: Sequence[str] = (),
    admin_service: str = ADMIN_SERVICE,
    context: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> WaitResult:
    """Wait until every ready replica serves `result.current`, or a decision says it won't.

    The replicas are the ready pods behind `admin_service` (read through the API server's pod
    proxy), or the `admins` URLs when given; `progress` hears why they wait, as it changes.
    """
    colour = result.current
    own = (
        {"by": result.by, "to": colour, "at": result.at.isoformat(timespec="seconds")}
        if result.at is not None
        else None
    )
    async with (
        await load_api_client(kubeconfig, context) as api,
        aiohttp.ClientSession() as session,
    ):
        kube = KubeClient(api, ref)

        async def observe() -> Observed:
            try:
                version = await kube.read()
            except KubeError as error:
                raise OSError(str(error)) from error
            history = read_history(version.annotations)
            return Observed(version.data.get("active"), decision_since(history, colour, own))

        async def replicas() -> list[ReplicaState]:
            if admins:
                return await replicas_at(session, admins)
            return await replicas_behind(api, ref.namespace, admin_service)

        return await wait_for_switch(colour, observe, replicas, timeout, progress=progress)


async def wait_file_switch(
    path: Path, colour: str, since: datetime, admins: Sequence[str], timeout: float
) -> WaitResult:
    """Wait until the proxies at `admins` serve `colour` after a switch written to a file.

    A file keeps no history: a refusal or rollback is read from the first replica's newest
    switch since `since` (one naming `colour`), and the file's `active` is read again.
    """
    async with aiohttp.ClientSession() as session:
        seen: list[ReplicaState] = []
        newest: dict[str, Any] | None = None

        async def replicas() -> list[ReplicaState]:
            return seen

        async def observe() -> Observed:
            nonlocal seen, newest
            seen = await replicas_at(session, admins)
            url = admins[0].rstrip("/") + "/status?format=json"
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
                switches = (await response.json()).get("switches") or []
            newest = switches[0] if switches else None
            try:
                active: str | None = load_config_file(path).active
            except ConfigError:
                active = None
            return Observed(active, _file_decision(newest, colour, since))

        return await wait_for_switch(colour, observe, replicas, timeout)


def _file_decision(
    newest: Mapping[str, Any] | None, colour: str, since: datetime
) -> dict[str, str] | None:
    if newest is None or colour not in (newest.get("from"), newest.get("to")):
        return None
    reason = str(newest.get("reason", ""))
    try:
        at = datetime.fromisoformat(str(newest.get("at")))
    except ValueError:
        return None
    if not reason.startswith(DECISION_PREFIXES) or at < since:
        return None
    return {"reason": reason, "at": str(newest.get("at"))}
