"""KafkaControl on the real broker: positions are offsets of one partition; a reader that
seeks to a recorded position reads the rest, nothing lost and nothing twice."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from pipelines.config import KafkaConfig, KafkaTopics
from pipelines.control_kafka import KafkaControl
from pipelines.errors import SourceError
from pipelines.kafka import admin_client
from tests.kafka_helpers import wait_for
from tests.ports import port_free

pytestmark = pytest.mark.kafka

HOST = "127.0.0.1"


@pytest.fixture
def kafka_config(kafka_bootstrap: str) -> KafkaConfig:
    """Riffle's Kafka settings with a control topic of this test's own."""
    return KafkaConfig(bootstrap_servers=kafka_bootstrap, request_timeout_ms=10_000,
                       topics=KafkaTopics(models=f"t-{uuid.uuid4().hex[:10]}-models"))


@pytest.fixture
def make_channel(kafka_config: KafkaConfig) -> Iterator[Callable[..., KafkaControl]]:
    """Factory: a channel on the test's topic (each a client of its own, as a separate
    process would have); all closed at the end."""
    opened: list[KafkaControl] = []

    def make(client_id: str = "test-control") -> KafkaControl:
        opened.append(KafkaControl(kafka_config, client_id=client_id))
        return opened[-1]

    yield make
    for channel in opened:
        channel.close()


def _read_until(channel: KafkaControl, n: int, timeout_s: float = 20.0
                ) -> list[tuple[int, bytes]]:
    """Everything ``channel`` reads until it has ``n`` messages (more would be returned)."""
    got: list[tuple[int, bytes]] = []

    def enough() -> bool:
        got.extend(channel.read())
        return len(got) >= n

    wait_for(enough, timeout_s, f"{n} control messages on {channel.name}")
    return got


def test_kafka_control_send_then_read_returns_it_with_its_offset(
        make_channel: Callable[..., KafkaControl], kafka_config: KafkaConfig) -> None:
    reader, sender = make_channel("supervisor"), make_channel("cli")
    reader.seek(None)  # the topic does not exist yet: created, empty
    assert reader.position == 0
    sender.send(b'{"op": "rollback", "pipeline": "p", "actor": "ann"}')
    assert _read_until(reader, 1) == [(0, b'{"op": "rollback", "pipeline": "p", "actor": "ann"}')]
    assert reader.position == 1
    sender.send(b"\x00\xff not even JSON")
    sender.send(b"")
    assert _read_until(reader, 2) == [(1, b"\x00\xff not even JSON"), (2, b"")]
    assert reader.position == 3
    # Created with the one partition that makes the commands a single ordered log.
    admin = admin_client(kafka_config)
    try:
        [topic] = admin.describe_topics([kafka_config.topics.models])
        assert len(topic["partitions"]) == 1
    finally:
        admin.close()


def test_kafka_control_seek_to_the_end_skips_older_messages(
        make_channel: Callable[..., KafkaControl]) -> None:
    sender = make_channel("cli")
    for i in range(3):
        sender.send(f'{{"old": {i}}}'.encode())
    reader = make_channel("supervisor")
    reader.seek(None)
    assert reader.position == 3
    sender.send(b'{"new": 0}')
    # The first message read is the new one: the three before the seek are never read.
    assert _read_until(reader, 1) == [(3, b'{"new": 0}')]


def test_kafka_control_resumes_exactly_at_a_recorded_position(
        make_channel: Callable[..., KafkaControl]) -> None:
    sender, first = make_channel("cli"), make_channel("supervisor-1")
    first.seek(None)
    sent = [f'{{"n": {i}}}'.encode() for i in range(12)]
    for message in sent[:5]:
        sender.send(message)
    assert _read_until(first, 5) == list(enumerate(sent[:5]))
    recorded = first.position  # what a checkpoint keeps
    assert recorded == 5
    first.close()
    for message in sent[5:]:
        sender.send(message)
    # A restarted Supervisor seeks to the checkpoint's position: the rest, once each.
    resumed = make_channel("supervisor-2")
    resumed.seek(recorded)
    assert _read_until(resumed, 7) == list(enumerate(sent))[5:]
    assert resumed.position == 12
    # Any position in between works the same (a seek after the consumer is connected).
    resumed.seek(2)
    assert _read_until(resumed, 10) == list(enumerate(sent))[2:]


def test_kafka_control_unreachable_broker_is_a_one_line_error() -> None:
    port = next(p for p in range(29092, 29192) if port_free(HOST, p))  # nothing listens
    kafka = KafkaConfig(bootstrap_servers=f"{HOST}:{port}", request_timeout_ms=1000,
                        topics=KafkaTopics(models="t-unreachable-models"))
    start = time.monotonic()
    channel = KafkaControl(kafka, client_id="test-control")  # connects to nothing yet
    channel.seek(41)
    assert time.monotonic() - start < 0.5 and channel.position == 41
    try:
        for attempt in (lambda: channel.send(b'{"op": "rollback"}'), channel.read,
                        lambda: channel.seek(None)):
            start = time.monotonic()
            with pytest.raises(SourceError) as e:
                attempt()
            message = str(e.value)
            assert message.startswith(f"control channel kafka:t-unreachable-models[0] at "
                                      f"{HOST}:{port}: cannot connect: "), message
            assert "\n" not in message
            assert time.monotonic() - start < 10, "connecting is bounded by request_timeout_ms"
    finally:
        channel.close()
