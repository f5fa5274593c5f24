#!/usr/bin/env python
"""The retraining loop end to end on Ray, on the embedded default stream.

Every run is the whole pipeline (``configs/local.yaml``: 200,000 events, 4 partitions, 2
ingest and 2 scoring actors, the default model) with ``retraining.enabled`` and
``launch.promotion.mode: auto``, one after another in one local Ray:

1. **With the change** (the default stream, seed 42, its change at event 100,000, fed
   at ``--rate`` events/s), twice: with the default model (an adaptive tree, which mends
   itself), and with a model that goes stale (Gaussian naive Bayes). Each: when the drift
   alarm fired, the candidate the policy trained, whether its gate passed and it was
   promoted; then its accuracy on the first ``--after`` labels it served as the live
   version, beside a fresh model of the same spec that learns only the new concept
   (every event of each partition from the end of the change on, predict then learn, in
   the order riffle served them) on the same records.
2. **Without it** (``drift: null``), over ``--seeds`` seeds: alarms, retrains started,
   candidates registered, and promotions. The target: no retrain promoted.

    python scripts/bench_retraining.py                 # README figures (20 seeds)
    python scripts/bench_retraining.py --seeds 2 --events 60000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


STALE_MODEL = {"steps": [{"name": "naive_bayes.GaussianNB"}]}
"""A model that keeps the old concept's counts, so it goes stale after the change (as
tests/actors/test_retraining.py uses): the case a retrained candidate must win."""


def config(root: Path, *, seed: int, events: int, drift: bool, rate: float | None = None,
           model: dict[str, Any] | None = None) -> Any:
    """``configs/local.yaml`` with retraining on and automatic promotion. The actors take
    a quarter of a CPU each, so the job's own CPU fits beside them on 2 cores (with their
    default halves, Ray would queue the job until the run ends)."""
    from pipelines.config import PipelineConfig

    raw = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    raw["source"].update(seed=seed, n_events=events)
    if rate is not None:
        raw["source"]["rate_per_s"] = rate
    if not drift:
        raw["source"]["drift"] = None
    if model is not None:
        raw["scoring"]["model"] = model
    raw["ingest"]["num_cpus"] = raw["scoring"]["num_cpus"] = 0.25
    raw["output"] = {"out_dir": str(root / "out")}
    raw["registry"] = {"url": f"sqlite:///{root / 'registry.db'}"}
    raw["launch"] = {"promotion": {"mode": "auto"}}
    raw["retraining"] = {"enabled": True}
    return PipelineConfig.model_validate(raw)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    import orjson

    with path.open("rb") as f:
        return [orjson.loads(line) for line in f]


def position(record_id: str) -> tuple[int, int]:
    """(partition, index) of a synthetic record id ``<name>-<seed>-<partition>-<index>``."""
    partition, index = record_id.rsplit("-", 2)[1:]
    return int(partition), int(index)


def partition_streams(cfg: Any, served: list[dict[str, Any]]) -> dict[int, list[Any]]:
    """Each partition's ``(features, label)`` pairs, regenerated up to the last record of
    it in ``served``."""
    from pipelines.sources.synthetic import make_stream

    tops: dict[int, int] = {}
    for p in served:
        part, index = position(p["record_id"])
        tops[part] = max(tops.get(part, -1), index)
    return {part: [next(stream) for _ in range(top + 1)]
            for part, top in tops.items() for stream in [make_stream(cfg.source, part)]}


def new_concept_reference(cfg: Any, served: list[dict[str, Any]], streams: dict[int, list[Any]],
                          scored: set[str]) -> float:
    """A fresh model of ``scoring.model`` that learns only the new concept: every event
    of each partition from the end of the change on, in ``served``'s order (predict, then
    learn at once); its accuracy on the records in ``scored``."""
    from pipelines.models import build_model

    src = cfg.source
    start = (src.drift.position + src.drift.width // 2) // src.partitions
    model = build_model(cfg.scoring.model)
    hits = n = 0
    for p in served:
        part, index = position(p["record_id"])
        if index < start:
            continue
        x, y = streams[part][index]
        if p["record_id"] in scored:
            hits += model.predict_one(x) == y
            n += 1
        model.learn_one(x, y)
    return hits / n if n else float("nan")


def run(cfg: Any) -> tuple[dict[str, Any], float]:
    from actors.driver import run_pipeline

    t0 = time.perf_counter()
    summary = run_pipeline(cfg)
    return summary, time.perf_counter() - t0


def promoted(cfg: Any) -> list[str]:
    from pipelines.registry import Registry

    with Registry(cfg.registry.url) as reg:
        return [v.id for v in reg.versions(cfg.name)
                if any(e.kind == "promoted" for e in reg.events(v.id))]


def drifting(work: Path, events: int, after: int, rate: float,
             model: dict[str, Any] | None, name: str) -> dict[str, Any]:
    cfg = config(work / name, seed=42, events=events, drift=True, rate=rate, model=model)
    summary, wall = run(cfg)
    drift = summary.get("drift", {})
    out: dict[str, Any] = {"model": name, "events": events, "rate_per_s": rate,
                           "wall_s": round(wall, 1),
                           "counts": drift.get("counts", {}),
                           "alarms": drift.get("alarms", []),
                           "retrains": drift.get("retrains", []),
                           "promoted": promoted(cfg),
                           "live": summary["deployment"]["arms"]["live"]["version"]}
    served = read_jsonl(cfg.out_dir / "predictions.jsonl")
    live = out["live"]
    if live == "v0" or not out["promoted"]:
        out["note"] = "no candidate was promoted: nothing to compare"
        return out
    mine = [p for p in served if p["model_version"] == live][:after]
    streams = partition_streams(cfg, served)

    def label(record_id: str) -> Any:
        part, index = position(record_id)
        return streams[part][index][1]

    out["served_by_candidate"] = len(mine)
    out["candidate_accuracy"] = sum(p["prediction"] == label(p["record_id"])
                                    for p in mine) / len(mine)
    out["new_concept_accuracy"] = new_concept_reference(cfg, served, streams,
                                                        {p["record_id"] for p in mine})
    out["gap_points"] = 100 * (out["candidate_accuracy"] - out["new_concept_accuracy"])
    return out


def stationary(work: Path, seeds: int, events: int) -> list[dict[str, Any]]:
    rows = []
    for seed in range(seeds):
        cfg = config(work / f"stationary-{seed}", seed=seed, events=events, drift=False)
        summary, wall = run(cfg)
        counts = summary.get("drift", {}).get("counts", {})
        rows.append({"seed": seed, "wall_s": round(wall, 1), "counts": counts,
                     "promoted": promoted(cfg)})
        print(f"  stationary seed {seed}: {counts}, promoted {rows[-1]['promoted']}",
              file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--after", type=int, default=20_000,
                    help="labels served by the promoted candidate to compare")
    ap.add_argument("--drift-events", type=int, default=300_000,
                    help="events of the runs with the change (at 100,000, the default's)")
    ap.add_argument("--rate", type=float, default=4000.0,
                    help="events/s of the runs with the change: a stream, not a replay "
                         "(a replay ends before a candidate could serve)")
    ap.add_argument("--skip-stationary", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench-retraining.json")
    args = ap.parse_args()

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="riffle-retrain-") as tmp:
            work = Path(tmp)
            report: dict[str, Any] = {"drifting": []}
            for name, model in (("default", None), ("stale", STALE_MODEL)):
                print(f"drifting default stream, {name} model ...", file=sys.stderr,
                      flush=True)
                report["drifting"].append(drifting(work, args.drift_events, args.after,
                                                   args.rate, model, name))
                print(json.dumps(report["drifting"][-1], indent=1, default=str),
                      file=sys.stderr)
            rows = [] if args.skip_stationary else stationary(work, args.seeds, args.events)
    finally:
        ray.shutdown()
    report["stationary"] = rows
    total = {k: sum(r["counts"].get(k, 0) for r in rows)
             for k in ("drift_alarms", "retrains_started", "retrains_registered")}
    total["promotions"] = sum(len(r["promoted"]) for r in rows)
    total["events"] = args.seeds * args.events
    report["stationary_total"] = total
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    for d in report["drifting"]:
        print(f"with the change, {d['model']} model: alarms "
              f"{d['counts'].get('drift_alarms', 0)}, retrains "
              f"{[(r.get('status'), r.get('version'), r.get('why')) for r in d['retrains']]}, "
              f"promoted {d['promoted']}")
        if "candidate_accuracy" in d:
            print(f"  candidate over its first {d['served_by_candidate']:,} live labels: "
                  f"{d['candidate_accuracy']:.4f}; a model of the new concept only: "
                  f"{d['new_concept_accuracy']:.4f} ({d['gap_points']:+.2f} points)")
    if rows:
        print(f"without it, {args.seeds} seeds x {args.events:,} events: {total}")


if __name__ == "__main__":
    main()
