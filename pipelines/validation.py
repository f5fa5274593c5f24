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

from collections import OrderedDict
from typing import Annotated, Any, Literal, Required

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
        bad = _invalid_items(self._events, payloads)
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
        return _invalid_items(self._feedbacks, payloads)

    def feedback(self, payload: dict[str, Any]) -> tuple[str, str, float | None, Any]:
        """``(record_id, key, event_time, label)``, or raises :class:`InvalidRecord`."""
        try:
            self._feedback.validate_python(payload)
        except ValidationError as e:
            raise InvalidRecord(_format(e)) from None
        return payload["record_id"], payload["key"], payload.get("event_time"), payload["label"]


def _invalid_items(validator: Any, payloads: list[dict[str, Any]]) -> dict[int, str]:
    try:
        validator.validate_python(payloads)
    except ValidationError as e:
        by_item: dict[int, list[Any]] = {}
        for err in e.errors(include_url=False):
            by_item.setdefault(err["loc"][0], []).append({**err, "loc": err["loc"][1:]})
        return {i: _format_errors(errs) for i, errs in by_item.items()}
    return {}


class RecentIds:
    """The last ``max_size`` ids seen, to recognise duplicates in a bounded window.

    >>> seen = RecentIds(2)
    >>> [seen.add(i) for i in ["a", "b", "a", "c", "a"]]
    [True, True, False, True, True]
    """

    def __init__(self, max_size: int, ids: list[str] | None = None) -> None:
        self.max_size = max_size
        self._ids: OrderedDict[str, None] = OrderedDict.fromkeys(
            (ids or [])[-max_size:] if max_size else ())

    def ids(self) -> list[str]:
        """The remembered ids, oldest first."""
        return list(self._ids)

    def add(self, record_id: str) -> bool:
        """Remember ``record_id``; False if it was already among the recent ones."""
        if self.max_size == 0:
            return True
        ids = self._ids
        if record_id in ids:
            return False
        ids[record_id] = None
        if len(ids) > self.max_size:
            ids.popitem(last=False)
        return True

    def __contains__(self, record_id: object) -> bool:
        return record_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)
