#!/usr/bin/env python
"""The peers that scripts/bench_peers.py runs beside riffle, each as its own process.

Each one is what a user would write without riffle: River's ``predict_proba_one``, the
features held until the label comes, ``learn_one`` then, one JSON line out per
prediction. Each writes a small JSON result (events, seconds from the first event read
to the last prediction written, per-event latency from read to write) to ``--result``.

    python scripts/peer_loops.py minimal --file data.jsonl --out preds.jsonl --result r.json
    python scripts/peer_loops.py bytewax --file data.jsonl --out preds.jsonl --result r.json
    python scripts/peer_loops.py kafka-loop --bootstrap 127.0.0.1:9092 --events-topic E \\
        --feedback-topic F --predictions-topic P --group G --n 200000 --result r.json
    python scripts/peer_loops.py quix ...        # same options as kafka-loop
    python scripts/peer_loops.py ray-floor       # ray.init, six actors importing river, shutdown

Needs the bench extra for bytewax and quix: ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from array import array
from collections import deque
from pathlib import Path
from typing import Any

import orjson

# The models of the sweep, as riffle's configs name them (scoring.model.steps).
MODELS: dict[str, list[dict[str, Any]]] = {
    "logreg": [{"name": "preprocessing.StandardScaler"},
               {"name": "linear_model.LogisticRegression"}],
    "htree": [{"name": "tree.HoeffdingTreeClassifier"}],
    "arf": [{"name": "forest.ARFClassifier", "params": {"n_models": 10, "seed": 42}}],
}
# Columns of `riffle sample` rows that are not features (riffle's file source splits them off).
NOT_FEATURES = frozenset({"record_id", "key", "event_time", "label"})
LABEL_DELAY = 20  # each label arrives 20 events after its event
FILE_PARTITIONS = 2  # riffle's file source: the label delay counts within a partition
clock = time.perf_counter


def build_model(name: str) -> Any:
    """A fresh River model of the sweep, built straight from River (no riffle code)."""
    steps = []
    for step in MODELS[name]:
        module, _, cls = f"river.{step['name']}".rpartition(".")
        steps.append(getattr(importlib.import_module(module), cls)(**step.get("params", {})))
    model = steps[0]
    for s in steps[1:]:
        model = model | s
    return model


def prediction_line(row: dict[str, Any], proba: dict[Any, float]) -> tuple[bytes, Any]:
    """One output line (the record's id and key, the class probabilities, the
    prediction) and the prediction."""
    best = max(proba, key=proba.get) if proba else None
    return orjson.dumps({"record_id": row["record_id"], "key": row["key"],
                         "score": proba, "prediction": best},
                        option=orjson.OPT_NON_STR_KEYS) + b"\n", best


def write_result(path: Path, events: int, elapsed_s: float, lat_s: array,
                 correct: int) -> None:
    """The result file the bench reads: events, processing window, latency quantiles,
    and accuracy of the predictions against their labels (the same learning everywhere)."""
    import numpy as np

    lat = np.frombuffer(lat_s, dtype=np.float64) * 1000.0 if len(lat_s) else np.zeros(1)
    path.write_bytes(orjson.dumps({
        "events": events, "elapsed_s": elapsed_s,
        "events_per_s": events / elapsed_s if elapsed_s > 0 else 0.0,
        "accuracy": correct / events if events else None,
        "latency_ms": {"p50": float(np.percentile(lat, 50)),
                       "p99": float(np.percentile(lat, 99))}}))


# --- the minimal loop -----------------------------------------------------------------


def minimal(file: Path, out: Path, model_name: str, result: Path) -> None:
    """Read the JSONL line by line, predict, write a line, learn when the label comes."""
    model, held, lat, n, correct = build_model(model_name), deque(), array("d"), 0, 0
    with open(file, "rb") as src, open(out, "wb") as dst:
        t0 = clock()
        for line in src:
            t = clock()
            row = orjson.loads(line)
            x = {k: v for k, v in row.items() if k not in NOT_FEATURES}
            out_line, y_pred = prediction_line(row, model.predict_proba_one(x))
            dst.write(out_line)
            lat.append(clock() - t)
            held.append((x, row["label"], y_pred))
            if len(held) > LABEL_DELAY:  # the label of the event 20 back arrives now
                x_old, y, y_old = held.popleft()
                model.learn_one(x_old, y)
                correct += y == y_old
            n += 1
        for x, y, y_old in held:  # the last labels, at the end of the stream
            model.learn_one(x, y)
            correct += y == y_old
        elapsed = clock() - t0
    write_result(result, n, elapsed, lat, correct)


# --- Bytewax + River ------------------------------------------------------------------


class _Clock:
    """First and last event times and per-event latencies, filled by the flow's steps."""

    first = 0.0
    last = 0.0
    n = 0
    correct = 0
    lat = array("d")
    model: Any = None


def _bytewax_step(state: Any, line: str) -> tuple[Any, tuple[float, str]]:
    t = clock()
    if state is None:
        _Clock.first = t
    model, held = state or (_Clock.model, deque())
    row = orjson.loads(line)
    x = {k: v for k, v in row.items() if k not in NOT_FEATURES}
    out, y_pred = prediction_line(row, model.predict_proba_one(x))
    held.append((x, row["label"], y_pred))
    if len(held) > LABEL_DELAY:
        x_old, y, y_old = held.popleft()
        model.learn_one(x_old, y)
        _Clock.correct += y == y_old
    return (model, held), (t, out[:-1].decode())


def _bytewax_done(item: tuple[float, str]) -> str:
    t, out = item
    _Clock.last = clock()
    _Clock.lat.append(_Clock.last - t)
    _Clock.n += 1
    return out


def bytewax(file: Path, out: Path, model_name: str, result: Path) -> None:
    """FileSource -> key_on -> stateful_map (predict, hold, learn) -> map -> FileSink."""
    import bytewax.operators as op
    from bytewax.connectors.files import FileSink, FileSource
    from bytewax.dataflow import Dataflow
    from bytewax.run import cli_main

    _Clock.model = build_model(model_name)  # built before the flow starts, as in the loop
    flow = Dataflow("river-peers")
    lines = op.input("read", flow, FileSource(file))
    keyed = op.key_on("one-model", lines, lambda _line: "model")  # one model: one key
    scored = op.stateful_map("predict-learn", keyed, _bytewax_step)
    done = op.map("latency", scored, lambda kv: (kv[0], _bytewax_done(kv[1])))
    op.output("write", done, FileSink(out))
    cli_main(flow, workers_per_process=1)
    write_result(result, _Clock.n, _Clock.last - _Clock.first, _Clock.lat, _Clock.correct)


# --- Kafka: a minimal kafka-python loop, and Quix Streams -------------------------------


class _Joiner:
    """Predict each event, hold its features until its label comes (from the feedback
    topic, 20 events later), then learn; a label that comes first waits for its event."""

    def __init__(self, model_name: str) -> None:
        self.model = build_model(model_name)
        self.held: dict[str, tuple[dict[str, Any], Any]] = {}
        self.early: dict[str, Any] = {}
        self.scored = self.learned = self.correct = 0
        self.first = self.last = 0.0
        self.lat = array("d")

    def event(self, row: dict[str, Any]) -> bytes:
        x = row["features"]
        line, y_pred = prediction_line(row, self.model.predict_proba_one(x))
        if row["record_id"] in self.early:
            self.learn(x, self.early.pop(row["record_id"]), y_pred)
        else:
            self.held[row["record_id"]] = x, y_pred
        self.scored += 1
        return line[:-1]

    def feedback(self, row: dict[str, Any]) -> None:
        held = self.held.pop(row["record_id"], None)
        if held is None:
            self.early[row["record_id"]] = row["label"]
        else:
            self.learn(held[0], row["label"], held[1])

    def learn(self, x: dict[str, Any], y: Any, y_pred: Any) -> None:
        self.model.learn_one(x, y)
        self.learned += 1
        self.correct += y == y_pred

    def done(self, n: int) -> bool:
        return self.scored >= n and self.learned >= n


def kafka_loop(args: argparse.Namespace) -> None:
    """kafka-python: one consumer on the events and feedback topics, one producer, the
    clients' defaults. Its poll hands over one partition's fetch at a time (thousands of
    records), so labels reach the model later than they were produced: same work, a
    different learning order (its accuracy shows it)."""
    from kafka import KafkaConsumer, KafkaProducer

    j = _Joiner(args.model)
    consumer = KafkaConsumer(args.events_topic, args.feedback_topic,
                             bootstrap_servers=args.bootstrap, group_id=args.group,
                             auto_offset_reset="earliest", client_id="peer-loop")
    producer = KafkaProducer(bootstrap_servers=args.bootstrap, linger_ms=5,
                             client_id="peer-loop")
    idle_since = clock()
    while not j.done(args.n) and clock() - idle_since < args.idle_s:
        for tp, msgs in consumer.poll(timeout_ms=500).items():
            idle_since = clock()
            for m in msgs:
                t = clock()
                j.first = j.first or t
                row = orjson.loads(m.value)
                if tp.topic == args.feedback_topic:
                    j.feedback(row)
                    continue
                producer.send(args.predictions_topic, j.event(row))
                j.last = clock()
                j.lat.append(j.last - t)
    producer.flush()
    producer.close()
    consumer.close()
    write_result(args.result, j.scored, j.last - j.first, j.lat, j.correct)


def quix(args: argparse.Namespace) -> None:
    """Quix Streams: a dataframe per topic; events are scored and sent to predictions."""
    import logging

    from quixstreams import Application

    j = _Joiner(args.model)
    app = Application(broker_address=args.bootstrap, consumer_group=args.group,
                      auto_offset_reset="earliest", loglevel=logging.WARNING)
    events = app.topic(args.events_topic, value_deserializer="json")
    feedback = app.topic(args.feedback_topic, value_deserializer="json")
    predictions = app.topic(args.predictions_topic, value_serializer="bytes")

    started = array("d", [0.0])  # when the event now in the chain was taken

    def score(row: dict[str, Any]) -> bytes:
        started[0] = clock()
        j.first = j.first or started[0]
        return j.event(row)

    def measured(_line: bytes) -> None:
        j.last = clock()
        j.lat.append(j.last - started[0])
        if j.done(args.n):
            app.stop()

    def learn(row: dict[str, Any]) -> None:
        j.feedback(row)
        if j.done(args.n):
            app.stop()

    app.dataframe(events).apply(score).to_topic(predictions).update(measured)
    app.dataframe(feedback).update(learn)
    app.run(timeout=args.idle_s)
    write_result(args.result, j.scored, j.last - j.first, j.lat, j.correct)


# --- Ray's own floor --------------------------------------------------------------------


def ray_floor(n_actors: int) -> None:
    """ray.init as riffle does, ``n_actors`` actors that import River's modules for a
    model (StandardScaler | LogisticRegression), ray.shutdown."""
    import os

    import ray

    @ray.remote(num_cpus=0)
    class Importer:
        def ready(self) -> str:
            # `import river` alone loads nothing (River imports its modules lazily): build
            # the sweep's first model, as any actor that serves one must.
            import river

            build_model("logreg")
            return river.__version__

    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False,
             num_cpus=os.cpu_count() or 2)
    actors = [Importer.remote() for _ in range(n_actors)]
    ray.get([a.ready.remote() for a in actors])
    ray.shutdown()


# --- riffle's own cores in one process (not a peer: the Ray pipeline's baseline) ----------


def riffle_cores(file: Path, out: Path, model_name: str, result: Path, partitions: int) -> None:
    """riffle's Ray-free cores called in one loop (scripts/bench.py's): file source,
    validation, routing, scoring and learning, the file sink; no Ray between them."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench import make_config, plain_loop

    config = make_config({"kind": "file", "path": str(file), "partitions": partitions,
                          "label_column": "label", "label_delay_events": LABEL_DELAY},
                         1, 1, out.parent)
    config = config.model_copy(update={"scoring": config.scoring.model_copy(
        update={"model": config.scoring.model.model_validate({"steps": MODELS[model_name]})})})
    r = plain_loop(config, out.parent)
    result.write_bytes(orjson.dumps({
        "events": r["events"], "events_per_s": r["events_per_s"], "accuracy": r["accuracy"],
        "latency_ms": {"p50": r["p50_ms"], "p99": r["p99_ms"]}}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("peer", choices=["minimal", "bytewax", "kafka-loop", "quix", "ray-floor",
                                     "riffle-cores"])
    ap.add_argument("--model", choices=sorted(MODELS), default="logreg")
    ap.add_argument("--file", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--result", type=Path)
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--events-topic")
    ap.add_argument("--feedback-topic")
    ap.add_argument("--predictions-topic")
    ap.add_argument("--group")
    ap.add_argument("--n", type=int, default=0, help="events to wait for (Kafka)")
    ap.add_argument("--idle-s", type=float, default=20.0,
                    help="give up after this long without a message (Kafka)")
    ap.add_argument("--actors", type=int, default=6, help="ray-floor: actors to start")
    args = ap.parse_args()
    if args.peer == "minimal":
        minimal(args.file, args.out, args.model, args.result)
    elif args.peer == "riffle-cores":
        riffle_cores(args.file, args.out, args.model, args.result, FILE_PARTITIONS)
    elif args.peer == "bytewax":
        bytewax(args.file, args.out, args.model, args.result)
    elif args.peer == "kafka-loop":
        kafka_loop(args)
    elif args.peer == "quix":
        quix(args)
    else:
        ray_floor(args.actors)


if __name__ == "__main__":
    main()
