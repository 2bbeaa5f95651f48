"""benchmarks/hot_path.py measures what it says: with the access log on, every line is made.

The callgrind figures of the access log's cost come from it (benchmarks/callgrind_per_request.sh);
a server built with its table once left the log off there, so the figures missed the formatting.
"""

from __future__ import annotations

import pytest

from benchmarks import hot_path


@pytest.mark.parametrize("access_log", ["off", "json", "clf"])
@pytest.mark.parametrize("request_bytes", [hot_path.REQUEST, hot_path.BROWSER_REQUEST])
def test_hot_path_runs_with_and_without_the_access_log(
    access_log: str, request_bytes: bytes, capfd: pytest.CaptureFixture[str]
) -> None:
    assert hot_path.measure(request_bytes, 200, access_log) > 0  # it asserts what it logged
    lines = capfd.readouterr().out.splitlines()
    assert len(lines) == (0 if access_log == "off" else 192)  # drained every 64 requests
