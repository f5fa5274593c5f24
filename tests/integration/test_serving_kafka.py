"""Labels posted to the scoring service land on the stream's Kafka feedback topic, in the
partition of their key's events (where the stream joins them with their events)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipelines.kafka import ensure_topics
from pipelines.serving.feedback import open_feedback
from pipelines.sources.base import partition_of
from tests.kafka_helpers import read_topic

pytestmark = pytest.mark.kafka


def test_serving_feedback_to_kafka_lands_in_each_keys_partition(
        make_kafka_config: Any) -> None:
    config = make_kafka_config()
    ensure_topics(config.kafka, config.source.partitions)
    writer = open_feedback(config)
    labels = [{"record_id": f"r{i}", "key": f"user-{i}", "label": i % 2 == 0}
              for i in range(40)]
    try:
        writer.write(labels)  # returns once the broker has them all
    finally:
        writer.close()
    assert writer.name == f"kafka:{config.kafka.topics.feedback}"
    got = read_topic(config.kafka.bootstrap_servers, config.kafka.topics.feedback)
    assert sorted((orjson.loads(m.value)["record_id"] for m in got),
                  key=lambda r: int(r[1:])) == [x["record_id"] for x in labels]
    for m in got:
        value = orjson.loads(m.value)
        assert m.key == value["key"].encode()
        assert m.partition == partition_of(value["key"], config.source.partitions)
