#!/usr/bin/env python
"""riffle's benchmark: the Ray pipeline side by side with a plain single-process loop.

Same run, same process tree, same work: read, validate, predict, learn, write.

    python scripts/bench.py                      # the README's table
    python scripts/bench.py --memory-events 2000000 --only-memory --checkpoint-repeats 0

Workloads:
  replay     events replayed from a JSONL file (the pipeline's own overhead is what differs)
  synthetic  events generated in-stream by River's Agrawal (generation dominates: ~70 us/event)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.config import PipelineConfig  # noqa: E402
from pipelines.ingest import IngestCore  # noqa: E402
from pipelines.models import build_model, task_of  # noqa: E402
from pipelines.protocol import Batch  # noqa: E402
from pipelines.scoring import ScorerCore  # noqa: E402
from pipelines.sinks import FileSink  # noqa: E402
from pipelines.sources import open_reader  # noqa: E402
from pipelines.sources.sample import write_sample  # noqa: E402


def make_config(source: dict[str, Any], n_ingest: int, n_scorers: int, out: Path,
                **over: Any) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "name": "bench", "source": source,
        "ingest": {"n_actors": n_ingest, "num_cpus": 0, **over.get("ingest", {})},
        "scoring": {"n_actors": n_scorers, "num_cpus": 0},
        "output": {"out_dir": str(out)},
        **{k: over[k] for k in ("runtime", "checkpoint", "supervision") if k in over},
    })


def plain_loop(config: PipelineConfig, out: Path) -> dict[str, Any]:
    """One process, no Ray: the same cores, called directly, batch by batch."""
    task = task_of(build_model(config.scoring.model))
    reader = open_reader(config.source, list(range(config.source.partitions)))
    core = IngestCore(config.model_copy(update={"scoring": config.scoring.model_copy(
        update={"n_actors": 1})}), task=task)
    scorer = ScorerCore(config.scoring, name="loop")
    sink = FileSink(out)
    from pipelines.allocator import tune_gc
    from pipelines.protocol import SinkBatch

    tune_gc()  # as every actor does once it is built

    t0 = time.perf_counter()
    seq = 0
    while not reader.exhausted:
        msgs = reader.read(config.ingest.batch_size)
        if not msgs:
            continue
        routed, dead = core.route(msgs)
        if dead:
            sink.write(SinkBatch.of_dead_letters(dead))
        sink.write(scorer.process(Batch(seq, routed[0])))
        seq += 1
    elapsed = time.perf_counter() - t0
    sink.close()
    events = core.counts["events"]
    lat = sink.latency.summary()
    return {"events": events, "events_per_s": events / elapsed, "p50_ms": lat["p50"],
            "p99_ms": lat["p99"], "accuracy": scorer.stats()["metrics"]["accuracy"]}


class MemorySampler:
    """Peak and final RSS of this process tree (driver, Ray workers, raylet)."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.t0 = time.monotonic()
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

        self.by_role: list[tuple[float, dict[str, int]]] = []

    @staticmethod
    def _role(proc: psutil.Process) -> str:
        name = proc.name()
        if name.startswith("ray::"):  # an actor's worker: ray::ScorerActor.process -> scorer
            actor = name[5:].split(".")[0]
            return actor.removesuffix("Actor").lower() if actor != "IDLE" else "idle workers"
        return name if name in ("raylet", "gcs_server") else "driver and other Ray processes"

    def _tree_rss(self) -> tuple[int, dict[str, int]]:
        me = psutil.Process()
        total = me.memory_info().rss
        roles: dict[str, int] = {"driver and other Ray processes": total}
        for child in me.children(recursive=True):
            try:
                rss = child.memory_info().rss
                role = self._role(child)
            except psutil.Error:
                continue
            total += rss
            roles[role] = roles.get(role, 0) + rss
        return total, roles

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            total, roles = self._tree_rss()
            now = time.monotonic() - self.t0
            self.samples.append((now, total))
            self.by_role.append((now, roles))

    def __enter__(self) -> MemorySampler:
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self) -> float:
        return max((r for _, r in self.samples), default=0) / 2**20


def pipeline(config: PipelineConfig) -> dict[str, Any]:
    from actors.driver import run_pipeline

    progress: list[tuple[float, int]] = []  # (seconds since the sampler started, events read)
    with MemorySampler() as mem:
        s = run_pipeline(config, on_progress=lambda st: progress.append(
            (time.monotonic() - mem.t0, st.get("events", 0))))
    return {"events": s["events"], "events_per_s": s["events_per_s"],
            "p50_ms": s["latency_ms"]["p50"], "p99_ms": s["latency_ms"]["p99"],
            "accuracy": s["metrics"].get("accuracy"), "peak_rss_mib": mem.peak_mib,
            "memory": mem.samples, "memory_by_role": mem.by_role, "progress": progress}


def memory_points(r: dict[str, Any], n_events: int) -> list[dict[str, Any]]:
    """RSS by role 20 s in, then as the events read pass each quarter of ``n_events``."""
    by_role, progress = r["memory_by_role"], r["progress"]
    warm = [(t, m) for t, m in by_role if t > 20]
    if not warm:
        return []
    wanted = [(warm[0][0], "after 20 s")]
    for q in (1, 2, 3):
        crossed = next((t for t, ev in progress if ev >= n_events * q // 4), None)
        if crossed is not None:
            wanted.append((crossed, f"{q}/4 read"))
    wanted.append((warm[-1][0], "at the end"))
    points = []
    for when, label in wanted:
        t, roles = min(warm, key=lambda tm: abs(tm[0] - when))
        events = max((ev for tp, ev in progress if tp <= t), default=0)
        points.append({"label": label, "t_s": round(t), "events": events,
                       "total_mib": round(sum(roles.values()) / 2**20),
                       "by_role_mib": {k: round(v / 2**20) for k, v in roles.items()}})
    return points


def checkpoint_cost(source: dict[str, Any], tmpdir: Path, repeats: int) -> dict[str, Any]:
    """Throughput with checkpoints every 5 s vs none, alternating runs (1 ingest + 2
    scoring); the pause each checkpoint costs and its size."""
    runs: dict[str, list[dict[str, Any]]] = {"none": [], "5s": []}
    pauses: list[float] = []
    durations: list[float] = []
    sizes: list[int] = []
    from actors.driver import run_pipeline

    for i in range(repeats):
        for mode in ("none", "5s"):
            ckpt = {"enabled": False} if mode == "none" else {"interval_s": 5.0}
            out = tmpdir / f"ckpt-{mode}-{i}"
            s = run_pipeline(make_config(source, 1, 2, out, checkpoint=ckpt))
            runs[mode].append({"events_per_s": s["events_per_s"], "events": s["events"]})
            periodic = [c for c in s["supervision"]["checkpoints"] if not c["final"]]
            pauses += [c["pause_s"] for c in periodic]
            durations += [c["duration_s"] for c in periodic]
            sizes += [c["bytes"] for c in periodic]
    rate = {m: sum(r["events_per_s"] for r in rs) / len(rs) for m, rs in runs.items()}
    return {"events_per_s": rate, "runs": runs,
            "loss": 1 - rate["5s"] / rate["none"],
            "pause_s": {"n": len(pauses), "mean": sum(pauses) / max(1, len(pauses)),
                        "max": max(pauses, default=0.0)},
            "duration_s": {"mean": sum(durations) / max(1, len(durations)),
                           "max": max(durations, default=0.0)},
            "bytes": {"mean": sum(sizes) / max(1, len(sizes)), "max": max(sizes, default=0)}}


def recovery_time(source: dict[str, Any], tmpdir: Path, victim: str) -> dict[str, Any]:
    """kill -9 of ``victim``'s worker mid-stream: from the kill to the first prediction
    of the restarted pipeline, and how long the supervisor took to notice."""
    import signal

    import ray

    from actors.driver import run_pipeline

    out = tmpdir / f"recovery-{victim}"
    config = make_config(source, 1, 2, out, checkpoint={"interval_s": 2.0},
                         supervision={"ping_interval_s": 0.5,
                                      victim.split("-")[0]: {"backoff_initial_s": 0.0,
                                                             "backoff_jitter": 0.0}})
    handle: list[Any] = []
    killed_at: list[float] = []

    def killer() -> None:
        while not handle:
            time.sleep(0.05)
        time.sleep(6.0)
        pid = ray.get(handle[0].pids.remote())[victim]
        killed_at.append(time.time())
        os.kill(pid, signal.SIGKILL)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    s = run_pipeline(config, on_started=handle.append)
    t.join()
    log = [orjson.loads(line) for line in (out / "supervision.jsonl").read_bytes().splitlines()]
    failure = next(e for e in log if e["kind"] == "failure")
    restart = next(e for e in log if e["kind"] == "restart")
    first = min(orjson.loads(line)["scored_at"]
                for line in (out / "predictions.jsonl").read_bytes().splitlines()
                if orjson.loads(line)["scored_at"] >= restart["resumed_at"])
    return {"victim": victim, "detected_s": failure["at"] - killed_at[0],
            "rebuilt_s": restart["resumed_at"] - killed_at[0],
            "first_prediction_s": first - killed_at[0], "events": s["events"],
            "restored": restart["checkpoint"]}


def fmt_row(name: str, r: dict[str, Any], base: float | None) -> str:
    ratio = f"{r['events_per_s'] / base:.2f}x" if base else "-"
    peak = f"{r['peak_rss_mib']:.0f}" if r.get("peak_rss_mib") else "-"
    p50 = f"{r['p50_ms']:.1f}" if r.get("p50_ms") is not None else "-"
    p99 = f"{r['p99_ms']:.1f}" if r.get("p99_ms") is not None else "-"
    return (f"| {name:<34} | {r['events']:>9,} | {r['events_per_s']:>9,.0f} | {ratio:>6} "
            f"| {p50:>7} | {p99:>7} | {peak:>6} |")


HEADER = ("| run                                | events    | events/s  | vs loop | p50 ms  "
          "| p99 ms  | peak RSS MiB |\n|---|---:|---:|---:|---:|---:|---:|")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--synthetic-events", type=int, default=60_000)
    ap.add_argument("--memory-events", type=int, default=0,
                    help="also run an endless synthetic stream this long and report RSS drift")
    ap.add_argument("--only-memory", action="store_true",
                    help="skip the throughput table (with --memory-events)")
    ap.add_argument("--json", type=Path, help="write the raw results here")
    ap.add_argument("--checkpoint-repeats", type=int, default=2,
                    help="alternating runs with and without checkpoints (0: skip)")
    ap.add_argument("--only-checkpoints", action="store_true",
                    help="only the checkpoint cost and recovery time")
    args = ap.parse_args()

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(),
               "ray": ray.__version__}
    results: dict[str, Any] = {"machine": machine}
    with tempfile.TemporaryDirectory(prefix="riffle-bench-") as tmp:
        tmpdir = Path(tmp)
        data = tmpdir / "events.jsonl"
        write_sample(data, n_events=args.events, seed=7, n_keys=20_000)
        replay = {"kind": "file", "path": str(data), "partitions": 4, "label_column": "label",
                  "label_delay_events": 20}
        synthetic = {"kind": "synthetic", "partitions": 4, "n_events": args.synthetic_events,
                     "label_delay_events": 20}
        rows = []
        workloads = ([] if args.only_memory or args.only_checkpoints
                     else [("replay", replay), ("synthetic", synthetic)])
        for wl_name, source in workloads:
            loop = plain_loop(make_config(source, 1, 1, tmpdir / f"{wl_name}-loop"),
                              tmpdir / f"{wl_name}-loop")
            rows.append(fmt_row(f"{wl_name}: plain loop (1 process)", loop, loop["events_per_s"]))
            results[f"{wl_name}/loop"] = loop
            best = 0.0
            for n_ing, n_sc in ((1, 1), (1, 2), (2, 2)):
                r = pipeline(make_config(source, n_ing, n_sc, tmpdir / f"{wl_name}-{n_ing}{n_sc}"))
                rows.append(fmt_row(f"{wl_name}: pipeline {n_ing} ingest + {n_sc} scoring", r,
                                    loop["events_per_s"]))
                results[f"{wl_name}/pipeline-{n_ing}x{n_sc}"] = {k: v for k, v in r.items()
                                                                 if k != "memory"}
                best = max(best, r["events_per_s"])
            if wl_name == "replay":
                half = dict(source, rate_per_s=round(best / 2))
                r = pipeline(make_config(half, 1, 2, tmpdir / "replay-half"))
                rows.append(fmt_row(f"replay: 1+2 fed at {half['rate_per_s']:,}/s (half max)",
                                    r, loop["events_per_s"]))
                results["replay/pipeline-1x2-half-rate"] = {k: v for k, v in r.items()
                                                            if k != "memory"}
        if args.memory_events:
            src = dict(synthetic, n_events=args.memory_events)
            r = pipeline(make_config(src, 2, 2, tmpdir / "memory"))
            mem = r["memory"]
            warm = [m for t, m in mem if t > 20]
            first, last = (warm[0], warm[-1]) if warm else (0, 0)
            loop_rate = results.get("synthetic/loop", {}).get("events_per_s")
            rows.append(fmt_row(f"synthetic: 2+2, {args.memory_events:,} events", r, loop_rate))
            results["memory"] = {"events": r["events"], "events_per_s": r["events_per_s"],
                                 "rss_after_20s_mib": first / 2**20,
                                 "rss_at_end_mib": last / 2**20, "peak_mib": r["peak_rss_mib"],
                                 "points": memory_points(r, args.memory_events)}
        if args.checkpoint_repeats and not args.only_memory:
            results["checkpoints"] = checkpoint_cost(replay, tmpdir, args.checkpoint_repeats)
            slow = dict(replay, rate_per_s=5_000)
            results["recovery"] = [recovery_time(slow, tmpdir, v)
                                   for v in ("scorer-0", "ingest-0", "sink")]
    ray.shutdown()
    print(HEADER)
    print("\n".join(rows))
    if "memory" in results:
        m = results["memory"]
        print(f"\nmemory over {m['events']:,} events ({m['events_per_s']:,.0f}/s): "
              f"{m['rss_after_20s_mib']:.0f} MiB after 20 s, {m['rss_at_end_mib']:.0f} MiB at the "
              f"end (peak {m['peak_mib']:.0f} MiB)")
        points = m["points"]
        print("RSS MiB by role, sampled as the events read pass each quarter:")
        print(f"  {'':<32}" + "".join(f" {p['label']:>11}" for p in points))
        print(f"  {'events read':<32}" + "".join(f" {p['events']:>11,}" for p in points))
        roles = sorted({role for p in points for role in p["by_role_mib"]})
        for role in [*roles, "total"]:
            cells = [p["total_mib"] if role == "total" else p["by_role_mib"].get(role, 0)
                     for p in points]
            half = next((p for p in points if p["label"] == "2/4 read"), None)
            growth = ""
            if half is not None and points[-1]["events"] > half["events"]:
                per_m = ((cells[-1] - cells[points.index(half)]) * 1e6
                         / (points[-1]["events"] - half["events"]))
                growth = f"   {per_m:+6.1f} MiB per 1M events in the second half"
            print(f"  {role:<32}" + "".join(f" {c:>11}" for c in cells) + growth)
    if "checkpoints" in results:
        c = results["checkpoints"]
        print(f"\ncheckpoints (replay, 1 ingest + 2 scoring, {args.checkpoint_repeats} runs each, "
              f"alternating): none {c['events_per_s']['none']:,.0f}/s, every 5 s "
              f"{c['events_per_s']['5s']:,.0f}/s (loss {c['loss']:.1%}); pause per checkpoint "
              f"mean {c['pause_s']['mean'] * 1000:.0f} ms, max {c['pause_s']['max'] * 1000:.0f} "
              f"ms over {c['pause_s']['n']}; checkpoint duration mean "
              f"{c['duration_s']['mean'] * 1000:.0f} ms; size mean "
              f"{c['bytes']['mean'] / 2**20:.2f} MiB")
        for r in results["recovery"]:
            print(f"recovery after kill -9 of {r['victim']}: noticed in {r['detected_s']:.2f} s, "
                  f"reading again after {r['rebuilt_s']:.2f} s, first prediction after "
                  f"{r['first_prediction_s']:.2f} s (restored {r['restored']})")
    if args.json:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
