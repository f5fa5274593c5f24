"""Loading a stream into Kafka (``riffle produce``) and reading a topic (``riffle tail``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from pipelines.config import KafkaConfig
from pipelines.kafka import client_options, producer
from pipelines.sources.base import RateLimiter, SourceReader

__all__ = ["produce", "tail"]


def produce(reader: SourceReader, kafka: KafkaConfig, *, rate_per_s: float | None = None,
            on_progress: Callable[[int], None] | None = None,
            stop: Callable[[], bool] = lambda: False) -> dict[str, int]:
    """Send every message of ``reader`` to the events or feedback topic, keyed by ``key``.

    Kafka's default partitioner (murmur2 of the key) puts each key where the embedded
    source would. Inputs that cannot be decoded are sent as their raw bytes, unkeyed:
    the pipeline's dead-letter path is exercised as on a real wire.
    """
    prod = producer(kafka, client_id="riffle-produce")
    limiter = RateLimiter(rate_per_s)
    counts = {"events": 0, "feedback": 0, "undecodable": 0}
    topics = {"event": kafka.topics.events, "feedback": kafka.topics.feedback}
    try:
        while not reader.exhausted and not stop():
            allowed = limiter.allowance(500)
            if not allowed:
                time.sleep(0.002)
                continue
            for m in reader.read(allowed):
                if m.payload is None:
                    prod.send(topics[m.kind], value=m.raw or b"", key=None)
                    counts["undecodable"] += 1
                    continue
                key = m.payload.get("key")
                prod.send(topics[m.kind], value=orjson.dumps(m.payload),
                          key=str(key).encode("utf-8") if key is not None else None,
                          timestamp_ms=int(time.time() * 1000))
                counts["events" if m.kind == "event" else "feedback"] += 1
            if on_progress is not None:
                on_progress(counts["events"])
        prod.flush()
    finally:
        prod.close()
        reader.close()
    return counts


def tail(topic: str, kafka: KafkaConfig, *, from_beginning: bool, max_messages: int | None,
         timeout_s: float | None) -> Iterator[dict[str, Any]]:
    """The messages of ``topic`` as dicts (value parsed when it is JSON), until a limit."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, **client_options(kafka, client_id="riffle-tail"),
                             group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest" if from_beginning else "latest",
                             consumer_timeout_ms=int(timeout_s * 1000) if timeout_s else 1 << 62)
    n = 0
    try:
        for m in consumer:
            try:
                value: Any = orjson.loads(m.value) if m.value is not None else None
            except orjson.JSONDecodeError:
                value = m.value.decode("utf-8", "replace")
            yield {"topic": m.topic, "partition": m.partition, "offset": m.offset,
                   "timestamp": m.timestamp, "key": m.key.decode("utf-8", "replace")
                   if m.key is not None else None,
                   "headers": {k: v.decode("utf-8", "replace") for k, v in m.headers or []},
                   "value": value}
            n += 1
            if max_messages is not None and n >= max_messages:
                return
    finally:
        consumer.close()
