"""The session's real single-node cluster (tests/cluster/node.py), the same code as bin/cluster.

Tests here get the ``cluster`` marker from tests/support/markers.py (bin/check deselects them:
they need root, a bridge of their own and minutes); ``pytest -m cluster`` runs only them. A
cluster already up (``bin/cluster up``) is used and left running; otherwise the fixture starts
one and takes it down at the end of the session. Its security is test-grade (see node.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.example import Example
from tests.cluster.node import Cluster, ClusterError


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


@pytest.fixture
def example(cluster: Cluster) -> Example:
    """deploy/examples/myapp applied and settled on blue, whatever an earlier test changed."""
    made = Example(cluster)
    made.reset()
    return made
