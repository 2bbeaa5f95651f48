"""Which cluster, context and namespace a CLI command means, resolved as kubectl resolves them.

Pure file reading, no API calls: `--kubeconfig` or else $KUBECONFIG (a list of files) or else
~/.kube/config; `--context` or else the file's current-context; `-n` or else that context's
namespace or else `default`. In a pod with no kubeconfig, the service account's namespace.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_NAMESPACE = "default"


class KubeconfigError(Exception):
    """The kubeconfig is missing, unreadable or lacks the context asked for; says the fix."""


@dataclass(frozen=True, slots=True)
class ClusterAccess:
    """How to reach the API server: a kubeconfig file (None: the default) and a context."""

    kubeconfig: Path | None = None
    context: str | None = None

    @property
    def in_cluster(self) -> bool:
        """True in a pod with no kubeconfig given: the service account is used."""
        return (
            self.kubeconfig is None
            and self.context is None
            and not os.environ.get("KUBECONFIG")
            and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
        )

    def files(self) -> list[Path]:
        """Return the kubeconfig files that exist, in kubectl's order; raise when there is none."""
        if self.kubeconfig is not None:
            if not self.kubeconfig.is_file():
                raise KubeconfigError(
                    f"kubeconfig {self.kubeconfig} does not exist; pass the path of a "
                    "kubeconfig file to --kubeconfig"
                )
            return [self.kubeconfig]
        listed = os.environ.get("KUBECONFIG")
        candidates = (
            [Path(p).expanduser() for p in listed.split(os.pathsep) if p]
            if listed
            else [Path.home() / ".kube" / "config"]
        )
        found = [path for path in candidates if path.is_file()]
        if not found:
            where = f"KUBECONFIG={listed}" if listed else f"{candidates[0]}"
            raise KubeconfigError(
                f"no kubeconfig found ({where} does not exist); pass --kubeconfig PATH, set "
                "KUBECONFIG, or run `kubectl config view` to check your set-up"
            )
        return found

    def default_file(self) -> Path | None:
        """The kubeconfig file to load (the first of $KUBECONFIG), or None in a pod."""
        return None if self.in_cluster else self.files()[0]


def _read(path: Path) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise KubeconfigError(f"cannot read kubeconfig {path}: {error}") from error
    if not isinstance(document, dict):
        raise KubeconfigError(f"kubeconfig {path} is not a kubeconfig (no mapping at the top)")
    return document


def context_namespace(access: ClusterAccess) -> str:
    """Return the namespace a command means when -n is not given.

    The selected context's `namespace`, or `default` when it sets none; in a pod with no
    kubeconfig, the service account's namespace. Raises KubeconfigError for a context that
    no kubeconfig file defines, naming the ones that exist.
    """
    if access.in_cluster:
        try:
            return SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip()
        except OSError:
            return DEFAULT_NAMESPACE
    documents = [_read(path) for path in access.files()]
    # kubectl: the first file that sets current-context wins, and so does a context's first
    # definition.
    current = access.context or next(
        (str(d["current-context"]) for d in documents if d.get("current-context")), None
    )
    contexts: dict[str, dict[str, Any]] = {}
    for document in documents:
        for entry in document.get("contexts") or []:
            if isinstance(entry, dict) and "name" in entry:
                contexts.setdefault(str(entry["name"]), entry.get("context") or {})
    if current is None:
        if access.context is None and not contexts:
            raise KubeconfigError(
                "the kubeconfig defines no context; run `kubectl config get-contexts`"
            )
        raise KubeconfigError(
            "the kubeconfig sets no current-context; pass --context NAME "
            f"(one of: {', '.join(sorted(contexts)) or 'none'})"
        )
    if current not in contexts:
        raise KubeconfigError(
            f"context {current!r} is not in the kubeconfig; pass --context NAME with one of: "
            f"{', '.join(sorted(contexts)) or 'none'}"
        )
    return str(contexts[current].get("namespace") or DEFAULT_NAMESPACE)
