"""How long ``riffle explain`` takes on a long audit trail (issue 11: under 2 s on 1M).

A scorer core (the actor's own code, without Ray) scores and learns N records (9
random features, the default StandardScaler + LogisticRegression, labels 20 records
late) and writes the audit trail, training log and checkpoints as the actors do (a
checkpoint every ``--every`` records; keep 3, one in ``--retain`` retained). Then random records
are explained, in process (the split of the time) and through the real CLI (a new
process: Python start and imports included).

    python scripts/bench_explain.py --records 1000000 --every 20000 [--json out.json]
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.audit.explain import Explainer
from pipelines.audit.trail import AuditStore, trail_table, training_table
from pipelines.checkpoint import CheckpointStore, Manifest, checkpoint_id, dumps_state
from pipelines.config import PipelineConfig
from pipelines.protocol import Batch, Event, Feedback
from pipelines.registry import Registry
from pipelines.scoring import ScorerCore

NAMES = [f"f{i}" for i in range(9)]


def build(root: Path, n: int, every: int, retain: int, delay: int = 20
          ) -> tuple[PipelineConfig, list[str]]:
    cfg = PipelineConfig.model_validate({
        "name": "bench", "source": {"kind": "synthetic"},
        "output": {"out_dir": str(root / "out")},
        "checkpoint": {"keep": 3, "retain": {"every": retain}}})
    url = cfg.checkpoint_store_url()
    store, audit = CheckpointStore(url), AuditStore(url)
    core = ScorerCore(cfg.scoring, name="scorer-0", audit=True)
    rng = random.Random(1)
    ids: list[str] = []
    pending: list[Feedback] = []
    seq = 0
    batch: list[object] = []
    for i in range(n):
        x = {k: rng.gauss(0, 1) for k in NAMES}
        y = x["f0"] + 0.5 * x["f1"] - x["f2"] + rng.gauss(0, 0.5) > 0
        rid = f"b-{i}"
        ids.append(rid)
        batch.append(Event(rid, f"k{i % 5000}", float(i), x, 0, 2 * i, 0.0, "bench"))
        pending.append(Feedback(rid, f"k{i % 5000}", y, float(i), 0, 2 * i + 1, 0.0, "bench"))
        if len(pending) > delay:
            batch.append(pending.pop(0))
        if len(batch) >= 500 or (i + 1) % every == 0:
            core.process(Batch(0, batch))  # type: ignore[arg-type]
            batch = []
        if (i + 1) % every == 0:
            seq += 1
            ckpt = checkpoint_id(seq)
            assert core.audit is not None
            segments = [
                audit.write_segment("trail", trail_table(core.audit.take_trail(), "scorer-0",
                                                         core.checkpoint),
                                    scorer="scorer-0", generation=0),
                audit.write_segment("training", training_table(core.audit.take_training(),
                                                               "scorer-0"),
                                    scorer="scorer-0", generation=0)]
            part = store.write_part(ckpt, "scorer-0", dumps_state(core.snapshot()))
            store.commit(Manifest(id=ckpt, seq=seq, created_at=time.time(), pipeline="bench",
                                  config_hash="c", positions={}, parts={"scorer-0": part},
                                  segments=segments))
            audit.commit_index(ckpt, seq, segments)
            core.checkpoint = ckpt
            store.prune(cfg.checkpoint.keep, cfg.checkpoint.retain)
    Registry(cfg.registry_url()).close()
    return cfg, ids[: (n // every) * every]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--every", type=int, default=20_000)
    parser.add_argument("--retain", type=int, default=10, help="checkpoint.retain.every")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--cli", type=int, default=5, help="CLI runs (new processes)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
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
    cli = []
    for rid in picked[: args.cli]:
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "pipelines.cli", "explain",
                              str(config_file), rid, "--json"], capture_output=True,
                             text=True, check=True)
        cli.append(time.perf_counter() - t)
        assert orjson.loads(out.stdout)["exact"]
    result = {
        "records": len(ids), "checkpoint_every": args.every, "retain_every": args.retain,
        "in_process_s": {"p50": statistics.median(times), "max": max(times)},
        "split_p50_s": {k: statistics.median(v) for k, v in parts.items()},
        "replayed": {"p50": statistics.median(replayed), "max": max(replayed)},
        "cli_s": {"p50": statistics.median(cli), "max": max(cli)},
    }
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    if args.json:
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
