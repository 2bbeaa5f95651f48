"""`bluegreen status | switch | rollback` against a ConfigMap, as a person at a laptop runs them.

Every write is a merge patch of `active` (plus the history annotations) guarded by the
resourceVersion that was read, so a concurrent edit is reported, never overwritten.
"""

from __future__ import annotations

import getpass
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.config import ConfigError, parse_config
from controller.history import PREVIOUS_ANNOTATION, read_history, switch_annotations
from controller.kube import ConfigMapRef, ConflictError, KubeClient, load_api_client


class OperationError(Exception):
    """An operation refused with a message for the person who asked."""


@dataclass(frozen=True, slots=True)
class SwitchResult:
    """What a switch did: the colours, and the ConfigMap version it wrote."""

    previous: str
    current: str
    resource_version: str
    changed: bool


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
    }
    try:
        parse_config(version.data)
    except ConfigError as error:
        document["valid"] = False
        document["error"] = str(error)
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


async def switch_colour(
    ref: ConfigMapRef,
    kubeconfig: Path | None,
    colour: str | None,
    *,
    reason: str = "manual",
    context: str | None = None,
) -> SwitchResult:
    """Make `colour` active (None: the previous colour, for rollback); idempotent.

    Refuses, before writing anything, an unknown colour or a result that would not validate.
    """
    async with await load_api_client(kubeconfig, context) as api:
        kube = KubeClient(api, ref)
        version = await kube.read()
        current = version.data.get("active", "")
        if colour is None:
            colour = version.annotations.get(PREVIOUS_ANNOTATION)
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
        if colour == current:
            return SwitchResult(current, colour, version.resource_version, changed=False)
        try:
            parse_config({**version.data, "active": colour})
        except ConfigError as error:
            raise OperationError(
                f"switch refused, the result would be invalid:\n{error}"
            ) from error
        try:
            written = await kube.patch(
                version.resource_version,
                data={"active": colour},
                annotations=switch_annotations(
                    version.annotations, current, colour, reason=reason, by=operator_identity()
                ),
            )
        except ConflictError as error:
            raise OperationError(
                f"ConfigMap {ref} changed while switching (it was at resourceVersion "
                f"{version.resource_version}); nothing was written. Check `bluegreen status` "
                "and run the switch again."
            ) from error
        return SwitchResult(current, colour, written.resource_version, changed=True)
