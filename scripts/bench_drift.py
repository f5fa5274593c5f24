#!/usr/bin/env python
"""Drift detectors evaluated as the drift literature does, beside a trivial baseline.

The embedded default stream (``configs/local.yaml``: Agrawal, the concept changing at
event 100,000 over 1,000 events), as one partition: the config's model predicts then
learns each event (progressive validation, labels at once), and its 0/1 error stream
feeds each detector through riffle's own core (:class:`pipelines.monitoring.drift.
ErrorStream`, with its grace period and rises-only rule). Per detector, over ``--seeds``
seeds:

- with the change: the delay to the first alarm after the change (in labeled events;
  mean and max), missed detections (none within ``--horizon`` events after it), and
  false alarms before it;
- without the change (the same stream, ``drift: null``): false alarms per million
  events, and their total.

Error streams are cached (``~/.cache/riffle/bench_drift``), so a second run with other
detector settings only runs the detectors.

    python scripts/bench_drift.py                      # README figures (20 seeds)
    python scripts/bench_drift.py --seeds 3 --events 120000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.config import ModelSpec, load_config  # noqa: E402
from pipelines.monitoring.config import DriftDetectionConfig  # noqa: E402
from pipelines.monitoring.drift import ErrorStream  # noqa: E402

CACHE = Path.home() / ".cache" / "riffle" / "bench_drift"

DETECTORS: dict[str, tuple[str, dict[str, Any]]] = {
    "adwin (riffle default)": ("adwin", {}),
    "adwin delta=0.002 (River default)": ("adwin", {"delta": 0.002}),
    "page_hinkley": ("page_hinkley", {}),
    "kswin": ("kswin", {}),
    "ddm": ("ddm", {}),
    "eddm": ("eddm", {}),
    "baseline: window 1000, +0.1": ("window", {}),
}


def error_stream(spec: dict[str, Any], model: dict[str, Any], seed: int, n: int,
                 drift: bool) -> np.ndarray:
    """The model's 0/1 errors over ``n`` events of the stream (cached)."""
    key = hashlib.sha256(json.dumps([spec, model, seed, n, drift], sort_keys=True)
                         .encode()).hexdigest()[:16]
    path = CACHE / f"{key}.npy"
    if path.exists():
        return np.load(path)
    from river.datasets import synth

    from pipelines.models import build_model

    fn = spec["classification_function"]
    stream = synth.Agrawal(classification_function=fn, seed=seed)
    if drift:
        stream = synth.ConceptDriftStream(
            stream=stream, drift_stream=synth.Agrawal(
                classification_function=spec["to_function"], seed=seed),
            position=spec["position"], width=spec["width"], seed=seed)
    m = build_model(ModelSpec.model_validate(model))
    errors = np.empty(n, dtype=np.uint8)
    predict, learn = m.predict_one, m.learn_one
    for i, (x, y) in enumerate(stream.take(n)):
        errors[i] = predict(x) != y
        learn(x, y)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, errors)
    return errors


def alarms_of(errors: np.ndarray, kind: str, params: dict[str, Any], grace: int
              ) -> list[int]:
    """Event indices (0-based) of the alarms on ``errors``."""
    cfg = DriftDetectionConfig(detector=kind, params=params)  # type: ignore[arg-type]
    stream = ErrorStream(cfg.detector, cfg.detector_params,
                         binary=kind in ("ddm", "eddm"), grace=grace)
    return [a["at_label"] - 1 for a in stream.update_many(errors.astype(float).tolist())]


def _job(args: tuple[Any, ...]) -> tuple[int, bool, np.ndarray]:
    spec, model, seed, n, drift = args
    return seed, drift, error_stream(spec, model, seed, n, drift)


def evaluate(streams: dict[tuple[int, bool], np.ndarray], *, change: int, horizon: int,
             grace: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (kind, params) in DETECTORS.items():
        delays: list[int] = []
        missed = false_before = 0
        false_stationary = 0
        n_stationary = 0
        for (_, drift), errors in sorted(streams.items()):
            hits = alarms_of(errors, kind, params, grace)
            if drift:
                false_before += sum(1 for h in hits if h < change)
                after = [h - change for h in hits if change <= h < change + horizon]
                if after:
                    delays.append(after[0])
                else:
                    missed += 1
            else:
                false_stationary += len(hits)
                n_stationary += len(errors)
        out[name] = {
            "detector": kind, "params": params,
            "delay_mean": statistics.fmean(delays) if delays else None,
            "delay_max": max(delays) if delays else None,
            "detected": len(delays), "missed": missed,
            "false_alarms_before_change": false_before,
            "false_alarms_stationary": false_stationary,
            "false_alarms_per_million": 1e6 * false_stationary / n_stationary
            if n_stationary else None,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "local.yaml"))
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--events", type=int, default=None,
                        help="Events per stationary stream (default: the config's).")
    parser.add_argument("--horizon", type=int, default=5000,
                        help="An alarm later than this many events after the change is a "
                             "miss.")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "scripts" / "results" / "drift.json"))
    args = parser.parse_args()

    cfg = load_config(args.config)
    src = cfg.source
    assert src.kind == "synthetic" and src.drift is not None, "a synthetic source with drift"
    spec = {"classification_function": src.classification_function,
            "to_function": src.drift.to_function, "position": src.drift.position,
            "width": src.drift.width}
    model = cfg.scoring.model.model_dump(mode="json")
    n_stationary = args.events or src.n_events or 200_000
    change = src.drift.position - src.drift.width // 2  # where the new concept starts
    n_drift = src.drift.position + src.drift.width + args.horizon
    grace = cfg.scoring.drift.grace_labels
    jobs = [(spec, model, 1000 + s, n, d) for s in range(args.seeds)
            for n, d in ((n_drift, True), (n_stationary, False))]
    started = time.time()
    streams: dict[tuple[int, bool], np.ndarray] = {}
    with ProcessPoolExecutor(args.workers) as pool:
        for seed, drift, errors in pool.map(_job, jobs):
            streams[seed, drift] = errors
    made = time.time() - started
    results = evaluate(streams, change=change, horizon=args.horizon, grace=grace)
    doc = {"config": args.config, "model": model, "stream": spec, "seeds": args.seeds,
           "stationary_events": n_stationary, "change_at": change,
           "horizon": args.horizon, "grace_labels": grace,
           "error_rate_before": float(np.mean([e[:change].mean() for (_, d), e in
                                               streams.items() if d])),
           "error_rate_after": float(np.mean([e[change + src.drift.width:].mean()
                                              for (_, d), e in streams.items() if d])),
           "streams_s": round(made, 1), "detectors": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(f"model {[s['name'] for s in model['steps']]}; error rate "
          f"{doc['error_rate_before']:.3f} before the change, "
          f"{doc['error_rate_after']:.3f} after; {args.seeds} seeds")
    print("| detector | delay mean | delay max | missed | false alarms before change "
          "| false alarms / 1M events (stationary) | total |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        mean = f"{r['delay_mean']:,.0f}" if r["delay_mean"] is not None else "-"
        worst = f"{r['delay_max']:,}" if r["delay_max"] is not None else "-"
        print(f"| {name} | {mean} | {worst} | {r['missed']}/{args.seeds} | "
              f"{r['false_alarms_before_change']} | {r['false_alarms_per_million']:.2f} | "
              f"{r['false_alarms_stationary']} |")


if __name__ == "__main__":
    main()
