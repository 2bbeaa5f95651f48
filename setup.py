"""Build bluegreen with the proxy's hot path compiled by mypyc, or pure Python as the fallback.

Everything declarative (name, version, dependencies, packages) is in pyproject.toml; this file
only adds the extension modules. mypyc turns the `mypy --strict` clean modules of `proxy/` into
one C extension (a shared library plus one small shim per module); the `.py` files stay in the
wheel beside them, so the same package also runs pure (see proxy/__init__.py).

Pure Python is built instead of compiled when:
- `BLUEGREEN_PURE=1` is set at build time (`BLUEGREEN_PURE=1 pip install .`), or
- the C compiler is missing or fails: the build warns and goes on without the extension, so that
  `pip install` from the sdist still works on a machine without one.
A type error in the compiled modules is not a reason to fall back: mypyc stops the build, since
it would be a bug that `mypy --strict` in CI has missed.

mypy is pinned exactly in `[build-system] requires` (pyproject.toml): another mypyc version
generates other C, and the instruction counts measured for a release are for that one.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path
from typing import cast

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, PlatformError

HERE = Path(__file__).resolve().parent
# Modules of proxy/ left pure: the package's __init__ decides at import time between compiled
# and pure (it cannot be compiled itself), and admin.py builds the aiohttp app, which runs a few
# times a second at most and subclasses nothing mypyc would speed up.
PURE_MODULES = frozenset({"__init__.py", "admin.py"})
# The shared library's name: `proxy/hotpath__mypyc.*.so`, inside the package, so that an
# editable install (which maps only the packages) finds it as well as a wheel does.
GROUP_NAME = "proxy.hotpath"


def pure_requested() -> bool:
    """True when BLUEGREEN_PURE asks for the pure-Python build (any value but empty or 0)."""
    return os.environ.get("BLUEGREEN_PURE", "") not in {"", "0"}


def compiled_sources() -> list[str]:
    """The proxy modules to compile, as paths relative to this file (what mypyc expects)."""
    return sorted(
        f"proxy/{path.name}"
        for path in (HERE / "proxy").glob("*.py")
        if path.name not in PURE_MODULES
    )


class OptionalBuildExt(build_ext):
    """build_ext that falls back to the pure-Python package when the C compiler fails."""

    def run(self) -> None:
        """Build the extensions, or warn and build none when no working compiler is there."""
        try:
            super().run()
        except (CCompilerError, CompileError, ExecError, PlatformError) as error:
            self._fall_back(error)
            return
        if self.inplace:
            # The shared library is relinked only when its C changed; an edit that leaves the C
            # as it was (a comment) must not make proxy/__init__.py think the build is stale.
            for extension in self.extensions:
                module = extension.name.replace(".", "/")
                os.utime(HERE / f"{module}{sysconfig.get_config_var('EXT_SUFFIX')}")

    def _fall_back(self, error: Exception) -> None:
        self.extensions = []
        print(
            f"WARNING: bluegreen's compiled proxy could not be built ({error}); installing the "
            "pure-Python proxy, which is correct but slower. Install a C compiler and the "
            "Python headers (Debian: build-essential python3-dev) to get the compiled one.",
            file=sys.stderr,
        )


def extensions() -> list[Extension]:
    """The mypyc extension modules, or none for the pure-Python build."""
    if pure_requested():
        print("BLUEGREEN_PURE is set: building the pure-Python proxy", file=sys.stderr)
        return []
    from mypyc.build import mypycify  # noqa: PLC0415 (a build requirement, not needed if pure)

    # mypycify makes setuptools' Extension when setuptools is importable, as it is here.
    return cast(
        "list[Extension]", mypycify(compiled_sources(), group_name=GROUP_NAME, opt_level="3")
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
