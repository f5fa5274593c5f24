"""Validation of decoded events and feedback, and the dedupe window.

A record that fails validation is data, not a failure: the caller turns the error
message into a dead letter. Messages name the field, as ``features.age: ...``.

>>> v = RecordValidator(task="binary")
>>> v.event({"record_id": "r1", "key": "k1", "features": {"age": 30}})
('r1', 'k1', None, {'age': 30})
>>> v.event({"record_id": "r1", "key": "k1", "features": {"age": float("nan")}})
Traceback (most recent call last):
...
pipelines.validation.InvalidRecord: features.age: Input should be a finite number
>>> v.event({"record_id": "r1", "features": {}, "colour": "red"})
Traceback (most recent call last):
...
pipelines.validation.InvalidRecord: key: Field required; colour: unknown field
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, Literal, Required

import msgspec
from pydantic import (
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from typing_extensions import TypedDict

from pipelines.errors import format_errors

__all__ = ["InvalidRecord", "RecentIds", "RecordValidator"]

Id = Annotated[str, StringConstraints(min_length=1, max_length=512), Field(strict=True)]
Time = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class InvalidRecord(ValueError):
    """A record that does not match the schema; the message is the dead letter's reason."""


def _format(error: ValidationError) -> str:
    return _format_errors(error.errors(include_url=False))


# One line for the label union, not one per alternative.
_LABEL = {"label": "Input should be a boolean, an integer, a string or a finite number"}


def _format_errors(errors: list[Any]) -> str:
    return format_errors(errors, root="<record>", extra_forbidden="unknown field",
                         collapse=_LABEL)


class RecordValidator:
    """Checks events and feedback against riffle's record schema.

    Features must be finite numbers of magnitude at most ``max_abs_value``, except
    ``categorical_features``, which may also be strings. With ``required_features``
    set, each event must carry all of them.
    """

    def __init__(
        self,
        *,
        task: Literal["binary", "multiclass", "regression"],
        max_abs_value: float = 1e15,
        categorical_features: list[str] | None = None,
        required_features: list[str] | None = None,
    ) -> None:
        number = Annotated[
            float, Field(strict=True, allow_inf_nan=False, ge=-max_abs_value, le=max_abs_value)
        ]
        value: Any = number | str if categorical_features else number
        self._categorical = frozenset(categorical_features or ())
        self._required = list(required_features) if required_features else None

        label: Any = number if task == "regression" else StrictBool | StrictInt | StrictStr | number
        # The functional TypedDict form evaluates the types now (they depend on config).
        event_schema: Any = TypedDict("EventSchema", {  # type: ignore[name-match]
            "record_id": Required[Id],
            "key": Required[Id],
            "event_time": Time | None,
            "features": Required[dict[Annotated[str, StringConstraints(min_length=1)], value]],
        }, total=False)
        feedback_schema: Any = TypedDict("FeedbackSchema", {  # type: ignore[name-match]
            "record_id": Required[Id],
            "key": Required[Id],
            "event_time": Time | None,
            "label": Required[label],
        }, total=False)
        schemas: list[Any] = [event_schema, feedback_schema]
        for schema in schemas:
            schema.__pydantic_config__ = ConfigDict(extra="forbid")
        # The core validators: TypeAdapter.validate_python adds a Python layer per call.
        self._event = TypeAdapter(event_schema).validator
        self._feedback = TypeAdapter(feedback_schema).validator
        # A micro-batch is validated in one call; its errors name the items that failed.
        self._events = TypeAdapter(list[event_schema]).validator  # type: ignore[valid-type]
        self._feedbacks = TypeAdapter(list[feedback_schema]).validator  # type: ignore[valid-type]
        self._fast_events, self._fast_feedback = _fast_schemas(task, max_abs_value,
                                                               bool(categorical_features))

    def event(self, payload: dict[str, Any]) -> tuple[str, str, float | None, dict[str, Any]]:
        """``(record_id, key, event_time, features)``, or raises :class:`InvalidRecord`."""
        try:
            self._event.validate_python(payload)
        except ValidationError as e:
            raise InvalidRecord(_format(e)) from None
        features = payload["features"]
        if self._required is not None or self._categorical:
            self._extra_checks(features)
        # The original objects are kept (validation coerces nothing in strict mode), so a
        # model sees exactly what the source produced.
        return payload["record_id"], payload["key"], payload.get("event_time"), features

    def invalid_events(self, payloads: list[dict[str, Any]]) -> dict[int, str]:
        """Of a batch of event payloads, the index and reason of each invalid one.

        >>> v = RecordValidator(task="binary", required_features=["age"])
        >>> v.invalid_events([{"record_id": "a", "key": "k", "features": {"age": 1}},
        ...                   {"record_id": "b", "key": "k", "features": {"age": "x"}},
        ...                   {"record_id": "c", "key": "k", "features": {}}])
        {1: 'features.age: Input should be a valid number', 2: "features: missing 'age'"}
        """
        bad = _invalid_items(self._events, payloads, self._fast_events)
        if self._required is not None or self._categorical:
            for i, payload in enumerate(payloads):
                if i not in bad:
                    try:
                        self._extra_checks(payload["features"])
                    except InvalidRecord as e:
                        bad[i] = str(e)
        return bad

    def _extra_checks(self, features: dict[str, Any]) -> None:
        if self._required is not None:
            absent = [f for f in self._required if f not in features]
            if absent:
                raise InvalidRecord(f"features: missing {', '.join(map(repr, absent))}")
        if self._categorical:
            for name, v in features.items():
                if isinstance(v, str) and name not in self._categorical:
                    raise InvalidRecord(f"features.{name}: Input should be a finite number")

    def invalid_feedback(self, payloads: list[dict[str, Any]]) -> dict[int, str]:
        """Of a batch of feedback payloads, the index and reason of each invalid one."""
        return _invalid_items(self._feedbacks, payloads, self._fast_feedback)

    def feedback(self, payload: dict[str, Any]) -> tuple[str, str, float | None, Any]:
        """``(record_id, key, event_time, label)``, or raises :class:`InvalidRecord`."""
        try:
            self._feedback.validate_python(payload)
        except ValidationError as e:
            raise InvalidRecord(_format(e)) from None
        return payload["record_id"], payload["key"], payload.get("event_time"), payload["label"]


def _fast_schemas(task: str, max_abs_value: float, categorical: bool) -> tuple[Any, Any]:
    """The record schema again, as msgspec types: msgspec checks a batch of valid records
    in a fraction of pydantic's time (events 1.0 us against 1.3 us, feedback 0.13 against
    0.7). It is as strict as the pydantic schema (tests/unit/test_validation.py holds the
    two to the same verdicts); a batch it refuses goes through pydantic, which names every
    field that failed and remains the judge."""
    number = Annotated[float, msgspec.Meta(ge=-max_abs_value, le=max_abs_value)]
    value: Any = str | number if categorical else number
    rid = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    finite = Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
    label: Any = number if task == "regression" else bool | int | str | number
    feature = Annotated[str, msgspec.Meta(min_length=1)]
    event = msgspec.defstruct("FastEvent", [
        ("record_id", rid), ("key", rid), ("features", dict[feature, value]),  # type: ignore[valid-type]
        ("event_time", finite | None, None)], forbid_unknown_fields=True)
    feedback = msgspec.defstruct("FastFeedback", [
        ("record_id", rid), ("key", rid), ("label", label),
        ("event_time", finite | None, None)], forbid_unknown_fields=True)
    return list[event], list[feedback]  # type: ignore[valid-type]


def _invalid_items(validator: Any, payloads: list[dict[str, Any]],
                   fast: Any = None) -> dict[int, str]:
    if fast is not None:
        try:
            msgspec.convert(payloads, fast)
            return {}
        except msgspec.ValidationError:
            pass  # pydantic names what failed
    try:
        validator.validate_python(payloads)
    except ValidationError as e:
        by_item: dict[int, list[Any]] = {}
        for err in e.errors(include_url=False):
            by_item.setdefault(int(err["loc"][0]), []).append({**err, "loc": err["loc"][1:]})
        return {i: _format_errors(errs) for i, errs in by_item.items()}
    return {}


class RecentIds:
    """The last ``max_size`` ids seen, to recognise duplicates in a bounded window.

    A plain dict from id to the count of ids added when it came; an id is recent while
    fewer than ``max_size`` others came after it. Stale entries are dropped in one pass
    when the dict holds twice the window (amortised: an add is one lookup and one store,
    where an ordered dict's eviction per add cost twice as much).

    >>> seen = RecentIds(2)
    >>> [seen.add(i) for i in ["a", "b", "a", "c", "a"]]
    [True, True, False, True, True]
    >>> seen.ids(), len(seen), "c" in seen, "b" in seen
    (['c', 'a'], 2, True, False)
    """

    __slots__ = ("_ids", "_n", "max_size")

    def __init__(self, max_size: int, ids: list[str] | None = None) -> None:
        self.max_size = max_size
        kept = (ids or [])[-max_size:] if max_size else []
        self._ids: dict[str, int] = {rid: i for i, rid in enumerate(kept, 1)}
        self._n = len(kept)

    def ids(self) -> list[str]:
        """The remembered ids, oldest first."""
        oldest = self._n - self.max_size
        return [rid for rid, n in self._ids.items() if n > oldest]

    def add(self, record_id: str) -> bool:
        """Remember ``record_id``; False if it was already among the recent ones."""
        if self.max_size == 0:
            return True
        ids = self._ids
        n = self._n
        seen_at = ids.get(record_id)
        if seen_at is not None:
            if seen_at > n - self.max_size:
                return False
            del ids[record_id]  # re-inserted below: the dict stays in arrival order
        self._n = n = n + 1
        ids[record_id] = n
        if len(ids) >= 2 * self.max_size:
            oldest = n - self.max_size
            self._ids = {rid: i for rid, i in ids.items() if i > oldest}
        return True

    def __contains__(self, record_id: object) -> bool:
        seen_at = self._ids.get(record_id)  # type: ignore[call-overload]
        return seen_at is not None and seen_at > self._n - self.max_size

    def __len__(self) -> int:
        return min(self._n, self.max_size)

    def __getstate__(self) -> dict[str, Any]:
        return {"max_size": self.max_size, "ids": self.ids()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        RecentIds.__init__(self, state["max_size"], state["ids"])
