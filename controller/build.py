"""What this process runs: bluegreen's version and revision, the Python, and which proxy build.

`bluegreen --version` prints it and `bluegreen_build_info` exports it, so that an operator can
tell from either whether a replica runs the compiled proxy (the image does) or the pure-Python
fallback, which is correct but slower (see setup.py and proxy/__init__.py).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import proxy

# The image sets it from its REVISION build argument (Dockerfile); a source checkout has none.
REVISION_VARIABLE = "BLUEGREEN_REVISION"
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class BuildInfo:
    """The build identity of the running process."""

    version: str
    revision: str
    python: str
    compiled: bool

    @classmethod
    def current(cls) -> BuildInfo:
        """The identity of this process (imports the proxy, so the choice of build is made)."""
        try:
            installed = version("bluegreen")
        except PackageNotFoundError:
            installed = UNKNOWN
        return cls(
            version=installed,
            revision=os.environ.get(REVISION_VARIABLE) or UNKNOWN,
            python=platform.python_version(),
            compiled=proxy.running_compiled(),
        )

    def labels(self) -> dict[str, str]:
        """The labels of `bluegreen_build_info`."""
        return {
            "version": self.version,
            "revision": self.revision,
            "python": self.python,
            "compiled": "true" if self.compiled else "false",
        }

    def describe(self) -> str:
        """One line for `bluegreen --version`, e.g. `bluegreen 0.1.0 (compiled, Python 3.11.7)`."""
        build = "compiled" if self.compiled else "pure Python"
        revision = "" if self.revision == UNKNOWN else f", revision {self.revision}"
        return f"bluegreen {self.version} ({build}, Python {self.python}{revision})"
