#!/usr/bin/env python
"""How fast lineage answers on a trail of a million records, and what the trail costs on disk.

A real riffle run of ``configs/local.yaml`` with ``--events 1000000`` (2 ingest actors,
2 scorers, a checkpoint every 5 s: the embedded default, scaled up) writes the audit
trail and training log; then, for random records and random keys of that run:

  audit record   ``Lineage.record`` as ``riffle audit record`` runs it (a fresh registry
                 connection and DuckDB views over the committed segments each time), and
                 the whole command as a subprocess (Python's and the imports' start too)
  audit key      the same for ``Lineage.key``
  audit model    ``Lineage.model`` of the last version (exact training data: counts,
                 ranges, keys, first and last record)

Each figure is the median over ``--queries`` different records or keys. Disk use is the
committed segments' bytes (Parquet, zstd), per million records.

    python scripts/bench_audit.py [--events 1000000] [--queries 15] [--out DIR] [--reuse]

``--reuse`` skips the run when DIR already holds one.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.audit.lineage import Lineage  # noqa: E402
from pipelines.audit.query import AuditQuery  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.registry import Registry  # noqa: E402

CONFIG = ROOT / "configs" / "local.yaml"


def _timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _median_ms(times: list[float]) -> str:
    return f"{1000 * statistics.median(times):,.0f} ms (max {1000 * max(times):,.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=15)
    ap.add_argument("--out", type=Path, default=Path("/tmp/riffle-bench-audit"))
    ap.add_argument("--reuse", action="store_true")
    args = ap.parse_args()
    out: Path = args.out.resolve()
    if not (args.reuse and (out / "summary.json").exists()):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipelines.cli", "run", str(CONFIG), "--events",
                        str(args.events), "--out", str(out)], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        print(f"riffle run of {args.events:,} events: {time.perf_counter() - started:.0f} s")
    cfg = load_config(CONFIG)
    store, registry_url = cfg.checkpoint_store_url(out), cfg.registry_url(out)

    with AuditQuery(store) as q:
        n_trail = q.rows("SELECT count(*) AS n FROM trail")[0]["n"]
        n_training = q.rows("SELECT count(*) AS n FROM training")[0]["n"]
        rng = random.Random(7)
        ids = [r["record_id"] for r in q.rows(
            "SELECT record_id FROM trail USING SAMPLE 2000 ROWS")]
        keys = [r["key"] for r in q.rows("SELECT DISTINCT key FROM trail USING SAMPLE 2000 ROWS")]
        segments = {kind: [s for c in q.commits for s in c.segments if s.kind == kind]
                    for kind in ("trail", "training")}
    records, subjects = rng.sample(ids, args.queries), rng.sample(keys, args.queries)

    def answer(ask: Callable[[Lineage], Any]) -> Callable[[], Any]:
        def run() -> Any:  # as one CLI invocation: everything opened afresh
            with Registry(registry_url, create=False) as reg, Lineage(
                    reg, pipeline=cfg.name, store_url=store) as lineage:
                return ask(lineage)
        return run

    t_record = [_timed(answer(lambda lin, r=r: lin.record(r))) for r in records]
    t_key = [_timed(answer(lambda lin, k=k: lin.key(k))) for k in subjects]
    with Registry(registry_url, create=False) as reg:
        last = reg.versions(cfg.name)[-1].id
    t_model = [_timed(answer(lambda lin: lin.model(last))) for _ in range(3)]
    cli = [_timed(lambda r=r: subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "audit", "record", str(CONFIG), r, "--out",
         str(out), "--json"], cwd=ROOT, check=True, capture_output=True))
        for r in records[:5]]

    per_m = 1_000_000 / max(n_trail, 1)
    rows = [
        ("trail rows / training rows", f"{n_trail:,} / {n_training:,}"),
        ("segments (trail / training)",
         f"{len(segments['trail'])} / {len(segments['training'])}"),
        ("trail on disk per 1M records",
         f"{sum(s.bytes for s in segments['trail']) * per_m / 2**20:,.1f} MiB"),
        ("training log on disk per 1M records",
         f"{sum(s.bytes for s in segments['training']) * per_m / 2**20:,.1f} MiB"),
        ("audit record (in process)", _median_ms(t_record)),
        ("audit key (in process)", _median_ms(t_key)),
        (f"audit model {last}", _median_ms(t_model)),
        ("riffle audit record (whole command)", _median_ms(cli)),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
