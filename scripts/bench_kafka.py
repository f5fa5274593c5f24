#!/usr/bin/env python
"""Kafka end to end: the Ray pipeline beside riffle's own cores in one process without
Ray, then produce-to-prediction latency under a live feed. (The peers a user would run
instead, a minimal kafka-python loop and Quix Streams, are in scripts/bench_peers.py.)

Both read the same events and feedback topics (each with a consumer group of its own),
validate, predict, learn, produce predictions and commit offsets after the producer's
ack. Needs a broker: RIFFLE_KAFKA_BOOTSTRAP, or `make kafka-start` (127.0.0.1:9092).

    python scripts/bench_kafka.py --events 100000
    python scripts/bench_kafka.py --events 0 --max-rate 6000 --rates 1000   # latency only

Throughput is measured on a backlog (all events produced first). Latency, from each
event's Kafka timestamp (set by the feed when it sends) to its prediction's (set by the
sink when it sends), is measured at each of ``--rates`` (``half`` is half the best backlog
rate, or of ``--max-rate``) on fresh topics, while the feed (``riffle produce`` of
synthetic events and their labels, 20 events later) runs as a process of its own on the
same cores. Beside each latency: the CPU seconds of the feed (its own rusage), of the
pipeline (the driver and every process Ray started, sampled) and of the broker.

Ray starts as `riffle run` starts it (``actors.driver.ensure_ray``). Ray's default runs its
worker processes, so every riffle actor, at nice 15: on cores it shares with the feed and
the broker (nice 0), the pipeline got only the CPU they left; so ``ensure_ray`` sets
``RAY_worker_niceness=0`` for a local Ray. ``--worker-niceness 15`` measures Ray's default.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.config import (  # noqa: E402
    KafkaSourceConfig,
    PipelineConfig,
    SyntheticSourceConfig,
)
from pipelines.ingest import IngestCore  # noqa: E402
from pipelines.kafka import ensure_topics  # noqa: E402
from pipelines.produce import produce  # noqa: E402
from pipelines.protocol import Batch, SinkBatch  # noqa: E402
from pipelines.scoring import ScorerCore  # noqa: E402
from pipelines.sinks import KafkaSink  # noqa: E402
from pipelines.sources import open_reader  # noqa: E402
from pipelines.sources.kafka import KafkaReader  # noqa: E402

LABEL_DELAY = 20


def make_config(bootstrap: str, tag: str, group: str, n_ingest: int, n_scorers: int,
                idle_stop_s: float = 5.0, overrides: dict[str, Any] | None = None
                ) -> PipelineConfig:
    raw: dict[str, Any] = {
        "name": f"bench-kafka-{group}",
        "source": {"kind": "kafka", "partitions": 4, "idle_stop_s": idle_stop_s},
        "ingest": {"n_actors": n_ingest, "num_cpus": 0},
        "scoring": {"n_actors": n_scorers, "num_cpus": 0},
        "output": {"kind": "kafka", "out_dir": f"/tmp/riffle-bench-kafka/{group}"},
        "kafka": {"bootstrap_servers": bootstrap, "group_id": f"bench-{tag}-{group}",
                  "topics": {t: f"bench-{tag}-{group if t == 'predictions' else 'in'}-{t}"
                             for t in ("events", "feedback", "predictions", "dead_letters",
                                       "models")}},
    }
    for dotted, value in (overrides or {}).items():
        *path, last = dotted.split(".")
        node = raw
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return PipelineConfig.model_validate(raw)


def load(config: PipelineConfig, n_events: int, rate: float | None = None,
         seed: int = 7) -> None:
    ensure_topics(config.kafka, 4)
    src = SyntheticSourceConfig(kind="synthetic", partitions=4, n_events=n_events, seed=seed,
                                label_delay_events=LABEL_DELAY)
    produce(open_reader(src, list(range(4))), config.kafka, rate_per_s=rate)


def plain_loop(config: PipelineConfig, n_events: int) -> dict[str, Any]:
    """One process: the same reader, validation, model and sink cores, no Ray."""
    from pipelines.models import build_model, task_of

    task = task_of(build_model(config.scoring.model))
    assert isinstance(config.source, KafkaSourceConfig)
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
    return {"events": s["events"], "events_per_s": s["events_per_s"],
            "read_to_written_ms": s.get("latency_ms", {})}


def latency_ms(config: PipelineConfig, bootstrap: str, warmup_s: float = 3.0
               ) -> dict[str, float]:
    """Percentiles from each event's Kafka timestamp to its prediction's (after a warm-up)."""
    from tests.kafka_helpers import read_topic

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
    return {"n": len(arr), **{f"p{q}": float(np.percentile(arr, q)) for q in (50, 90, 99)},
            "max": float(arr.max())}


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

    def seconds(self) -> float:
        return self._cpu() - self.c0

    def share(self) -> float:
        """Average cores used since creation (1.0 = one full core)."""
        return self.seconds() / max(1e-9, time.monotonic() - self.t0)


class TreeCpu:
    """CPU seconds of this process and its descendants (Ray's GCS, raylet and workers)
    over a span, less ``exclude`` (the feed): each process's count sampled every
    ``interval_s``, from its count at the start (0 for a process started since)."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.exclude: set[int] = set()
        self._first: dict[tuple[int, float], float] = {}
        self._last: dict[tuple[int, float], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        me = psutil.Process()
        self._sample([me, *me.children(recursive=True)], baseline=True)

    def _sample(self, procs: list[psutil.Process], *, baseline: bool = False) -> None:
        for p in procs:
            if p.pid in self.exclude:
                continue
            try:
                key = (p.pid, p.create_time())
                t = p.cpu_times()
            except psutil.Error:
                continue
            cpu = t.user + t.system
            if baseline:
                self._first[key] = cpu
            self._first.setdefault(key, 0.0)
            self._last[key] = cpu

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(self.interval_s):
            self._sample([me, *me.children(recursive=True)])

    def __enter__(self) -> TreeCpu:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        me = psutil.Process()
        self._sample([me, *me.children(recursive=True)])

    def seconds(self) -> float:
        return sum(self._last[k] - self._first[k] for k in self._last)


class Feed:
    """The live feed, as a process of its own; its CPU from its rusage.

    ``riffle``: `riffle produce` (kafka-python; it generates each event as it sends it).
    ``light``: the same synthetic events and labels, generated before the run starts and
    sent by confluent-kafka (librdkafka, the bench extra); its CPU is counted from the
    first send, so that only what competes with the pipeline is counted.
    """

    def __init__(self, kind: str, config: PipelineConfig, n_events: int, rate: float,
                 seed: int, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.kind = kind
        self.path = workdir / "feed.yaml"
        self.path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
        args = [str(self.path), "--events", str(n_events), "--rate", f"{rate:.3f}",
                "--label-delay-events", str(LABEL_DELAY), "--seed", str(seed)]
        self.cmd = ([sys.executable, "-m", "pipelines.cli", "produce", *args] if kind == "riffle"
                    else [sys.executable, str(Path(__file__).resolve()), "_feed", *args])
        self.proc: subprocess.Popen[bytes] | None = None
        self.cpu_s = 0.0
        self.rc: int | None = None

    def prepare(self) -> None:
        """Start the light feed and wait until its events are generated."""
        if self.kind == "light":
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE)
            assert self.proc.stdout is not None
            if self.proc.stdout.readline().strip() != b"ready":
                raise RuntimeError(f"the feed did not start: {self.cmd}")

    def start(self) -> int:
        if self.proc is None:
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
        else:
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"go\n")
            self.proc.stdin.flush()
        return self.proc.pid

    def wait(self) -> None:
        assert self.proc is not None
        sent_cpu = self.proc.stdout.read() if self.kind == "light" and self.proc.stdout else b""
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = self.rc = os.waitstatus_to_exitcode(status)
        self.cpu_s = float(sent_cpu) if sent_cpu.strip() else usage.ru_utime + usage.ru_stime


def light_feed(argv: list[str]) -> None:
    """The ``light`` feed's process (see :class:`Feed`)."""
    from confluent_kafka import Producer

    ap = argparse.ArgumentParser()
    ap.add_argument("config", type=Path)
    ap.add_argument("--events", type=int)
    ap.add_argument("--rate", type=float)
    ap.add_argument("--label-delay-events", type=int)
    ap.add_argument("--seed", type=int)
    args = ap.parse_args(argv)
    import orjson

    from pipelines.sources.base import RateLimiter

    cfg = PipelineConfig.model_validate(yaml.safe_load(args.config.read_text()))
    topics = {"event": cfg.kafka.topics.events, "feedback": cfg.kafka.topics.feedback}
    src = SyntheticSourceConfig(kind="synthetic", partitions=4, n_events=args.events,
                                seed=args.seed, label_delay_events=args.label_delay_events)
    reader = open_reader(src, list(range(4)))
    # Per event, the messages sent with it: the event, then labels that came due.
    steps: list[list[tuple[str, bytes, bytes | None]]] = []
    while not reader.exhausted:
        for m in reader.read(5000):
            if m.payload is None:
                continue
            key = m.payload.get("key")
            message = (topics[m.kind], orjson.dumps(m.payload),
                       str(key).encode() if key is not None else None)
            if m.kind == "event" or not steps:
                steps.append([message])
            else:
                steps[-1].append(message)
    producer = Producer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "linger.ms": 5,
                         "acks": "all", "enable.idempotence": True,
                         # Kafka's default partitioner (murmur2 of the key), as riffle produce
                         "partitioner": "murmur2_random"})
    print("ready", flush=True)
    sys.stdin.readline()
    cpu0 = time.process_time()
    limiter = RateLimiter(args.rate)
    i = 0
    while i < len(steps):
        n = limiter.allowance(500)
        if not n:
            time.sleep(0.001)
            continue
        for step in steps[i:i + n]:
            for topic, value, key in step:
                producer.produce(topic, value, key)
        i += n
        producer.poll(0)
    producer.flush()
    print(time.process_time() - cpu0, flush=True)


def broker_pid(bootstrap: str) -> int | None:
    port = int(bootstrap.rsplit(":", 1)[-1])
    for p in psutil.process_iter(["cmdline"]):
        if "kafka.Kafka" in (p.info["cmdline"] or []):
            try:
                if any(c.laddr.port == port for c in p.net_connections("inet")
                       if c.status == psutil.CONN_LISTEN):
                    return p.pid
            except psutil.Error:
                continue
    return None


def live_latency(bootstrap: str, tag: str, shape: tuple[int, int], rate: float,
                 seconds: float, overrides: dict[str, Any], bpid: int | None,
                 feed_kind: str) -> dict[str, Any]:
    """A pipeline of ``shape`` fed at ``rate`` for ``seconds`` on fresh topics."""
    n_ing, n_sc = shape
    # Topics of its own: the backlog's input topics are not read again.
    live = make_config(bootstrap, f"{tag}-l{int(rate)}", "live", n_ing, n_sc,
                       idle_stop_s=4.0, overrides=overrides)
    ensure_topics(live.kafka, 4)
    n_live = int(rate * seconds)
    feed = Feed(feed_kind, live, n_live, rate, 11,
                Path(f"/tmp/riffle-bench-kafka/{tag}-l{int(rate)}"))
    feed.prepare()
    broker = CpuMeter(bpid)
    with TreeCpu() as tree:
        r = pipeline(live, on_started=lambda _supervisor: tree.exclude.add(feed.start()))
        feed.wait()
    return {"rate": rate, "shape": shape, "events": r["events"],
            "latency": latency_ms(live, bootstrap),
            "read_to_written_ms": r["read_to_written_ms"], "feed_cpu_s": feed.cpu_s,
            "feed_rc": feed.rc, "pipeline_cpu_s": tree.seconds(),
            "broker_cpu_s": broker.seconds()}


def parse_overrides(items: list[str]) -> dict[str, Any]:
    return {k: yaml.safe_load(v) for k, _, v in (i.partition("=") for i in items)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000,
                    help="backlog for throughput (0: skip it; give --max-rate)")
    ap.add_argument("--max-rate", type=float, help="the max rate for 'half' (default: measured)")
    ap.add_argument("--rates", default="1000,half", help="live feed rates, events/s")
    ap.add_argument("--shape", default="1x1", help="ingest x scoring actors of the live runs")
    ap.add_argument("--latency-s", type=float, default=20.0, help="seconds of live feed")
    ap.add_argument("--no-loop", action="store_true", help="skip riffle's cores without Ray")
    ap.add_argument("--feed", choices=["riffle", "light"], default="riffle",
                    help="riffle: `riffle produce` (kafka-python); light: pre-generated, sent "
                    "by confluent-kafka (the bench extra)")
    ap.add_argument("--worker-niceness", type=int,
                    help="RAY_worker_niceness for this run's Ray (default: riffle's, 0)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every pipeline, e.g. ingest.linger_s=0.002")
    args = ap.parse_args()
    bootstrap = os.environ.get("RIFFLE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    overrides = parse_overrides(args.set)

    import ray

    from actors.driver import ensure_ray

    if args.worker_niceness is not None:
        os.environ["RAY_worker_niceness"] = str(args.worker_niceness)
    ensure_ray(2)
    niceness = os.environ.get("RAY_worker_niceness", "0 (riffle's default)")
    tag = uuid.uuid4().hex[:8]
    bpid = broker_pid(bootstrap)
    rows = []
    if args.events:
        base = make_config(bootstrap, tag, "loop", 1, 1, overrides=overrides)
        t = time.time()
        load(base, args.events)
        print(f"loaded {args.events:,} events + feedback in {time.time() - t:.1f} s", flush=True)
        if not args.no_loop:
            meter = CpuMeter(bpid)
            rows.append(("riffle's cores, 1 process, no Ray", plain_loop(base, args.events),
                         meter.share()))
        for n_ing, n_sc in ((1, 1), (1, 2), (2, 2)):
            meter = CpuMeter(bpid)
            r = pipeline(make_config(bootstrap, tag, f"p{n_ing}{n_sc}", n_ing, n_sc,
                                     overrides=overrides))
            rows.append((f"pipeline {n_ing} ingest + {n_sc} scoring", r, meter.share()))
    best = max((r["events_per_s"] for name, r, _ in rows if name.startswith("pipeline")),
               default=None)
    max_rate = args.max_rate or best
    rates = []
    for r in args.rates.split(","):
        if r == "half":
            if max_rate is None:
                ap.error("--rates half needs a backlog run (--events) or --max-rate")
            rates.append(max_rate / 2)
        else:
            rates.append(float(r))
    i, s = (int(x) for x in args.shape.split("x"))
    lives = []
    for rate in rates:
        lives.append(live_latency(bootstrap, tag, (i, s), rate, args.latency_s, overrides, bpid,
                                  args.feed))
        print(f"... live at {rate:,.0f}/s done", file=sys.stderr, flush=True)
    ray.shutdown()

    if rows:
        print("| run | events | events/s | vs cores | broker CPU (cores) |")
        print("|---|---:|---:|---:|---:|")
        base_rate = rows[0][1]["events_per_s"]
        for name, res, cpu in rows:
            print(f"| {name} | {res['events']:,} | {res['events_per_s']:,.0f} | "
                  f"{res['events_per_s'] / base_rate:.2f}x | {cpu:.2f} |")
        print()
    print(f"latency, the event's Kafka timestamp -> its prediction's, {i} ingest + {s} scoring, "
          f"{args.latency_s:.0f} s of feed (the first 3 s left out); max rate "
          f"{fmt(max_rate, ',.0f')}/s; Ray's workers at nice {niceness}; feed: {args.feed}; "
          "CPU seconds over the run (the light feed's from its first send):")
    print("| rate ev/s | events | p50 ms | p90 ms | p99 ms | max ms | read->written p50/p99 ms "
          "| feed CPU s | pipeline CPU s | broker CPU s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for x in lives:
        lat, rw = x["latency"], x["read_to_written_ms"]
        print(f"| {x['rate']:,.0f} | {x['events']:,} | {lat['p50']:.0f} | {lat['p90']:.0f} | "
              f"{lat['p99']:.0f} | {lat['max']:.0f} | {fmt(rw.get('p50'), '.1f')} / "
              f"{fmt(rw.get('p99'), '.1f')} | {x['feed_cpu_s']:.1f} | "
              f"{x['pipeline_cpu_s']:.1f} | {x['broker_cpu_s']:.1f} |")
        if x["feed_rc"]:
            print(f"  (the feed exited with {x['feed_rc']})")


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


if __name__ == "__main__":
    if sys.argv[1:2] == ["_feed"]:
        light_feed(sys.argv[2:])
    else:
        main()
