"""The session's real single-node cluster (tests/cluster/node.py), the same code as bin/cluster.

Tests here get the ``cluster`` marker from tests/support/markers.py (bin/check deselects them:
they need root, a bridge of their own and minutes); ``pytest -m cluster`` runs only them. A
cluster already up (``bin/cluster up``) is used and left running; otherwise the fixture starts
one and takes it down at the end of the session. Its security is test-grade (see node.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.node import REPO, Cluster, ClusterError

# kubectl 1.20 cannot create the policy/v1 PodDisruptionBudget (Kubernetes >= 1.21, as
# deploy/README.md says); everything else of the kustomization is applied.
PDB_ON_1_20 = 'no matches for kind "PodDisruptionBudget" in version "policy/v1"'


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """A running cluster with the images imported."""
    node = Cluster()
    was_up = node.is_up()
    try:
        node.up()
    except ClusterError as error:
        pytest.fail(f"the test cluster did not start: {error}", pytrace=False)
    try:
        yield node
    finally:
        if not was_up:
            node.down()


def apply_example(cluster: Cluster) -> None:
    """``kubectl apply -k deploy/examples/myapp``, no overlay; fail on any error but the PDB's."""
    result = cluster.kubectl_result("apply", "-k", str(REPO / "deploy/examples/myapp"))
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    unexpected = [line for line in errors if PDB_ON_1_20 not in line]
    assert not unexpected, f"kubectl apply failed: {result.stderr}"
