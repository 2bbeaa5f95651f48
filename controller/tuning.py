"""Process start-up tuning that must happen before any traffic: malloc, files, the event loop."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import resource
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


def raise_open_file_limit() -> int:
    """Raise the soft limit on open files to the hard limit; return the limit now in force.

    Every proxied request holds two sockets (client and upstream). The usual soft limit of 1024
    would make accept() fail far below `limits.connections` (10000 by default), with errors
    instead of the proxy's own 503s; the hard limit in containers is normally 1048576.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1048576)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as error:
            log.warning("could not raise the open-file limit from %d: %s", soft, error)
    log.debug("open-file limit %d", soft)
    return soft


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on uvloop when it is installed (it roughly doubles socket throughput)."""
    try:
        import uvloop  # noqa: PLC0415 - optional at run time
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
