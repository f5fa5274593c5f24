"""KafkaReader's rebalance and commit bookkeeping, on a stand-in for kafka-python's consumer
that behaves as kafka-python 3.0 does in an eager rebalance: a partition assigned back
to the same member keeps its fetch position and paused flag; a lost one keeps nothing.
(tests/integration/test_kafka_reader.py checks the same against the real client.)"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import kafka
import pytest
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from pipelines.config import KafkaConfig, KafkaSourceConfig
from pipelines.sources.kafka import KafkaReader
from tests.kafka_helpers import wait_for

EVENTS, FEEDBACK = "ev", "fb"
EV0, FB0 = TopicPartition(EVENTS, 0), TopicPartition(FEEDBACK, 0)


class Record(NamedTuple):
    offset: int
    key: bytes
    value: bytes
    timestamp: int
    headers: tuple[tuple[str, bytes], ...] = ()


class FakeConsumer:
    """Logs per partition; ``poll`` returns records of one partition at a time, from its
    position, and makes that partition's end (high watermark) known, as kafka-python
    does when it hands out a fetch."""

    def __init__(self, **config: Any) -> None:
        self.logs: dict[TopicPartition, list[Record]] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.positions: dict[TopicPartition, int] = {}
        self.highwaters: dict[TopicPartition, int] = {}
        self.assigned: set[TopicPartition] = set()
        self.paused_tps: set[TopicPartition] = set()
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.async_callbacks: list[Callable[[Any, Any], None]] = []
        self.unreadable: set[TopicPartition] = set()  # a fetch that never answers
        self.turns: dict[TopicPartition, int] = {}
        self.end_lookups = 0
        self.listener: Any = None

    # -- the part of KafkaConsumer the reader uses --------------------------------------
    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    def topics(self) -> set[str]:
        return {tp.topic for tp in self.logs}

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highwaters.get(tp)

    def position(self, tp: TopicPartition, timeout_ms: int | None = None) -> int | None:
        return self.positions.get(tp)

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_tps)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused_tps.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused_tps.difference_update(tps)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        assert tp in self.assigned, "seek on a partition not assigned"
        self.seeks.append((tp, offset))
        self.positions[tp] = offset

    def end_offsets(self, tps: list[TopicPartition], timeout_ms: int) -> dict[TopicPartition, int]:
        self.end_lookups += len(tps)
        return {tp: len(self.logs.get(tp, [])) for tp in tps}

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        for tp in self.assigned:  # positions first: the committed offsets
            self.positions.setdefault(tp, self.committed.get(tp, 0))
        # Round robin, as kafka-python's fetcher moves a partition read from to the end.
        for tp in sorted(self.assigned, key=lambda tp: (self.turns.get(tp, 0), tp)):
            position = self.positions[tp]
            records = self.logs.get(tp, [])[position:position + max_records]
            if records and tp not in self.paused_tps and tp not in self.unreadable:
                self.highwaters[tp] = len(self.logs[tp])
                self.positions[tp] = records[-1].offset + 1
                self.turns[tp] = max(self.turns.values(), default=0) + 1
                return {tp: records}
        return {}

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.committed.update({tp: om.offset for tp, om in offsets.items()})

    def commit_async(self, offsets: dict[TopicPartition, Any],
                     callback: Callable[[Any, Any], None]) -> None:
        self.async_callbacks.append(lambda result: callback(offsets, result))

    def close(self, autocommit: bool = True) -> None:
        pass

    # -- the test's levers ----------------------------------------------------------------
    def rebalance(self, new: set[TopicPartition], *, lost: bool = False) -> None:
        """An eager rebalance: all revoked (or lost), then ``new`` assigned."""
        old = set(self.assigned)
        if lost:
            self.listener.on_partitions_lost(old)
            kept: set[TopicPartition] = set()  # kafka-python drops the whole assignment
        else:
            self.listener.on_partitions_revoked(old)
            kept = old & new
        for tp in old - kept:
            self.positions.pop(tp, None)
            self.highwaters.pop(tp, None)
            self.paused_tps.discard(tp)
        self.assigned = set(new)
        self.listener.on_partitions_assigned(set(new))


@pytest.fixture
def fake_consumer(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FakeConsumer]]:
    made: list[FakeConsumer] = []

    def make(**config: Any) -> FakeConsumer:
        made.append(FakeConsumer(**config))
        return made[-1]

    monkeypatch.setattr(kafka, "KafkaConsumer", make)
    yield made


def _reader(made: list[FakeConsumer], **source: Any) -> tuple[KafkaReader, FakeConsumer]:
    cfg = KafkaSourceConfig.model_validate({"kind": "kafka", "align_max_wait_s": 60.0, **source})
    kcfg = KafkaConfig.model_validate({"topics": {"events": EVENTS, "feedback": FEEDBACK}})
    reader = KafkaReader(cfg, kcfg, max_message_bytes=1 << 20, client_id="ingest-0")
    return reader, made[-1]


def _load(consumer: FakeConsumer, n: int) -> None:
    """``n`` events and their labels, each label 1 ms after its event."""
    consumer.logs[EV0] = [Record(i, b"k", b'{"record_id": "r%d", "key": "k"}' % i, 2 * i)
                          for i in range(n)]
    consumer.logs[FB0] = [Record(i, b"k", b'{"record_id": "r%d", "key": "k"}' % i, 2 * i + 1)
                          for i in range(n)]


def _offsets(messages: list[Any]) -> list[tuple[str, int]]:
    return [(m.kind, m.offset) for m in messages]


def _interleaved(n: int) -> list[tuple[str, int]]:
    return [(kind, i) for i in range(n) for kind in ("event", "feedback")]


def test_kafka_reader_partition_assigned_back_read_again_from_first_held(
        fake_consumer: list[FakeConsumer]) -> None:
    reader, consumer = _reader(fake_consumer)
    _load(consumer, 10)
    consumer.rebalance({EV0, FB0})
    out = reader.read(6)  # six events: held, the labels are on the broker
    out += reader.read(2)  # two labels: e0 f0 e1 f1 go, e2..e5 wait
    assert _offsets(out) == _interleaved(2) and reader.n_held == 4

    consumer.rebalance({EV0, FB0})

    assert consumer.seeks == [(EV0, 2)]
    assert reader.n_held == 0
    for _ in range(10):
        out += reader.read(5)
    assert _offsets(out) == _interleaved(10)


def test_kafka_reader_lost_partition_not_seeked_resumes_at_the_committed_offset(
        fake_consumer: list[FakeConsumer]) -> None:
    reader, consumer = _reader(fake_consumer)
    _load(consumer, 10)
    consumer.rebalance({EV0, FB0})
    assert reader.read(6) == [] and reader.n_held == 6
    consumer.committed = {EV0: 8, FB0: 8}  # another member read on meanwhile

    consumer.rebalance({EV0, FB0}, lost=True)

    assert consumer.seeks == []
    out: list[Any] = []
    for _ in range(5):
        out += reader.read(5)
    assert _offsets(out) == [("event", 8), ("feedback", 8), ("event", 9), ("feedback", 9)]


def test_kafka_reader_partition_that_went_elsewhere_not_seeked_when_it_comes_back_later(
        fake_consumer: list[FakeConsumer]) -> None:
    reader, consumer = _reader(fake_consumer)
    _load(consumer, 10)
    consumer.rebalance({EV0, FB0})
    assert reader.read(6) == []

    consumer.rebalance(set())  # to another member, which reads and commits
    consumer.committed = {EV0: 7, FB0: 7}
    consumer.rebalance({EV0, FB0})

    assert consumer.seeks == []
    assert _offsets(reader.read(5) + reader.read(5))[:2] == [("event", 7), ("feedback", 7)]


def test_kafka_reader_paused_runaway_side_resumed_when_revoked(
        fake_consumer: list[FakeConsumer]) -> None:
    reader, consumer = _reader(fake_consumer, align_max_held=3)
    _load(consumer, 10)
    consumer.rebalance({EV0, FB0})
    assert reader.read(6) == []
    assert consumer.paused() == {EV0}  # six held: over align_max_held

    consumer.rebalance({EV0, FB0})  # kafka-python keeps the flag; nothing is held now

    assert consumer.paused() == set()
    out: list[Any] = []
    for _ in range(20):
        out += reader.read(2)
    assert _offsets(out) == _interleaved(10)


def test_kafka_reader_other_side_not_assigned_does_not_hold(
        fake_consumer: list[FakeConsumer]) -> None:
    reader, consumer = _reader(fake_consumer)
    _load(consumer, 3)
    consumer.rebalance({EV0})  # feedback partition 0 is another member's (or missing)

    assert _offsets(reader.read(10)) == [("event", 0), ("event", 1), ("event", 2)]


def test_kafka_reader_async_commit_counted_when_its_outcome_is_known(
        fake_consumer: list[FakeConsumer]) -> None:
    reader, consumer = _reader(fake_consumer)
    _load(consumer, 3)
    consumer.rebalance({EV0, FB0})
    assert reader.read(10) + reader.read(10)
    reader.commit({f"{EVENTS}[0]": 1})
    assert reader.counts["commits"] == 1

    def commit_twice_in_rebalance(names: set[str]) -> None:
        reader.commit({f"{EVENTS}[0]": 2})
        reader.commit({f"{EVENTS}[0]": 3})

    reader._on_revoke = commit_twice_in_rebalance
    consumer.rebalance({EV0, FB0})
    assert reader.counts == {"commits": 1, "commit_failures": 0, "rebalances": 2}

    ok, fails = consumer.async_callbacks
    ok(None)
    fails(KafkaError("the group rebalanced"))
    assert reader.counts["commits"] == 2 and reader.counts["commit_failures"] == 1


def test_kafka_reader_idle_stop_not_blocked_forever_by_a_stuck_other_side(
        fake_consumer: list[FakeConsumer]) -> None:
    import time

    reader, consumer = _reader(fake_consumer, idle_stop_s=0.2, align_max_wait_s=0.3)
    _load(consumer, 3)
    consumer.highwaters[FB0] = 3
    consumer.unreadable.add(FB0)  # labels on the broker, their fetch never answers
    consumer.rebalance({EV0, FB0})
    assert reader.read(10) == [] and reader.n_held == 3
    held_since = time.monotonic()

    wait_for(lambda: reader.read(10) == [] and reader.exhausted, 10, "the idle stop")

    # Held past the idle time plus the aligner's wait, nothing read: the run may end (the
    # held events were never handed out, so never committed: the next run reads them).
    assert time.monotonic() - held_since >= 0.5
    assert reader.n_held == 3 and reader.positions() == {}


def test_kafka_reader_other_side_end_looked_up_once_while_its_fetch_is_not_handed_out(
        fake_consumer: list[FakeConsumer]) -> None:
    # No wait at all on an unknown lag: the events would go at once, were the labels'
    # end not looked up.
    reader, consumer = _reader(fake_consumer, align_max_wait_s=0.0)
    _load(consumer, 10)
    consumer.rebalance({EV0, FB0})

    out = reader.read(10)
    assert out == [] and reader.n_held == 10
    out += reader.read(3) + reader.read(3)
    for _ in range(5):
        out += reader.read(10)

    assert _offsets(out) == _interleaved(10)
    assert consumer.end_lookups == 1  # the feedback partition's, once


def test_kafka_reader_idle_time_counts_only_while_read(fake_consumer: list[FakeConsumer]) -> None:
    import time

    reader, consumer = _reader(fake_consumer, idle_stop_s=0.2)
    consumer.rebalance({EV0, FB0})
    assert reader.read(10) == []
    not_reading_until = time.monotonic() + 0.4
    while time.monotonic() < not_reading_until:  # the caller is busy: no poll
        assert not reader.exhausted

    wait_for(lambda: reader.read(10) == [] and reader.exhausted, 10, "the idle stop")
