"""The served-state model, pure: fingerprints of desired configs and which colour is served."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from controller.config import parse_config
from controller.decision import (
    DECISION_ANNOTATION,
    ServedDecision,
    read_decision,
    served_colour,
)

DATA = {
    "active": "green",
    "upstream.blue": "http://blue:80",
    "upstream.green": "http://green:80",
    "health.path": "/",
}
GREEN = parse_config(DATA)
ROLLED_BACK = ServedDecision("green", "blue", GREEN.fingerprint, "rollback: green unhealthy")


def test_the_fingerprint_names_the_desired_config_not_its_spelling() -> None:
    reordered = dict(reversed(list(DATA.items())))
    assert parse_config(reordered).fingerprint == GREEN.fingerprint
    # A YAML file may give numbers where a ConfigMap gives text: the same desired config.
    assert (
        parse_config({**DATA, "rollback.minRequests": 20}).fingerprint
        == parse_config({**DATA, "rollback.minRequests": "20"}).fingerprint
    )
    assert len(GREEN.fingerprint) == 16


@pytest.mark.parametrize(
    "change",
    [
        {"active": "blue"},
        {"upstream.green": "http://green-v3:80"},
        {"revision": "v2.0.1"},
        {"health.path": "/healthz"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_any_new_value_is_a_new_desired_config(change: dict[str, str]) -> None:
    assert parse_config({**DATA, **change}).fingerprint != GREEN.fingerprint


@pytest.mark.parametrize(
    ("data", "decision", "served"),
    [
        (DATA, None, ("green", None)),
        (DATA, ROLLED_BACK, ("blue", "rollback: green unhealthy")),
        # The same desired config applied again (a GitOps sync): the decision holds.
        (
            {**dict(reversed(list(DATA.items())))},
            ROLLED_BACK,
            ("blue", "rollback: green unhealthy"),
        ),
        # A new desired config ends it: a new revision, a new upstream, a new colour.
        ({**DATA, "revision": "2"}, ROLLED_BACK, ("green", None)),
        ({**DATA, "upstream.green": "http://green-v3:80"}, ROLLED_BACK, ("green", None)),
        ({**DATA, "active": "blue"}, ROLLED_BACK, ("blue", None)),
    ],
)
def test_served_colour(
    data: dict[str, str], decision: ServedDecision | None, served: tuple[str, str | None]
) -> None:
    assert served_colour(parse_config(data), decision) == served


def test_a_decision_naming_an_unknown_or_the_desired_colour_does_not_apply() -> None:
    unknown = ServedDecision("green", "red", GREEN.fingerprint, "rollback: x")
    itself = ServedDecision("green", "green", GREEN.fingerprint, "rollback: x")
    assert served_colour(GREEN, unknown) == ("green", None)
    assert served_colour(GREEN, itself) == ("green", None)


def test_the_annotation_round_trips_with_who_and_when() -> None:
    stamped = ROLLED_BACK.stamped("bluegreen-7d9f-abcde", datetime(2026, 12, 3, 15, 0, tzinfo=UTC))
    assert stamped.at == "2026-12-03T15:00:00+00:00"
    annotations = {DECISION_ANNOTATION: stamped.to_annotation()}
    assert read_decision(annotations) == stamped


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "not json",
        "[]",
        '{"desired": "green"}',
        '{"desired": "green", "served": "blue", "fingerprint": "", "reason": "x"}',
        '{"desired": 1, "served": "blue", "fingerprint": "f", "reason": "x"}',
    ],
)
def test_a_damaged_annotation_reads_as_no_decision(raw: str) -> None:
    assert read_decision({DECISION_ANNOTATION: raw}) is None
    assert read_decision({}) is None
