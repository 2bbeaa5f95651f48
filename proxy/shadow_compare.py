"""Pure shadow comparison: a live answer and its shadow's in, an outcome and the figures out.

A shadow is a live request mirrored to the idle colour (proxy/shadow.py does the I/O). Each
pair ends in one outcome:

- `match`: same status (and, when bodies are compared, the same body digest);
- `mismatch`: another status class, another status, or another body digest;
- `error`: the idle colour failed: no connection, a reset, a timeout, or a 5xx where the live
  colour did not answer that same 5xx (a colour that fails exactly like the live one is not
  worse than it);
- `dropped`: nothing was compared: the proxy did not send the shadow (past `shadow.maxInflight`)
  or the live side ended without an answer of its colour (the client left, the proxy answered),
  so there is nothing to compare with.

`ShadowStats` keeps what the metrics, /status and the switch gate read: counts per colour and
outcome, a shadow latency histogram per colour, windowed rates per colour, and a bounded LRU of
the request paths that mismatch, each with an example of both statuses. No I/O and no clock:
the caller passes `now`.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Final

from proxy.histogram import DurationHistogram

MATCH: Final = "match"
MISMATCH: Final = "mismatch"
ERROR: Final = "error"
DROPPED: Final = "dropped"
OUTCOMES: Final = (MATCH, MISMATCH, ERROR, DROPPED)

# What differed in a mismatch or failed in an error, shown with a path in the LRU.
STATUS_CLASS: Final = "status class"
STATUS: Final = "status"
BODY: Final = "body"

# Paths kept in the mismatch list per colour: a few dozen, never a metric label.
MISMATCH_PATHS_KEPT: Final = 32
# A path is shown up to this many characters (the query string is never kept).
PATH_SHOWN: Final = 200
# The window is counted in this many slots: a rate covers the window to within one slot.
WINDOW_SLOTS: Final = 60


@dataclass(frozen=True, slots=True)
class Answer:
    """What one side answered: its status (0: none), seconds taken, optional body digest.

    `failure` names why no complete response came (`connect`, `reset`, `timeout`, `protocol`,
    or for the live side why it was not the colour's answer); empty when it answered.
    `digest` is None when bodies are not compared or the body was larger than the compared size.
    """

    status: int
    seconds: float
    digest: bytes | None = None
    failure: str = ""


@dataclass(frozen=True, slots=True)
class Comparison:
    """The outcome of one pair, and what differed (empty for a match or a drop)."""

    outcome: str
    what: str = ""


def compare(live: Answer, shadow: Answer) -> Comparison:
    """Compare the shadow's answer with the live one (see the module docstring for the rules)."""
    if live.failure:
        return Comparison(DROPPED, live.failure)
    if shadow.failure:
        return Comparison(ERROR, shadow.failure)
    if shadow.status >= 500 and shadow.status != live.status:
        return Comparison(ERROR, f"{shadow.status}")
    if shadow.status // 100 != live.status // 100:
        return Comparison(MISMATCH, STATUS_CLASS)
    if shadow.status != live.status:
        return Comparison(MISMATCH, STATUS)
    if live.digest is not None and shadow.digest is not None and live.digest != shadow.digest:
        return Comparison(MISMATCH, BODY)
    return Comparison(MATCH)


def path_of(target: bytes) -> str:
    """The path of a request target, without its query string, cut to PATH_SHOWN characters.

    The query may hold tokens and has unbounded variety; the path alone says where to look.
    """
    path = target.partition(b"?")[0]
    return path[:PATH_SHOWN].decode("latin-1")


@dataclass(slots=True)
class PathEntry:
    """One path in the mismatch list: how often it differed, and the latest example."""

    path: str
    count: int
    outcome: str
    what: str
    live_status: int
    shadow_status: int


class MismatchPaths:
    """The request paths that mismatched or failed most recently, at most `capacity` of them.

    Least recently seen goes first when a new path arrives at capacity, so a burst of unique
    paths cannot grow it and a path that keeps differing stays.
    """

    def __init__(self, capacity: int = MISMATCH_PATHS_KEPT) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[str, PathEntry] = OrderedDict()

    def note(self, path: str, comparison: Comparison, live_status: int, shadow_status: int) -> None:
        """Count one mismatch or error on `path`, keeping these statuses as its example."""
        entry = self.entries.get(path)
        if entry is None:
            if len(self.entries) >= self.capacity:
                self.entries.popitem(last=False)
            entry = self.entries[path] = PathEntry(path, 0, "", "", 0, 0)
        else:
            self.entries.move_to_end(path)
        entry.count += 1
        entry.outcome = comparison.outcome
        entry.what = comparison.what
        entry.live_status = live_status
        entry.shadow_status = shadow_status

    def most(self) -> list[PathEntry]:
        """The kept paths, those that differed most often first."""
        return sorted(self.entries.values(), key=lambda e: (-e.count, e.path))


@dataclass(slots=True)
class WindowFigures:
    """Counts over a window: pairs compared (match, mismatch, error), drops, and latencies."""

    matches: int = 0
    mismatches: int = 0
    errors: int = 0
    dropped: int = 0
    live_seconds: float = 0.0  # summed over pairs where both sides answered
    shadow_seconds: float = 0.0
    answered: int = 0  # pairs where both sides answered (the latency sums' count)

    @property
    def compared(self) -> int:
        """Pairs that were compared: everything but drops."""
        return self.matches + self.mismatches + self.errors

    @property
    def bad_rate(self) -> float:
        """Mismatches and errors over pairs compared (0 when none were)."""
        compared = self.compared
        return (self.mismatches + self.errors) / compared if compared else 0.0

    @property
    def latency_ratio(self) -> float | None:
        """Shadow over live latency of the pairs where both answered; None without any."""
        if not self.answered or self.live_seconds <= 0.0:
            return None
        return self.shadow_seconds / self.live_seconds

    def add(self, outcome: str, live_seconds: float, shadow_seconds: float | None) -> None:
        """Count one outcome; `shadow_seconds` is None when either side did not answer."""
        if outcome == MATCH:
            self.matches += 1
        elif outcome == MISMATCH:
            self.mismatches += 1
        elif outcome == ERROR:
            self.errors += 1
        else:
            self.dropped += 1
        if shadow_seconds is not None:
            self.answered += 1
            self.live_seconds += live_seconds
            self.shadow_seconds += shadow_seconds

    def merge(self, other: WindowFigures) -> None:
        """Add another slot's counts to these."""
        self.matches += other.matches
        self.mismatches += other.mismatches
        self.errors += other.errors
        self.dropped += other.dropped
        self.live_seconds += other.live_seconds
        self.shadow_seconds += other.shadow_seconds
        self.answered += other.answered


@dataclass(slots=True)
class _Slot:
    start: float
    figures: WindowFigures = field(default_factory=WindowFigures)


class ShadowWindow:
    """Outcomes of one colour over the last `window` seconds, in WINDOW_SLOTS slots.

    Memory is bounded by the slot count whatever the traffic; a change of window takes effect
    for the slots made from then on.
    """

    def __init__(self) -> None:
        self.slots: deque[_Slot] = deque()

    def add(
        self,
        now: float,
        window: float,
        outcome: str,
        live_seconds: float,
        shadow_seconds: float | None,
    ) -> None:
        """Count one outcome at time `now`."""
        slots = self.slots
        width = window / WINDOW_SLOTS
        if not slots or now >= slots[-1].start + width:
            slots.append(_Slot(now))
            self._expire(now, window)
        slots[-1].figures.add(outcome, live_seconds, shadow_seconds)

    def figures(self, now: float, window: float) -> WindowFigures:
        """The counts of the slots that started within the last `window` seconds."""
        total = WindowFigures()
        for slot in self.slots:
            if slot.start > now - window:
                total.merge(slot.figures)
        return total

    def _expire(self, now: float, window: float) -> None:
        slots = self.slots
        while slots and (slots[0].start <= now - window or len(slots) > 2 * WINDOW_SLOTS):
            slots.popleft()


@dataclass(slots=True)
class ColourShadow:
    """Everything kept about one idle colour's shadows."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    latency: DurationHistogram = field(default_factory=DurationHistogram)
    window: ShadowWindow = field(default_factory=ShadowWindow)
    paths: MismatchPaths = field(default_factory=MismatchPaths)


class ShadowStats:
    """Shadow outcomes per colour, for the metrics, /status and the switch gate.

    Only the event loop's thread touches these, so no lock is needed.
    """

    def __init__(self) -> None:
        self.colours: dict[str, ColourShadow] = {}
        self.window = 600.0  # shadow.window in force (set by the proxy from the table)

    def colour(self, colour: str) -> ColourShadow:
        """The figures of `colour`, made on first use."""
        kept = self.colours.get(colour)
        if kept is None:
            kept = self.colours[colour] = ColourShadow()
        return kept

    def record(self, colour: str, path: str, live: Answer, shadow: Answer, now: float) -> str:
        """Compare one pair, count it, and return its outcome."""
        comparison = compare(live, shadow)
        outcome = comparison.outcome
        kept = self.colour(colour)
        kept.counts[outcome] += 1
        answered = not live.failure and not shadow.failure
        if not shadow.failure and shadow.status:
            kept.latency.observe(shadow.seconds)
        kept.window.add(
            now, self.window, outcome, live.seconds, shadow.seconds if answered else None
        )
        if outcome in (MISMATCH, ERROR):
            kept.paths.note(path, comparison, live.status, shadow.status)
        return outcome

    def drop(self, colour: str, now: float) -> None:
        """Count a shadow that was not sent (past shadow.maxInflight)."""
        kept = self.colour(colour)
        kept.counts[DROPPED] += 1
        kept.window.add(now, self.window, DROPPED, 0.0, None)

    def figures(self, colour: str, now: float, window: float = 0.0) -> WindowFigures:
        """The colour's counts over the last `window` seconds (0: `shadow.window` in force).

        Zeros for a colour that had no shadow.
        """
        kept = self.colours.get(colour)
        if kept is None:
            return WindowFigures()
        return kept.window.figures(now, window or self.window)

    def snapshot(self, now: float) -> dict[str, object]:
        """Per-colour figures and the mismatch list, as /status shows them."""
        colours: dict[str, object] = {}
        for name, kept in sorted(self.colours.items()):
            figures = kept.window.figures(now, self.window)
            ratio = figures.latency_ratio
            colours[name] = {
                "total": dict(kept.counts),
                "window": {
                    "compared": figures.compared,
                    "match": figures.matches,
                    "mismatch": figures.mismatches,
                    "error": figures.errors,
                    "dropped": figures.dropped,
                    "mismatch_or_error_rate": round(figures.bad_rate, 4),
                    "latency_ratio": round(ratio, 3) if ratio is not None else None,
                },
                "mismatching_paths": [
                    {
                        "path": entry.path,
                        "count": entry.count,
                        "outcome": entry.outcome,
                        "what": entry.what,
                        "live_status": entry.live_status,
                        "shadow_status": entry.shadow_status,
                    }
                    for entry in kept.paths.most()
                ],
            }
        return {"window_seconds": self.window, "colours": colours}
