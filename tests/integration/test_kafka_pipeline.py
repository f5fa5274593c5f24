"""The pipeline on a real Kafka broker: interop with a third-party client, bad input
on the wire. Every test has topics and a consumer group of its own."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

from actors.driver import run_pipeline
from tests.helpers import assert_same_items, json_keys
from tests.kafka_helpers import read_topic

pytestmark = [pytest.mark.kafka, pytest.mark.usefixtures("ray_session")]


def _event(i: int, key: str) -> dict[str, Any]:
    return {"record_id": f"r{i}", "key": key, "event_time": 1.0 + i,
            "features": {"income": 1000.0 + i, "age": 20 + i % 50}}


def test_kafka_kcat_produces_and_reads_predictions_plain_json(make_kafka_config: Any) -> None:
    kcat = shutil.which("kcat")
    assert kcat, "kcat is installed by the test setup (make test)"
    config = make_kafka_config()
    bootstrap, topics = config.kafka.bootstrap_servers, config.kafka.topics
    from pipelines.kafka import ensure_topics

    ensure_topics(config.kafka, 4)
    lines = []
    for i in range(200):
        key = f"applicant-{i % 17}"
        lines.append(f"{key}\t{orjson.dumps(_event(i, key)).decode()}")
    subprocess.run([kcat, "-b", bootstrap, "-P", "-t", topics.events, "-K", "\t"],
                   input="\n".join(lines) + "\n", text=True, check=True, timeout=60)
    labels = [f"applicant-{i % 17}\t" + orjson.dumps(
        {"record_id": f"r{i}", "key": f"applicant-{i % 17}", "label": i % 2 == 0}).decode()
        for i in range(200)]
    subprocess.run([kcat, "-b", bootstrap, "-P", "-t", topics.feedback, "-K", "\t"],
                   input="\n".join(labels) + "\n", text=True, check=True, timeout=60)

    summary = run_pipeline(config)

    out = subprocess.run([kcat, "-b", bootstrap, "-C", "-t", topics.predictions, "-e", "-J",
                          "-q"], capture_output=True, text=True, check=True, timeout=60)
    envelopes = [orjson.loads(line) for line in out.stdout.splitlines() if line.strip()]
    values = [orjson.loads(e["payload"]) for e in envelopes]
    assert_same_items(sorted(v["record_id"] for v in values),
                      sorted(f"r{i}" for i in range(200)), "predicted record ids")
    assert all(e["key"] == v["key"] for e, v in zip(envelopes, values, strict=True))
    headers = dict(zip(envelopes[0]["headers"][::2], envelopes[0]["headers"][1::2],
                       strict=True))
    assert headers["riffle.model_version"] == "v0"
    assert headers["traceparent"].startswith("00-") and len(headers["traceparent"]) == 55
    assert summary["scored"] == 200 and summary["learned"] == 200


def test_kafka_bad_input_on_the_wire_dead_lettered_all_accounted(make_kafka_config: Any) -> None:
    config = make_kafka_config(ingest={"n_actors": 2}, scoring={"n_actors": 2})
    bootstrap, topics = config.kafka.bootstrap_servers, config.kafka.topics
    from pipelines.kafka import ensure_topics

    ensure_topics(config.kafka, 4)
    producer = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=4 * 1024 * 1024)
    good = 0
    bad: list[tuple[bytes | None, bytes | None, str]] = [
        (b"k-bad-1", b"\xff\xfe\x00 not utf-8", "invalid JSON"),
        (b"k-bad-2", b'{"record_id": "b2", "key": "k-bad-2", "features": {', "invalid JSON"),
        (b"k-bad-3", orjson.dumps({"record_id": "b3", "key": "k-bad-3",
                                   "features": {"age": "old"}}), "features.age"),
        (b"k-bad-4", None, "null value"),
        (b"k-bad-5", orjson.dumps({"record_id": "b5", "key": "k-bad-5",
                                   "features": {"pad": 1.0}, "blob": "x" * (1024 * 1024)}),
         "exceeds max_message_bytes"),
        (None, orjson.dumps(_event(99_999, "k-bad-6")), "no message key"),
    ]
    for i in range(400):
        if i % 60 == 30 and i // 60 < len(bad):  # each bad kind once, among good events
            key, value, _ = bad[i // 60]
            producer.send(topics.events, key=key, value=value)
        key = f"applicant-{i % 23}"
        producer.send(topics.events, key=key.encode(), value=orjson.dumps(_event(i, key)))
        good += 1
    producer.flush()

    summary = run_pipeline(config)

    predictions = [orjson.loads(m.value) for m in read_topic(bootstrap, topics.predictions)]
    dead = read_topic(bootstrap, topics.dead_letters)
    n_events = good + len(bad)
    distinct = {p["record_id"] for p in predictions}
    assert summary["events"] == n_events
    assert len(distinct) + len(dead) == n_events
    assert len(distinct) == good
    reasons = Counter()
    originals = {value for _, value, _ in bad}
    for m in dead:
        h = {k: v.decode() for k, v in m.headers}
        assert h["__connect.errors.topic"] == topics.events
        assert int(h["__connect.errors.offset"]) >= 0 and h["__connect.errors.partition"]
        assert h["__connect.errors.exception.class.name"] in {"DecodeError", "InvalidRecord"}
        reasons[next(r for _, _, r in bad if r in h["__connect.errors.exception.message"])] += 1
        # The original bytes, as Kafka Connect keeps them (a tombstone stays empty).
        assert m.value in originals or (m.value in (b"", None) and None in originals)
    assert set(reasons) == {r for _, _, r in bad}


def test_kafka_backlog_events_and_feedback_aligned_equals_river_progressive_validation(
    make_kafka_config: Any,
) -> None:
    """A backlog in two topics is merged by timestamp: with one partition and each label
    right after its event, the Kafka pipeline is River's progressive validation."""
    import itertools

    from river import evaluate, linear_model, metrics, preprocessing
    from river.datasets import synth

    config = make_kafka_config(source={"partitions": 1})
    bootstrap, topics = config.kafka.bootstrap_servers, config.kafka.topics
    from pipelines.kafka import ensure_topics

    ensure_topics(config.kafka, 1)
    rows = list(itertools.islice(synth.Agrawal(classification_function=1, seed=3), 3000))
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    t0 = 1_700_000_000_000
    # The whole backlog of events first, then all labels: only their timestamps say that
    # each label came right after its event.
    for i, (x, _) in enumerate(rows):
        producer.send(topics.events, key=b"k", timestamp_ms=t0 + 2 * i,
                      value=orjson.dumps({"record_id": f"r{i}", "key": "k", "features": x}))
    for i, (_, y) in enumerate(rows):
        producer.send(topics.feedback, key=b"k", timestamp_ms=t0 + 2 * i + 1,
                      value=orjson.dumps({"record_id": f"r{i}", "key": "k", "label": y}))
    producer.flush()

    summary = run_pipeline(config)

    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    expected = []
    for x, y in rows:
        expected.append(model.predict_proba_one(x))
        model.learn_one(x, y)
    got = {p["record_id"]: p for p in
           (orjson.loads(m.value) for m in read_topic(bootstrap, topics.predictions))}
    assert_same_items([got[f"r{i}"]["score"] if f"r{i}" in got else None
                       for i in range(len(rows))],
                      [json_keys(e) for e in expected], "scores (None: not predicted)")
    reference = evaluate.progressive_val_score(
        iter(rows), preprocessing.StandardScaler() | linear_model.LogisticRegression(),
        metrics.LogLoss()).get()
    assert summary["metrics"]["log_loss"] == pytest.approx(reference, abs=1e-12, rel=0)
    assert summary["labels_early"] == 0


def test_kafka_control_topic_commands_reach_the_running_pipeline_and_are_recorded(
        make_kafka_config: Any, tmp_path: Any) -> None:
    """The CLI sends on the `models` topic; the running Supervisor reads, refuses (there is
    nothing to roll back to) and records it with its topic position; the stream goes on."""
    import sys
    import threading
    from pathlib import Path

    import yaml

    from pipelines.control_kafka import KafkaControl
    from pipelines.registry import Registry

    # Long enough idle that a slow CLI start (a loaded machine) still finds it running.
    config = make_kafka_config(source={"idle_stop_s": 20.0})
    bootstrap, topics = config.kafka.bootstrap_servers, config.kafka.topics
    from pipelines.kafka import ensure_topics

    ensure_topics(config.kafka, 4)
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for i in range(300):
        key = f"applicant-{i % 13}"
        producer.send(topics.events, key=key.encode(), value=orjson.dumps(_event(i, key)))
    producer.flush()
    config_file = tmp_path / "kafka.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    repo = Path(__file__).resolve().parents[2]
    answers: dict[str, Any] = {}

    def send(_: Any) -> None:
        def go() -> None:
            KafkaControl(config.kafka, client_id="test").send(b'{"op": "promote"')
            answers["cli"] = subprocess.run(
                [sys.executable, "-m", "pipelines.cli", "models", "rollback", str(config_file),
                 "--reason", "test"], cwd=repo, capture_output=True, text=True, timeout=120)
        thread = threading.Thread(target=go, daemon=True)
        thread.start()
        answers["thread"] = thread

    summary = run_pipeline(config, on_started=send)
    answers["thread"].join(timeout=120)

    cli = answers["cli"]
    assert cli.returncode == 2, cli.stdout + cli.stderr
    assert "refused by the pipeline: rollback: no previous version" in cli.stderr
    assert summary["scored"] == 300
    with Registry(f"sqlite:///{config.out_dir / 'registry.db'}") as reg:
        log = reg.commands()
    assert [c.status for c in log] == ["rejected", "rejected"]
    assert log[0].error is not None and log[0].error.startswith("malformed command")
    assert log[1].op == "rollback" and log[1].actor  # who sent it
    assert all(c.channel.startswith(f"kafka:{topics.models}[0]@") for c in log)
    assert [int(c.channel.rsplit("@", 1)[1]) for c in log] == [0, 1]
