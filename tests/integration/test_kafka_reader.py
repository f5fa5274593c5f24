"""KafkaReader on the real broker: what the timestamp aligner holds survives a rebalance
that gives the partition back to the same member (kafka-python keeps its fetch position,
which is past the held messages)."""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.coordinator.assignors.range import RangePartitionAssignor

from pipelines.config import KafkaSourceConfig
from pipelines.kafka import ensure_topics
from pipelines.protocol import SourceMessage
from pipelines.sources.kafka import KafkaReader
from tests.helpers import assert_same_items
from tests.kafka_helpers import wait_for

pytestmark = pytest.mark.kafka


def _load_interleaved(config: Any, n: int) -> None:
    """``n`` events and their labels, each label 1 ms after its event (all on partition 0)."""
    topics = config.kafka.topics
    producer = KafkaProducer(bootstrap_servers=config.kafka.bootstrap_servers, linger_ms=20)
    t0 = 1_700_000_000_000
    for i in range(n):
        producer.send(topics.events, key=b"k", timestamp_ms=t0 + 2 * i, value=orjson.dumps(
            {"record_id": f"r{i}", "key": "k", "features": {"x": float(i)}}))
        producer.send(topics.feedback, key=b"k", timestamp_ms=t0 + 2 * i + 1, value=orjson.dumps(
            {"record_id": f"r{i}", "key": "k", "label": i % 2 == 0}))
    producer.flush()
    producer.close()


def _join_and_idle(config: Any, stop: threading.Event) -> None:
    """A second member of the group until ``stop``; its id sorts after the reader's, so
    the range assignor leaves partition 0 of both topics with the reader."""
    kafka = config.kafka
    consumer = KafkaConsumer(kafka.topics.events, kafka.topics.feedback,
                             bootstrap_servers=kafka.bootstrap_servers, group_id=kafka.group_id,
                             client_id="z-joiner", enable_auto_commit=False,
                             session_timeout_ms=kafka.session_timeout_ms,
                             heartbeat_interval_ms=kafka.heartbeat_interval_ms,
                             partition_assignment_strategy=(RangePartitionAssignor,))
    try:
        while not stop.is_set():
            consumer.poll(timeout_ms=100)
    finally:
        consumer.close(autocommit=False)


def test_kafka_reader_partition_assigned_back_rereads_what_it_held(
        make_kafka_config: Any) -> None:
    n = 300
    # The aligner waits on an unknown lag for long: what it holds is held by design.
    config = make_kafka_config(source={"partitions": 1, "align_max_wait_s": 600.0})
    assert isinstance(config.source, KafkaSourceConfig)
    ensure_topics(config.kafka, 1)
    _load_interleaved(config, n)
    held_at_revoke: list[int] = []
    reader = KafkaReader(config.source, config.kafka, max_message_bytes=1 << 20,
                         client_id="a-reader",
                         on_revoke=lambda names: held_at_revoke.append(reader.n_held))
    out: list[SourceMessage] = []

    def read(max_n: int) -> None:
        out.extend(reader.read(max_n))

    stop = threading.Event()
    joiner = threading.Thread(target=_join_and_idle, args=(config, stop), daemon=True)
    try:
        # One poll hands over one topic's records only: they wait for the other topic's.
        wait_for(lambda: read(100) or reader.n_held >= 50, 60, "the reader to hold messages")
        held_at_revoke.clear()  # a rebalance as the group formed, before anything was held
        joiner.start()
        # Read slowly (wait_for polls every 0.2 s) until the rebalance takes the partitions
        # away, so that they go while the reader still holds most of its messages.
        wait_for(lambda: read(1) or held_at_revoke, 60, "the reader to give its partitions up")
        assert held_at_revoke[0] > 0, "nothing was held at the revoke: the test proves nothing"
        # The joiner leaves: another rebalance, the partitions back again. Its close waits
        # for that rebalance, which needs the reader's polls.
        stop.set()
        deadline = time.monotonic() + 60
        while (len(out) < 2 * n or joiner.is_alive()) and time.monotonic() < deadline:
            read(500)
    finally:
        stop.set()
        reader.close()

    # Every message once, in timestamp order: each event, then its label.
    expected = [(kind, i) for i in range(n) for kind in ("event", "feedback")]
    assert_same_items([(m.kind, m.offset) for m in out], expected,
                      f"(kind, offset) handed out (held at the revokes: {held_at_revoke})")
    assert reader.counts["rebalances"] >= 2
