"""Process start-up tuning that must happen before any traffic: malloc and the event loop."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# mallopt parameters from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2


def tune_malloc() -> bool:
    """Keep freed body buffers in the heap instead of returning them to the kernel.

    Large bodies move through 64-256 KiB bytes objects. With glibc's defaults every response
    shrinks the heap again, and the page faults of growing it back halved the proxy's large-body
    throughput when measured (see benchmarks/). Raising the trim threshold and top pad (the same
    as MALLOC_TRIM_THRESHOLD_=268435456 MALLOC_TOP_PAD_=67108864) keeps up to 256 MiB of freed
    memory for reuse. Returns False on a libc without mallopt (musl), where nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_TRIM_THRESHOLD, 256 * 1024 * 1024)) and bool(
        mallopt(M_TOP_PAD, 64 * 1024 * 1024)
    )
    log.debug("malloc tuned ok=%s", ok)
    return ok


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on uvloop when it is installed (it roughly doubles socket throughput)."""
    try:
        import uvloop  # noqa: PLC0415 - optional at run time
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
