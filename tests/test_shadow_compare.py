"""The pure shadow comparison: outcomes, the mismatch list, windowed rates (no I/O)."""

from __future__ import annotations

import pytest

from proxy.shadow_compare import (
    BODY,
    DROPPED,
    ERROR,
    MATCH,
    MISMATCH,
    STATUS,
    STATUS_CLASS,
    WINDOW_SLOTS,
    Answer,
    Comparison,
    MismatchPaths,
    ShadowStats,
    ShadowWindow,
    compare,
    path_of,
)

OK = Answer(200, 0.010)


@pytest.mark.parametrize(
    ("live", "shadow", "expected"),
    [
        (OK, Answer(200, 0.02), Comparison(MATCH)),
        (Answer(404, 0.01), Answer(404, 0.01), Comparison(MATCH)),
        (OK, Answer(404, 0.01), Comparison(MISMATCH, STATUS_CLASS)),
        (OK, Answer(204, 0.01), Comparison(MISMATCH, STATUS)),
        (Answer(301, 0.01), Answer(302, 0.01), Comparison(MISMATCH, STATUS)),
        # The idle colour failing: an error, whatever the live answer.
        (OK, Answer(500, 0.01), Comparison(ERROR, "500")),
        (Answer(404, 0.01), Answer(503, 0.01), Comparison(ERROR, "503")),
        (OK, Answer(0, 1.0, failure="timeout"), Comparison(ERROR, "timeout")),
        (OK, Answer(0, 0.0, failure="connect"), Comparison(ERROR, "connect")),
        (OK, Answer(200, 0.5, failure="reset"), Comparison(ERROR, "reset")),
        # Failing exactly as the live colour does is no worse than it.
        (Answer(500, 0.01), Answer(500, 0.01), Comparison(MATCH)),
        # A live side that was not answered by its colour leaves nothing to compare with.
        (Answer(0, 0.0, failure="client"), Answer(500, 0.01), Comparison(DROPPED, "client")),
        # Bodies: compared only when both digests are known.
        (Answer(200, 0.01, b"a"), Answer(200, 0.01, b"a"), Comparison(MATCH)),
        (Answer(200, 0.01, b"a"), Answer(200, 0.01, b"b"), Comparison(MISMATCH, BODY)),
        (Answer(200, 0.01, b"a"), Answer(200, 0.01, None), Comparison(MATCH)),
        (Answer(200, 0.01, None), Answer(200, 0.01, b"b"), Comparison(MATCH)),
        # The status decides before the body.
        (Answer(200, 0.01, b"a"), Answer(404, 0.01, b"b"), Comparison(MISMATCH, STATUS_CLASS)),
    ],
)
def test_compare(live: Answer, shadow: Answer, expected: Comparison) -> None:
    assert compare(live, shadow) == expected


@pytest.mark.parametrize(
    ("target", "path"),
    [
        (b"/api/users?token=secret", "/api/users"),
        (b"/", "/"),
        (b"/a?b?c", "/a"),
        (b"/" + b"x" * 500, "/" + "x" * 199),
        (b"/caf\xc3\xa9", "/caf\xc3\xa9"),
    ],
)
def test_path_of_drops_the_query_and_bounds_the_length(target: bytes, path: str) -> None:
    assert path_of(target) == path


def test_mismatch_paths_keep_the_most_recent_and_sort_by_count() -> None:
    paths = MismatchPaths(capacity=3)
    wrong = Comparison(MISMATCH, STATUS_CLASS)
    for path in ["/a", "/b", "/a", "/c", "/a", "/b"]:
        paths.note(path, wrong, 200, 500)
    assert [(e.path, e.count) for e in paths.most()] == [("/a", 3), ("/b", 2), ("/c", 1)]
    # A new path at capacity evicts the least recently seen (/c), not the least counted.
    paths.note("/d", Comparison(ERROR, "timeout"), 200, 0)
    assert [e.path for e in paths.most()] == ["/a", "/b", "/d"]
    entry = paths.most()[-1]
    assert (entry.outcome, entry.what, entry.live_status, entry.shadow_status) == (
        ERROR,
        "timeout",
        200,
        0,
    )


def test_mismatch_paths_stay_bounded_under_unique_paths() -> None:
    paths = MismatchPaths(capacity=32)
    for n in range(10_000):
        paths.note(f"/p{n}", Comparison(MISMATCH, STATUS), 200, 201)
    assert len(paths.entries) == 32
    assert paths.most()[0].path == "/p9968"


def test_window_counts_only_recent_outcomes() -> None:
    window = ShadowWindow()
    for second in range(100):
        window.add(float(second), 60.0, MATCH if second % 4 else MISMATCH, 0.01, 0.02)
    figures = window.figures(99.0, 60.0)
    # Slots of one second: those started after 39.0, i.e. 40..99.
    assert figures.compared == 60
    assert figures.mismatches == 15
    assert figures.bad_rate == pytest.approx(0.25)
    assert figures.latency_ratio == pytest.approx(2.0)
    # Far later, nothing is left in the window; the slots themselves stay bounded.
    assert window.figures(1000.0, 60.0).compared == 0
    assert len(window.slots) <= 2 * WINDOW_SLOTS


def test_window_slots_are_bounded_under_heavy_traffic() -> None:
    window = ShadowWindow()
    for n in range(100_000):
        window.add(n / 1000.0, 10.0, MATCH, 0.001, None)
    assert len(window.slots) <= WINDOW_SLOTS + 1
    figures = window.figures(99.999, 10.0)
    assert 9_800 <= figures.matches <= 10_000
    assert figures.latency_ratio is None  # no pair where both answered with a time


def test_drops_are_not_compared() -> None:
    window = ShadowWindow()
    window.add(0.0, 60.0, DROPPED, 0.0, None)
    window.add(0.0, 60.0, ERROR, 0.01, None)
    figures = window.figures(1.0, 60.0)
    assert (figures.compared, figures.dropped, figures.bad_rate) == (1, 1, 1.0)


def test_stats_record_counts_latency_paths_and_snapshot() -> None:
    stats = ShadowStats()
    stats.window = 60.0
    for n in range(10):
        stats.record("green", "/api", OK, Answer(500, 0.004), now=float(n))
        stats.record("green", "/", OK, Answer(200, 0.02), now=float(n))
    stats.drop("green", now=9.0)
    stats.record("green", "/gone", OK, Answer(0, 1.0, failure="timeout"), now=9.0)
    figures = stats.figures("green", now=9.0)
    assert (figures.matches, figures.errors, figures.dropped) == (10, 11, 1)
    assert figures.bad_rate == pytest.approx(11 / 21)
    green = stats.colours["green"]
    assert green.counts == {MATCH: 10, MISMATCH: 0, ERROR: 11, DROPPED: 1}
    assert green.latency.count == 20  # the timeout has no latency of an answer
    snapshot = stats.snapshot(now=9.0)
    shown = snapshot["colours"]["green"]  # type: ignore[index]
    assert shown["mismatching_paths"][0] == {
        "path": "/api",
        "count": 10,
        "outcome": ERROR,
        "what": "500",
        "live_status": 200,
        "shadow_status": 500,
    }
    assert shown["window"]["compared"] == 21
    assert stats.figures("blue", now=9.0).compared == 0
