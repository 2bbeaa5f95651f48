"""Scaling the idle colour, the pure part: the scale.* keys, the record, and the plan (tables)."""

from __future__ import annotations

import json

import pytest

from controller.config import ConfigError, parse_config
from controller.scale_plan import (
    SCALED_DOWN_ANNOTATION,
    ColourView,
    ScaleRecord,
    ScaleSettings,
    Step,
    plan,
    read_records,
    records_annotation,
    scale_after,
    waiting_reason,
)
from controller.switch_wait import Observed, ReplicaState, wait_for_switch

BASE = {"active": "blue", "upstream.blue": "http://a:80", "upstream.green": "http://b:80"}
RECORD = ScaleRecord("myapp-v2", 10, 0, "2026-12-03T15:00:00+00:00", "pod-a-1f2e3d")


def test_scale_keys_parse_into_the_settings() -> None:
    config = parse_config(
        {
            **BASE,
            "scale.blue": "deployment/myapp-v1",
            "scale.green": "deploy/myapp-v2",
            "scale.idleReplicas": "2",
            "scale.after": "10m",
            "scale.timeout": "90s",
        }
    )
    assert dict(config.scale.workloads) == {"blue": "myapp-v1", "green": "myapp-v2"}
    assert (config.scale.idle_replicas, config.scale.after, config.scale.timeout) == (2, 600, 90)
    assert scale_after(config.scale, config.rollback.window) == 600


def test_by_default_nothing_is_scaled_and_after_is_the_rollback_window() -> None:
    config = parse_config({**BASE, "rollback.window": "2m"})
    assert config.scale == ScaleSettings()
    assert config.scale.idle_replicas is None
    assert scale_after(config.scale, config.rollback.window) == 120
    assert parse_config({**BASE, "scale.blue": "deployment/x", "scale.idleReplicas": "off"})


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"scale.green": "statefulset/db"}, "scale.green: 'statefulset/db' is not deployment/NAME"),
        ({"scale.green": "deployment/My_App"}, "'My_App' is not a Deployment name"),
        ({"scale.red": "deployment/x"}, "scale.red: 'red' is not one of the colours"),
        (
            {"scale.idlereplicas": "0", "scale.blue": "deployment/x"},
            "did you mean scale.idleReplicas?",
        ),
        ({"scale.Blue": "deployment/x"}, "scale.Blue: unknown key"),
        (
            {"scale.blue": "deployment/x", "scale.green": "deployment/x"},
            "scale.blue and scale.green both name deployment/x",
        ),
        ({"scale.idleReplicas": "0"}, "scale.idleReplicas is set but no colour names"),
        ({"scale.blue": "deployment/x", "scale.idleReplicas": "-1"}, "'-1' is not off or a number"),
        (
            {"scale.blue": "deployment/x", "scale.after": "1m"},
            "scale.after: 60s is shorter than rollback.window (300s)",
        ),
    ],
)
def test_bad_scale_keys_are_refused_with_the_fix(keys: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({**BASE, **keys})
    assert expected in str(raised.value)


def test_records_round_trip_and_damage_reads_as_none() -> None:
    patch = records_annotation({"green": RECORD})
    assert read_records({SCALED_DOWN_ANNOTATION: patch[SCALED_DOWN_ANNOTATION] or ""}) == {
        "green": RECORD
    }
    assert records_annotation({}) == {SCALED_DOWN_ANNOTATION: None}  # merge patch: remove it
    assert read_records({}) == {}
    assert read_records({SCALED_DOWN_ANNOTATION: "not json"}) == {}
    assert read_records({SCALED_DOWN_ANNOTATION: "[1]"}) == {}
    damaged = json.dumps({"green": {"deployment": "x"}, "blue": RECORD.as_json()})
    assert read_records({SCALED_DOWN_ANNOTATION: damaged}) == {"blue": RECORD}


def view(**changes: object) -> ColourView:
    values: dict[str, object] = {
        "colour": "green",
        "served": False,
        "desired": False,
        "idle_for": 400.0,
        "record": None,
        "scaled_this_idle_period": False,
        "scaling_up": False,
    }
    values.update(changes)
    return ColourView(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "idle", "expected"),
    [
        ({}, 0, Step.SCALE_DOWN),  # idle for longer than `after`: scale down
        ({}, None, Step.NOTHING),  # scale.idleReplicas off
        ({"idle_for": 299.0}, 0, Step.NOTHING),  # not yet: the rollback window is not over
        ({"served": True, "idle_for": 0.0}, 0, Step.NOTHING),
        ({"desired": True}, 0, Step.NOTHING),  # about to be served: never scaled down
        ({"record": RECORD}, 0, Step.NOTHING),  # already scaled down
        ({"scaled_this_idle_period": True}, 0, Step.NOTHING),  # a person scaled it back up
        ({"desired": True, "record": RECORD}, 0, Step.SCALE_UP),
        ({"desired": True, "record": RECORD}, None, Step.SCALE_UP),  # the record is a debt
        ({"desired": True, "record": RECORD, "scaling_up": True}, 0, Step.NOTHING),
        ({"scaling_up": True}, 0, Step.NOTHING),  # the scale-up task takes itself back
    ],
)
def test_plan(changes: dict[str, object], idle: int | None, expected: Step) -> None:
    assert plan(view(**changes), idle, after=300.0) is expected


def test_waiting_reason_shows_the_progress() -> None:
    assert waiting_reason("green", RECORD, 3) == (
        "waiting for green to scale up (deployment/myapp-v2, scaled down to 0 by bluegreen): "
        "3/10 replicas ready"
    )
    assert waiting_reason("green", RECORD, None).endswith(": starting")


async def test_switch_wait_shows_the_scale_up_progress_as_it_changes() -> None:
    """`bluegreen switch --wait` prints why replicas wait, once per change, then the verdict."""
    reasons = [waiting_reason("green", RECORD, n) for n in (0, 0, 4, 10)]
    looks = iter([*reasons, None])
    shown: list[str] = []
    current: list[ReplicaState] = []

    async def observe() -> Observed:
        reason = next(looks)
        active = "green" if reason is None else "blue"
        current[:] = [ReplicaState("pod-a", active, "green", reason)]
        return Observed("green")

    async def replicas() -> list[ReplicaState]:
        return current

    result = await wait_for_switch(
        "green", observe, replicas, timeout=5, poll=0, progress=shown.append
    )
    assert result.served, result
    assert shown == [
        f"pod-a serves blue (desired green: {reasons[0]})",
        f"pod-a serves blue (desired green: {reasons[2]})",
        f"pod-a serves blue (desired green: {reasons[3]})",
    ]
