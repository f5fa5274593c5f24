"""Pipeline configuration: frozen, strict pydantic models loaded from one YAML file.

A pipeline is declared in ``configs/<name>.yaml``; :func:`load_config` turns it into a
:class:`PipelineConfig` or raises :class:`~pipelines.errors.ConfigError` with a one-line
message that names the file, the dotted path of each bad field and what was expected.

>>> cfg = PipelineConfig.model_validate({"name": "demo", "source": {"kind": "synthetic"}})
>>> cfg.scoring.model.steps[-1].name
'linear_model.LogisticRegression'
>>> cfg.source.partitions
4
"""

from __future__ import annotations

import hashlib
import os
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# format_validation_error is re-exported: config errors were formatted here first.
from pipelines.errors import ConfigError, format_validation_error
from pipelines.monitoring.config import DriftDetectionConfig, RetrainingConfig

__all__ = [
    "AuditConfig",
    "CheckpointConfig",
    "ControlConfig",
    "DriftConfig",
    "ExplainConfig",
    "FileSourceConfig",
    "GroupSpec",
    "IngestConfig",
    "KafkaConfig",
    "KafkaSourceConfig",
    "KafkaTopics",
    "LaunchConfig",
    "ModelSpec",
    "OutputConfig",
    "PipelineConfig",
    "PlacementConfig",
    "PromotionConfig",
    "QualityConfig",
    "RegistryConfig",
    "RestartPolicyConfig",
    "RetainConfig",
    "RuntimeConfig",
    "ScoringConfig",
    "ServeAutoscalingConfig",
    "ServingConfig",
    "SourceConfig",
    "StepSpec",
    "SupervisionConfig",
    "SyntheticSourceConfig",
    "TelemetryConfig",
    "TrainingConfig",
    "format_validation_error",
    "load_config",
]


# YAML has no path type: a path field takes a string even in strict mode.
LaxPath = Annotated[Path, Field(strict=False)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class DriftConfig(_Frozen):
    """A concept change: ``river.datasets.synth.ConceptDriftStream`` around the stream."""

    position: Annotated[int, Field(ge=0)]
    """Event index (stream-wide) at which the new concept is half-way in."""
    width: Annotated[int, Field(ge=1)] = 1000
    to_function: Annotated[int, Field(ge=0, le=9)] = 2
    """Agrawal classification function after the change."""


class _SourceBase(_Frozen):
    label_delay_events: Annotated[int, Field(ge=0)] = 0
    """Feedback for an event is emitted after this many further events of its partition."""
    label_delay_s: Annotated[float, Field(ge=0)] = 0.0
    """Feedback for an event is emitted this many seconds after the event."""

    rate_per_s: Annotated[float, Field(gt=0)] | None = None
    """Target event rate over all partitions; ``null`` reads as fast as the pipeline takes."""

    @model_validator(mode="after")
    def _one_delay(self) -> _SourceBase:
        if self.label_delay_events and self.label_delay_s:
            raise ValueError(
                f"label_delay_events ({self.label_delay_events}) and label_delay_s "
                f"({self.label_delay_s}) are exclusive: set one of them"
            )
        return self


class SyntheticSourceConfig(_SourceBase):
    """Loan applications from ``river.datasets.synth.Agrawal``, partitioned by ``key``."""

    kind: Literal["synthetic"]
    name: str = "loans"
    partitions: Annotated[int, Field(ge=1, le=1024)] = 4
    n_events: Annotated[int, Field(ge=1)] | None = 200_000
    """Total events over all partitions; ``null`` makes the stream endless."""
    seed: int = 42
    classification_function: Annotated[int, Field(ge=0, le=9)] = 0
    drift: DriftConfig | None = None
    n_keys: Annotated[int, Field(ge=1)] = 50_000
    """Distinct applicants; each event's ``key`` is one of them."""


class FileSourceConfig(_SourceBase):
    """Replay of a JSONL or CSV file of flat rows, partitioned by ``key``."""

    kind: Literal["file"]
    path: LaxPath
    format: Literal["jsonl", "csv"] | None = None
    """Inferred from the suffix when not given."""
    partitions: Annotated[int, Field(ge=1, le=1024)] = 4
    id_column: str = "record_id"
    key_column: str = "key"
    time_column: str | None = "event_time"
    label_column: str | None = None
    """When set, the label is split off each row and emitted as feedback."""
    features: list[str] | None = None
    """Feature columns; when set, any other column is an error. Default: every other column."""
    follow: bool = False
    """Keep reading lines appended to the file (an endless source), like ``tail -f``."""

    @model_validator(mode="after")
    def _format_known(self) -> FileSourceConfig:
        if self.format is None and self.path.suffix.lower() not in {".jsonl", ".ndjson", ".csv"}:
            raise ValueError(
                f"cannot infer the format of '{self.path}' from its suffix: set format to "
                "'jsonl' or 'csv'"
            )
        return self

    @property
    def file_format(self) -> Literal["jsonl", "csv"]:
        if self.format is not None:
            return self.format
        return "csv" if self.path.suffix.lower() == ".csv" else "jsonl"


class KafkaSourceConfig(_Frozen):
    """Events and feedback from their Kafka topics, read by a consumer group."""

    kind: Literal["kafka"]
    partitions: Annotated[int, Field(ge=1, le=10_000)] = 4
    """Partitions of each topic riffle creates when it is missing."""
    idle_stop_s: Annotated[float, Field(gt=0)] | None = None
    """End the run once no message has arrived for this long (``null``: never)."""
    require_message_key: bool = True
    """An event must be keyed by its ``key``, so that a key's events share a partition."""
    align_topics: bool = True
    """Hand out each partition's events and feedback in timestamp order (as Kafka Streams
    synchronises its inputs), so that a backlog is learned from as it happened."""
    align_max_wait_s: Annotated[float, Field(ge=0)] = 2.0
    """How long one side is held while the other's lag is unknown (no fetch of it yet);
    while the other side is known to have more on the broker, it is held until that comes
    (Kafka Streams' rule, KIP-695)."""
    align_max_held: Annotated[int, Field(ge=1)] = 20_000
    """Messages held per side and partition before that side is paused."""


SourceConfig = Annotated[SyntheticSourceConfig | FileSourceConfig | KafkaSourceConfig,
                         Field(discriminator="kind")]


class KafkaTopics(_Frozen):
    events: str = "riffle.events"
    feedback: str = "riffle.feedback"
    predictions: str = "riffle.predictions"
    dead_letters: str = "riffle.dead-letters"
    models: str = "riffle.models"
    """The control stream of model lifecycle commands."""
    shadow: str = "riffle.shadow"
    """Outputs of shadow (dark-launched) models."""


class KafkaConfig(_Frozen):
    """How riffle talks to Kafka; option names are kafka-python's.

    ``RIFFLE_KAFKA_BOOTSTRAP`` in the environment overrides ``bootstrap_servers``;
    a SASL password is read from ``RIFFLE_KAFKA_PASSWORD``, never from the file.
    """

    bootstrap_servers: str | list[str] = "127.0.0.1:9092"
    topics: KafkaTopics = KafkaTopics()
    create_topics: bool = True
    replication_factor: Annotated[int, Field(ge=1)] = 1
    group_id: str = "riffle"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    session_timeout_ms: Annotated[int, Field(ge=1000)] = 10_000
    heartbeat_interval_ms: Annotated[int, Field(ge=100)] = 2_000
    max_poll_interval_ms: Annotated[int, Field(ge=1000)] = 300_000
    request_timeout_ms: Annotated[int, Field(ge=1000)] = 30_000
    linger_ms: Annotated[int, Field(ge=0)] = 5
    max_request_size: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    max_partition_fetch_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    delivery_timeout_ms: Annotated[int, Field(ge=1000)] = 120_000
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_plain_username: str | None = None

    @model_validator(mode="after")
    def _heartbeat_below_session(self) -> KafkaConfig:
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError(
                f"heartbeat_interval_ms ({self.heartbeat_interval_ms}) must be at most a third "
                f"of session_timeout_ms ({self.session_timeout_ms})"
            )
        return self


class IngestConfig(_Frozen):
    n_actors: Annotated[int, Field(ge=1, le=256)] = 1
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 500
    """A scorer's batch is sent when it holds this many records..."""
    linger_s: Annotated[float, Field(ge=0, le=10)] = 0.005
    """...or when its oldest record has waited this long."""
    max_in_flight: Annotated[int, Field(ge=1, le=1024)] = 4
    """Batches per scorer sent but not yet written by the sink (backpressure)."""
    dedupe_window: Annotated[int, Field(ge=0)] = 100_000
    """How many recent ``record_id`` an ingest actor remembers to drop duplicates."""
    max_abs_value: Annotated[float, Field(gt=0)] = 1e15
    """A feature whose magnitude exceeds this is invalid (a dead letter)."""
    categorical_features: list[str] = []
    """Features that may be strings; every other feature must be a finite number."""
    max_message_bytes: Annotated[int, Field(ge=1024)] = 1024 * 1024
    """An input message larger than this is a dead letter, never decoded."""
    num_cpus: Annotated[float, Field(ge=0)] = 0.5


class StepSpec(_Frozen):
    """One River estimator by dotted name (relative to ``river.``) and its parameters."""

    name: str
    params: dict[str, Any] = {}


class ModelSpec(_Frozen):
    """A River model: the steps are composed into a pipeline with ``|``."""

    steps: Annotated[list[StepSpec], Field(min_length=1)] = [
        StepSpec(name="preprocessing.StandardScaler"),
        StepSpec(name="linear_model.LogisticRegression"),
    ]
    version: str = "v0"
    """Stamped on every prediction until checkpoints number the versions."""


class ExplainConfig(_Frozen):
    """Reason codes inline (``pipelines.audit.reasons``)."""

    top_k: Annotated[int, Field(ge=1, le=100)] | None = None
    """Every prediction of a linear or Hoeffding tree model carries its ``top_k`` reasons
    (feature, value, contribution); None: none (they cost the scoring loop a little)."""


class GroupSpec(_Frozen):
    """A group column for fairness figures: a feature's value, or its band by bin edges."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    feature: str
    edges: list[float] | None = None
    """Inner bin edges, increasing: ``[40, 60]`` bands a value as ``<40``, ``40-60`` or
    ``>=60``. None: the feature's value itself is the group (keep it low-cardinality)."""

    @model_validator(mode="after")
    def _edges_increase(self) -> GroupSpec:
        edges = self.edges
        if edges is not None and (not edges or any(b <= a for a, b in pairwise(edges))):
            raise ValueError(f"edges ({edges}) must be a non-empty increasing list")
        return self


class QualityConfig(_Frozen):
    """Serving quality per model version and arm, on labels as they arrive
    (``pipelines.monitoring.quality``)."""

    enabled: bool = True
    window_events: Annotated[int, Field(ge=1)] = 1000
    """The sliding window by count: the last this many labels of each arm (per scorer)."""
    window_s: Annotated[float, Field(gt=0)] = 30.0
    """The sliding window by time: labels that arrived within this many seconds."""
    positive_label: str | int | bool = True
    """What a positive prediction is, for the fairness figures' positive rate (binary)."""
    groups: list[GroupSpec] = []
    """Group columns for fairness: per group positive rate and accuracy, and the gap."""


class ScoringConfig(_Frozen):
    n_actors: Annotated[int, Field(ge=1, le=256)] = 1
    model: ModelSpec = ModelSpec()
    max_pending_labels: Annotated[int, Field(ge=1)] = 200_000
    """Scored records kept (per scorer) until their label arrives; the oldest expire first."""
    label_ttl_s: Annotated[float, Field(gt=0)] = 3600.0
    """A scored record whose label has not arrived after this long expires."""
    metrics_window: Annotated[int, Field(ge=1)] = 20_000
    """Labeled events per window of the windowed accuracy (or MAE) in the summary."""
    num_cpus: Annotated[float, Field(ge=0)] = 0.5
    explain: ExplainConfig = ExplainConfig()
    quality: QualityConfig = QualityConfig()

    drift: DriftDetectionConfig = DriftDetectionConfig()
    """Drift detectors on each arm's errors and features (``pipelines.monitoring.drift``)."""


class OutputConfig(_Frozen):
    kind: Literal["file", "kafka"] = "file"
    """``file``: predictions.jsonl and dead_letters.jsonl in ``out_dir``; ``kafka``: the
    predictions and dead-letter topics (the summary is still written to ``out_dir``)."""
    out_dir: LaxPath | None = None
    """Default: ``out/<pipeline name>``."""


class RestartPolicyConfig(_Frozen):
    """How the Supervisor answers an actor's failure (Akka's restart directives): when to
    restart (backoff), and when to stop trying (escalation), per actor role."""

    max_restarts: Annotated[int, Field(ge=0)] = 5
    within_s: Annotated[float, Field(gt=0)] = 60.0
    """More than ``max_restarts`` failures within this window escalate (the run stops)."""
    backoff_initial_s: Annotated[float, Field(ge=0)] = 0.5
    backoff_max_s: Annotated[float, Field(ge=0)] = 10.0
    backoff_jitter: Annotated[float, Field(ge=0, lt=1)] = 0.2
    """Each delay is scaled by a random factor in ``1 ± backoff_jitter``."""

    @model_validator(mode="after")
    def _cap_above_initial(self) -> RestartPolicyConfig:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(f"backoff_max_s ({self.backoff_max_s}) must be >= "
                             f"backoff_initial_s ({self.backoff_initial_s})")
        return self


class SupervisionConfig(_Frozen):
    strategy: Literal["one_for_one", "all_for_one"] = "one_for_one"
    """After a failure, ``one_for_one`` replaces the failed actor and rewinds the others
    in place to the last checkpoint; ``all_for_one`` replaces every actor. Either way the
    data path continues from the checkpoint (every scorer takes input from every ingest
    actor, so all of them must rewind for the models to stay exact)."""
    ping_interval_s: Annotated[float, Field(gt=0)] = 2.0
    """How often the Supervisor pings every actor."""
    ping_timeout_s: Annotated[float, Field(gt=0)] = 15.0
    """An actor that has not answered a ping for this long is hung: it counts as failed."""
    start_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    """A new actor that is not up after this long failed to start (its process may wait
    for a CPU or a node on a busy cluster)."""
    scorer: RestartPolicyConfig = RestartPolicyConfig()
    ingest: RestartPolicyConfig = RestartPolicyConfig()
    sink: RestartPolicyConfig = RestartPolicyConfig()


class RetainConfig(_Frozen):
    """Committed checkpoints kept beyond ``keep``, so that ``riffle explain`` can rebuild
    the model that scored an old record: it starts from the checkpoint the record's model
    continued from or, once that one is pruned, from the newest retained one before it,
    and replays the training log from there.

    The trade-off is disk against reach and speed: with ``every: N`` one checkpoint in N
    stays (a checkpoint's size each time), and an explanation replays at most N
    checkpoint intervals of examples. Without it only ``keep`` checkpoints stay: older
    records are explained by replaying from the run's start (when the run began from a
    fresh model and its training log is all there), else not at all.
    """

    every: Annotated[int, Field(ge=1)] | None = None
    """Keep a committed checkpoint whenever the last one kept is ``every`` or more
    checkpoint numbers behind it (so about one in ``every``)."""
    max_age_s: Annotated[float, Field(gt=0)] | None = None
    """...but none older than this (seconds): bounds the disk a long run takes."""


class CheckpointConfig(_Frozen):
    """Aligned checkpoints: every scorer's model and pending labels, with the positions."""

    enabled: bool = True
    interval_s: Annotated[float, Field(gt=0)] | None = 5.0
    """Start a checkpoint this often (seconds)..."""
    every_events: Annotated[int, Field(ge=1)] | None = None
    """...or once this many events were read since the last one (whichever comes first)."""
    store: str | None = None
    """A folder or a pyarrow filesystem URL (``s3://bucket/prefix``, ``gs://...``,
    ``hdfs://...``); default ``<out_dir>/checkpoints``."""
    keep: Annotated[int, Field(ge=1)] = 3
    """Committed checkpoints kept; older ones are pruned."""
    retain: RetainConfig = RetainConfig()
    """Older checkpoints kept as well (for ``riffle explain``)."""
    timeout_s: Annotated[float, Field(gt=0)] = 60.0
    """A checkpoint not complete after this long is abandoned (never committed)."""


class RegistryConfig(_Frozen):
    """Where model versions are recorded: every committed checkpoint is one."""

    enabled: bool = True
    url: str | None = None
    """A SQLAlchemy URL: default ``sqlite:///<out_dir>/registry.db``; PostgreSQL as
    ``postgresql+psycopg://user@host/db``."""


class AuditConfig(_Frozen):
    """The audit trail (every decision) and the training log (every label learned):
    Parquet segments under ``<checkpoint store>/audit/``, committed with checkpoints
    (so kept only when checkpoints are)."""

    enabled: bool = True
    segment_rows: Annotated[int, Field(ge=1000)] = 25_000
    """A scorer writes a segment once it holds this many rows (and at every checkpoint)."""


class PromotionConfig(_Frozen):
    """When a candidate replaces the live model by itself (``mode: auto``).

    The candidate is compared with live on the labeled records each of them scored (the
    same records in shadow mode: a paired test; different keys in canary and A/B: a
    two-sample test). The gain is correctness (classifiers) or minus the absolute error
    (regressors). It is promoted when it beats live by more than ``margin`` at the
    ``false_promotion_rate`` level, looked at every ``check_every`` labeled records per
    arm from ``min_samples`` to ``max_samples`` (the level is split over the looks, so
    looking often does not raise the rate); at ``max_samples`` without a win, live stays
    and the evaluation ends. Every decision and its numbers go to the registry.
    """

    mode: Literal["manual", "auto"] = "manual"
    margin: Annotated[float, Field(ge=0)] = 0.0
    false_promotion_rate: Annotated[float, Field(gt=0, le=0.5)] = 0.05
    min_samples: Annotated[int, Field(ge=10)] = 1_000
    check_every: Annotated[int, Field(ge=1)] = 1_000
    max_samples: Annotated[int, Field(ge=10)] = 20_000

    @model_validator(mode="after")
    def _window_forward(self) -> PromotionConfig:
        if self.max_samples < self.min_samples:
            raise ValueError(f"max_samples ({self.max_samples}) must be >= min_samples "
                             f"({self.min_samples})")
        return self


class LaunchConfig(_Frozen):
    """How a candidate version is launched beside the live model when the run starts
    (the same launches are also sent at any time with ``riffle models deploy``).

    - ``live``: the live model alone (a ``candidate`` here replaces it at start);
    - ``shadow``: the candidate scores every event too; its outputs go to the shadow
      output, never to the predictions;
    - ``canary``: the candidate serves ``share`` of the keys (sticky by a hash of ``key``);
    - ``ab``: each version in ``weights`` (``live`` names the live model) serves its
      weight's share of the keys.
    """

    mode: Literal["live", "shadow", "canary", "ab"] = "live"
    candidate: str | None = None
    """A registered version id (``<pipeline>/<id>``) for shadow and canary."""
    share: Annotated[float, Field(gt=0, lt=1)] = 0.05
    weights: dict[str, Annotated[float, Field(gt=0)]] = {}
    promotion: PromotionConfig = PromotionConfig()

    @model_validator(mode="after")
    def _arms_given(self) -> LaunchConfig:
        if self.mode in ("shadow", "canary") and self.candidate is None:
            raise ValueError(f"mode {self.mode} needs a candidate version")
        if self.mode == "ab" and len(self.weights) < 2:
            raise ValueError(f"mode ab needs at least two weights, got {len(self.weights)}")
        if self.mode != "ab" and self.weights:
            raise ValueError(f"weights are for mode ab, not {self.mode}")
        return self


class ControlConfig(_Frozen):
    """The control stream of model lifecycle commands (deploy, promote, rollback, ...)."""

    kind: Literal["auto", "file", "kafka"] = "auto"
    """``file``: ``<out_dir>/control.jsonl`` (the embedded channel); ``kafka``: the
    ``kafka.topics.models`` topic; ``auto``: Kafka when the source is Kafka."""
    poll_interval_s: Annotated[float, Field(gt=0, le=10)] = 0.2


class TrainingConfig(_Frozen):
    """``riffle train``: a scikit-learn model fitted on history, registered as a version."""

    estimator: str = "sklearn.linear_model.LogisticRegression"
    """A scikit-learn estimator by dotted name."""
    params: dict[str, Any] = {}
    scale: bool = True
    """Put a ``StandardScaler`` in front of the estimator."""
    label_column: str = "label"
    id_column: str = "record_id"
    key_column: str = "key"
    time_column: str | None = "event_time"
    features: list[str] | None = None
    """Default: every column but the id, key, time and label."""
    test_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.2
    """Held out (the last rows, in file order) to measure the metrics registered with it."""


class PlacementConfig(_Frozen):
    """Where the actors run on a Ray cluster (``runtime.placement``).

    ``strategy: spread`` asks Ray to put the actors of one role on different nodes
    (Ray's ``SPREAD`` scheduling); ``default`` lets Ray pack them. ``ingest``,
    ``scoring`` and ``sink`` name custom resources each actor of that role needs
    (``{"riffle-scorer": 1}``): such an actor runs only on a node that offers them, and
    a replacement goes to any surviving node that still does.

    >>> PlacementConfig.model_validate({"scoring": {"riffle-scorer": 1}}).options("scoring")
    {'resources': {'riffle-scorer': 1.0}}
    >>> PlacementConfig(strategy="spread").options("ingest")
    {'scheduling_strategy': 'SPREAD'}
    """

    strategy: Literal["default", "spread"] = "default"
    ingest: dict[str, Annotated[float, Field(gt=0)]] = {}
    scoring: dict[str, Annotated[float, Field(gt=0)]] = {}
    sink: dict[str, Annotated[float, Field(gt=0)]] = {}

    def options(self, role: Literal["ingest", "scoring", "sink"]) -> dict[str, Any]:
        """Ray actor options (``.options(**...)``) for an actor of ``role``."""
        out: dict[str, Any] = {}
        resources = getattr(self, role)
        if resources:
            out["resources"] = dict(resources)
        if self.strategy == "spread":
            out["scheduling_strategy"] = "SPREAD"
        return out


class RuntimeConfig(_Frozen):
    num_cpus: Annotated[int, Field(ge=1)] | None = None
    """CPUs of the local Ray started by ``riffle run``; ignored when joining a cluster."""
    progress_interval_s: Annotated[float, Field(gt=0)] = 0.5
    placement: PlacementConfig = PlacementConfig()
    """Where the actors run on a cluster (spread, or by custom resources)."""

    series_interval_s: Annotated[float, Field(gt=0)] | None = 1.0
    """How often ``metrics.jsonl`` in the output folder gets a line of the current figures
    (what ``riffle report`` draws over time); None: never."""
    fault_drills: list[str] = []
    """Crash an actor at a named point to rehearse recovery (``pipelines.faults``), e.g.
    ``scorer-0@checkpoint#2``. Empty in production."""

    @model_validator(mode="after")
    def _drills_parse(self) -> RuntimeConfig:
        from pipelines.faults import parse_drill

        for drill in self.fault_drills:
            parse_drill(drill)
        return self


class ServeAutoscalingConfig(_Frozen):
    """Ray Serve's ``autoscaling_config`` (its own names): replicas follow the requests
    in flight per replica."""

    min_replicas: Annotated[int, Field(ge=0, le=256)] = 1
    max_replicas: Annotated[int, Field(ge=1, le=256)] = 2
    target_ongoing_requests: Annotated[float, Field(gt=0)] = 16.0
    upscale_delay_s: Annotated[float, Field(ge=0)] = 2.0
    downscale_delay_s: Annotated[float, Field(ge=0)] = 10.0
    metrics_interval_s: Annotated[float, Field(gt=0)] = 1.0
    look_back_period_s: Annotated[float, Field(gt=0)] = 5.0

    @model_validator(mode="after")
    def _bounds(self) -> ServeAutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= min_replicas "
                             f"({self.min_replicas})")
        return self


class ServingConfig(_Frozen):
    """``riffle serve``: the scoring service (Ray Serve) beside the stream. API keys are
    never here: ``RIFFLE_SERVE_KEYS`` or the secrets file ``keys_file`` (or
    ``RIFFLE_SERVE_KEYS_FILE``)."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    num_replicas: Annotated[int, Field(ge=1, le=256)] = 1
    """Fixed replicas (when ``autoscaling_config`` is not set)."""
    autoscaling_config: ServeAutoscalingConfig | None = None
    max_ongoing_requests: Annotated[int, Field(ge=1)] = 64
    """Requests a replica takes at once (Serve's default, 5, collapsed under 32 clients)."""
    num_cpus: Annotated[float, Field(ge=0)] = 0.5
    """Per replica."""
    max_batch: Annotated[int, Field(ge=1, le=100_000)] = 1000
    """Records per predict or feedback request (more: 422)."""
    max_body_bytes: Annotated[int, Field(ge=1024)] = 4 << 20
    """A larger request body is refused with 413."""
    poll_interval_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    """How often each replica reads the registry for a new deployment or checkpoint."""
    access_flush_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    """Scoring requests are logged in the access log once per this, per principal."""
    command_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    """How long an admin route waits for the pipeline to apply its command (then 202)."""
    keys_file: LaxPath | None = None
    request_log: bool = False
    """Serve's own log line per request (the replicas' logs). Off by default: it costs
    more than the model at these rates, and the access log already tallies every
    principal's requests."""
    throughput_optimized: bool = True
    """Start Serve with ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` (``riffle serve`` on a
    Ray it starts; a cluster sets it in its own environment)."""
    ingress: Literal["auto", "proxy", "haproxy"] = "auto"
    """How requests reach the replicas: ``haproxy`` (Serve's HAProxy ingress, shipped
    with ``ray[serve]`` on Linux: requests go straight to the replicas' own ports;
    ~13x the proxy's rate here), ``proxy`` (Serve's Python proxy actor), or ``auto``:
    HAProxy for fixed replicas where Serve's HAProxy is installed, the proxy with
    ``autoscaling_config`` (under HAProxy Serve's autoscaler did not see the replicas'
    load, Ray 2.60) or without the binary. Set when ``riffle serve`` starts Ray
    (``RAY_SERVE_ENABLE_HA_PROXY=1``); a cluster sets it in its own environment."""
    haproxy_threads: Annotated[int, Field(ge=1, le=64)] | None = None
    """HAProxy's threads (None: half the machine's cores, 1 to 4; Serve's own default
    of 4 took the CPU from the replicas on 2 cores)."""

    @model_validator(mode="after")
    def _haproxy_fixed(self) -> ServingConfig:
        if self.ingress == "haproxy" and self.autoscaling_config is not None:
            raise ValueError("serving.ingress haproxy takes a fixed num_replicas, not "
                             "autoscaling_config (Serve's autoscaler does not see the "
                             "replicas' load behind it)")
        return self


class TelemetryConfig(_Frozen):
    """OpenTelemetry metrics and traces of every actor (``pipelines.monitoring``).

    ``exporters``: ``prometheus`` (one scrape endpoint for the whole pipeline, served by
    the driver), ``otlp`` (HTTP/protobuf to a collector, from every actor), ``console``
    (the actors' logs); empty: none (no trace context either).
    """

    enabled: bool = True
    exporters: list[Literal["prometheus", "otlp", "console"]] = ["prometheus"]
    prometheus_host: str = "0.0.0.0"
    prometheus_port: Annotated[int, Field(ge=0, le=65535)] = 9464
    """0: a free port, reported in ``status.json`` and the summary's ``telemetry``."""
    otlp_endpoint: str = "http://127.0.0.1:4318"
    """The collector's base URL; ``/v1/metrics`` and ``/v1/traces`` are appended."""
    export_interval_s: Annotated[float, Field(gt=0)] = 10.0
    """How often OTLP and console export metrics (and at most how long spans wait)."""
    sample_ratio: Annotated[float, Field(ge=0, le=1)] = 0.01
    """Share of batches traced (a trace from a producer's sampled header always is)."""
    linger_s: Annotated[float, Field(ge=0)] = 0.0
    """Keep serving the final figures this long after the run (for a last scrape)."""

    @property
    def active(self) -> bool:
        return self.enabled and bool(self.exporters)


class PipelineConfig(_Frozen):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    source: SourceConfig
    ingest: IngestConfig = IngestConfig()
    scoring: ScoringConfig = ScoringConfig()
    output: OutputConfig = OutputConfig()
    kafka: KafkaConfig = KafkaConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    supervision: SupervisionConfig = SupervisionConfig()
    registry: RegistryConfig = RegistryConfig()
    audit: AuditConfig = AuditConfig()
    launch: LaunchConfig = LaunchConfig()
    control: ControlConfig = ControlConfig()
    training: TrainingConfig = TrainingConfig()
    serving: ServingConfig = ServingConfig()
    telemetry: TelemetryConfig = TelemetryConfig()

    retraining: RetrainingConfig = RetrainingConfig()
    """The retraining policy (``pipelines.monitoring.retraining``)."""

    @model_validator(mode="after")
    def _topology_fits(self) -> PipelineConfig:
        if self.ingest.n_actors > self.source.partitions:
            raise ValueError(
                f"ingest.n_actors ({self.ingest.n_actors}) must be <= source.partitions "
                f"({self.source.partitions}): an ingest actor owns whole partitions"
            )
        return self

    @property
    def control_kind(self) -> Literal["file", "kafka"]:
        if self.control.kind != "auto":
            return self.control.kind
        return "kafka" if self.source.kind == "kafka" else "file"

    @property
    def out_dir(self) -> Path:
        return self.output.out_dir or Path("out") / self.name

    def checkpoint_store_url(self, out_dir: Path | None = None) -> str:
        """``checkpoint.store``, else the ``checkpoints`` folder in the output folder
        (``out_dir`` when the run writes elsewhere than the config says), absolute."""
        return self.checkpoint.store or str(((out_dir or self.out_dir) / "checkpoints")
                                            .resolve())

    def registry_url(self, out_dir: Path | None = None) -> str:
        """``registry.url``, else the SQLite file in the output folder (``out_dir``, as
        for :meth:`checkpoint_store_url`).

        >>> cfg = PipelineConfig.model_validate({"name": "a", "source": {"kind": "synthetic"},
        ...                                      "output": {"out_dir": "/tmp/a"}})
        >>> cfg.registry_url(), cfg.checkpoint_store_url(Path("/tmp/b"))
        ('sqlite:////tmp/a/registry.db', '/tmp/b/checkpoints')
        """
        db = ((out_dir or self.out_dir) / "registry.db").resolve()
        return self.registry.url or f"sqlite:///{db}"

    def config_hash(self) -> str:
        """A short content hash of the effective config (stable across key order)."""
        blob = orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(blob).hexdigest()[:12]


def load_config(path: str | Path, *, check_model: bool = True, **overrides: Any
                ) -> PipelineConfig:
    """Read and validate a pipeline YAML; ``overrides`` are dotted paths, e.g. ``source.seed``.

    ``check_model=False`` skips building the model (importing River takes a second): for
    commands that only read what a run left (status, models, audit)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    for dotted, value in overrides.items():
        _set_dotted(raw, dotted, value)
    if os.environ.get("RIFFLE_KAFKA_BOOTSTRAP"):
        _set_dotted(raw, "kafka.bootstrap_servers", os.environ["RIFFLE_KAFKA_BOOTSTRAP"])
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{path}: {format_validation_error(e)}") from None
    if check_model:  # an unknown estimator fails here, before any actor starts
        from pipelines.models import build_model

        build_model(config.scoring.model)
    return config


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
