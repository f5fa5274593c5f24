"""Every message that travels between riffle's actors, defined once.

They are ``NamedTuple``: immutable, and the cheapest Python objects to pickle, which
matters because batches of them cross process boundaries on the hot path. Actors
exchange *batches* of these, never single records.

Data path::

    SourceMessage ─(IngestActor: decode, validate, dedupe)─> Event | Feedback | DeadLetter
    Batch[Event | Feedback] ─(ScorerActor)─> SinkBatch ─(SinkActor)─> Ack

Checkpoint path (see the section at the end)::

    Supervisor ─Barrier─> IngestActor ─Barrier─> ScorerActor ─> ScorerPart
    IngestActor ─> IngestPart (its part, positions, the scorers' ScorerPart refs)
    Supervisor: every part written ─> Manifest (committed last) ─> CheckpointStats
"""

from __future__ import annotations

import pickle
import time
import uuid
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# CommandError is re-exported: it was defined here first.
from pipelines.errors import CommandError, format_validation_error

if TYPE_CHECKING:  # the checkpoint store's own records (pydantic: they are written as JSON)
    from pipelines.audit.trail import Segment
    from pipelines.checkpoint import Part

__all__ = [
    "Ack",
    "Applied",
    "ArmSpec",
    "Barrier",
    "Batch",
    "CheckpointStats",
    "Command",
    "CommandError",
    "DeadLetter",
    "Deployment",
    "Event",
    "Feedback",
    "IngestPart",
    "ScorerPart",
    "SinkBatch",
    "SourceMessage",
    "decode_batch",
    "encode_batch",
    "parse_command",
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
    trace: str = ""
    """Its W3C ``traceparent`` header, when the producer sent one (Kafka)."""


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
    topic: str = ""
    """The stream it came from (a Kafka topic, or the embedded source's name)."""


class Feedback(NamedTuple):
    """The label of an earlier event, known after the decision."""

    record_id: str
    key: str
    label: Any
    event_time: float
    partition: int
    offset: int
    read_at: float
    topic: str = ""
    """The stream it came from (a Kafka topic, or the embedded source's name)."""


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
    trace: str = ""
    """W3C ``traceparent`` of the ingest span that routed it ("": telemetry off)."""
    sent_at: float = 0.0
    """When the ingest actor sent it (epoch seconds): the scorer's queue wait."""


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
    shadow: list[bytes] = []
    """Outputs of shadow (dark) arms: written to the shadow output, never as predictions.
    (The default is never mutated: every producer passes its own list.)"""
    trace: str = ""
    """W3C ``traceparent`` of the scorer span that made it (the predictions' header)."""

    @staticmethod
    def of_dead_letters(dead: list[DeadLetter]) -> SinkBatch:
        return SinkBatch([], [], [], [], dead)


class Ack(NamedTuple):
    """The sink's receipt: these lines are written (flushed to the OS)."""

    n_predictions: int
    n_dead_letters: int


_EVENT, _FEEDBACK = 69, 70  # b"E", b"F"


def encode_batch(batch: Batch) -> bytes:
    """A batch as bytes for the hop to a scorer.

    Ray pickles arguments with cloudpickle, whose per-object Python hook costs several
    microseconds per record for tuples of our own types; the C pickler does not, and
    Ray passes ``bytes`` through untouched. Items travel as plain tuples beside one byte
    of kind each: a named tuple pickles through a Python-level ``__getnewargs__`` and
    unpickles through its Python ``__new__`` (2.9 + 3.0 us an event and its label,
    against 1.3 + 2.5 us as plain tuples, on the loan sample).

    >>> b = Batch(3, [Event("r1", "k", 0.0, {"x": 1.0}, 0, 4, 1.0, "t"),
    ...               Feedback("r1", "k", True, 0.0, 0, 5, 1.0, "t")], "00-ab-cd-01", 2.0)
    >>> back = decode_batch(encode_batch(b))
    >>> back == b, [type(i).__name__ for i in back.items]
    (True, ['Event', 'Feedback'])
    """
    items = batch.items
    kinds = bytes([_EVENT if type(i) is Event else _FEEDBACK for i in items])
    return pickle.dumps((batch.seq, kinds, [tuple(i) for i in items], batch.trace,
                         batch.sent_at), protocol=pickle.HIGHEST_PROTOCOL)


def decode_batch(data: bytes) -> Batch:
    try:
        seq, kinds, rows, trace, sent_at = pickle.loads(data)
    except (pickle.UnpicklingError, TypeError, ValueError) as e:
        raise TypeError(f"expected an encoded Batch: {e}") from None
    new = tuple.__new__  # a named tuple from a plain one, in C
    return Batch(seq, [new(Event, r) if k == _EVENT else new(Feedback, r)
                       for k, r in zip(kinds, rows, strict=True)], trace, sent_at)


# -- the control path ------------------------------------------------------------------


class ArmSpec(NamedTuple):
    """One arm of a deployment: a model version and the share of keys it serves."""

    name: str
    """``live``, ``candidate`` (shadow, canary) or the A/B arm's name."""
    version: str
    role: str
    """``live``, ``shadow``, ``canary`` or ``ab``."""
    weight: float
    """Share of keys served (sticky by key); 0 for a shadow arm, which scores every
    event but serves none."""


class Deployment(NamedTuple):
    """What every scorer serves: ``arms[0]`` is live; ``previous`` is the version that
    was live before it, kept warm (learning) so that a rollback is exact and instant."""

    mode: str
    arms: tuple[ArmSpec, ...]
    previous: str | None = None

    @staticmethod
    def single(version: str) -> Deployment:
        return Deployment("live", (ArmSpec("live", version, "live", 1.0),))


Op = Literal["deploy", "promote", "rollback", "retire", "set_traffic"]
Mode = Literal["live", "shadow", "canary", "ab"]


class Command(BaseModel):
    """A model lifecycle command, as it travels on the control stream (one JSON object).

    - ``deploy VERSION mode=live``: hot swap; ``shadow``/``canary``(``share``)/``ab``
      (``weights``: version or ``live`` -> weight) launch VERSION beside live;
    - ``promote [VERSION]``: the candidate (or VERSION) becomes live; the replaced live
      version is kept warm, learning, for ``rollback``;
    - ``rollback``: the previous live version serves again;
    - ``retire VERSION``: take a candidate out and never deploy it again;
    - ``set_traffic``: change a canary's ``share`` or the A/B ``weights``.

    >>> c = Command(op="deploy", pipeline="local", version="local/sk-1", mode="canary",
    ...             share=0.1, actor="ann")
    >>> parse_command(c.to_json()) == c
    True
    >>> parse_command(b'{"op": "dance", "pipeline": "p", "actor": "x"}')
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pipelines.errors.CommandError: op: Input should be 'deploy', 'promote', ...
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: Annotated[str, Field(min_length=1, max_length=32)] = Field(
        default_factory=lambda: uuid.uuid4().hex[:16])
    op: Op
    pipeline: str
    version: str | None = None
    mode: Mode | None = None
    share: Annotated[float, Field(gt=0, lt=1)] | None = None
    weights: dict[str, Annotated[float, Field(gt=0)]] | None = None
    actor: str
    """Who sent it: the OS user of the CLI, or the API principal."""
    reason: str | None = None
    sent_at: float = Field(default_factory=time.time)

    @model_validator(mode="after")
    def _fields_of_op(self) -> Command:
        if self.op in ("deploy", "retire") and self.version is None:
            raise ValueError(f"{self.op} needs a version")
        if self.op == "deploy":
            mode = self.mode or "live"
            if mode == "ab" and not self.weights:
                raise ValueError("deploy mode ab needs weights")
            if mode != "canary" and self.share is not None:
                raise ValueError(f"share is for mode canary, not {mode}")
        elif self.mode is not None:
            raise ValueError(f"mode is for deploy, not {self.op}")
        if self.op == "set_traffic" and self.share is None and not self.weights:
            raise ValueError("set_traffic needs share or weights")
        return self

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", exclude_none=True))


def parse_command(raw: bytes | str) -> Command:
    """A command from its JSON, or :class:`CommandError` in one line."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise CommandError(f"not JSON: {e}") from None
    if not isinstance(data, dict):
        raise CommandError(f"expected a JSON object, got {type(data).__name__}")
    try:
        return Command.model_validate(data)
    except ValidationError as e:
        raise CommandError(format_validation_error(e, root="<command>")) from None


# -- the checkpoint path ---------------------------------------------------------------
# Aligned checkpoints (see actors.checkpointer): parts first, the manifest last. The
# Manifest and its Parts are the store's own records (pipelines.checkpoint); they travel
# between the actors as those objects.


class Barrier(NamedTuple):
    """Checkpoint ``checkpoint``: the Supervisor asks every ingest actor, which sends it on
    to every scorer behind the data it routed before its positions."""

    checkpoint: str
    """The checkpoint's id (``ckpt-000012``)."""
    seq: int
    n_inputs: int
    """How many ingest actors send it: a scorer writes its part at the last one."""
    hold: bool = False
    """The ingest actor reads nothing more until ``resume`` (with several ingest actors,
    so that no scorer sees a record after the positions before every barrier came)."""


class ScorerPart(NamedTuple):
    """A scorer's part of a checkpoint (model, pending labels) and its figures then."""

    name: str
    part: Part
    write_s: float
    """How long writing it kept the scorer from scoring."""
    learned: int
    n_metric: int
    metrics: dict[str, float]
    segments: list[Segment] = []
    """The audit segments written since the last committed checkpoint (never mutated)."""


class IngestPart(NamedTuple):
    """An ingest actor's part of a checkpoint (its dedupe memory) and its positions."""

    name: str
    part: Part
    positions: dict[str, int]
    """Per source partition, the offset of the first message the checkpoint does not
    reflect (everything before it is acknowledged by the sink)."""
    events: int
    """Events this actor had read."""
    inject_s: float = 0.0
    """How long the barrier kept it from reading (flush, acks, part written)."""
    scorer_parts: tuple[Any, ...] = ()
    """Refs of the scorers' answers to the barrier it sent (``ScorerPart | None``)."""


class Applied(NamedTuple):
    """A scorer's answer to ``apply``: it serves the deployment from its next batch."""

    name: str
    scored: int
    """Events it had scored before the change (the swap's position)."""
    pause_s: float
    """How long applying it kept the scorer from scoring."""
    generation: int


class CheckpointStats(NamedTuple):
    """A committed checkpoint, as the run's status and summary list it."""

    id: str
    events_read: int
    bytes: int
    pause_s: float
    """How long reading or scoring stood still for it."""
    duration_s: float
    final: bool
