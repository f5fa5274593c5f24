"""Labels posted to the service go to the stream's feedback stream; the service never
learns from them (the stream's scorers hold the models' state).

- Kafka (the source is Kafka): the ``kafka.topics.feedback`` topic, keyed by ``key``
  (Kafka's default partitioner puts a label in its event's partition, where the stream
  joins them), one JSON message per label — the messages ``riffle produce`` sends. A
  request returns once the broker has every label (acks=all).
- Otherwise the embedded channel ``<out_dir>/feedback.jsonl``: one JSON label per line,
  appended whole under an exclusive lock (as the control channel's commands), which the
  stream's first ingest actor reads on (:mod:`pipelines.sources.channel`).

>>> import tempfile, pathlib, orjson
>>> w = FileFeedback(pathlib.Path(tempfile.mkdtemp()) / "feedback.jsonl")
>>> w.write([{"record_id": "r1", "key": "k1", "label": True}])
>>> [orjson.loads(line) for line in w.path.read_bytes().splitlines()]
[{'record_id': 'r1', 'key': 'k1', 'label': True}]
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import orjson

from pipelines.config import PipelineConfig
from pipelines.errors import SourceError
from pipelines.sources.channel import FILE as CHANNEL_FILE

__all__ = ["FeedbackWriter", "FileFeedback", "KafkaFeedback", "open_feedback"]


class FeedbackWriter(Protocol):
    name: str

    def write(self, labels: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


class FileFeedback:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = f"file:{path}"

    def write(self, labels: list[dict[str, Any]]) -> None:
        data = b"".join(orjson.dumps(label) + b"\n" for label in labels)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def close(self) -> None:
        pass


class KafkaFeedback:
    """A producer made on first use (a replica that never gets a label never connects)."""

    def __init__(self, config: PipelineConfig, *, client_id: str) -> None:
        self._kafka = config.kafka
        self._client_id = client_id
        self._producer: Any = None
        self._lock = threading.Lock()
        self.name = f"kafka:{config.kafka.topics.feedback}"

    def write(self, labels: list[dict[str, Any]]) -> None:
        from kafka.errors import KafkaError

        from pipelines.kafka import producer

        with self._lock:
            if self._producer is None:
                self._producer = producer(self._kafka, client_id=self._client_id)
        topic, now = self._kafka.topics.feedback, int(time.time() * 1000)
        try:
            futures = [self._producer.send(topic, value=orjson.dumps(label),
                                           key=str(label["key"]).encode(), timestamp_ms=now)
                       for label in labels]
            timeout = self._kafka.delivery_timeout_ms / 1000
            for future in futures:
                future.get(timeout=timeout)
        except KafkaError as e:
            raise SourceError(f"kafka {topic}: labels not written: {type(e).__name__}: {e}"
                              ) from None

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()


def open_feedback(config: PipelineConfig, *, out_dir: Path | None = None,
                  client_id: str = "riffle-serve") -> FeedbackWriter:
    """Where ``config``'s stream reads labels from."""
    if config.source.kind == "kafka":
        return KafkaFeedback(config, client_id=client_id)
    return FileFeedback((out_dir or config.out_dir) / CHANNEL_FILE)
