"""The telemetry cores without Ray: aggregation, the endpoint, trace context, config."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from prometheus_client.parser import text_string_to_metric_families

from pipelines.config import TelemetryConfig, load_config
from pipelines.errors import ConfigError
from pipelines.monitoring.scrape import Aggregate, open_endpoint
from pipelines.monitoring.telemetry import SECONDS, Telemetry
from pipelines.monitoring.tracing import IngestSpans, sampled
from pipelines.protocol import SourceMessage

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
OTHER = "00-11111111111111111111111111111111-2222222222222222-01"


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text)
            for s in f.samples]


def test_aggregate_two_actors_same_metric_two_series_with_buckets() -> None:
    actors = [Telemetry(TelemetryConfig(), pipeline="p", actor=f"scorer-{i}", role="scorer")
              for i in range(2)]
    agg = Aggregate()
    try:
        for i, t in enumerate(actors):
            t.meter.create_counter("riffle.demo", unit="{event}").add(10 + i, t.attrs)
            h = t.meter.create_histogram("riffle.wait", unit="s",
                                         explicit_bucket_boundaries_advisory=SECONDS)
            h.record(0.003, t.attrs)
        agg.update({t.attrs["actor"]: t.snapshot() for t in actors})
        samples = _samples(agg.exposition())
    finally:
        agg.close()
        for t in actors:
            t.shutdown()
    demo = {labels["actor"]: v for name, labels, v in samples if name == "riffle_demo_total"}
    assert demo == {"scorer-0": 10.0, "scorer-1": 11.0}
    le = {labels["le"]: v for name, labels, v in samples
          if name == "riffle_wait_seconds_bucket" and labels["actor"] == "scorer-0"}
    assert le["0.0025"] == 0.0 and le["0.005"] == 1.0 and le["+Inf"] == 1.0
    assert ("riffle_telemetry_actors", {}, 2.0) in samples


def test_aggregate_actor_replaced_keeps_one_series_per_name() -> None:
    agg = Aggregate()
    old = Telemetry(TelemetryConfig(), pipeline="p", actor="sink", role="sink")
    new = Telemetry(TelemetryConfig(), pipeline="p", actor="sink", role="sink")
    try:
        old.meter.create_counter("riffle.n").add(5, old.attrs)
        agg.update({"sink": old.snapshot()})
        new.meter.create_counter("riffle.n").add(2, new.attrs)
        agg.update({"sink": new.snapshot(), "scorer-0": []})  # an empty answer: ignored
        samples = _samples(agg.exposition())
    finally:
        agg.close()
        old.shutdown()
        new.shutdown()
    assert [v for name, _, v in samples if name == "riffle_n_total"] == [2.0]


def test_open_endpoint_port_taken_one_line_and_free_port_serves() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        agg, trouble = open_endpoint("127.0.0.1", port)
        agg.close()
    assert trouble is not None and f"127.0.0.1:{port}" in trouble and "\n" not in trouble
    agg, trouble = open_endpoint("127.0.0.1", 0)
    try:
        assert trouble is None and agg.url is not None
        with urllib.request.urlopen(agg.url, timeout=10) as response:
            assert b"riffle_telemetry_actors 0.0" in response.read()
    finally:
        agg.close()


def _message(i: int, trace: str) -> SourceMessage:
    return SourceMessage("events", 0, i, "event", {}, b"", None, 0.0, None, trace)


def _spans(ratio: float) -> tuple[IngestSpans, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return IngestSpans(provider.get_tracer("t"), system="kafka", consumer_group="g",
                       from_headers=True), exporter


def test_ingest_spans_header_parent_followed_despite_zero_ratio_links_others() -> None:
    spans, exporter = _spans(0.0)
    messages = [_message(0, ""), _message(1, TP), _message(2, OTHER), _message(3, TP)]
    route = spans.route(messages, (1_000, 2_000))
    tp = spans.routed(route, 0)
    read, routed = exporter.get_finished_spans()
    assert read.name == "ingest.read" and routed.name == "ingest.route"
    assert read.parent is not None and read.parent.span_id == 0x00f067aa0ba902b7
    assert read.context.trace_id == routed.context.trace_id == int(TP[3:35], 16)
    assert routed.parent is not None and routed.parent.span_id == read.context.span_id
    assert [link.context.trace_id for link in read.links] == [int(OTHER[3:35], 16)]
    assert (read.start_time, read.end_time) == (1_000, 2_000)
    assert read.attributes is not None and read.attributes["messaging.batch.message_count"] == 4
    assert sampled(tp) and tp.split("-")[2] == f"{routed.context.span_id:016x}"


def test_ingest_spans_unsampled_batch_still_names_a_trace_exports_nothing() -> None:
    spans, exporter = _spans(0.0)
    tp = spans.routed(spans.route([_message(0, "")], (0, 1)), 0)
    assert exporter.get_finished_spans() == ()
    assert len(tp) == 55 and not sampled(tp)


def test_config_telemetry_unknown_exporter_rejected_empty_list_is_off(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: a\nsource: {kind: synthetic}\ntelemetry: {exporters: [jaeger]}\n")
    with pytest.raises(ConfigError, match=r"telemetry\.exporters"):
        load_config(path, check_model=False)
    assert not TelemetryConfig(exporters=[]).active
    assert TelemetryConfig().active and TelemetryConfig().sample_ratio == 0.01
