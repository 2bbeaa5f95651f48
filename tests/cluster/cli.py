"""``bin/cluster up|down|status``: the single-node test cluster of tests/cluster/node.py.

``eval "$(bin/cluster up)"`` sets KUBECONFIG and BLUEGREEN_NODE in the calling shell; everything
else goes to stderr. The cluster's security is test-grade (see tests/cluster/node.py).
"""

from __future__ import annotations

import argparse
import sys

from tests.cluster.node import Cluster, ClusterError


def main(argv: list[str] | None = None) -> int:
    """Run one of up, down, status, env; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="bin/cluster",
        description="A real single-node Kubernetes 1.20 cluster on this machine (test-grade "
        "security). up prints `export` lines for eval; progress goes to stderr.",
    )
    parser.add_argument(
        "command",
        choices=["up", "down", "status", "env"],
        help="up: start (idempotent) and print exports; down: stop and clean up; "
        "status: what runs; env: print the exports of a running cluster",
    )
    args = parser.parse_args(argv)
    cluster = Cluster()
    try:
        if args.command == "up":
            cluster.up()
            sys.stdout.write(cluster.shell_lines())
        elif args.command == "down":
            cluster.down()
        elif args.command == "status":
            print(cluster.status(), file=sys.stderr)
            return 0 if cluster.is_up() else 1
        else:
            if not cluster.is_up():
                print("cluster: not up (run bin/cluster up)", file=sys.stderr)
                return 1
            sys.stdout.write(cluster.shell_lines())
    except ClusterError as error:
        print(f"cluster: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
