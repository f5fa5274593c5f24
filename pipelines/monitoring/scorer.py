"""The scorer's telemetry: a ``scorer.score`` span per sampled batch, histograms per batch.

It wraps :meth:`~pipelines.scoring.ScorerCore.process` from outside: the figures come
from the core's own counters before and after the batch (events scored, model time,
labels learned), so the hot loop is untouched. Scoring and learning are one pass over
the batch, in arrival order (what makes riffle's predictions equal River's progressive
validation), so one span covers both; its ``scorer.learn`` event says how many labels
the batch taught.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace

from pipelines.config import TelemetryConfig
from pipelines.monitoring.instruments import ScorerMeters
from pipelines.monitoring.telemetry import Telemetry
from pipelines.monitoring.tracing import context_of, messaging, sampled, traceparent_of
from pipelines.protocol import Batch, Feedback, SinkBatch

__all__ = ["ScorerTelemetry"]

LABEL_DELAY_SAMPLE = 8
"""Labels per batch whose delay is measured (the first ones that match a scored record)."""


class ScorerTelemetry:
    """Meters and spans of one scorer; ``core()`` is its current ScorerCore."""

    def __init__(self, config: TelemetryConfig, *, pipeline: str, actor: str,
                 core: Callable[[], Any]) -> None:
        self._t = Telemetry(config, pipeline=pipeline, actor=actor, role="scorer")
        self._core = core

        def counts() -> dict[str, Any]:
            c = core()
            return {**c.counts, **c.labels.counts, "labels_pending": c.labels.n_pending}

        self._meters = ScorerMeters(self._t, stats=lambda: core().stats(), counts=counts)
        self._tracer = self._t.tracer
        self._attrs = self._t.attrs

    def process(self, batch: Batch, process: Callable[[Batch], SinkBatch]) -> SinkBatch:
        """``process(batch)``, measured; the output carries the context for the sink."""
        core = self._core()
        live = core.arms[0]
        n0, spent0 = live.latency[0], live.latency[1]
        learned0 = core.counts["learned"]
        ids: list[str] = []
        for item in batch.items:
            if type(item) is Feedback:
                ids.append(item.record_id)
                if len(ids) == LABEL_DELAY_SAMPLE:
                    break
        delays = core.labels.waited_s(ids) if ids else []
        started = time.time()
        t0 = time.perf_counter()
        if sampled(batch.trace):
            with self._tracer.start_as_current_span(
                    "scorer.score", context=context_of(batch.trace),
                    kind=trace.SpanKind.CONSUMER,
                    attributes=messaging("riffle", "process", self._attrs["actor"],
                                         len(batch.items), **{"riffle.batch.seq": batch.seq})
                    ) as span:
                out = process(batch)
                learned = core.counts["learned"] - learned0
                span.set_attributes({"riffle.scored": len(out.predictions),
                                     "riffle.model_version": live.version,
                                     "riffle.arm": live.name})
                span.add_event("scorer.learn", {"riffle.labels.learned": learned})
                trace_out = traceparent_of(span)
        else:
            out = process(batch)
            trace_out = batch.trace
        self._meters.batch(duration_s=time.perf_counter() - t0,
                           waited_s=started - batch.sent_at if batch.sent_at else -1.0,
                           n_scored=live.latency[0] - n0, model_s=live.latency[1] - spent0,
                           arm=live.name, version=live.version, delays=delays)
        return out._replace(trace=trace_out) if trace_out else out

    def swapped(self, pause_s: float, version: str) -> None:
        self._meters.swapped(pause_s, version)

    def snapshot(self, *, flush: bool = False) -> list[Any]:
        return self._t.snapshot(flush=flush)
