"""The instruments of each role, over the counters the cores keep already.

Counts (events, labels, predictions...) are *observable* instruments: their callbacks
read the cores' own counters when metrics are collected, so nothing is counted twice
and the figures equal ``summary.json``'s by construction. Only distributions are
recorded as the data flows, once per batch (never per event).

Attributes: ``pipeline``, ``actor``, ``role`` on every point, ``model_version`` and
``arm`` where a figure is per arm, ``reason`` on dead letters (their error class, one of
four). Never a record id or a key.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation

from pipelines.monitoring.telemetry import SECONDS, Telemetry, observe
from pipelines.protocol import SinkBatch

__all__ = ["IngestMeters", "ScorerMeters", "SinkMeters", "SupervisorMeters"]

_SIZES = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000)
_BYTES = tuple(float(2 ** k) for k in range(10, 34, 2))  # 1 KiB .. 8 GiB


def _counters(t: Telemetry, counts: Callable[[], dict[str, Any]],
              names: Iterable[tuple[str, str, str, str]]) -> None:
    """Observable counters ``(name, key in counts, unit, description)``."""
    for name, key, unit, description in names:
        t.meter.create_observable_counter(
            name, [observe(lambda k=key: counts().get(k, 0), t.attrs)], unit=unit,
            description=description)


class IngestMeters:
    """Events, labels and bad input read; batch sizes; batches in flight."""

    def __init__(self, t: Telemetry, *, counts: Callable[[], dict[str, Any]],
                 in_flight: Callable[[], int]) -> None:
        self._attrs = t.attrs
        _counters(t, counts, [
            ("riffle.events.in", "events", "{event}", "Events read from the source"),
            ("riffle.feedback.in", "feedback", "{label}", "Labels (feedback) read"),
            ("riffle.duplicates", "duplicates", "{record}", "Records dropped as duplicates"),
            ("riffle.invalid", "invalid", "{record}", "Events that failed validation"),
        ])
        t.meter.create_observable_up_down_counter(
            "riffle.batches.in_flight", [observe(in_flight, t.attrs)], unit="{batch}",
            description="Batches sent to scorers and not yet acknowledged by the sink")
        self._size = t.meter.create_histogram(
            "riffle.batch.size", unit="{record}", description="Records per batch sent",
            explicit_bucket_boundaries_advisory=_SIZES)

    def sent(self, n: int) -> None:
        self._size.record(n, self._attrs)



class ScorerMeters:
    """Scoring and learning: volumes per arm, labels, latency, queue wait, swaps."""

    def __init__(self, t: Telemetry, *, stats: Callable[[], dict[str, Any]],
                 counts: Callable[[], dict[str, Any]]) -> None:
        attrs = self._attrs = t.attrs
        m = t.meter
        _counters(t, counts, [
            ("riffle.events.scored", "scored", "{event}", "Events scored"),
            ("riffle.labels.feedback", "feedback", "{label}", "Labels received by the scorer"),
            ("riffle.labels.learned", "learned", "{label}", "Labels learned by the live model"),
            ("riffle.model.errors", "model_errors", "{record}", "Records a model refused"),
            *((f"riffle.labels.{k}", f"labels_{k}", "{label}", f"Labels {k}")
              for k in ("expired", "unmatched", "late", "duplicate", "early")),
        ])
        m.create_observable_up_down_counter(
            "riffle.labels.pending", [observe(lambda: counts().get("labels_pending", 0),
                                              attrs)],
            unit="{label}", description="Scored events waiting for their label")
        self._last = (time.monotonic(), 0)

        def arms(key: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
            def callback(_: CallbackOptions) -> Iterable[Observation]:
                return [Observation(a[key], {**attrs, "arm": a["name"],
                                             "model_version": a["version"]})
                        for a in stats()["arms"]]
            return callback

        m.create_observable_counter("riffle.arm.scored", [arms("scored")], unit="{event}",
                                    description="Events scored, per arm")
        m.create_observable_counter("riffle.arm.labeled", [arms("labeled")], unit="{label}",
                                    description="Labels observed, per arm")

        def learn_rate(_: CallbackOptions) -> Iterable[Observation]:
            now, learned = time.monotonic(), counts().get("learned", 0)
            then, before = self._last
            self._last = (now, learned)
            rate = max(learned - before, 0) / (now - then) if now > then else 0.0
            return [Observation(rate, attrs)]

        m.create_observable_gauge("riffle.learn.rate", [learn_rate], unit="{label}/s",
                                  description="Labels learned per second since the last collection")
        self._process = m.create_histogram(
            "messaging.process.duration", unit="s", description="Duration of scoring a batch",
            explicit_bucket_boundaries_advisory=SECONDS)
        self._score = m.create_histogram(
            "riffle.scoring.duration", unit="s",
            description="Model time per event scored, averaged over a batch",
            explicit_bucket_boundaries_advisory=(1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4,
                                                 5e-4, 1e-3, 5e-3, 0.01, 0.1))
        self._wait = m.create_histogram(
            "riffle.queue.wait", unit="s", description="Time a batch waited for its scorer",
            explicit_bucket_boundaries_advisory=SECONDS)
        self._delay = m.create_histogram(
            "riffle.label.delay", unit="s",
            description="Time from scoring an event to its label's arrival (a sample per batch)",
            explicit_bucket_boundaries_advisory=SECONDS)
        self._swaps = m.create_counter("riffle.swaps", unit="{swap}",
                                       description="Deployments applied (hot swaps)")
        self._swap_pause = m.create_histogram(
            "riffle.swap.pause", unit="s",
            description="How long a swap kept the scorer from scoring",
            explicit_bucket_boundaries_advisory=SECONDS)

    def batch(self, *, duration_s: float, waited_s: float, n_scored: int, model_s: float,
              arm: str, version: str, delays: list[float]) -> None:
        attrs = self._attrs
        self._process.record(duration_s, attrs)
        if waited_s >= 0:
            self._wait.record(waited_s, attrs)
        if n_scored:
            self._score.record(model_s / n_scored, {**attrs, "arm": arm, "model_version": version})
        for d in delays:
            self._delay.record(d, attrs)

    def swapped(self, pause_s: float, version: str) -> None:
        attrs = {**self._attrs, "model_version": version}
        self._swaps.add(1, attrs)
        self._swap_pause.record(pause_s, attrs)


class SinkMeters:
    """Predictions and dead letters written; end-to-end latency."""

    def __init__(self, t: Telemetry, *, counts: Callable[[], dict[str, Any]]) -> None:
        self._attrs = t.attrs
        _counters(t, counts, [
            ("riffle.events.out", "predictions_written", "{prediction}", "Predictions written"),
            ("riffle.shadow.out", "shadow_written", "{prediction}", "Shadow outputs written"),
        ])
        m = t.meter
        self._dead = m.create_counter("riffle.dead_letters", unit="{record}",
                                      description="Dead letters written, by reason")
        self._dead.add(0, {**t.attrs, "reason": "InvalidRecord"})  # the series exists from 0
        self._e2e = m.create_histogram(
            "riffle.e2e.latency", unit="s",
            description="Read to written, of each batch's oldest record",
            explicit_bucket_boundaries_advisory=SECONDS)

    def written(self, batch: SinkBatch, now: float) -> None:
        attrs = self._attrs
        if batch.read_at:
            self._e2e.record(max(now - min(batch.read_at), 0.0), attrs)
        if batch.dead_letters:
            for reason, n in Counter(d.error_class for d in batch.dead_letters).items():
                self._dead.add(n, {**attrs, "reason": reason})


class SupervisorMeters:
    """Restarts by role; checkpoints: how many, how long, how big, the pauses."""

    def __init__(self, t: Telemetry) -> None:
        self._attrs = t.attrs
        m = t.meter
        self._restarts = m.create_counter("riffle.restarts", unit="{restart}",
                                          description="Data path restarts, by the failed role")
        self._ckpts = m.create_counter("riffle.checkpoints", unit="{checkpoint}",
                                       description="Checkpoints committed")
        self._duration = m.create_histogram(
            "riffle.checkpoint.duration", unit="s", description="Barrier to manifest",
            explicit_bucket_boundaries_advisory=SECONDS)
        self._pause = m.create_histogram(
            "riffle.checkpoint.pause", unit="s",
            description="How long reading or scoring stood still",
            explicit_bucket_boundaries_advisory=SECONDS)
        self._size = m.create_histogram(
            "riffle.checkpoint.size", unit="By", description="Bytes of a checkpoint's parts",
            explicit_bucket_boundaries_advisory=_BYTES)
        self._seen = 0

    def restarted(self, role: str) -> None:
        self._restarts.add(1, {**self._attrs, "role": role})

    def checkpoints(self, history: list[Any], n_taken: int) -> None:
        """Record the checkpoints not recorded yet: the last of ``history`` (the latest
        CheckpointStats; ``n_taken`` in all)."""
        attrs = self._attrs
        new = min(n_taken - self._seen, len(history))
        for c in history[len(history) - new:] if new > 0 else []:
            self._ckpts.add(1, attrs)
            self._duration.record(c.duration_s, attrs)
            self._pause.record(c.pause_s, attrs)
            self._size.record(c.bytes, attrs)
        self._seen = n_taken
