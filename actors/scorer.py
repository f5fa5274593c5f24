"""ScorerActor: holds River models for a range of keys; scores, waits for labels, learns.

Checkpoints: every ingest actor sends ``barrier`` after the last batch it routed before
the checkpoint's positions, and sends nothing more until the checkpoint is committed.
Calls from one caller run in order, so when the last ingest actor's barrier arrives
this scorer has handled exactly the records before the positions: it writes its model
and pending labels to the store then (aligned, as in Flink).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Any

import ray

from pipelines.allocator import pin_mmap_threshold, tune_gc
from pipelines.audit.trail import AuditStore, SegmentWriter
from pipelines.checkpoint import CheckpointStore, Manifest, dumps_state, loads_state
from pipelines.config import ScoringConfig, TelemetryConfig
from pipelines.faults import Drills
from pipelines.monitoring.resources import process_figures
from pipelines.monitoring.scorer import ScorerTelemetry
from pipelines.protocol import Applied, Barrier, Deployment, ScorerPart, SinkBatch, decode_batch
from pipelines.scoring import ScorerCore, live_model_of

_NOTHING = SinkBatch([], [], [], [], [])


@ray.remote(max_restarts=0)  # the Supervisor owns restarts
class ScorerActor:
    def __init__(self, config: ScoringConfig, *, name: str, metrics_window: int,
                 generation: int = 0, store_url: str | None = None,
                 restore: Manifest | None = None, drills: list[str] | None = None,
                 deployment: Deployment | None = None,
                 artifacts: dict[str, bytes] | None = None,
                 audit_rows: int | None = None, telemetry: TelemetryConfig | None = None,
                 pipeline: str = "") -> None:
        """``audit_rows``: keep the audit trail and training log, in segments of this
        many rows (None: keep none; they need a checkpoint store). ``telemetry``: its
        metrics and spans (None: none)."""
        pin_mmap_threshold()  # a long run's RSS stays with its live data (pipelines.allocator)
        self._drills = Drills(drills or [], name)
        self._drills.fire("start")
        self._config = config
        self._name = name
        self._window = metrics_window
        self._store = CheckpointStore(store_url) if store_url else None
        self._audit_store = AuditStore(store_url) if store_url and audit_rows else None
        self._audit_rows = audit_rows or 0
        self._writer: SegmentWriter | None = None
        self._telemetry = ScorerTelemetry(telemetry, pipeline=pipeline, actor=name,
                                          core=lambda: self._core) \
            if telemetry is not None and telemetry.active else None
        self.reset(generation, restore, deployment, artifacts)
        tune_gc()  # the imports and the model out of the collector's sight (pipelines.allocator)

    def reset(self, generation: int, restore: Manifest | None,
              deployment: Deployment | None = None,
              artifacts: dict[str, bytes] | None = None) -> str:
        """Continue from a checkpoint (or from scratch) as of ``generation``: batches and
        barriers of an earlier generation, still queued here, are ignored. Then serve
        ``deployment`` (the one in force, which may be newer than the checkpoint's)."""
        self._generation = generation
        self._barriers: Counter[str] = Counter()
        self._core = ScorerCore(self._config, name=self._name, metrics_window=self._window,
                                audit=self._audit_store is not None)
        if self._writer is not None:  # what the old generation wrote is never committed
            self._writer.close()
        self._writer = None if self._audit_store is None else SegmentWriter(
            self._audit_store, scorer=self._name, generation=generation,
            rows_per_segment=self._audit_rows)
        if restore is not None:
            assert self._store is not None
            self._core.restore(loads_state(self._store.read_part(restore, self._name)))
            self._core.checkpoint = restore.id
        if deployment is not None and deployment != self._core.deployment:
            self._core.apply(deployment, _load_models(artifacts or {}))
        return self._name

    def apply(self, deployment: Deployment, artifacts: dict[str, bytes],
              generation: int = 0) -> Applied:
        """Serve ``deployment`` from the next batch on (``artifacts``: the versions this
        scorer may not hold yet). Returns the pause it caused and the swap's position."""
        started = time.perf_counter()
        out = self._core.apply(deployment, _load_models(artifacts))
        pause_s = time.perf_counter() - started
        if self._telemetry is not None:
            self._telemetry.swapped(pause_s, deployment.arms[0].version)
        return Applied(out["name"], out["scored"], pause_s, generation)

    def ready(self) -> str:
        return self._core.name

    def pid(self) -> int:
        return os.getpid()

    def telemetry(self, flush: bool = False) -> list[Any]:
        """This actor's metrics now (``flush``: the run ends, exporters send what they hold)."""
        return self._telemetry.snapshot(flush=flush) if self._telemetry is not None else []

    def process(self, data: bytes, generation: int = 0) -> SinkBatch:
        """An encoded Batch: events scored, feedback learned, in arrival order."""
        if generation != self._generation:  # sent before a restart: replayed anew
            return _NOTHING
        batch = decode_batch(data)
        if self._telemetry is None:
            out = self._core.process(batch)
        else:  # one span (when sampled) and a few histograms per batch
            out = self._telemetry.process(batch, self._core.process)
        if self._writer is not None:
            assert self._core.audit is not None
            self._writer.absorb(self._core.audit, self._core.checkpoint)
        return out

    def barrier(self, barrier: Barrier, generation: int = 0) -> ScorerPart | None:
        """One input's barrier; at the last of ``n_inputs``, write this scorer's part."""
        if generation != self._generation:
            return None
        ckpt = barrier.checkpoint
        self._barriers[ckpt] += 1
        if self._barriers[ckpt] < barrier.n_inputs:
            return None
        del self._barriers[ckpt]
        return self._write_part(ckpt, barrier.seq)

    def _write_part(self, ckpt: str, seq: int) -> ScorerPart:
        assert self._store is not None, "checkpoint barrier without a checkpoint store"
        started = time.monotonic()
        segments = []
        if self._writer is not None:
            assert self._core.audit is not None
            segments = self._writer.barrier(self._core.audit, self._core.checkpoint, seq)
        blob = dumps_state(self._core.snapshot())
        if self._drills.armed("checkpoint", seq):
            # Half a part on disk, then the process dies: the drill of a crash mid-checkpoint.
            self._store.write_part(ckpt, self._core.name, blob[: len(blob) // 2])
            self._drills.fire("checkpoint", seq)
        part = self._store.write_part(ckpt, self._core.name, blob)
        # The time this scorer spent on it instead of scoring: its share of the pause.
        stats = self._core.stats()
        return ScorerPart(self._core.name, part, time.monotonic() - started,
                          stats["learned"], stats["n_metric"], stats["metrics"], segments)

    def committed(self, ckpt: str, seq: int = 0) -> None:
        """The checkpoint is committed: predictions from now on name it, and the audit
        segments it lists are no longer this scorer's to list."""
        self._core.checkpoint = ckpt
        if self._writer is not None:
            self._writer.committed(seq)

    def stats(self) -> dict[str, Any]:
        return {**self._core.stats(), "process": process_figures()}


def _load_models(artifacts: dict[str, bytes]) -> dict[str, Any]:
    """Models from their artifact bytes: a River version's is this scorer's checkpoint
    part (its live model is taken); a batch model's is the pickled model."""
    models = {}
    for version, blob in artifacts.items():
        obj = loads_state(blob)
        models[version] = live_model_of(obj) if isinstance(obj, dict) else obj
    return models
