"""The service's messages: request and response bodies, validated with pydantic.

The OpenAPI document is generated from these (FastAPI); a request that does not match
is refused with 422 and the field it got wrong (``body.records.3.key``), never a 500.

>>> PredictRequest.model_validate({"record": {"key": "k1", "features": {"age": 30}}}).rows()
[Record(record_id=None, key='k1', features={'age': 30})]
>>> PredictRequest.model_validate({"record": {"key": "k1", "features": {}},
...                                "records": []})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
pydantic_core._pydantic_core.ValidationError: 1 validation error for PredictRequest
  Value error, give either record or records, not both ...
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

__all__ = [
    "ArmOut",
    "CommandOut",
    "DeployRequest",
    "DeploymentOut",
    "FeedbackRequest",
    "FeedbackResponse",
    "ForgetBody",
    "Health",
    "Label",
    "ModelsOut",
    "PredictRequest",
    "PredictResponse",
    "Prediction",
    "PromoteRequest",
    "Record",
    "RetireRequest",
    "TrafficRequest",
    "VersionOut",
]

Id = Annotated[str, Field(min_length=1, max_length=512, strict=True)]
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Feature = Annotated[str, Field(min_length=1, max_length=256)]
FeatureValue = StrictInt | Number | StrictStr
"""A number, or a string for a categorical feature (``ingest.categorical_features``)."""


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Record(_Body):
    """One record to score: its ``key`` picks its arm (as in the stream) and its model."""

    record_id: Id | None = None
    """Yours, echoed back (default: a new id)."""
    key: Id
    features: Annotated[dict[Feature, FeatureValue], Field(max_length=10_000)]


class PredictRequest(_Body):
    """One record (``record``) or a batch (``records``)."""

    record: Record | None = None
    records: list[Record] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> PredictRequest:
        if (self.record is None) == (self.records is None):
            raise ValueError("give either record or records, not both (nor neither)")
        return self

    def rows(self) -> list[Record]:
        return [self.record] if self.record is not None else list(self.records or [])


Score = dict[str, float] | float | None


class Prediction(_Body):
    record_id: str
    key: str
    score: Score
    """Class probabilities (classifiers), or the value (regressors); null on a model error."""
    prediction: StrictBool | StrictInt | float | StrictStr | None
    model_version: str
    arm: str
    checkpoint: str | None
    """The committed checkpoint the model is (River versions), else null."""
    reasons: list[list[Any]] | None = None
    """Top ``scoring.explain.top_k`` reasons: [feature, value, contribution]."""
    error: str | None = None
    """Why the model could not score this record (the others are scored)."""


class PredictResponse(_Body):
    predictions: list[Prediction]
    deployment: int
    """The serial of the deployment that scored the whole request (one per request)."""


class Label(_Body):
    record_id: Id
    key: Id
    label: StrictBool | StrictInt | StrictStr | Number
    event_time: Number | None = None


class FeedbackRequest(_Body):
    labels: Annotated[list[Label], Field(min_length=1)]


class FeedbackResponse(_Body):
    accepted: int
    stream: str
    """Where the labels went: ``kafka:<topic>`` or ``file:<path>``."""


class ArmOut(_Body):
    name: str
    version: str
    role: str
    weight: float
    checkpoint: str | None


class DeploymentOut(_Body):
    serial: int
    mode: str
    arms: list[ArmOut]
    previous: str | None
    command_id: str | None
    """The applied command it comes from (null: the pipeline's starting deployment)."""
    loaded_at: float


class ModelsOut(_Body):
    pipeline: str
    deployment: DeploymentOut | None
    versions: list[dict[str, Any]]


class VersionOut(_Body):
    version: dict[str, Any]
    events: list[dict[str, Any]]


class Health(_Body):
    status: Literal["ok", "ready", "not ready"]
    detail: str | None = None


class DeployRequest(_Body):
    version: Id
    mode: Literal["live", "shadow", "canary", "ab"] = "live"
    share: Annotated[float, Field(gt=0, lt=1)] | None = None
    weights: dict[Id, Annotated[float, Field(gt=0)]] | None = None
    reason: Annotated[str, Field(max_length=1000)] | None = None


class PromoteRequest(_Body):
    version: Id | None = None
    reason: Annotated[str, Field(max_length=1000)] | None = None


class RollbackRequest(_Body):
    reason: Annotated[str, Field(max_length=1000)] | None = None


class RetireRequest(_Body):
    version: Id
    reason: Annotated[str, Field(max_length=1000)] | None = None


class TrafficRequest(_Body):
    share: Annotated[float, Field(gt=0, lt=1)] | None = None
    weights: dict[Id, Annotated[float, Field(gt=0)]] | None = None
    reason: Annotated[str, Field(max_length=1000)] | None = None


class CommandOut(_Body):
    command_id: str
    op: str
    status: Literal["applied", "rejected", "pending"]
    """``pending``: sent, not yet applied by the pipeline within the wait (202)."""
    error: str | None = None
    details: dict[str, Any] = {}


class ExplainBody(_Body):
    record_id: Id
    arm: Annotated[str, Field(max_length=100)] | None = None


class ForgetBody(_Body):
    key: Id
    reason: Annotated[str, Field(max_length=1000)] | None = None
    suppress: bool = False
