"""The data plane. Its hot-path modules run compiled by mypyc when the build made them.

setup.py compiles every module of this package except this one and admin.py into a C extension:
each module gets a small `<module>.cpython-*.so` shim beside its `.py`, and the code itself is in
one shared library, `hotpath__mypyc.cpython-*.so`. Python's import system prefers an extension
module to a `.py` of the same name, so the compiled build runs whenever those files are there.

This module, which is never compiled, picks the pure-Python modules instead when:
- `BLUEGREEN_PURE=1` is set in the environment of the process (a run-time switch: to compare the
  two builds, or to rule the compiler out when chasing a bug), or
- the compiled build is stale: in a source checkout (setup.py beside this package) a `.py` was
  edited after the last `setup.py build_ext --inplace`. Running the old compiled code would test
  something other than the source, so it warns and runs the source instead; `./bin/setup`
  rebuilds.
The compiled modules call each other directly in C, so the choice is all or nothing: it is made
here, before any of them is imported. `running_compiled()` says which one the process runs.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

_HERE = Path(__file__).resolve().parent
_LIBRARY = "hotpath__mypyc"  # setup.py's GROUP_NAME, with mypyc's suffix
_SUFFIXES = importlib.machinery.EXTENSION_SUFFIXES


class _SourceOnly(importlib.abc.MetaPathFinder):
    """Finds this package's modules as `.py` files only, so their compiled shims go unused."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        """The spec of `proxy.<name>` loaded from `<name>.py`; None for any other module."""
        package, _, name = fullname.rpartition(".")
        source = _HERE / f"{name}.py"
        if package != __name__ or not source.is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def _compiled_modules() -> list[Path]:
    """The `.py` files that have a compiled shim beside them."""
    return [
        source
        for source in _HERE.glob("*.py")
        if any((_HERE / (source.stem + suffix)).is_file() for suffix in _SUFFIXES)
    ]


def _stale_module() -> str | None:
    """In a source checkout, a compiled module whose `.py` is newer than the compiled build."""
    if not (_HERE.parent / "setup.py").is_file():
        return None  # installed from a wheel: the `.py` and the `.so` came from the same build
    libraries = [_HERE / (_LIBRARY + suffix) for suffix in _SUFFIXES]
    built = [library.stat().st_mtime for library in libraries if library.is_file()]
    if not built:
        return None
    for source in _compiled_modules():
        if source.stat().st_mtime > min(built):
            return source.name
    return None


def _choose_pure() -> bool:
    if os.environ.get("BLUEGREEN_PURE", "") not in {"", "0"}:
        return True
    stale = _stale_module()
    if stale is not None:
        warnings.warn(
            f"proxy/{stale} changed after the compiled build; running the pure-Python proxy. "
            "Run ./bin/setup (or `python setup.py build_ext --inplace`) to compile it again.",
            RuntimeWarning,
            stacklevel=2,
        )
        return True
    return False


if _choose_pure():
    sys.meta_path.insert(0, _SourceOnly())


def running_compiled() -> bool:
    """True when this process runs the mypyc-compiled proxy, False for the pure-Python one."""
    from proxy import server  # noqa: PLC0415 (imported here: the choice above must come first)

    loader = getattr(server.__spec__, "loader", None)
    return isinstance(loader, importlib.machinery.ExtensionFileLoader)
