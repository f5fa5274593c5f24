"""The sink's telemetry: a ``sink.write`` span per sampled batch, its figures per batch.

The span is the one whose context the predictions carry on: a Kafka sink writes its
``traceparent`` into every prediction's headers, so a consumer of the predictions
continues the trace that began at the producer of the events.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace

from pipelines.config import TelemetryConfig
from pipelines.monitoring.instruments import SinkMeters
from pipelines.monitoring.telemetry import Telemetry
from pipelines.monitoring.tracing import context_of, messaging, sampled, traceparent_of
from pipelines.protocol import Ack, SinkBatch

__all__ = ["SinkTelemetry"]


class SinkTelemetry:
    def __init__(self, config: TelemetryConfig, *, pipeline: str, system: str,
                 destination: str, counts: Callable[[], dict[str, Any]]) -> None:
        self._t = Telemetry(config, pipeline=pipeline, actor="sink", role="sink")
        self._meters = SinkMeters(self._t, counts=counts)
        self._system, self._destination = system, destination

    def write(self, batch: SinkBatch, write: Callable[[SinkBatch], Ack]) -> Ack:
        if sampled(batch.trace):
            with self._t.tracer.start_as_current_span(
                    "sink.write", context=context_of(batch.trace),
                    kind=trace.SpanKind.PRODUCER,
                    attributes=messaging(self._system, "send", self._destination,
                                         len(batch.predictions),
                                         **{"riffle.dead_letters": len(batch.dead_letters)})
                    ) as span:
                ack = write(batch._replace(trace=traceparent_of(span)))
        else:
            ack = write(batch)
        self._meters.written(batch, time.time())
        return ack

    def snapshot(self, *, flush: bool = False) -> list[Any]:
        return self._t.snapshot(flush=flush)
