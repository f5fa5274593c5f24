"""Sources: partitioned, positioned streams of events and feedback.

>>> from pipelines.config import SyntheticSourceConfig
>>> reader = open_reader(SyntheticSourceConfig(kind="synthetic", n_events=10), [0, 1, 2, 3])
>>> sum(m.kind == "event" for m in reader.read(100))
10
"""

from __future__ import annotations

from pipelines.config import FileSourceConfig, SyntheticSourceConfig
from pipelines.sources.base import PartitionLog, SourceReader, partition_of
from pipelines.sources.file import FileReader, check_readable
from pipelines.sources.synthetic import SyntheticReader

__all__ = [
    "FileReader",
    "PartitionLog",
    "SourceReader",
    "SyntheticReader",
    "check_source",
    "open_reader",
    "partition_of",
]


def open_reader(
    cfg: SyntheticSourceConfig | FileSourceConfig,
    partitions: list[int],
    positions: dict[int, int] | None = None,
) -> SourceReader:
    """A reader of ``partitions`` of the configured source, from ``positions``."""
    if isinstance(cfg, SyntheticSourceConfig):
        return SyntheticReader(cfg, partitions, positions)
    return FileReader(cfg, partitions, positions)


def check_source(cfg: SyntheticSourceConfig | FileSourceConfig) -> None:
    """Raise a one-line :class:`~pipelines.errors.SourceError` if the source cannot be read."""
    if isinstance(cfg, FileSourceConfig):
        check_readable(cfg.path)
