#!/usr/bin/env python
"""What telemetry costs per batch, measured in one process without Ray.

The loop of ``scripts/bench.py``'s plain loop (read, route, score and learn, write) over a
generated sample, alternately without telemetry and with every hook the actors run: the
ingest spans and histograms, the scorer's wrapper, the sink's, and a metrics snapshot of
each role every 0.5 s (what the Supervisor asks for). CPU seconds of this process are the
figure (less sensitive than wall time to a busy machine); rounds alternate on and off.

    python scripts/bench_telemetry.py --events 100000 --rounds 5 --sample-ratio 0.01
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.config import PipelineConfig, TelemetryConfig  # noqa: E402
from pipelines.ingest import IngestCore  # noqa: E402
from pipelines.models import build_model, task_of  # noqa: E402
from pipelines.monitoring.instruments import IngestMeters  # noqa: E402
from pipelines.monitoring.scorer import ScorerTelemetry  # noqa: E402
from pipelines.monitoring.sink import SinkTelemetry  # noqa: E402
from pipelines.monitoring.telemetry import Telemetry  # noqa: E402
from pipelines.monitoring.tracing import IngestSpans  # noqa: E402
from pipelines.protocol import Batch, SinkBatch  # noqa: E402
from pipelines.scoring import ScorerCore  # noqa: E402
from pipelines.sinks import FileSink  # noqa: E402
from pipelines.sources import open_reader  # noqa: E402
from pipelines.sources.sample import write_sample  # noqa: E402

SNAPSHOT_EVERY_S = 0.5


def one_round(config: PipelineConfig, out: Path, telemetry: TelemetryConfig | None
              ) -> dict[str, float]:
    task = task_of(build_model(config.scoring.model))
    reader = open_reader(config.source, list(range(config.source.partitions)))
    core = IngestCore(config, task=task)
    scorer = ScorerCore(config.scoring, name="scorer-0")
    sink = FileSink(out)
    spans = meters = scorer_t = sink_t = None
    tel: Telemetry | None = None
    if telemetry is not None:
        tel = Telemetry(telemetry, pipeline="bench", actor="ingest-0", role="ingest")
        meters = IngestMeters(tel, counts=lambda: core.counts, in_flight=lambda: 0)
        spans = IngestSpans(tel.tracer, system="riffle", consumer_group=None, from_headers=False)
        scorer_t = ScorerTelemetry(telemetry, pipeline="bench", actor="scorer-0",
                                   core=lambda: scorer)
        sink_t = SinkTelemetry(telemetry, pipeline="bench", system="file",
                               destination="predictions.jsonl", counts=lambda: sink.counts)
    cpu0, t0 = time.process_time(), time.perf_counter()
    next_snapshot = t0 + SNAPSHOT_EVERY_S
    seq = 0
    while not reader.exhausted:
        read_ns = time.time_ns()
        msgs = reader.read(config.ingest.batch_size)
        if not msgs:
            continue
        if spans is None:
            routed, dead = core.route(msgs)
            trace = ""
        else:
            assert meters is not None
            span = spans.route(msgs, (read_ns, time.time_ns()))
            routed, dead = core.route(msgs)
            trace = spans.routed(span, len(dead))
            meters.sent(len(routed[0]))
        if dead:
            sink.write(SinkBatch.of_dead_letters(dead))
        batch = Batch(seq, routed[0], trace, time.time())
        if scorer_t is None:
            sink.write(scorer.process(batch))
        else:
            assert sink_t is not None and tel is not None
            sink_t.write(scorer_t.process(batch, scorer.process), sink.write)
            if time.perf_counter() >= next_snapshot:
                next_snapshot += SNAPSHOT_EVERY_S
                for snap in (tel.snapshot, scorer_t.snapshot, sink_t.snapshot):
                    snap()
        seq += 1
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    sink.close()
    if tel is not None:
        tel.shutdown()
    events = core.counts["events"]
    return {"events": events, "events_per_s": events / wall, "cpu_us_per_event": 1e6 * cpu / events}


def hook_costs(config: PipelineConfig, telemetry: TelemetryConfig, n: int = 500
               ) -> dict[str, tuple[float, float]]:
    """Microseconds per batch of each hook alone, around no-op work (the upper bound of
    what telemetry adds, without the noise of the work itself)."""
    task = task_of(build_model(config.scoring.model))
    reader = open_reader(config.source, [0])
    core = IngestCore(config, task=task)
    msgs = reader.read(config.ingest.batch_size)
    routed, _ = core.route(msgs)
    batch = Batch(0, routed[0], "", time.time())
    scorer = ScorerCore(config.scoring, name="scorer-0")
    sink = FileSink(Path(tempfile.mkdtemp(prefix="riffle-hooks-")))
    out = scorer.process(batch)
    tel = Telemetry(telemetry, pipeline="bench", actor="ingest-0", role="ingest")
    meters = IngestMeters(tel, counts=lambda: core.counts, in_flight=lambda: 0)
    spans = IngestSpans(tel.tracer, system="riffle", consumer_group=None, from_headers=False)
    scorer_t = ScorerTelemetry(telemetry, pipeline="bench", actor="scorer-0", core=lambda: scorer)
    sink_t = SinkTelemetry(telemetry, pipeline="bench", system="file",
                           destination="predictions.jsonl", counts=lambda: sink.counts)

    def ingest() -> None:
        t = time.time_ns()
        spans.routed(spans.route(msgs, (t, t + 1000)), 0)
        meters.sent(len(batch.items))

    def timed(f: Any) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        return 1e6 * (time.perf_counter() - t0) / n

    # Each hook beside the work it wraps, timed alike in turn (the ratio is the cost).
    costs = {"ingest: a span (two when sampled), 1 histogram": (
                 timed(ingest), timed(lambda: core.route(msgs))),
             "scorer: wrapper, 4 histograms": (
                 timed(lambda: scorer_t.process(batch, lambda b: out)),
                 timed(lambda: scorer.process(batch))),
             "sink: span check, 1 histogram": (
                 timed(lambda: sink_t.write(out, lambda b: None)),  # type: ignore[arg-type,return-value]
                 timed(lambda: sink.write(out))),
             "snapshot of a scorer (every 0.5 s)": (timed(scorer_t.snapshot), 0.0)}
    tel.shutdown()
    sink.close()
    return costs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sample-ratio", type=float, default=0.01)
    ap.add_argument("--hooks-only", action="store_true", help="only the per-hook costs")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="riffle-bench-telemetry-"))
    data = work / "loans.jsonl"
    write_sample(data, n_events=args.events)
    config = PipelineConfig.model_validate({
        "name": "bench", "output": {"out_dir": str(work / "out")},
        "source": {"kind": "file", "path": str(data), "partitions": 1,
                   "label_column": "label", "label_delay_events": 20}})
    telemetry = TelemetryConfig(sample_ratio=args.sample_ratio)  # the default: prometheus
    costs = hook_costs(config, telemetry)
    n = config.ingest.batch_size
    for name, (us, wrapped) in costs.items():
        share = f", {100 * us / wrapped:.1f}% of the work it wraps" if wrapped else ""
        print(f"{name}: {us:.1f} us per batch of {n} ({us / n:.3f} us per event){share}",
              file=sys.stderr)
    if args.hooks_only:
        return
    rows: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for r in range(args.rounds):
        for name in ("off", "on") if r % 2 == 0 else ("on", "off"):
            row = one_round(config, work / f"out-{name}", telemetry if name == "on" else None)
            rows[name].append(row)
            print(f"round {r} {name:>3}: {row['events_per_s']:,.0f} events/s, "
                  f"{row['cpu_us_per_event']:.2f} CPU us/event", file=sys.stderr)
    cpu = {k: statistics.median(r["cpu_us_per_event"] for r in v) for k, v in rows.items()}
    rate = {k: statistics.median(r["events_per_s"] for r in v) for k, v in rows.items()}
    print(f"| telemetry | events/s (median of {args.rounds}) | CPU us / event (median) |")
    print("|---|---:|---:|")
    for k in ("off", "on"):
        print(f"| {k} | {rate[k]:,.0f} | {cpu[k]:.2f} |")
    print(f"\ncost: {100 * (cpu['on'] / cpu['off'] - 1):+.1f}% CPU per event, "
          f"{100 * (1 - rate['on'] / rate['off']):+.1f}% throughput "
          f"(sample_ratio {args.sample_ratio})")


if __name__ == "__main__":
    main()
