"""How long ``riffle explain`` takes on a long audit trail (issue 11: under 2 s on 1M).

A scorer core (the actor's own code, without Ray) scores and learns N records (9
random features, the default StandardScaler + LogisticRegression, labels 20 records
late) and writes the audit trail, training log and checkpoints as the actors do (a
checkpoint every ``--every`` records; keep 3, one in ``--retain`` retained). Then random records
are explained, in process (the split of the time) and through the real CLI: a cold
process each time (Python's start and imports included), its wall time and its CPU time
(user + system, less sensitive to a loaded machine), median / min / max of ``--cli`` runs.
``--compare SRC`` runs the same commands from another source tree (e.g. ``git archive``
of an older commit) alternately with this one, in pairs, for a side-by-side figure.
``--store DIR`` reuses a store this script built (``DIR/bench.yaml``) instead of building
one.

    python scripts/bench_explain.py --records 1000000 --every 20000 --retain 1 [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from audit_stream import build_store

from pipelines.audit.explain import Explainer
from pipelines.config import PipelineConfig
from pipelines.registry import Registry


def build(root: Path, n: int, every: int, retain: int, delay: int = 20
          ) -> tuple[PipelineConfig, list[str]]:
    """The store (scripts/audit_stream.py) and the ids of the records it committed."""
    cfg = build_store(root / "out", n, every, retain, delay=delay)
    Registry(cfg.registry_url()).close()
    return cfg, [f"b-{i}" for i in range((n // every) * every)]


def cold_cli(config_file: Path, record_id: str, source: Path | None = None
             ) -> tuple[float, float]:
    """One ``riffle explain --json`` in a new process (run from ``source`` when given):
    (wall s, CPU s of the process)."""
    env = dict(os.environ)
    if source is not None:  # the other tree's package first (the editable install is last)
        env["PYTHONPATH"] = str(source)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "explain", str(config_file),
                          record_id, "--json"], capture_output=True, text=True, check=True,
                         env=env, cwd=source)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert orjson.loads(out.stdout)["exact"], record_id
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def spread(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--every", type=int, default=20_000)
    parser.add_argument("--retain", type=int, default=10, help="checkpoint.retain.every")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--cli", type=int, default=9, help="CLI runs (new processes)")
    parser.add_argument("--compare", type=Path, metavar="SRC",
                        help="another source tree, run alternately with this one")
    parser.add_argument("--store", type=Path, metavar="DIR", help="reuse a built store")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.store is not None:
        root = args.store
        cfg = PipelineConfig.model_validate(yaml.safe_load((root / "bench.yaml").read_text()))
        n = (args.records // args.every) * args.every
        ids = [f"b-{i}" for i in range(n)]
    else:
        root = Path(tempfile.mkdtemp(prefix="bench-explain-"))
        started = time.perf_counter()
        cfg, ids = build(root, args.records, args.every, args.retain)
        built_s = time.perf_counter() - started
        print(f"{len(ids):,} records scored and logged in {built_s:.0f} s ({root})")
    rng = random.Random(2)
    picked = rng.sample(ids, args.samples)
    times, replayed, parts = [], [], {"find_s": [], "load_s": [], "rebuild_s": []}
    for rid in picked:
        t = time.perf_counter()
        with Explainer(cfg, store_url=cfg.checkpoint_store_url()) as ex:
            doc = ex.explain(rid)
            for k in parts:
                parts[k].append(ex.timings[k])
        times.append(time.perf_counter() - t)
        assert doc["exact"], rid
        replayed.append(doc["replayed"])
    config_file = root / "bench.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    runs: dict[str, list[tuple[float, float]]] = {"this": [], "compare": []}
    for i in range(args.cli):
        rid = picked[i % len(picked)]
        order = ["this", "compare"] if i % 2 == 0 else ["compare", "this"]
        for which in order:
            if which == "this":
                runs["this"].append(cold_cli(config_file, rid))
            elif args.compare is not None:
                runs["compare"].append(cold_cli(config_file, rid, args.compare))
    cli = [w for w, _ in runs["this"]]
    result = {
        "records": len(ids), "checkpoint_every": args.every, "retain_every": args.retain,
        "in_process_s": {"p50": statistics.median(times), "max": max(times)},
        "split_p50_s": {k: statistics.median(v) for k, v in parts.items()},
        "replayed": {"p50": statistics.median(replayed), "max": max(replayed)},
        "cli_s": {"p50": statistics.median(cli), "max": max(cli)},
        "cold_cli": {"runs": len(cli), "wall_s": spread(cli),
                     "cpu_s": spread([c for _, c in runs["this"]])},
        "load_avg_1m": os.getloadavg()[0],
    }
    if runs["compare"]:
        result["compare_cold_cli"] = {
            "source": str(args.compare), "wall_s": spread([w for w, _ in runs["compare"]]),
            "cpu_s": spread([c for _, c in runs["compare"]])}
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    if args.json:
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
