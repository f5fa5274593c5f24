"""Helpers for tests against the real broker: load a stream, read a topic back."""

from __future__ import annotations

import time
from typing import Any

from kafka import KafkaConsumer

from pipelines.config import PipelineConfig, SyntheticSourceConfig
from pipelines.kafka import ensure_topics
from pipelines.produce import produce
from pipelines.sources import open_reader


def produce_loans(config: PipelineConfig, n_events: int, *, seed: int = 7,
                  label_delay_events: int = 5) -> dict[str, int]:
    """``n_events`` synthetic loans (and their labels) into the config's topics."""
    ensure_topics(config.kafka, config.source.partitions)
    src = SyntheticSourceConfig(kind="synthetic", partitions=config.source.partitions,
                                n_events=n_events, seed=seed,
                                label_delay_events=label_delay_events)
    return produce(open_reader(src, list(range(src.partitions))), config.kafka)


def read_topic(bootstrap: str, topic: str, *, idle_s: float = 3.0) -> list[Any]:
    """Every message of ``topic`` from the beginning, until none came for ``idle_s``."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=int(idle_s * 1000),
                             max_partition_fetch_bytes=4 * 1024 * 1024)
    try:
        return list(consumer)
    finally:
        consumer.close()


def wait_for(cond: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.2)
