"""Cluster DNS for the test cluster: Service A records for dnsmasq, refreshed from the API.

CoreDNS is not in Debian; dnsmasq (``dnsmasq-base``) is. bin/cluster runs dnsmasq on the node's
bridge address with ``--hostsdir`` pointing at a directory, and runs this module as a small
process next to it (``python -m tests.cluster.dns KUBECONFIG HOSTS_DIR``): every half second it
lists the Services and rewrites one hosts file with ``<ClusterIP> <svc>.<ns>.svc.cluster.local``
lines (atomically; dnsmasq rereads changed files in that directory by itself). Enough for what
Pods here resolve: Service names, through the search path the kubelet writes into each Pod.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import ssl
import sys
import tempfile
import time
import types
import urllib.request
from pathlib import Path

import yaml

DOMAIN = "cluster.local"
INTERVAL = 0.5


def hosts_lines(services: dict[str, object]) -> list[str]:
    """The hosts-file lines for a ServiceList: one per Service with a ClusterIP."""
    lines = []
    items = services.get("items")
    for item in items if isinstance(items, list) else []:
        meta, spec = item.get("metadata", {}), item.get("spec", {})
        ip = spec.get("clusterIP")
        if not ip or ip == "None":
            continue
        name, namespace = meta.get("name"), meta.get("namespace")
        lines.append(f"{ip} {name}.{namespace}.svc.{DOMAIN}")
    return sorted(lines)


def client(kubeconfig: Path) -> tuple[str, dict[str, str], ssl.SSLContext]:
    """Server URL, auth header and TLS context from a token kubeconfig (as bin/cluster writes)."""
    config = yaml.safe_load(kubeconfig.read_text(encoding="utf-8"))
    cluster = config["clusters"][0]["cluster"]
    user = config["users"][0]["user"]
    context = ssl.create_default_context()
    if "certificate-authority-data" in cluster:
        context.load_verify_locations(
            cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
        )
    else:
        context.load_verify_locations(cafile=cluster["certificate-authority"])
    return cluster["server"], {"Authorization": f"Bearer {user['token']}"}, context


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` so that dnsmasq never reads half a file."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".hosts-")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


def main() -> None:
    """Refresh the hosts file until SIGTERM."""
    kubeconfig, hosts_dir = Path(sys.argv[1]), Path(sys.argv[2])

    def stop(signum: int, frame: types.FrameType | None) -> None:
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    server, headers, context = client(kubeconfig)
    request = urllib.request.Request(f"{server}/api/v1/services", headers=headers)
    target = hosts_dir / "services"
    written = None
    while True:
        # The API server may be restarting; the last good file stays until it answers again.
        with contextlib.suppress(OSError, ValueError):
            with urllib.request.urlopen(request, timeout=5, context=context) as response:
                text = "\n".join(hosts_lines(json.loads(response.read()))) + "\n"
            if text != written:
                write_atomically(target, text)
                written = text
        time.sleep(INTERVAL)


if __name__ == "__main__":
    main()
