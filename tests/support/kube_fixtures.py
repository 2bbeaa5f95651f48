"""A pytest plugin: fixtures that run a real kube-apiserver (1.20.2) and etcd on loopback.

tests/conftest.py loads it for the whole tree (`pytest_plugins`), so tests/kubernetes,
tests/deploy and tests/cluster share ONE session server: a fixture defined in two conftests (or
re-exported into two) is two fixtures, and each would start its own.

The binaries are built once by tests/kubernetes/build_apiserver.sh (bin/test runs it). When they
are missing, these fixtures fail (never skip) and say how to build them.

* ``kube_apiserver`` (session): the normal configuration, shared by the whole test session.
  Tests may `stop`/`start` it (same port, same etcd data) but must leave it running.
* ``kube_apiserver_fast_compaction`` (module): configmaps have no watch cache and etcd is
  compacted every 2 s, so a watch from an old resourceVersion soon gets 410 Gone. Configmap
  watches get no bookmarks in this configuration.
* ``kube_apiserver_factory`` (function): ``make(fast_compaction=False)`` returns a fresh server,
  NOT yet started, so that a test can `add_user` before `start`; all are closed after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.kubernetes.apiserver import KubeApiServer, KubeApiServerError, MissingBinariesError

KubeApiServerFactory = Callable[..., KubeApiServer]


def new_server(*, fast_compaction: bool = False) -> KubeApiServer:
    """A `KubeApiServer`, not started; fails the test if the binaries are not built."""
    try:
        return KubeApiServer(fast_compaction=fast_compaction)
    except MissingBinariesError as error:
        message = str(error)
    pytest.fail(message, pytrace=False)  # outside `except`: no chained traceback


def started(server: KubeApiServer) -> KubeApiServer:
    """Start `server`, failing the test (with the server's log tail) if it cannot start."""
    try:
        server.start()
    except KubeApiServerError as error:
        message = f"kube-apiserver did not start: {error}"
    else:
        return server
    server.close()
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def kube_apiserver() -> Iterator[KubeApiServer]:
    """A running kube-apiserver (normal configuration), shared by the session."""
    server = started(new_server())
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def kube_apiserver_fast_compaction() -> Iterator[KubeApiServer]:
    """A running kube-apiserver whose configmap watches soon get 410 Gone for old versions."""
    server = started(new_server(fast_compaction=True))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def kube_apiserver_factory() -> Iterator[KubeApiServerFactory]:
    """Make fresh, not yet started servers (add users, then `start`); closed after the test."""
    servers: list[KubeApiServer] = []

    def make(*, fast_compaction: bool = False) -> KubeApiServer:
        server = new_server(fast_compaction=fast_compaction)
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.close()
