"""Sinks: where predictions and dead letters are written, and the acks they give.

A write is acknowledged once its lines are flushed to the operating system; only then
may the ingest side consider the records safe (at-least-once).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
from ddsketch import DDSketch

from pipelines.config import KafkaConfig
from pipelines.errors import PipelineError
from pipelines.protocol import Ack, DeadLetter, SinkBatch
from pipelines.sources.base import partition_of

# A flush may outlast the producer's delivery timeout by this much before it counts as hung.
FLUSH_MARGIN_S = 5.0

__all__ = ["FileSink", "KafkaSink", "LatencySketch", "dead_letter_json", "drop_partial_line"]


def dead_letter_json(d: DeadLetter) -> bytes:
    """A dead letter as a line of ``dead_letters.jsonl``.

    >>> line = dead_letter_json(DeadLetter(None, "event", b"{oops", "invalid JSON",
    ...                                    "DecodeError", "events", 2, 17))
    >>> orjson.loads(line)["source"], orjson.loads(line)["raw"]
    ('events[2]@17', '{oops')
    """
    return orjson.dumps({
        "record_id": d.record_id, "kind": d.kind, "raw": d.raw.decode("utf-8", "replace"),
        "error": d.error, "error_class": d.error_class, "source": d.source, "topic": d.topic,
        "partition": d.partition, "position": d.offset})


_GROUPS_PER_E = 1000.0  # groups of values within 0.1% of each other


class LatencySketch:
    """End-to-end latency quantiles in constant memory (1% relative accuracy).

    >>> s = LatencySketch()
    >>> s.add_many([1.0, 2.0, 3.0, 100.0])
    >>> round(s.quantile(0.5)), s.count
    (2, 4)
    """

    def __init__(self, *, recent: bool = False) -> None:
        """``recent``: keep a second sketch of the values since :meth:`take_recent`."""
        self._sketch = DDSketch(relative_accuracy=0.01)
        self._recent: DDSketch | None = DDSketch(relative_accuracy=0.01) if recent else None

    def add_many(self, values_ms: list[float]) -> None:
        """Add a batch's latencies. Values within 0.1% of each other are added once, with
        their count as weight (DDSketch's own pure-Python ``add`` costs ~3 us a value; a
        batch's latencies fall into a few dozen such groups)."""
        if not values_ms:
            return
        sketches = (self._sketch,) if self._recent is None else (self._sketch, self._recent)
        if len(values_ms) < 16:
            for sketch in sketches:
                for v in values_ms:
                    sketch.add(max(v, 0.0))
            return
        values = np.asarray(values_ms, dtype=np.float64)
        positive = values[values > 0.0]
        n_zero = len(values) - len(positive)
        groups: list[tuple[float, float]] = [(0.0, float(n_zero))] if n_zero else []
        if len(positive):
            _, first, counts = np.unique(np.floor(np.log(positive) * _GROUPS_PER_E),
                                         return_index=True, return_counts=True)
            groups += zip(positive[first].tolist(), counts.tolist(), strict=True)
        for sketch in sketches:
            add = sketch.add
            for value, count in groups:
                add(value, float(count))

    def quantile(self, q: float) -> float | None:
        return self._sketch.get_quantile_value(q) if self._sketch.count else None

    def take_recent(self) -> dict[str, float | None]:
        """Quantiles of the values added since the last call (then forgets them)."""
        recent = self._recent
        if recent is None:
            return {}
        self._recent = DDSketch(relative_accuracy=0.01)
        if not recent.count:
            return {"n": 0}
        return {"n": int(recent.count), "p50": recent.get_quantile_value(0.5),
                "p99": recent.get_quantile_value(0.99), "max": recent.get_quantile_value(1.0)}

    def merge(self, other: LatencySketch) -> None:
        """Add ``other``'s values (another actor's sketch: quantiles stay within 1%)."""
        if other._sketch.count:
            self._sketch.merge(other._sketch)

    @property
    def count(self) -> int:
        return int(self._sketch.count)

    def summary(self) -> dict[str, float | None]:
        return {"p50": self.quantile(0.5), "p99": self.quantile(0.99),
                "max": self._sketch.get_quantile_value(1.0) if self.count else None}


def drop_partial_line(path: Path) -> int:
    """Cut a last line left without its newline (a writer killed mid-write); its records
    were never acknowledged, so they are written again. Returns the bytes cut.

    >>> import tempfile; p = Path(tempfile.mkdtemp()) / "x.jsonl"
    >>> _ = p.write_bytes(b'{"a": 1}' + bytes([10]) + b'{"a"')
    >>> drop_partial_line(p), p.read_bytes() == b'{"a": 1}' + bytes([10])
    (4, True)
    """
    if not path.exists():
        return 0
    with open(path, "r+b") as f:
        size = f.seek(0, 2)
        end = size
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            chunk = f.read(end - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        if end < size:
            f.truncate(end)
        return size - end


class FileSink:
    """Appends ``predictions.jsonl`` and ``dead_letters.jsonl`` under ``out_dir``."""

    def __init__(self, out_dir: Path, *, append: bool = False) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        mode = "ab" if append else "wb"
        paths = out_dir / "predictions.jsonl", out_dir / "dead_letters.jsonl"
        if append:
            for path in paths:
                drop_partial_line(path)
        self._predictions: IO[bytes] = open(paths[0], mode)
        self._dead: IO[bytes] = open(paths[1], mode)
        self._shadow_path, self._shadow_mode = out_dir / "shadow.jsonl", mode
        self._shadow: IO[bytes] | None = None
        """Opened at the first shadow output (most runs have none)."""
        self.latency = LatencySketch(recent=True)
        self.counts = {"predictions_written": 0, "dead_letters_written": 0,
                       "shadow_written": 0}

    def write(self, batch: SinkBatch) -> Ack:
        n, n_dead = len(batch.predictions), len(batch.dead_letters)
        if n:
            self._predictions.write(b"\n".join(batch.predictions) + b"\n")
            self._predictions.flush()
        if n_dead:
            self._dead.write(b"".join(dead_letter_json(d) + b"\n" for d in batch.dead_letters))
            self._dead.flush()
        if batch.shadow:
            if self._shadow is None:
                if self._shadow_mode == "ab":
                    drop_partial_line(self._shadow_path)
                self._shadow = open(self._shadow_path, self._shadow_mode)
            self._shadow.write(b"\n".join(batch.shadow) + b"\n")
            self._shadow.flush()
            self.counts["shadow_written"] += len(batch.shadow)
        now = time.time()
        self.latency.add_many([(now - t) * 1000.0 for t in batch.read_at])
        self.counts["predictions_written"] += n
        self.counts["dead_letters_written"] += n_dead
        return Ack(n, n_dead)

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "latency_ms": self.latency.summary()}

    def reopen(self) -> None:
        """Append to the files anew, counts kept: ``riffle forget`` rewrote them beside
        this sink (replaced whole, so the open handles point at the old ones)."""
        self.close()
        self._predictions = open(self._predictions.name, "ab")
        self._dead = open(self._dead.name, "ab")
        self._shadow, self._shadow_mode = None, "ab"

    def close(self) -> None:
        for f in (self._predictions, self._dead, self._shadow):
            if f is not None and not f.closed:
                f.flush()
                f.close()


class KafkaSink:
    """Produces predictions and dead letters to their topics; acks once the broker has them.

    Predictions: message key = the record's ``key``, value = the JSON line of
    ``predictions.jsonl``, headers ``riffle.model_version`` and the W3C ``traceparent`` of
    the batch's ``sink.write`` span (:mod:`pipelines.monitoring`; none with telemetry off).
    Dead letters follow Kafka Connect: the original bytes and key, with the error and
    the source topic, partition and offset in ``__connect.errors.*`` headers.
    """

    def __init__(self, kafka: KafkaConfig, *, client_id: str = "riffle-sink") -> None:
        from pipelines.kafka import producer

        self._producer = producer(kafka, client_id=client_id)
        self._topics = kafka.topics
        # The producer fails a record it could not deliver within delivery_timeout_ms, so
        # a flush lasting longer than that is stuck.
        self._flush_timeout_s = kafka.delivery_timeout_ms / 1000 + FLUSH_MARGIN_S
        self._partitions: dict[str, int] = {}
        self.latency = LatencySketch(recent=True)
        self.counts = {"predictions_written": 0, "dead_letters_written": 0,
                       "shadow_written": 0}

    def write(self, batch: SinkBatch) -> Ack:
        from kafka.errors import KafkaError

        from pipelines.kafka import connect_headers

        send = self._producer.send
        predictions: list[Any] = []  # the futures of the sends, checked after the flush
        dead: list[Any] = []
        topic = self._topics.predictions
        trace = [("traceparent", batch.trace.encode())] if batch.trace else []
        try:
            n_parts = self._n_partitions(topic)
            keep = predictions.append
            for line, key, version in zip(batch.predictions, batch.keys, batch.versions,
                                          strict=True):
                # The partition Kafka's default partitioner would pick, from our cache:
                # kafka-python's murmur2 is pure Python (~5 us a message).
                keep(send(topic, value=line, key=key.encode("utf-8"),
                          partition=partition_of(key, n_parts),
                          headers=[("riffle.model_version", version.encode()),
                                   *trace]))
            if batch.shadow:  # shadow outputs: their own topic, never the predictions'
                topic = self._topics.shadow
                n_shadow = self._n_partitions(topic)
                for line in batch.shadow:
                    key = orjson.loads(line)["key"]
                    keep(send(topic, value=line, key=key.encode("utf-8"),
                              partition=partition_of(key, n_shadow)))
            topic = self._topics.dead_letters
            keep = dead.append
            for d in batch.dead_letters:
                keep(send(topic, value=d.raw, key=d.key,
                          headers=connect_headers(d.error_class, d.error, d.topic,
                                                  d.partition, d.offset)))
        except KafkaError as e:  # no buffer space or no metadata in time, too large...
            raise PipelineError(f"sink: cannot send to {topic}: {type(e).__name__}: "
                                f"{e}") from None
        # The ack means "on the broker": flush() waits for every send to complete, but
        # raises only on its own timeout; each send's outcome is in its future.
        self._flush(predictions, dead)
        now = time.time()
        self.latency.add_many([(now - t) * 1000.0 for t in batch.read_at])
        self.counts["predictions_written"] += len(batch.predictions)
        self.counts["dead_letters_written"] += len(batch.dead_letters)
        self.counts["shadow_written"] += len(batch.shadow)
        return Ack(len(batch.predictions), len(batch.dead_letters))

    def _flush(self, predictions: list[Any], dead: list[Any]) -> None:
        """Wait for the broker's answer to every send; raise unless all were written."""
        from kafka.errors import KafkaError, KafkaTimeoutError

        deadline = time.monotonic() + self._flush_timeout_s
        try:
            self._producer.flush(timeout=self._flush_timeout_s)
        except KafkaTimeoutError:
            raise PipelineError(
                f"sink: {len(predictions) + len(dead)} records to {self._topics.predictions} "
                f"and {self._topics.dead_letters} not acknowledged by the broker within "
                f"{self._flush_timeout_s:.0f}s") from None
        except KafkaError:
            # kafka-python 3.0's flush gives up early on a batch it split to retry (after a
            # MessageSizeTooLarge): wait on the sends themselves, in what is left of the time.
            for f in itertools.chain(predictions, dead):
                if not f.is_done:
                    try:
                        f.get(timeout=max(deadline - time.monotonic(), 0.0))
                    except KafkaError:
                        pass  # its error is in the future, reported below
        for topic, futures in ((self._topics.predictions, predictions),
                               (self._topics.dead_letters, dead)):
            failed = [f for f in futures if not f.succeeded()]
            if failed:
                e = failed[0].exception
                cause = f"{type(e).__name__}: {e}" if e is not None else "no answer in time"
                raise PipelineError(f"sink: {len(failed)} of {len(futures)} records to {topic} "
                                    f"not written; the first: {cause}")

    def _n_partitions(self, topic: str) -> int:
        n = self._partitions.get(topic)
        if n is None:
            n = self._partitions[topic] = len(self._producer.partitions_for(topic))
        return n

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "latency_ms": self.latency.summary()}

    def reopen(self) -> None:
        """Nothing to reopen: the topics are not rewritten here."""

    def close(self) -> None:
        self._producer.close(timeout=self._flush_timeout_s)  # sends what is left first
