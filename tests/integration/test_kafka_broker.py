"""The real Kafka broker (scripts/kafka.sh) works end to end with kafka-python.

These tests guard the assumptions the pipelines make about their broker:
multi-partition topics, keyed records with headers, consumer groups that
commit, records of a few MiB, and kafka-python checksumming with the C crc32c.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator

import crc32c
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.record import util as record_util
from kafka.record._crc32c import crc as crc32c_pure_python

pytestmark = pytest.mark.kafka

MiB = 1024 * 1024

# Group membership settings for fast joins: the defaults (45 s session) make
# a test that loses a member wait far longer than the test itself runs.
FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 2000}


@pytest.fixture
def bootstrap(kafka_bootstrap: str) -> str:
    return kafka_bootstrap


@pytest.fixture
def admin(bootstrap: str) -> Iterator[KafkaAdminClient]:
    client = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="riffle-test-admin")
    try:
        yield client
    finally:
        client.close()


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _create_topic(admin: KafkaAdminClient, partitions: int) -> str:
    topic = _unique("riffle-test")
    admin.create_topics(
        {topic: {"num_partitions": partitions, "replication_factor": 1}},
        wait_for_metadata=True,
    )
    return topic


def _poll_until(consumer: KafkaConsumer, want: int, timeout_s: float) -> list:
    """Poll until `want` records arrived or the deadline passed."""
    records: list = []
    deadline = time.monotonic() + timeout_s
    while len(records) < want and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    return records


def test_kafka_python_crc32c_extension_installed_uses_c_implementation() -> None:
    # kafka.record.util binds calc_crc32c's default argument at import time to
    # crc32c.crc32c if the `crc32c` package imports, else to its pure-Python
    # table loop (~100x slower, which caps a consumer at tens of k msg/s).
    bound = record_util.calc_crc32c.__defaults__[0]
    assert record_util.crc32c_c is crc32c.crc32c
    assert bound is crc32c.crc32c
    assert bound is not crc32c_pure_python
    # A compiled builtin, not a Python function: proves it is the C extension.
    assert type(bound).__name__ == "builtin_function_or_method"
    assert bound.__module__ == "crc32c._crc32c"
    # Standard CRC-32C check value, and agreement with the pure-Python one.
    assert record_util.calc_crc32c(memoryview(b"123456789")) == 0xE3069283
    payload = os.urandom(4096)
    assert bound(payload) == crc32c_pure_python(payload)


def test_admin_create_topic_four_partitions_all_have_leaders(admin: KafkaAdminClient) -> None:
    topic = _create_topic(admin, partitions=4)

    assert topic in admin.list_topics()
    (described,) = admin.describe_topics([topic])
    partitions = sorted(described["partitions"], key=lambda p: p["partition_index"])
    assert [p["partition_index"] for p in partitions] == [0, 1, 2, 3]
    assert all(p["leader_id"] >= 0 for p in partitions)


def test_consumer_group_1000_keyed_records_with_headers_all_consumed_and_committed(
    bootstrap: str, admin: KafkaAdminClient
) -> None:
    topic = _create_topic(admin, partitions=4)
    group = _unique("riffle-test-group")
    n = 1000

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    try:
        futures = [
            producer.send(
                topic,
                key=f"user-{i % 37}".encode(),
                value=f"event-{i}".encode(),
                headers=[("seq", str(i).encode()), ("source", b"riffle-test")],
            )
            for i in range(n)
        ]
        producer.flush(timeout=30)
        metadata = [f.get(timeout=30) for f in futures]
    finally:
        producer.close()
    # 37 keys over 4 partitions: the default partitioner must spread them.
    assert len({m.partition for m in metadata}) == 4

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **FAST_GROUP,
    )
    try:
        records = _poll_until(consumer, want=n, timeout_s=60)
        consumer.commit()
        end_offsets = consumer.end_offsets([TopicPartition(topic, p) for p in range(4)])
    finally:
        consumer.close(autocommit=False)

    assert len(records) == n
    by_seq = {int(dict(r.headers)["seq"]): r for r in records}
    assert sorted(by_seq) == list(range(n))
    for seq, record in by_seq.items():
        assert record.key == f"user-{seq % 37}".encode()
        assert record.value == f"event-{seq}".encode()
        assert dict(record.headers)["source"] == b"riffle-test"

    # Same key, same partition; and within it, records keep production order.
    partitions_of_key: dict[bytes, set[int]] = defaultdict(set)
    seqs_of_key: dict[bytes, list[int]] = defaultdict(list)
    for r in records:
        partitions_of_key[r.key].add(r.partition)
        seqs_of_key[r.key].append(int(dict(r.headers)["seq"]))
    assert all(len(p) == 1 for p in partitions_of_key.values())
    assert all(s == sorted(s) for s in seqs_of_key.values())

    # The commit reached the group coordinator: committed == end of each partition.
    committed = admin.list_group_offsets({group: None})[group]
    assert {tp: om.offset for tp, om in committed.items()} == end_offsets
    assert sum(end_offsets.values()) == n


@pytest.mark.parametrize("size", [1 * MiB, 2 * MiB], ids=["1MiB", "2MiB"])
def test_producer_large_record_size_consumed_intact(
    bootstrap: str, admin: KafkaAdminClient, size: int
) -> None:
    topic = _create_topic(admin, partitions=1)
    payload = os.urandom(size)

    # The client-side cap (default 1 MiB per request) must be raised as well
    # as the broker's message.max.bytes; 4 MiB leaves room for the batch header.
    producer = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=4 * MiB)
    try:
        meta = producer.send(topic, key=b"big", value=payload).get(timeout=30)
    finally:
        producer.close()
    assert meta.serialized_value_size == size

    # Consumed with the default max_partition_fetch_bytes (1 MiB): the broker
    # still returns a first batch larger than that, so consumers need no tuning.
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        records = _poll_until(consumer, want=1, timeout_s=30)
    finally:
        consumer.close()

    assert len(records) == 1
    assert records[0].key == b"big"
    assert records[0].value == payload
