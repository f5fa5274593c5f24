"""KafkaSink acknowledges a batch only once the broker has taken every record of it; on
a stand-in producer whose sends fail or never complete (no Kafka needed)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, NotLeaderForPartitionError
from kafka.future import Future

import pipelines.kafka
from pipelines.config import KafkaConfig
from pipelines.errors import PipelineError
from pipelines.protocol import Ack, DeadLetter, SinkBatch
from pipelines.sinks import KafkaSink


class FakeProducer:
    """Sends complete at flush, each as ``outcome(topic)`` says: None for success, or
    the error; ``hang`` leaves them pending and makes flush time out."""

    def __init__(self, outcome: Callable[[str], Exception | None], *, hang: bool = False
                 ) -> None:
        self.outcome = outcome
        self.hang = hang
        self.pending: list[tuple[str, Future]] = []
        self.flush_timeouts: list[float | None] = []

    def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    def send(self, topic: str, **kwargs: Any) -> Future:
        future = Future()
        self.pending.append((topic, future))
        return future

    def flush(self, timeout: float | None = None) -> None:
        self.flush_timeouts.append(timeout)
        if self.hang:
            raise KafkaTimeoutError(f"Timeout after waiting for {timeout} secs.")
        for topic, future in self.pending:
            error = self.outcome(topic)
            if error is None:
                future.success(None)
            else:
                future.failure(error)
        self.pending.clear()

    def close(self, timeout: float | None = None) -> None:
        pass


def _sink(monkeypatch: pytest.MonkeyPatch, fake: FakeProducer) -> KafkaSink:
    monkeypatch.setattr(pipelines.kafka, "producer", lambda cfg, client_id: fake)
    cfg = KafkaConfig.model_validate({"topics": {"predictions": "preds", "dead_letters": "dlq"},
                                      "delivery_timeout_ms": 30_000})
    return KafkaSink(cfg)


def _batch(n: int, n_dead: int = 0) -> SinkBatch:
    dead = [DeadLetter(None, "event", b"{oops", "invalid JSON", "DecodeError", "ev", 0, i)
            for i in range(n_dead)]
    return SinkBatch([b'{"record_id": "r%d"}' % i for i in range(n)], [f"k{i}" for i in range(n)],
                     ["v0"] * n, [0.0] * n, dead)


def test_kafka_sink_all_sends_succeed_acked(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeProducer(lambda topic: None)
    sink = _sink(monkeypatch, fake)

    assert sink.write(_batch(5, n_dead=2)) == Ack(5, 2)
    assert fake.flush_timeouts == [35.0]  # delivery_timeout_ms and a margin: never unbounded
    assert sink.counts == {"predictions_written": 5, "dead_letters_written": 2,
                           "shadow_written": 0}


def test_kafka_sink_one_failed_send_raises_instead_of_acking(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fails = iter([None, None, MessageSizeTooLargeError("too large for the topic")])
    sink = _sink(monkeypatch, FakeProducer(lambda topic: next(fails, None)))

    with pytest.raises(PipelineError, match=r"1 of 5 records to preds not written; the first: "
                                            r"MessageSizeTooLargeError"):
        sink.write(_batch(5))
    assert sink.counts["predictions_written"] == 0


def test_kafka_sink_failed_dead_letter_names_its_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    sink = _sink(monkeypatch, FakeProducer(
        lambda topic: NotLeaderForPartitionError() if topic == "dlq" else None))

    with pytest.raises(PipelineError, match=r"2 of 2 records to dlq not written"):
        sink.write(_batch(3, n_dead=2))


def test_kafka_sink_flush_timed_out_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    sink = _sink(monkeypatch, FakeProducer(lambda topic: None, hang=True))

    with pytest.raises(PipelineError, match=r"4 records to preds and dlq not acknowledged by "
                                            r"the broker within 35s"):
        sink.write(_batch(4))
