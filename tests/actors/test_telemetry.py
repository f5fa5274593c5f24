"""Telemetry of a real run: the one Prometheus endpoint, and OTLP to a real receiver."""

from __future__ import annotations

import random
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families
from river.datasets import synth

from actors.driver import run_pipeline
from tests.helpers import read_jsonl
from tests.otlp_receiver import OtlpReceiver

FEATURES = ["salary", "commission", "age", "elevel", "car", "zipcode", "hvalue", "hyears", "loan"]
ALLOWED_LABELS = {"pipeline", "actor", "role", "model_version", "arm", "reason", "cpu_mode", "le"}


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def scrape(url: str) -> dict[str, list[Any]]:
    """The endpoint's samples by sample name, parsed by prometheus_client's parser."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types)), "a metric family twice (Prometheus rejects it)"
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def total(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, [])
               if all(s.labels.get(k) == v for k, v in labels.items()))


def _events_file(tmp_path: Path, n: int) -> tuple[Path, int]:
    """Agrawal rows with a few bad lines and replayed records (dead letters of two kinds)."""
    rnd = random.Random(3)
    lines, n_bad = [], 0
    for i, (x, y) in enumerate(synth.Agrawal(seed=4).take(n)):
        row = {"record_id": f"r{i}", "key": f"k{rnd.randrange(500)}", **x, "label": y}
        if i % 97 == 5:
            lines.append(orjson.dumps(row).decode()[:-5])  # truncated JSON
            n_bad += 1
        elif i % 101 == 7 and i > 10:
            lines.append(lines[-1])  # a replayed record
        else:
            lines.append(orjson.dumps(row).decode())
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, n_bad


def test_telemetry_prometheus_scraped_during_run_counters_equal_summary(
        make_config: Callable[..., Any], tmp_path: Path) -> None:
    path, _ = _events_file(tmp_path, 6000)
    config = make_config(
        source={"kind": "file", "path": str(path), "partitions": 4, "label_column": "label",
                "features": FEATURES, "label_delay_events": 30, "time_column": None,
                "rate_per_s": 2000.0},
        ingest={"n_actors": 1, "batch_size": 100}, scoring={"n_actors": 2},
        checkpoint={"interval_s": 1.0},
        telemetry={"prometheus_host": "127.0.0.1", "prometheus_port": 0, "linger_s": 120.0})
    out = config.out_dir
    stop = threading.Event()
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["summary"] = run_pipeline(config, stop=stop)
        except BaseException as e:
            result["error"] = e

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    try:
        def url_once_reading() -> str | None:
            try:
                status = orjson.loads((out / "status.json").read_bytes())
            except (FileNotFoundError, orjson.JSONDecodeError):
                return None
            return status["telemetry"]["prometheus"] if status.get("events") else None

        url = wait_for("a status with events read", url_once_reading)
        during = wait_for("scorers' counts on the endpoint", lambda: (
            s := scrape(url)) and total(s, "riffle_events_scored_total") > 0 and s)
        assert total(during, "riffle_events_in_total", actor="ingest-0") > 0
        wait_for("summary.json", lambda: (out / "summary.json").exists(), timeout_s=120)
        summary = orjson.loads((out / "summary.json").read_bytes())
        assert summary["telemetry"]["prometheus"] == url
        final = scrape(url)
    finally:
        stop.set()
        runner.join(60)
    assert "error" not in result, result.get("error")

    assert summary["events"] > total(during, "riffle_events_in_total") > 0
    # Counts read from the cores' own counters: exactly the summary's.
    for name, key in [("riffle_events_in_total", "events"),
                      ("riffle_feedback_in_total", "feedback"),
                      ("riffle_duplicates_total", "duplicates"),
                      ("riffle_invalid_total", "invalid"),
                      ("riffle_events_scored_total", "scored"),
                      ("riffle_labels_learned_total", "learned"),
                      ("riffle_labels_expired_total", "labels_expired"),
                      ("riffle_events_out_total", "predictions_written"),
                      ("riffle_dead_letters_total", "dead_letters"),
                      ("riffle_labels_pending", "labels_pending")]:
        assert total(final, name) == summary[key], (name, total(final, name), summary[key])
    assert summary["dead_letters"] > 0 and summary["duplicates"] > 0
    reasons = Counter(d["error_class"] for d in read_jsonl(out / "dead_letters.jsonl"))
    for reason, n in reasons.items():
        assert total(final, "riffle_dead_letters_total", reason=reason) == n
    live = summary["deployment"]["arms"]["live"]
    assert total(final, "riffle_arm_scored_total", arm="live", model_version="v0") == \
        live["scored"]
    # Every routed record went to a scorer in some batch: the batch sizes add up.
    assert total(final, "riffle_batch_size_sum") == (
        summary["scored"] + summary["model_errors"] + total(final, "riffle_labels_feedback_total"))
    assert total(final, "riffle_e2e_latency_seconds_count") > 0
    assert total(final, "messaging_process_duration_seconds_count", role="scorer") > 0
    assert total(final, "riffle_checkpoints_total") == summary["supervision"]["n_checkpoints"]
    actors = {s.labels["actor"] for s in final["process_cpu_time_seconds_total"]}
    assert actors == {"supervisor", "sink", "scorer-0", "scorer-1", "ingest-0"}
    assert all(s.value > 0 for s in final["process_memory_usage_bytes"])
    for samples in final.values():  # bounded cardinality: never a record id or a key
        for s in samples:
            assert set(s.labels) <= ALLOWED_LABELS, s


def test_telemetry_otlp_spans_linked_across_three_actors_and_metrics_received(
        make_config: Callable[..., Any]) -> None:
    with OtlpReceiver() as receiver:
        config = make_config(
            source={"kind": "synthetic", "partitions": 2, "n_events": 2000,
                    "label_delay_events": 10},
            ingest={"batch_size": 100}, scoring={"n_actors": 2},
            telemetry={"exporters": ["otlp"], "otlp_endpoint": receiver.endpoint,
                       "sample_ratio": 1.0, "export_interval_s": 0.5})
        summary = run_pipeline(config)  # its end flushes every actor's exporters
    spans = receiver.spans
    by_id = {s["span_id"]: s for s in spans}
    writes = [s for s in spans if s["name"] == "sink.write"]
    assert writes and sum(w["attributes"]["messaging.batch.message_count"]
                          for w in writes) == summary["predictions_written"]
    for write in writes:  # sink <- scorer <- ingest route <- ingest read, one trace
        score = by_id[write["parent"]]
        route = by_id[score["parent"]]
        read = by_id[route["parent"]]
        assert [write["name"], score["name"], route["name"], read["name"]] == [
            "sink.write", "scorer.score", "ingest.route", "ingest.read"]
        assert write["actor"] == "sink" and score["actor"] in ("scorer-0", "scorer-1")
        assert route["actor"] == read["actor"] == "ingest-0"
        assert read["parent"] == ""  # a root: no producer's context on an embedded source
        assert len({s["trace_id"] for s in (write, score, route, read)}) == 1
        assert read["attributes"]["messaging.operation.type"] == "receive"
        assert score["attributes"]["messaging.operation.type"] == "process"
    assert {s["actor"] for s in spans if s["name"] == "scorer.score"} == {"scorer-0", "scorer-1"}
    # Metrics: every actor's own export, the final one equal to the summary.
    assert receiver.latest("riffle.events.in") == {"ingest-0": summary["events"]}
    assert sum(receiver.latest("riffle.events.scored").values()) == summary["scored"]
    assert receiver.latest("riffle.events.out") == {"sink": summary["predictions_written"]}
    assert set(receiver.latest("process.cpu.time")) == {
        "supervisor", "sink", "scorer-0", "scorer-1", "ingest-0"}
