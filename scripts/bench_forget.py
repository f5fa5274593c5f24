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
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from audit_stream import build_store

from pipelines.audit.forget import Forgetter
from pipelines.checkpoint import CheckpointStore
from pipelines.config import PipelineConfig


def build(out: Path, n: int, every: int, retain: int | None, subjects: dict[int, str]
          ) -> PipelineConfig:
    """N records through one scorer core (scripts/audit_stream.py); record i has key
    ``subjects[i]`` when there is one."""
    return build_store(out, n, every, retain, subjects=subjects, delay=20)


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
