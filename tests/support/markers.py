"""A pytest plugin that marks the slow kinds of test by where they live and what they use.

The markers are registered in pyproject.toml (with --strict-markers). They are applied here, at
collection, so that a new test gets its marker from its directory or its fixtures without anyone
remembering to write it; bin/check deselects them all with `-m 'not ...'`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True, slots=True)
class SlowKind:
    """One marker and what earns it: a path under tests/ (a directory or a file) or a fixture."""

    marker: str
    paths: tuple[str, ...] = ()
    fixtures: tuple[str, ...] = ()


SLOW_KINDS = (
    SlowKind(
        "kubernetes",
        paths=("kubernetes/",),
        fixtures=("kube_apiserver", "kube_apiserver_fast_compaction", "kube_apiserver_factory"),
    ),
    SlowKind("cluster", paths=("cluster/",)),
    SlowKind("browser", fixtures=("browser",)),
    SlowKind("prometheus", paths=("monitoring/test_prometheus_e2e.py",), fixtures=("promtool",)),
)
TESTS = Path(__file__).resolve().parent.parent


def slow_kinds_of(path: Path, fixtures: list[str]) -> list[str]:
    """The markers a test at `path` (a file) using `fixtures` gets."""
    try:
        where = path.resolve().relative_to(TESTS).as_posix()
    except ValueError:  # a test file outside tests/ (pytest run on another tree)
        return []
    return [
        kind.marker
        for kind in SLOW_KINDS
        if any(where == p or (p.endswith("/") and where.startswith(p)) for p in kind.paths)
        or any(name in fixtures for name in kind.fixtures)
    ]


@pytest.hookimpl(tryfirst=True)  # before pytest's own `-m` deselection reads the markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Add each collected test's slow-kind markers."""
    for item in items:
        fixtures = list(getattr(item, "fixturenames", ()))
        for marker in slow_kinds_of(item.path, fixtures):
            item.add_marker(marker)
