"""The pure control-plane modules import no I/O library, so they stay testable without a network."""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE = (
    "controller.rollback",
    "controller.health_state",
    "controller.history",
    "proxy.shadow_compare",
    "controller.scale_plan",
)
IO_LIBRARIES = ("aiohttp", "kubernetes_asyncio", "prometheus_client", "yaml")


@pytest.mark.parametrize("module", PURE)
def test_a_pure_module_loads_no_io_library(module: str) -> None:
    # A fresh interpreter: this test process has already imported everything.
    probe = (
        f"import sys, {module}; "
        f"print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in {IO_LIBRARIES!r})))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout.split()
    assert loaded == [], f"{module} pulls in {loaded}"
