"""Every message that travels between riffle's actors, defined once.

They are ``NamedTuple``: immutable, and the cheapest Python objects to pickle, which
matters because batches of them cross process boundaries on the hot path. Actors
exchange *batches* of these, never single records.

Data path::

    SourceMessage ─(IngestActor: decode, validate, dedupe)─> Event | Feedback | DeadLetter
    Batch[Event | Feedback] ─(ScorerActor)─> SinkBatch ─(SinkActor)─> Ack
"""

from __future__ import annotations

import pickle
from typing import Any, NamedTuple

__all__ = [
    "Ack",
    "Batch",
    "DeadLetter",
    "Event",
    "Feedback",
    "SinkBatch",
    "SourceMessage",
    "decode_batch",
    "encode_batch",
]


class SourceMessage(NamedTuple):
    """One message at a position of a source partition (embedded log or Kafka)."""

    topic: str
    """The stream it was read from: a Kafka topic, or the embedded source's name."""
    partition: int
    offset: int
    kind: str
    """``"event"`` or ``"feedback"``."""
    payload: dict[str, Any] | None
    """The decoded message, when the source decoded it already."""
    raw: bytes | None
    """The original bytes, when the source has them (kept for dead letters)."""
    error: str | None
    """Why the message could not be decoded; such a message becomes a dead letter."""
    timestamp: float
    """When the source produced the message (epoch seconds)."""
    key: bytes | None = None
    """The message key on the wire, when there is one (Kafka)."""


class Event(NamedTuple):
    """A validated event, ready to score."""

    record_id: str
    key: str
    event_time: float
    features: dict[str, Any]
    partition: int
    offset: int
    read_at: float
    """When the ingest actor read it (epoch seconds); latency is measured from here."""


class Feedback(NamedTuple):
    """The label of an earlier event, known after the decision."""

    record_id: str
    key: str
    label: Any
    event_time: float
    partition: int
    offset: int
    read_at: float


class DeadLetter(NamedTuple):
    """An input that could not be processed, where it came from, and why."""

    record_id: str | None
    kind: str
    """``"event"`` or ``"feedback"``."""
    raw: bytes
    """The original bytes (or, for a decoded source, the record as JSON)."""
    error: str
    error_class: str
    """``DecodeError``, ``InvalidRecord``, ``DuplicateRecord`` or ``ModelError``."""
    topic: str
    partition: int
    offset: int
    key: bytes | None = None

    @property
    def source(self) -> str:
        """``topic[partition]@offset``."""
        return f"{self.topic}[{self.partition}]@{self.offset}"


class Batch(NamedTuple):
    """Events and feedback for one scorer, in arrival order within each partition."""

    seq: int
    items: list[Event | Feedback]


class SinkBatch(NamedTuple):
    """What a sink writes: predictions (already JSON-encoded, one per record) and dead letters."""

    predictions: list[bytes]
    keys: list[str]
    """Per prediction, the record's key (the Kafka message key)."""
    versions: list[str]
    """Per prediction, the model version that scored it."""
    read_at: list[float]
    """Per prediction, when its event was read (for end-to-end latency)."""
    dead_letters: list[DeadLetter]

    @staticmethod
    def of_dead_letters(dead: list[DeadLetter]) -> SinkBatch:
        return SinkBatch([], [], [], [], dead)


class Ack(NamedTuple):
    """The sink's receipt: these lines are written (flushed to the OS)."""

    n_predictions: int
    n_dead_letters: int


def encode_batch(batch: Batch) -> bytes:
    """A batch as bytes for the hop to a scorer.

    Ray pickles arguments with cloudpickle, whose per-object Python hook costs several
    microseconds per record for tuples of our own types; the C pickler does not, and
    Ray passes ``bytes`` through untouched.

    >>> b = Batch(3, [Feedback("r1", "k", True, 0.0, 0, 5, 1.0)])
    >>> decode_batch(encode_batch(b)) == b
    True
    """
    return pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)


def decode_batch(data: bytes) -> Batch:
    batch = pickle.loads(data)
    if type(batch) is not Batch:
        raise TypeError(f"expected an encoded Batch, got {type(batch).__name__}")
    return batch
