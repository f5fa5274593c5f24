#!/usr/bin/env python
"""Kafka end to end: the Ray pipeline beside a plain single-process kafka-python loop.

Both read the same events and feedback topics (each with a consumer group of its own),
validate, predict, learn, produce predictions and commit offsets after the producer's
ack. Needs a broker: RIFFLE_KAFKA_BOOTSTRAP, or `make kafka-start` (127.0.0.1:9092).

    python scripts/bench_kafka.py --events 100000

Throughput is measured on a backlog (all events produced first); latency, from the
event's Kafka timestamp to its prediction's, while events are produced at half the
pipeline's measured rate.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.config import PipelineConfig, SyntheticSourceConfig  # noqa: E402
from pipelines.ingest import IngestCore  # noqa: E402
from pipelines.kafka import ensure_topics  # noqa: E402
from pipelines.produce import produce  # noqa: E402
from pipelines.protocol import Batch, SinkBatch  # noqa: E402
from pipelines.scoring import ScorerCore  # noqa: E402
from pipelines.sinks import KafkaSink  # noqa: E402
from pipelines.sources import open_reader  # noqa: E402
from pipelines.sources.kafka import KafkaReader  # noqa: E402


def make_config(bootstrap: str, tag: str, group: str, n_ingest: int, n_scorers: int,
                idle_stop_s: float = 5.0) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "name": f"bench-kafka-{group}",
        "source": {"kind": "kafka", "partitions": 4, "idle_stop_s": idle_stop_s},
        "ingest": {"n_actors": n_ingest, "num_cpus": 0},
        "scoring": {"n_actors": n_scorers, "num_cpus": 0},
        "output": {"kind": "kafka", "out_dir": f"/tmp/riffle-bench-kafka/{group}"},
        "kafka": {"bootstrap_servers": bootstrap, "group_id": f"bench-{tag}-{group}",
                  "topics": {t: f"bench-{tag}-{group if t == 'predictions' else 'in'}-{t}"
                             for t in ("events", "feedback", "predictions", "dead_letters",
                                       "models")}},
    })


def load(config: PipelineConfig, n_events: int, rate: float | None = None,
         seed: int = 7) -> None:
    ensure_topics(config.kafka, 4)
    src = SyntheticSourceConfig(kind="synthetic", partitions=4, n_events=n_events, seed=seed,
                                label_delay_events=20)
    produce(open_reader(src, list(range(4))), config.kafka, rate_per_s=rate)


def plain_loop(config: PipelineConfig, n_events: int) -> dict[str, Any]:
    """One process: the same reader, validation, model and sink cores, no Ray."""
    from pipelines.models import build_model, task_of

    task = task_of(build_model(config.scoring.model))
    reader = KafkaReader(config.source, config.kafka, max_message_bytes=1 << 20,
                         client_id="plain-loop")
    core = IngestCore(config.model_copy(update={"scoring": config.scoring.model_copy(
        update={"n_actors": 1})}), task=task)
    scorer = ScorerCore(config.scoring, name="plain-loop")
    sink = KafkaSink(config.kafka, client_id="plain-loop-sink")
    seq, t0 = 0, None
    while scorer.counts["scored"] < n_events and not reader.exhausted:
        msgs = reader.read(500)
        if not msgs:
            continue
        t0 = t0 or time.time()
        routed, dead = core.route(msgs)
        if dead:
            sink.write(SinkBatch.of_dead_letters(dead))
        sink.write(scorer.process(Batch(seq, routed[0])))
        reader.commit(reader.positions())
        seq += 1
    elapsed = time.time() - (t0 or time.time())
    sink.close()
    reader.close()
    return {"events": core.counts["events"], "events_per_s": core.counts["events"] / elapsed}


def pipeline(config: PipelineConfig, on_started: Any = None) -> dict[str, Any]:
    from actors.driver import run_pipeline

    s = run_pipeline(config, on_started=on_started)
    return {"events": s["events"], "events_per_s": s["events_per_s"]}


def latency_ms(config: PipelineConfig, warmup_s: float = 3.0) -> tuple[float, float]:
    """p50, p99 from each event's Kafka timestamp to its prediction's (after a warm-up)."""
    from tests.kafka_helpers import read_topic

    bootstrap = config.kafka.bootstrap_servers
    produced = {}
    for m in read_topic(bootstrap, config.kafka.topics.events, idle_s=2):
        produced[m.value[m.value.index(b'"record_id":"') + 13:].split(b'"', 1)[0]] = m.timestamp
    start = min(produced.values()) + warmup_s * 1000
    lat = []
    for m in read_topic(bootstrap, config.kafka.topics.predictions, idle_s=2):
        rid = m.value[m.value.index(b'"record_id":"') + 13:].split(b'"', 1)[0]
        if produced.get(rid, 0) >= start:
            lat.append(m.timestamp - produced[rid])
    arr = np.array(lat, dtype=float)
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


class CpuMeter:
    """CPU seconds used by a process (the broker's JVM) over a measured span."""

    def __init__(self, pid: int | None) -> None:
        self.proc = psutil.Process(pid) if pid else None
        self.t0 = time.monotonic()
        self.c0 = self._cpu()

    def _cpu(self) -> float:
        if self.proc is None:
            return 0.0
        t = self.proc.cpu_times()
        return t.user + t.system

    def share(self) -> float:
        """Average cores used since creation (1.0 = one full core)."""
        return (self._cpu() - self.c0) / max(1e-9, time.monotonic() - self.t0)


def broker_pid() -> int | None:
    for p in psutil.process_iter(["cmdline"]):
        if "kafka.Kafka" in (p.info["cmdline"] or []):
            return p.pid
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--latency-s", type=float, default=20.0)
    args = ap.parse_args()
    bootstrap = os.environ.get("RIFFLE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    tag = uuid.uuid4().hex[:8]
    rows = []
    base = make_config(bootstrap, tag, "loop", 1, 1)
    t = time.time()
    load(base, args.events)
    print(f"loaded {args.events:,} events + feedback in {time.time() - t:.1f} s", flush=True)
    pid = broker_pid()

    meter = CpuMeter(pid)
    loop = plain_loop(base, args.events)
    rows.append(("plain kafka-python loop (1 process)", loop, meter.share()))
    for n_ing, n_sc in ((1, 1), (2, 2)):
        meter = CpuMeter(pid)
        r = pipeline(make_config(bootstrap, tag, f"p{n_ing}{n_sc}", n_ing, n_sc))
        rows.append((f"pipeline {n_ing} ingest + {n_sc} scoring", r, meter.share()))
    best = max(r["events_per_s"] for _, r, _ in rows[1:])

    # Latency: a fresh stream produced at half the pipeline's rate while it runs.
    live = make_config(bootstrap, tag + "l", "p22", 2, 2, idle_stop_s=6.0)
    rate = best / 2
    n_live = int(rate * args.latency_s)
    producer = threading.Thread(target=load, args=(live, n_live, rate, 11))
    ensure_topics(live.kafka, 4)
    r = pipeline(live, on_started=lambda _supervisor: producer.start())
    producer.join()
    p50, p99 = latency_ms(live)
    ray.shutdown()

    print("| run | events | events/s | vs loop | broker CPU (cores) |")
    print("|---|---:|---:|---:|---:|")
    base_rate = rows[0][1]["events_per_s"]
    for name, res, cpu in rows:
        print(f"| {name} | {res['events']:,} | {res['events_per_s']:,.0f} | "
              f"{res['events_per_s'] / base_rate:.2f}x | {cpu:.2f} |")
    print(f"\nlatency, produce -> prediction timestamps, 2+2 fed at {rate:,.0f}/s "
          f"({r['events']:,} events): p50 {p50:.0f} ms, p99 {p99:.0f} ms")


if __name__ == "__main__":
    main()
