"""One Prometheus endpoint for the whole pipeline, wherever its actors run.

``opentelemetry-exporter-prometheus`` serves the metrics of the process it runs in; a
riffle pipeline is a dozen processes, maybe on several nodes. So each actor keeps a
pull reader (:class:`~pipelines.monitoring.telemetry.Telemetry`), the Supervisor gathers
their snapshots on the driver's periodic status call, and here the driver serves their
union: on each scrape, the exporter's own translation runs over every actor's latest
snapshot (each point carries its ``actor`` attribute, so series never collide).

>>> from pipelines.config import TelemetryConfig
>>> from pipelines.monitoring.telemetry import Telemetry
>>> t = Telemetry(TelemetryConfig(), pipeline="p", actor="scorer-0", role="scorer")
>>> t.meter.create_counter("riffle.demo", unit="{event}").add(2, t.attrs)
>>> agg = Aggregate()
>>> agg.update({"scorer-0": t.snapshot()})
>>> [line for line in agg.exposition().splitlines() if line.startswith("riffle_demo")]
['riffle_demo_total{actor="scorer-0",pipeline="p",role="scorer"} 2.0']
>>> agg.close(); t.shutdown()
"""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Metric,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CollectorRegistry, generate_latest, start_http_server

__all__ = ["Aggregate"]


class _Union(PrometheusMetricReader):
    """The exporter's reader, fed every actor's snapshot beside this process's own."""

    def __init__(self, registry: CollectorRegistry, snapshots: Any) -> None:
        super().__init__(disable_target_info=True, scope_info_enabled=False,
                         registry=registry)
        self._snapshots = snapshots

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
                         **kwargs: Any) -> None:
        metrics: list[Metric] = [m for rm in metrics_data.resource_metrics
                                 for sm in rm.scope_metrics for m in sm.metrics]
        for snapshot in self._snapshots():
            metrics.extend(snapshot)
        # One MetricsData: the translation yields its families once per data it is given.
        scope = ScopeMetrics(InstrumentationScope("riffle"), metrics, "")
        super()._receive_metrics(MetricsData([ResourceMetrics(Resource.get_empty(), [scope], "")]))


class Aggregate:
    """The latest snapshot of every actor, served in Prometheus' text format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, list[Metric]] = {}
        self.registry = CollectorRegistry()
        self._reader = _Union(self.registry, self._snapshots)

        def reporting(_: CallbackOptions) -> list[Observation]:
            return [Observation(len(self._latest))]

        self._meters = MeterProvider(metric_readers=[self._reader])
        self._meters.get_meter("riffle").create_observable_gauge(
            "riffle.telemetry.actors", [reporting], unit="{actor}",
            description="Actors whose metrics this endpoint serves")
        self._server: Any = None
        self.url: str | None = None

    def update(self, snapshots: dict[str, list[Metric]]) -> None:
        """The actors' latest snapshots (an actor replaced after a failure keeps its name)."""
        with self._lock:
            self._latest.update({k: v for k, v in snapshots.items() if v})

    def _snapshots(self) -> list[list[Metric]]:
        with self._lock:
            return list(self._latest.values())

    def exposition(self) -> str:
        return generate_latest(self.registry).decode()

    def serve(self, host: str, port: int) -> str:
        """Serve ``/metrics`` on ``host:port`` (0: a free port); returns its URL."""
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        bound = self._server.server_port
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{bound}/metrics"
        return self.url

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._meters.shutdown()


def open_endpoint(host: str, port: int) -> tuple[Aggregate, str | None]:
    """An :class:`Aggregate` serving on ``host:port``, and why it is not serving (the
    port is taken...: the run goes on without the endpoint) or None."""
    agg = Aggregate()
    try:
        agg.serve(host, port)
    except OSError as e:
        why = e.strerror or str(e)
        return agg, f"telemetry: cannot serve Prometheus metrics on {host}:{port}: {why}"
    return agg, None
