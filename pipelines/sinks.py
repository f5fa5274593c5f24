"""Sinks: where predictions and dead letters are written, and the acks they give.

A write is acknowledged once its lines are flushed to the operating system; only then
may the ingest side consider the records safe (at-least-once).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import IO, Any

from ddsketch import DDSketch

from pipelines.protocol import Ack, SinkBatch

__all__ = ["FileSink", "LatencySketch"]


class LatencySketch:
    """End-to-end latency quantiles in constant memory (1% relative accuracy).

    >>> s = LatencySketch()
    >>> s.add_many([1.0, 2.0, 3.0, 100.0])
    >>> round(s.quantile(0.5)), s.count
    (2, 4)
    """

    def __init__(self) -> None:
        self._sketch = DDSketch(relative_accuracy=0.01)

    def add_many(self, values_ms: list[float]) -> None:
        add = self._sketch.add
        for v in values_ms:
            add(max(v, 0.0))

    def quantile(self, q: float) -> float | None:
        return self._sketch.get_quantile_value(q) if self._sketch.count else None

    @property
    def count(self) -> int:
        return int(self._sketch.count)

    def summary(self) -> dict[str, float | None]:
        return {"p50": self.quantile(0.5), "p99": self.quantile(0.99),
                "max": self._sketch.get_quantile_value(1.0) if self.count else None}


class FileSink:
    """Appends ``predictions.jsonl`` and ``dead_letters.jsonl`` under ``out_dir``."""

    def __init__(self, out_dir: Path, *, append: bool = False) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        mode = "ab" if append else "wb"
        self._predictions: IO[bytes] = open(out_dir / "predictions.jsonl", mode)
        self._dead: IO[bytes] = open(out_dir / "dead_letters.jsonl", mode)
        self.latency = LatencySketch()
        self.counts = {"predictions_written": 0, "dead_letters_written": 0}

    def write(self, batch: SinkBatch) -> Ack:
        if batch.n_predictions:
            self._predictions.write(batch.predictions)
            self._predictions.flush()
        if batch.n_dead_letters:
            self._dead.write(batch.dead_letters)
            self._dead.flush()
        now = time.time()
        self.latency.add_many([(now - t) * 1000.0 for t in batch.read_at])
        self.counts["predictions_written"] += batch.n_predictions
        self.counts["dead_letters_written"] += batch.n_dead_letters
        return Ack(batch.n_predictions, batch.n_dead_letters)

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "latency_ms": self.latency.summary()}

    def close(self) -> None:
        for f in (self._predictions, self._dead):
            if not f.closed:
                f.flush()
                f.close()
