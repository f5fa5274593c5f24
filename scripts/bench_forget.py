"""What ``riffle forget`` costs, as a function of how far back the subject's first record
is (issue 11: bounded by replaying from the checkpoint before it, not by the stream).

A scorer core (the actor's code, without Ray) scores and learns N records (9 random
features, the default StandardScaler + LogisticRegression, labels 20 records late) and
writes the audit trail, training log and checkpoints as the actors do: a checkpoint
every ``--every`` records, ``keep`` 3, and with ``--retain R`` one in R kept beyond them
(``checkpoint.retain.every``). Per distance D, one subject has two records, the first
D records before the end. Each forget runs on a fresh copy of the store (a forget
deletes checkpoints), in process (the Ray-free
:class:`~pipelines.audit.forget.Forgetter` a running pipeline's Supervisor calls too),
and is timed whole: finding the subject, the replay, rewriting
the segments, the certificate.

    python scripts/bench_forget.py --records 300000 --every 10000 --retain 5
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.audit.forget import Forgetter
from pipelines.audit.trail import AuditStore, trail_table, training_table
from pipelines.checkpoint import CheckpointStore, Manifest, checkpoint_id, dumps_state
from pipelines.config import PipelineConfig
from pipelines.protocol import Batch, Event, Feedback
from pipelines.scoring import ScorerCore

NAMES = [f"f{i}" for i in range(9)]
DELAY = 20


def build(out: Path, n: int, every: int, retain: int | None, subjects: dict[int, str]
          ) -> PipelineConfig:
    """N records through one scorer core, written as a run writes them; record i has
    key ``subjects[i]`` when there is one (else one of 5,000 other keys)."""
    cfg = PipelineConfig.model_validate({
        "name": "bench", "source": {"kind": "synthetic"}, "output": {"out_dir": str(out)},
        "checkpoint": {"keep": 3, **({"retain": {"every": retain}} if retain else {})}})
    url = cfg.checkpoint_store_url()
    store, audit = CheckpointStore(url), AuditStore(url)
    core = ScorerCore(cfg.scoring, name="scorer-0", audit=True)
    rng = random.Random(1)
    pending: list[Feedback] = []
    batch: list[object] = []
    for i in range(n):
        x = {k: rng.gauss(0, 1) for k in NAMES}
        y = x["f0"] + 0.5 * x["f1"] - x["f2"] + rng.gauss(0, 0.5) > 0
        key = subjects.get(i, f"k{i % 5000}")
        batch.append(Event(f"b-{i}", key, float(i), x, 0, 2 * i, 0.0, "bench"))
        pending.append(Feedback(f"b-{i}", key, y, float(i), 0, 2 * i + 1, 0.0, "bench"))
        if len(pending) > DELAY:
            batch.append(pending.pop(0))
        if len(batch) >= 500 or (i + 1) % every == 0:
            core.process(Batch(0, batch))  # type: ignore[arg-type]
            batch = []
        if (i + 1) % every == 0:
            seq = (i + 1) // every
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
                                  segments=segments, events_read=i + 1))
            audit.commit_index(ckpt, seq, segments)
            core.checkpoint = ckpt
            store.prune(cfg.checkpoint.keep, cfg.checkpoint.retain)
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--every", type=int, default=10_000)
    parser.add_argument("--retain", type=int, nargs="*", default=[5, 0],
                        help="checkpoint.retain.every values to compare (0: none)")
    parser.add_argument("--distances", type=int, nargs="*",
                        default=[2_000, 10_000, 30_000, 60_000, 120_000, 250_000])
    args = parser.parse_args()
    n = args.records
    subjects = {}
    for d in args.distances:  # two records each: D and D - 1 before the end
        subjects[n - d] = subjects[n - d + 1] = f"subject-{d}"
    print(f"{n:,} records, a checkpoint every {args.every:,}, keep 3")
    print(f"{'retain.every':>12} {'distance':>9} {'replayed':>9} {'from':>12} "
          f"{'forget_s':>9}")
    for retain in args.retain:
        root = Path(tempfile.mkdtemp(prefix="bench-forget-"))
        cfg = build(root / "base", n, args.every, retain or None, subjects)
        kept = len(CheckpointStore(cfg.checkpoint_store_url()).manifests())
        for d in args.distances:
            copy = root / f"d{d}"
            shutil.copytree(root / "base", copy)
            started = time.perf_counter()
            cert = Forgetter(cfg, out_dir=copy).forget(f"subject-{d}")
            took = time.perf_counter() - started
            models = cert["models"]
            print(f"{retain or '-':>12} {d:>9,} {models['replayed']:>9,} "
                  f"{models['from'][:12]:>12} {took:>9.2f}")
            shutil.rmtree(copy)
        print(f"{'':>12} ({kept} checkpoints on disk)")
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
