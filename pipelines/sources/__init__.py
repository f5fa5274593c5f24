"""Sources: partitioned, positioned streams of events and feedback.

>>> from pipelines.config import SyntheticSourceConfig
>>> reader = open_reader(SyntheticSourceConfig(kind="synthetic", n_events=10), [0, 1, 2, 3])
>>> sum(m.kind == "event" for m in reader.read(100))
10
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipelines.config import (
    FileSourceConfig,
    KafkaSourceConfig,
    PipelineConfig,
    SyntheticSourceConfig,
)
from pipelines.sources.base import PartitionLog, SourceReader, partition_of
from pipelines.sources.file import FileReader, check_readable

__all__ = [
    "FileReader",
    "PartitionLog",
    "SourceReader",
    "check_source",
    "open_pipeline_reader",
    "open_reader",
    "partition_of",
]


def open_reader(
    cfg: SyntheticSourceConfig | FileSourceConfig,
    partitions: list[int],
    positions: dict[str, int] | None = None,
) -> SourceReader:
    """A reader of ``partitions`` of an embedded source, from ``positions``."""
    if isinstance(cfg, SyntheticSourceConfig):
        # River's generators pull in river.datasets (scikit-learn, pandas, SQLAlchemy:
        # ~1 s of imports) that no other source needs.
        from pipelines.sources.synthetic import SyntheticReader

        return SyntheticReader(cfg, partitions, positions)
    if isinstance(cfg, FileSourceConfig):
        return FileReader(cfg, partitions, positions)
    raise TypeError(f"open_reader: no embedded reader for a {cfg.kind} source")


def open_pipeline_reader(
    config: PipelineConfig,
    partitions: list[int],
    positions: dict[str, int] | None = None,
    *,
    on_revoke: Callable[[set[str]], None] | None = None,
    client_id: str = "riffle",
    feedback_channel: Path | None = None,
) -> SourceReader:
    """The reader of one ingest actor of ``config``.

    Embedded sources own the partitions given; with ``feedback_channel`` (one ingest
    actor's), the labels appended to that file are read beside them
    (:mod:`pipelines.sources.channel`). A Kafka reader joins the consumer group (its
    partitions are the group's to assign; its positions are the committed offsets) and
    calls ``on_revoke`` before any of them is taken away.
    """
    src = config.source
    if isinstance(src, KafkaSourceConfig):
        from pipelines.sources.kafka import KafkaReader

        return KafkaReader(src, config.kafka, max_message_bytes=config.ingest.max_message_bytes,
                           client_id=client_id, on_revoke=on_revoke)
    reader = open_reader(src, partitions, positions)
    if feedback_channel is None:
        return reader
    from pipelines.sources.channel import CHANNEL, ChannelReader

    return ChannelReader(reader, feedback_channel, start=(positions or {}).get(CHANNEL, 0))


def check_source(config: PipelineConfig) -> None:
    """Raise a one-line error if the pipeline's source (or Kafka) cannot be reached."""
    if isinstance(config.source, FileSourceConfig):
        check_readable(config.source.path)
    if "kafka" in (config.source.kind, config.output.kind):
        from pipelines.kafka import admin_client

        admin_client(config.kafka).close()
