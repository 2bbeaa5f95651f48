"""Where the tests find the third-party tools that tests/tools/fetch_debian_tools.sh fetched."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

TOOLS_CACHE = Path(
    os.environ.get("BLUEGREEN_TOOLS_CACHE", Path.home() / ".cache" / "bluegreen" / "debian-tools")
)


def debian_tool(name: str) -> Path:
    """Return the path of a fetched tool (kubectl, promtool, prometheus, chromium).

    The fetched copy wins over one on PATH so that every machine runs the same version. A missing
    tool is an error, not a skip: bin/test fetches them all, so absence means a broken set-up.
    """
    fetched = TOOLS_CACHE / "bin" / name
    if fetched.is_file() and os.access(fetched, os.X_OK):
        return fetched
    on_path = shutil.which(name)
    if on_path is not None:
        return Path(on_path)
    raise FileNotFoundError(
        f"{name} not found in {TOOLS_CACHE / 'bin'} or on PATH; "
        "run tests/tools/fetch_debian_tools.sh"
    )
