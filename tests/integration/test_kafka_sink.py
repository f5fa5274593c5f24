"""KafkaSink on the real broker: a record the broker refuses fails the write, so that the
ingest never commits the offsets of records that were not written."""

from __future__ import annotations

from typing import Any

import pytest
from kafka.admin import NewTopic

from pipelines.errors import PipelineError
from pipelines.kafka import admin_client
from pipelines.protocol import Ack, SinkBatch
from pipelines.sinks import KafkaSink
from tests.kafka_helpers import read_topic

pytestmark = pytest.mark.kafka

TOPIC_MAX_BYTES = 4096


def _batch(lines: list[bytes]) -> SinkBatch:
    return SinkBatch(lines, [f"k{i}" for i in range(len(lines))], ["v0"] * len(lines),
                     [0.0] * len(lines), [])


def test_kafka_sink_record_refused_by_the_broker_fails_the_write(
        make_kafka_config: Any) -> None:
    config = make_kafka_config()
    topics = config.kafka.topics
    admin = admin_client(config.kafka)
    try:
        # The topic takes less than the producer may send (max_request_size is 4 MiB).
        admin.create_topics([NewTopic(topics.predictions, 1, 1,
                                      topic_configs={"max.message.bytes": str(TOPIC_MAX_BYTES)}),
                             NewTopic(topics.dead_letters, 1, 1)])
    finally:
        admin.close()
    big = b'{"record_id": "big", "pad": "%s"}' % (b"x" * 3 * TOPIC_MAX_BYTES)
    sink = KafkaSink(config.kafka)
    try:
        assert sink.write(_batch([b'{"record_id": "small"}'])) == Ack(1, 0)
        with pytest.raises(PipelineError, match=rf"1 of 1 records to {topics.predictions} not "
                                                r"written; the first: MessageSizeTooLargeError"):
            sink.write(_batch([big]))
        assert sink.counts["predictions_written"] == 1
    finally:
        sink.close()
    # With another record in its batch, kafka-python splits the batch and retries.
    sink = KafkaSink(config.kafka)
    try:
        with pytest.raises(PipelineError, match=rf"records to {topics.predictions} not written;"
                                                r" the first: MessageSizeTooLargeError"):
            sink.write(_batch([big, b'{"record_id": "small-2"}']))
    finally:
        sink.close()

    assert [m.value for m in read_topic(config.kafka.bootstrap_servers, topics.predictions,
                                        idle_s=2.0)][:1] == [b'{"record_id": "small"}']
