"""Cost of one request ID by each way of making it (proxy/request_id.py chose the cheapest).

Run: .venv/bin/python -m benchmarks.request_ids
"""

from __future__ import annotations

import os
import timeit
import uuid
from collections.abc import Callable
from random import getrandbits

from proxy.request_id import new_request_id, new_traceparent

CANDIDATES: dict[str, Callable[[], object]] = {
    "str(uuid.uuid4())": lambda: str(uuid.uuid4()),
    "os.urandom(12).hex()": lambda: os.urandom(12).hex(),
    'b"%024x" % getrandbits(96)': lambda: b"%024x" % getrandbits(96),
    "new_request_id() (a slice of a batch of urandom hex)": new_request_id,
    "new_traceparent()": new_traceparent,
}


def main() -> None:
    """Print nanoseconds per call, best of three runs of 200,000."""
    number = 200_000
    for name, make in CANDIDATES.items():
        best = min(timeit.repeat(make, number=number, repeat=3))
        print(f"{name:45} {best / number * 1e9:7.0f} ns")


if __name__ == "__main__":
    main()
