"""A long audit trail, built fast for the audit benchmarks (``bench_explain.py``,
``bench_forget.py``): one scorer core (the actor's own code, without Ray) scores and learns
N records — 9 random features, the default StandardScaler + LogisticRegression, labels
``delay`` records late — and writes the audit trail, the training log and checkpoints as
the actors do: a checkpoint every ``every`` records, ``keep`` 3, one in ``retain`` kept
beyond them. Record ``i`` is ``b-<i>``, with key ``subjects[i]`` when there is one (else
one of 5,000 others).
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.audit.trail import AuditStore, trail_table, training_table
from pipelines.checkpoint import (
    CheckpointStore,
    Manifest,
    checkpoint_id,
    dumps_state,
)
from pipelines.config import PipelineConfig
from pipelines.protocol import Batch, Event, Feedback
from pipelines.scoring import ScorerCore

NAMES = [f"f{i}" for i in range(9)]


def build_store(out_dir: Path, n: int, every: int, retain: int | None, *,
                subjects: dict[int, str] | None = None, delay: int = 20) -> PipelineConfig:
    """Write the store; returns the config whose ``checkpoint_store_url()`` holds it."""
    cfg = PipelineConfig.model_validate({
        "name": "bench", "source": {"kind": "synthetic"}, "output": {"out_dir": str(out_dir)},
        "checkpoint": {"keep": 3, **({"retain": {"every": retain}} if retain else {})}})
    url = cfg.checkpoint_store_url()
    store, audit = CheckpointStore(url), AuditStore(url)
    core = ScorerCore(cfg.scoring, name="scorer-0", audit=True)
    assert core.audit is not None
    subjects = subjects or {}
    rng = random.Random(1)
    pending: list[Feedback] = []
    batch: list[Event | Feedback] = []
    for i in range(n):
        x = {k: rng.gauss(0, 1) for k in NAMES}
        y = x["f0"] + 0.5 * x["f1"] - x["f2"] + rng.gauss(0, 0.5) > 0
        key = subjects.get(i, f"k{i % 5000}")
        batch.append(Event(f"b-{i}", key, float(i), x, 0, 2 * i, 0.0, "bench"))
        pending.append(Feedback(f"b-{i}", key, y, float(i), 0, 2 * i + 1, 0.0, "bench"))
        if len(pending) > delay:
            batch.append(pending.pop(0))
        if len(batch) >= 500 or (i + 1) % every == 0:
            core.process(Batch(0, batch))
            batch = []
        if (i + 1) % every == 0:
            seq = (i + 1) // every
            ckpt = checkpoint_id(seq)
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
