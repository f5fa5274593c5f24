"""A trace begun by a producer's Kafka header continues through riffle to the predictions."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

from actors.driver import run_pipeline
from pipelines.kafka import ensure_topics
from tests.kafka_helpers import read_topic
from tests.otlp_receiver import OtlpReceiver

pytestmark = [pytest.mark.kafka, pytest.mark.usefixtures("ray_session")]

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PRODUCER_SPAN = "00f067aa0ba902b7"


def test_kafka_producer_traceparent_continues_through_riffle_to_predictions(
        make_kafka_config: Any) -> None:
    with OtlpReceiver() as receiver:
        # Sampling ratio 0: riffle traces nothing of its own, only what the producer's
        # sampled context asks for (parent-based sampling).
        config = make_kafka_config(
            source={"kind": "kafka", "partitions": 1, "idle_stop_s": 3.0},
            telemetry={"exporters": ["otlp"], "otlp_endpoint": receiver.endpoint,
                       "sample_ratio": 0.0, "export_interval_s": 0.5})
        kafka = config.kafka
        ensure_topics(kafka, 1)
        producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
        for i in range(300):
            event = {"record_id": f"r{i}", "key": f"k{i % 13}", "event_time": float(i),
                     "features": {"income": 1000.0 + i, "age": 20 + i % 50}}
            headers = [("traceparent", f"00-{TRACE}-{PRODUCER_SPAN}-01".encode())] \
                if i == 0 else []
            producer.send(kafka.topics.events, key=event["key"].encode(),
                          value=orjson.dumps(event), headers=headers)
            producer.send(kafka.topics.feedback, key=event["key"].encode(),
                          value=orjson.dumps({"record_id": f"r{i}", "key": event["key"],
                                              "label": i % 2 == 0}))
        producer.flush()
        producer.close()
        summary = run_pipeline(config)
    assert summary["scored"] == 300

    spans = receiver.spans
    assert spans and {s["trace_id"] for s in spans} == {TRACE}, "only the producer's trace"
    by_name: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        by_name.setdefault(s["name"], []).append(s)
    (read,) = [s for s in by_name["ingest.read"] if s["parent"] == PRODUCER_SPAN]
    assert read["attributes"]["messaging.system"] == "kafka"
    assert read["attributes"]["messaging.destination.name"] == kafka.topics.events
    assert read["attributes"]["messaging.consumer.group.name"] == kafka.group_id
    by_id = {s["span_id"]: s for s in spans}
    writes = by_name["sink.write"]
    for write in writes:
        score = by_id[write["parent"]]
        route = by_id[score["parent"]]
        assert (score["name"], route["name"]) == ("scorer.score", "ingest.route")
        assert by_id[route["parent"]]["name"] == "ingest.read"
    # The prediction of the traced event names the sink's span of the same trace.
    predictions = read_topic(kafka.bootstrap_servers, kafka.topics.predictions)
    # Every prediction names a trace (unsampled ones too: flags 00), for its consumers.
    assert len(predictions) == 300 and all(
        len(dict(m.headers)["traceparent"]) == 55 for m in predictions)
    first = next(m for m in predictions if orjson.loads(m.value)["record_id"] == "r0")
    traceparent = dict(first.headers)["traceparent"].decode()
    _, trace_id, span_id, flags = traceparent.split("-")
    assert (trace_id, flags) == (TRACE, "01")
    assert span_id in {w["span_id"] for w in writes}
