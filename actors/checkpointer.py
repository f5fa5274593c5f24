"""The checkpoint path's coordinator: aligned checkpoints through the running actors.

The Supervisor owns one :class:`Checkpointer` and says *when* (its
:class:`~pipelines.checkpoint.CheckpointSchedule`); this says *how*:

1. every ingest actor gets a barrier: it sends out what it routed, waits for the sink's
   acks of it, writes its part (dedupe memory) and its positions, and passes the
   barrier to every scorer behind the data (with several ingest actors it then holds);
2. each scorer writes its part (model, pending labels) when the last barrier arrives;
3. parts first, manifest last: the manifest (positions, parts and their hashes, the
   deployment, the control position) is committed once every part is written; then
   the ingest actors read on, old checkpoints are pruned and the registry records the
   checkpoint as a model version.

A checkpoint that times out or meets an ingest actor done reading is abandoned (its
folder has no manifest: it never exists). An actor failing during one raises
:class:`~pipelines.errors.ActorFailed` (the Supervisor finds the culprit).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import ray

from actors.control import ControlPath
from pipelines.audit.trail import AuditStore
from pipelines.checkpoint import CheckpointStore, Manifest, checkpoint_id
from pipelines.config import PipelineConfig
from pipelines.errors import ActorFailed, cause_line
from pipelines.lifecycle import deployment_to_json
from pipelines.metrics import merge_parts
from pipelines.protocol import Barrier, CheckpointStats, IngestPart, ScorerPart
from pipelines.supervision import SupervisionLog

HISTORY = 100
"""Checkpoints kept in the run's status (a long run takes many)."""


class Checkpointer:
    """Takes, commits and registers the checkpoints of one run."""

    def __init__(self, config: PipelineConfig, *, store: CheckpointStore, log: SupervisionLog,
                 control: ControlPath, registry: Any, seq: int,
                 manifest: Manifest | None = None, baseline: dict[str, int] | None = None
                 ) -> None:
        self._config = config
        self._store = store
        self._log = log
        self._control = control
        self._registry = registry
        self._seq = seq
        self.manifest = manifest
        """The last committed checkpoint (restored from, or taken by this run)."""
        self.baseline = dict(baseline or {})
        """Source positions where the run started (Kafka): the base of every checkpoint's."""
        self.history: list[CheckpointStats] = []
        self.n_taken = 0
        self._audit = AuditStore(store.url) if config.audit.enabled else None
        """The audit trail's store: its segments are committed with the checkpoints."""

    def prepare_audit(self) -> None:
        """Before any actor runs: index the committed checkpoints whose audit index a
        crash left unwritten, and discard the segments no checkpoint committed."""
        if self._audit is None:
            return
        self._audit.reconcile(self._store.manifests())
        self.discard_uncommitted()

    def discard_uncommitted(self) -> None:
        """After a failure, before the replay: the segments written since the last
        committed checkpoint are never committed (the replay writes their rows anew)."""
        if self._audit is None:
            return
        gone = self._audit.discard_uncommitted()
        if gone:
            self._log.record("audit_discarded", "supervisor",
                             f"{len(gone)} uncommitted audit segments discarded",
                             segments=len(gone))

    def positions(self) -> dict[str, int]:
        """Positions a new checkpoint starts from: its predecessor's (a Kafka partition
        that handed out nothing since stays where it was)."""
        return dict(self.manifest.positions if self.manifest else self.baseline)

    def _next_id(self) -> tuple[int, str]:
        seq, self._seq = self._seq, self._seq + 1
        return seq, checkpoint_id(seq)

    async def aligned(self, ingest: list[Any], scorers: list[Any], *, held: bool = False
                      ) -> Manifest | None:
        """An aligned checkpoint through the running pipeline; None if abandoned.
        ``held``: the ingest actors hold after their barrier and still hold once it is
        committed (the caller resumes them: a forget rebuilds from this checkpoint)."""
        seq, ckpt = self._next_id()
        started = time.monotonic()
        n = len(ingest)
        hold = n > 1 or held
        timeout_s = self._config.checkpoint.timeout_s
        barrier = Barrier(ckpt, seq, n, hold)
        try:
            answers: list[IngestPart | None] = await asyncio.wait_for(asyncio.gather(
                *(a.barrier.remote(barrier) for a in ingest)), timeout_s)
            results = [r for r in answers if r is not None]
            if len(results) < len(answers):  # an ingest actor finished meanwhile
                self._log.record("checkpoint_abandoned", "supervisor",
                                 "an ingest actor stopped reading", checkpoint=ckpt)
                await resume_reading(ingest)
                return None
            refs = [ref for r in results for ref in r.scorer_parts]
            answered: list[ScorerPart | None] = await asyncio.wait_for(
                asyncio.gather(*refs), timeout_s)
        except TimeoutError:
            self._log.record("checkpoint_abandoned", "supervisor", "timed out", checkpoint=ckpt)
            await resume_reading(ingest)
            return None
        except ray.exceptions.RayError as e:
            raise ActorFailed("supervisor", f"during checkpoint {ckpt}: {cause_line(e)}") from None
        scorer_parts = [p for p in answered if p is not None]
        positions = self.positions()
        for r in results:
            positions.update(r.positions)
        manifest = await self._commit(seq, ckpt, results, scorer_parts, positions,
                                      sum(r.events for r in results), final=False)
        if not held:
            await resume_reading(ingest)
        duration = time.monotonic() - started
        # How long reading or scoring stood still for it: held ingest actors wait for the
        # whole checkpoint; a single one only while it injects, and scorers while they write.
        pause = duration if hold else (max(r.inject_s for r in results)
                                       + max((p.write_s for p in scorer_parts), default=0.0))
        self._note(manifest, pause, duration)
        try:
            await asyncio.gather(*(s.committed.remote(ckpt, seq) for s in scorers))
        except ray.exceptions.RayError as e:  # a scorer died just after the commit
            raise ActorFailed("supervisor", f"after checkpoint {ckpt}: {cause_line(e)}") from None
        return manifest

    def adopt(self, manifest: Manifest) -> None:
        """A checkpoint committed beside the running actors (a forget's rebuild, with the
        positions of the last one) becomes the last: restarts and the next checkpoints
        continue from it."""
        self.manifest = manifest
        self._seq = max(self._seq, manifest.seq + 1)

    async def final(self, ingest: list[Any], scorers: list[Any], stats: list[dict[str, Any]],
                    generation: int) -> None:
        """After the source is exhausted and drained: the final model, as a checkpoint."""
        seq, ckpt = self._next_id()
        started = time.monotonic()
        ingest_parts: list[IngestPart] = await asyncio.gather(
            *(a.part.remote(ckpt) for a in ingest))
        scorer_parts: list[ScorerPart] = await asyncio.gather(
            *(s.barrier.remote(Barrier(ckpt, seq, 1), generation) for s in scorers))
        positions = self.positions()
        for p in ingest_parts:
            positions.update(p.positions)
        manifest = await self._commit(seq, ckpt, ingest_parts, scorer_parts, positions,
                                      sum(s["events"] for s in stats), final=True)
        await asyncio.gather(*(s.committed.remote(ckpt, seq) for s in scorers))
        self._note(manifest, 0.0, time.monotonic() - started)

    async def _commit(self, seq: int, ckpt: str, ingest: list[IngestPart],
                      scorers: list[ScorerPart], positions: dict[str, int], events: int, *,
                      final: bool) -> Manifest:
        cfg = self._config
        loop = asyncio.get_running_loop()
        access_log = await loop.run_in_executor(None, self._access_head)
        manifest = Manifest(id=ckpt, seq=seq, created_at=time.time(), pipeline=cfg.name,
                            config_hash=cfg.config_hash(), positions=positions,
                            parts={p.name: p.part for p in (*ingest, *scorers)},
                            events_read=events, final=final,
                            deployment=deployment_to_json(self._control.deployment),
                            control_position=self._control.position,
                            segments=[s for p in scorers for s in p.segments],
                            access_log=access_log)
        await loop.run_in_executor(None, self._store.commit, manifest)
        if self._audit is not None and manifest.segments:  # the index outlives pruning
            await loop.run_in_executor(None, self._audit.commit_index, manifest.id, seq,
                                       manifest.segments, manifest.created_at)
        parent, self.manifest = self.manifest, manifest
        await loop.run_in_executor(None, self._store.prune, cfg.checkpoint.keep,
                                   cfg.checkpoint.retain)
        await loop.run_in_executor(None, self._register, manifest, parent, scorers)
        return manifest

    def _access_head(self) -> dict[str, Any] | None:
        """The access log's tree head, recorded in the manifest: ``riffle audit verify``
        proves the log was only appended to since (None without a registry, or if the
        registry fails: the checkpoint does not wait for it)."""
        if self._registry is None:
            return None
        try:
            size, root = self._registry.access_head()
        except Exception as e:
            self._log.record("registry_error", "supervisor", cause_line(e))
            return None
        return {"size": size, "root": root}

    def _register(self, manifest: Manifest, parent: Manifest | None,
                  scorers: list[ScorerPart]) -> None:
        """Record the checkpoint as a model version; a registry that fails is logged, and
        the pipeline goes on (the checkpoint itself is committed)."""
        if self._registry is None:
            return
        from pipelines.registry import river_model_fields, river_version_id

        try:
            self._registry.register_checkpoint(
                self._store.url, manifest, **river_model_fields(self._config.scoring.model),
                n_learned=sum(p.learned for p in scorers),
                parent_id=river_version_id(manifest.pipeline, parent.id) if parent else None,
                metrics=merge_parts([(p.n_metric, p.metrics) for p in scorers]),
                start_positions=self.baseline or None)
        except Exception as e:
            self._log.record("registry_error", "supervisor", cause_line(e), checkpoint=manifest.id)

    def _note(self, manifest: Manifest, pause_s: float, duration_s: float) -> None:
        stats = CheckpointStats(manifest.id, manifest.events_read,
                                sum(p.bytes for p in manifest.parts.values()),
                                round(pause_s, 4), round(duration_s, 4), manifest.final)
        self.history.append(stats)
        del self.history[:-HISTORY]
        self.n_taken += 1
        self._log.record("checkpoint", "supervisor", "final" if manifest.final else "periodic",
                         checkpoint=manifest.id, bytes=stats.bytes, pause_s=stats.pause_s,
                         duration_s=stats.duration_s, positions=manifest.positions)


async def resume_reading(ingest: list[Any]) -> None:
    """The checkpoint is committed or abandoned: held ingest actors read on."""
    await asyncio.gather(*(a.resume.remote() for a in ingest), return_exceptions=True)
