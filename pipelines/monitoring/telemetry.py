"""One process's OpenTelemetry: a meter and a tracer, exported as the config says.

Every actor is a process of its own, so every actor holds one :class:`Telemetry`. Its
metrics reach operators two ways:

- ``prometheus``: a pull reader here; the Supervisor collects every actor's
  :meth:`Telemetry.snapshot` (plain, picklable ``Metric`` records) and the driver serves
  their union on one endpoint (:mod:`pipelines.monitoring.scrape`);
- ``otlp`` / ``console``: each process exports on its own, every ``export_interval_s``;
  the collector tells the actors apart by their resource (``service.instance.id``).

Spans are sampled per batch (``ParentBased(TraceIdRatioBased(sample_ratio))``): the
decision is taken once, where a batch is read, and travels with its W3C context.

>>> from pipelines.config import TelemetryConfig
>>> t = Telemetry(TelemetryConfig(), pipeline="demo", actor="ingest-0", role="ingest")
>>> c = t.meter.create_counter("riffle.demo", unit="{event}")
>>> c.add(3, t.attrs)
>>> [(m.name, m.data.data_points[0].value) for m in t.snapshot() if m.name == "riffle.demo"]
[('riffle.demo', 3)]
>>> t.shutdown()
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    Metric,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Tracer

from pipelines.config import TelemetryConfig

__all__ = ["SECONDS", "Telemetry"]

SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
           10.0, 30.0, 60.0, 300.0)
"""Histogram buckets of durations: half a millisecond to five minutes."""


class Telemetry:
    """Meter, tracer and exporters of one actor process (``role``: ingest, scorer, sink,
    supervisor). ``attrs`` are the attributes every data point carries."""

    def __init__(self, config: TelemetryConfig, *, pipeline: str, actor: str,
                 role: str) -> None:
        self.config = config
        self.attrs: dict[str, str] = {"pipeline": pipeline, "actor": actor, "role": role}
        resource = Resource.create({"service.name": "riffle", "service.namespace": pipeline,
                                    "service.instance.id": actor, "riffle.role": role})
        interval_ms = config.export_interval_s * 1000
        readers: list[MetricReader] = []
        self._pull: InMemoryMetricReader | None = None
        if "prometheus" in config.exporters:
            self._pull = InMemoryMetricReader()
            readers.append(self._pull)
        base = config.otlp_endpoint.rstrip("/")
        if "otlp" in config.exporters:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )

            readers.append(PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=f"{base}/v1/metrics"),
                export_interval_millis=interval_ms))
        if "console" in config.exporters:
            from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter(),
                                                         export_interval_millis=interval_ms))
        self._meters = MeterProvider(metric_readers=readers, resource=resource)
        self.meter: Meter = self._meters.get_meter("riffle")
        self._tracers = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)), resource=resource)
        if "otlp" in config.exporters:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self._tracers.add_span_processor(BatchSpanProcessor(
                OTLPSpanExporter(endpoint=f"{base}/v1/traces"), schedule_delay_millis=interval_ms))
        if "console" in config.exporters:
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            self._tracers.add_span_processor(BatchSpanProcessor(
                ConsoleSpanExporter(), schedule_delay_millis=interval_ms))
        self.tracer: Tracer = self._tracers.get_tracer("riffle")
        self._process_metrics()

    def _process_metrics(self) -> None:
        """CPU time and resident memory of this process (OTel's ``process.*`` names)."""
        import psutil

        me = psutil.Process(os.getpid())
        attrs = self.attrs

        def cpu(_: CallbackOptions) -> Iterable[Observation]:
            t = me.cpu_times()
            return [Observation(t.user, {**attrs, "cpu.mode": "user"}),
                    Observation(t.system, {**attrs, "cpu.mode": "system"})]

        def rss(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(me.memory_info().rss, attrs)]

        self.meter.create_observable_counter(
            "process.cpu.time", [cpu], unit="s", description="CPU seconds of the actor's process")
        self.meter.create_observable_up_down_counter(
            "process.memory.usage", [rss], unit="By",
            description="Resident memory (RSS) of the actor's process")

    def snapshot(self, *, flush: bool = False) -> list[Metric]:
        """This process's metrics now, cumulative, without resource and scope (which hold
        locks and cannot be pickled; the attributes name the actor). ``flush``: push what
        OTLP and console exporters hold too (the run is ending)."""
        if flush:
            self.flush()
        if self._pull is None:
            return []
        data = self._pull.get_metrics_data()
        if data is None:
            return []
        return [m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]

    def flush(self) -> None:
        self._tracers.force_flush(5000)
        self._meters.force_flush(5000)

    def shutdown(self) -> None:
        self._tracers.shutdown()
        self._meters.shutdown()


def observe(values: Any, attrs: dict[str, str]) -> Any:
    """An observable instrument's callback reporting ``values()`` (a number) with ``attrs``."""
    def callback(_: CallbackOptions) -> Iterable[Observation]:
        return [Observation(values(), attrs)]
    return callback
