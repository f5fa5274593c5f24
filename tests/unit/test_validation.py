"""The batch validator: msgspec's fast check and pydantic's schema give the same verdicts."""

from __future__ import annotations

import re
from typing import Any

import pytest

from pipelines.validation import RecordValidator

GOOD_EVENT = {"record_id": "r1", "key": "k1", "event_time": 1.5, "features": {"a": 1, "b": 2.5}}
GOOD_FEEDBACK = {"record_id": "r1", "key": "k1", "event_time": 1.5, "label": True}

BAD_EVENTS: list[dict[str, Any]] = [
    {"record_id": "", "key": "k", "features": {}},
    {"record_id": "r" * 513, "key": "k", "features": {}},
    {"record_id": 7, "key": "k", "features": {}},
    {"record_id": "r", "features": {}},
    {"record_id": "r", "key": "k"},
    {"record_id": "r", "key": "k", "features": {"a": float("nan")}},
    {"record_id": "r", "key": "k", "features": {"a": float("inf")}},
    {"record_id": "r", "key": "k", "features": {"a": 1e16}},
    {"record_id": "r", "key": "k", "features": {"a": True}},
    {"record_id": "r", "key": "k", "features": {"a": "red"}},
    {"record_id": "r", "key": "k", "features": {"a": None}},
    {"record_id": "r", "key": "k", "features": {"": 1.0}},
    {"record_id": "r", "key": "k", "features": {1: 1.0}},
    {"record_id": "r", "key": "k", "features": [1.0]},
    {"record_id": "r", "key": "k", "features": {}, "colour": "red"},
    {"record_id": "r", "key": "k", "features": {}, "event_time": float("nan")},
    {"record_id": "r", "key": "k", "features": {}, "event_time": "yesterday"},
]
BAD_FEEDBACK: list[dict[str, Any]] = [
    {"record_id": "r", "key": "k"},
    {"record_id": "r", "key": "k", "label": None},
    {"record_id": "r", "key": "k", "label": [1]},
    {"record_id": "r", "key": "k", "label": float("nan")},
    {"record_id": "r", "label": 1},
    {"record_id": "r", "key": "k", "label": 1, "extra": 1},
]


@pytest.mark.parametrize("bad", BAD_EVENTS, ids=range(len(BAD_EVENTS)))
def test_validation_bad_event_in_a_batch_named_alone(bad: dict[str, Any]) -> None:
    v = RecordValidator(task="binary")
    verdict = v.invalid_events([GOOD_EVENT, bad, GOOD_EVENT])
    assert list(verdict) == [1]
    with pytest.raises(ValueError, match=re.escape(verdict[1])):
        v.event(bad)  # the one-record check says the same


@pytest.mark.parametrize("bad", BAD_FEEDBACK, ids=range(len(BAD_FEEDBACK)))
def test_validation_bad_feedback_in_a_batch_named_alone(bad: dict[str, Any]) -> None:
    v = RecordValidator(task="binary")
    assert list(v.invalid_feedback([GOOD_FEEDBACK, bad])) == [1]


def test_validation_good_batch_passes_both_kinds() -> None:
    v = RecordValidator(task="multiclass", categorical_features=["colour"])
    assert v.invalid_events([GOOD_EVENT, {**GOOD_EVENT, "features": {"colour": "red"}}]) == {}
    assert v.invalid_feedback([GOOD_FEEDBACK, {**GOOD_FEEDBACK, "label": "cat"}]) == {}


def test_validation_regression_label_must_be_a_number() -> None:
    v = RecordValidator(task="regression")
    assert list(v.invalid_feedback([{**GOOD_FEEDBACK, "label": 2.5},
                                    {**GOOD_FEEDBACK, "label": "cat"},
                                    {**GOOD_FEEDBACK, "label": True}])) == [1, 2]


def test_validation_categorical_string_only_where_declared() -> None:
    v = RecordValidator(task="binary", categorical_features=["colour"])
    verdict = v.invalid_events([{**GOOD_EVENT, "features": {"colour": "red", "a": "big"}}])
    assert verdict == {0: "features.a: Input should be a finite number"}
