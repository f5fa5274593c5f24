"""Supervisor: builds the topology, watches it, restarts it, and checkpoints it.

It is the one place that creates actors: a sink, the scorers, then the ingest actors
that own the source partitions. While the pipeline runs it

- watches every actor two ways: Ray's notice of a death (a call to it fails) and a
  ping every ``ping_interval_s`` that must be answered within ``ping_timeout_s`` (a
  hung actor counts as failed);
- answers a failure with its role's restart policy: the data path is rebuilt from the
  last committed checkpoint after a backoff (every scorer takes input from every
  ingest actor, so the connected region is the whole data path, as in Flink's region
  failover), or, past ``max_restarts`` within ``within_s``, escalates: the run stops
  with an error naming the actor and its last failure;
- takes aligned checkpoints every ``interval_s`` seconds or ``every_events`` events;
- writes every failure, restart, escalation and checkpoint to ``supervision.jsonl``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import ray

from actors.ingest import IngestActor
from actors.scorer import ScorerActor
from actors.sink import SinkActor
from actors.supervisor_control import ControlPath
from pipelines.checkpoint import CheckpointStore, Manifest, Part, checkpoint_id
from pipelines.config import PipelineConfig
from pipelines.errors import PipelineError, RunFailed
from pipelines.kafka import ensure_topics, group_positions, rewind_group
from pipelines.lifecycle import deployment_to_json
from pipelines.models import build_model, task_of
from pipelines.scoring import merge_metrics
from pipelines.summary import build_summary
from pipelines.supervision import Escalate, RestartPolicy, SupervisionLog

TICK_S = 0.05


def assign_partitions(n_partitions: int, n_ingest: int) -> list[list[int]]:
    """Partitions dealt round-robin to ingest actors.

    >>> assign_partitions(5, 2)
    [[0, 2, 4], [1, 3]]
    """
    return [list(range(i, n_partitions, n_ingest)) for i in range(n_ingest)]


class ActorFailed(Exception):
    def __init__(self, actor: str, error: str) -> None:
        super().__init__(f"{actor}: {error}")
        self.actor = actor
        self.error = error


@ray.remote(max_restarts=0, num_cpus=0)
class Supervisor(ControlPath):
    def __init__(self, config: PipelineConfig, out_dir: str, store_url: str | None = None
                 ) -> None:
        self._config = config
        self._out_dir = Path(out_dir)
        self._task = task_of(build_model(config.scoring.model))
        self._stopped = False
        self._started = 0.0
        self._store_url = store_url or str(self._out_dir / "checkpoints")
        self._store: CheckpointStore | None = None
        self._log = SupervisionLog(self._out_dir / "supervision.jsonl")
        sup = config.supervision
        self._policies = {"scorer": RestartPolicy(sup.scorer), "ingest": RestartPolicy(sup.ingest),
                          "sink": RestartPolicy(sup.sink)}
        self._manifest: Manifest | None = None
        self._registry: Any = None
        self._baseline: dict[str, int] = {}
        """Source positions where the run started (Kafka): the base of every checkpoint's."""
        self._seq = 1
        self._ingest: list[Any] = []
        self._runs: list[ray.ObjectRef] = []
        self._scorers: list[Any] = []
        self._sink: Any = None
        self._done: list[dict[str, Any]] = []
        self._retired: list[dict[str, Any]] = []
        self._checkpoints: list[dict[str, Any]] = []
        self._n_checkpoints = 0
        """The last checkpoints taken (bounded: a long run takes many)."""
        self._restarts = 0
        self._main: asyncio.Task[list[dict[str, Any]]] | None = None
        self._ckpt_task: asyncio.Task[Manifest | None] | None = None
        self._resumed_at = 0.0
        self._generation = 0
        """Bumped at every restart; batches of an older generation are ignored."""

    # -- the topology ------------------------------------------------------------------
    async def start(self, resume: bool = False) -> None:
        """Create sink, scorers and ingest actors (from the last checkpoint if ``resume``);
        wait until all answer; start reading and supervising."""
        cfg = self._config
        loop = asyncio.get_running_loop()
        if cfg.kafka.create_topics and "kafka" in (cfg.source.kind, cfg.output.kind):
            partitions = getattr(cfg.source, "partitions", 1)
            await loop.run_in_executor(None, ensure_topics, cfg.kafka, partitions)
        if cfg.checkpoint.enabled or resume:
            self._store = await loop.run_in_executor(None, CheckpointStore, self._store_url)
            self._seq = await loop.run_in_executor(None, self._store.next_seq)
        if cfg.registry.enabled:
            from pipelines.registry import Registry

            url = cfg.registry.url or f"sqlite:///{self._out_dir / 'registry.db'}"
            self._registry = await loop.run_in_executor(None, Registry, url)
        if resume:
            assert self._store is not None
            self._manifest = await loop.run_in_executor(None, self._store.latest)
            if self._manifest is None:
                raise PipelineError(f"--resume: no committed checkpoint in {self._store_url}")
            self._log.record("resume", "supervisor", "riffle run --resume",
                             checkpoint=self._manifest.id)
        else:
            self._log.record("start", "supervisor", "riffle run")
        if cfg.source.kind == "kafka" and self._store is not None:
            # Where this run starts reading: what a failure before the first checkpoint
            # rewinds to, and what each checkpoint's positions start from.
            if self._manifest is not None:
                self._baseline = dict(self._manifest.positions)
                await loop.run_in_executor(None, rewind_group, cfg.kafka, self._baseline)
            else:
                self._baseline = await loop.run_in_executor(None, group_positions, cfg.kafka)
        await loop.run_in_executor(None, lambda: self._init_control(resume=resume))
        self._started = time.time()
        try:
            await self._build(append=resume)
        except ActorFailed as e:
            await self._recover(e)  # a crash loop escalates here (RunFailed)
        self._main = asyncio.create_task(self._supervise())
        self._control_task = asyncio.create_task(self._control_loop())

    async def _build(self, *, append: bool) -> None:
        """Create every actor, restored from ``self._manifest`` if there is one."""
        cfg = self._config
        restore = self._restore()
        self._sink = self._new_sink(append)
        self._scorers = [self._new_scorer(i, restore) for i in range(cfg.scoring.n_actors)]
        self._ingest = [self._new_ingest(i, parts, restore) for i, parts in enumerate(
            assign_partitions(cfg.source.partitions, cfg.ingest.n_actors))]
        await self._all_ready()
        launch = None if append else self._launch_command()
        if launch is not None:  # before the first event: every record sees the launch
            await self._command(launch, "config", strict=True)
        self._runs = [a.run.remote() for a in self._ingest]

    async def _rebuild(self, failed: str) -> None:
        """After ``failed`` failed: replace it (every actor, for all_for_one) and rewind
        the others in place to the last checkpoint, as a new generation. Batches of the
        old generation still queued anywhere are ignored."""
        async with self._control_lock:  # no command half-applied meanwhile
            await self._rebuild_data_path(failed)

    async def _rebuild_data_path(self, failed: str) -> None:
        cfg = self._config
        self._generation += 1
        gen, restore = self._generation, self._restore()
        all_for_one = cfg.supervision.strategy == "all_for_one"
        # Stop reading everywhere; the failed actor goes; the old runs end (a run waiting
        # on the failed actor ends when that one is killed).
        await asyncio.gather(*(asyncio.wait_for(a.abort.remote(), 5) for a in self._ingest),
                             return_exceptions=True)
        replace = {name for name, _ in self._named()} if all_for_one else {failed}
        for name, actor in self._named():
            if name in replace:
                ray.kill(actor, no_restart=True)
        ended = await asyncio.gather(
            *(asyncio.wait_for(_settled(r), 10) for r in self._runs), return_exceptions=True)
        for i, outcome in enumerate(ended):
            if isinstance(outcome, TimeoutError):  # stuck: replaced as well
                replace.add(f"ingest-{i}")
                ray.kill(self._ingest[i], no_restart=True)
        if cfg.source.kind == "kafka" and self._store is not None:
            # The group's commits ran ahead of the checkpoint: set them back to its positions.
            positions = self._manifest.positions if self._manifest else self._baseline
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, rewind_group, cfg.kafka, positions)
            except Exception as e:  # the broker is away: this restart fails, the next retries
                raise ActorFailed(failed, f"rewinding the consumer group: {_cause(e)}") from None
        if "sink" in replace:
            self._sink = self._new_sink(append=True)
        resets = []
        for i, scorer in enumerate(self._scorers):
            if f"scorer-{i}" in replace:
                self._scorers[i] = self._new_scorer(i, restore)
            else:
                resets.append((f"scorer-{i}", scorer.reset.remote(
                    gen, restore, self._lifecycle.deployment,
                    self._lifecycle.artifacts_for(f"scorer-{i}"))))
        parts = assign_partitions(cfg.source.partitions, len(self._ingest))
        for i, actor in enumerate(self._ingest):
            if f"ingest-{i}" in replace:
                self._ingest[i] = self._new_ingest(i, parts[i] if i < len(parts) else [],
                                                   restore)
            else:
                resets.append((f"ingest-{i}", actor.reset.remote(
                    gen, self._scorers, self._sink, restore)))
        for name, ref in resets:
            try:
                await asyncio.wait_for(ref, cfg.supervision.ping_timeout_s)
            except (TimeoutError, ray.exceptions.RayError) as e:
                raise ActorFailed(name, f"while rewinding: {_cause(e)}") from None
        await self._all_ready()
        self._resumed_at = time.time()
        self._runs = [a.run.remote() for a in self._ingest]

    def _restore(self) -> dict[str, Any] | None:
        return self._manifest.model_dump(mode="json") if self._manifest else None

    def _new_sink(self, append: bool) -> Any:
        return SinkActor.options(num_cpus=0).remote(self._config, self._out_dir, append=append)

    def _new_scorer(self, index: int, restore: dict[str, Any] | None) -> Any:
        cfg = self._config
        return ScorerActor.options(num_cpus=cfg.scoring.num_cpus).remote(
            cfg.scoring, name=f"scorer-{index}",
            metrics_window=max(1, cfg.scoring.metrics_window // cfg.scoring.n_actors),
            generation=self._generation, store_url=self._store_url if self._store else None,
            restore=restore, drills=cfg.runtime.fault_drills,
            deployment=self._lifecycle.deployment,
            artifacts=self._lifecycle.artifacts_for(f"scorer-{index}"))

    def _named(self) -> list[tuple[str, Any]]:
        return [("sink", self._sink),
                *((f"scorer-{i}", s) for i, s in enumerate(self._scorers)),
                *((f"ingest-{i}", a) for i, a in enumerate(self._ingest))]

    async def _all_ready(self) -> None:
        for name, actor in self._named():
            try:
                await asyncio.wait_for(actor.ready.remote(),
                                       self._config.supervision.start_timeout_s)
            except (TimeoutError, ray.exceptions.RayError) as e:
                raise ActorFailed(name, _cause(e)) from None

    def _new_ingest(self, index: int, partitions: list[int],
                    restore: dict[str, Any] | None = None) -> Any:
        cfg = self._config
        return IngestActor.options(num_cpus=cfg.ingest.num_cpus).remote(
            cfg, name=f"ingest-{index}", partitions=partitions, task=self._task,
            scorers=self._scorers, sink=self._sink, generation=self._generation,
            store_url=self._store_url if self._store is not None else None, restore=restore)

    async def _teardown(self) -> None:
        """Kill the data path; ingest actors first leave their consumer group."""
        self._stop_control()
        if self._ckpt_task is not None:  # never committed: its folder has no manifest
            self._ckpt_task.cancel()
            self._ckpt_task = None
        await asyncio.gather(*(asyncio.wait_for(a.abort.remote(), 5) for a in self._ingest),
                             return_exceptions=True)
        for _, actor in self._named():
            if actor is not None:
                ray.kill(actor, no_restart=True)

    # -- supervision -------------------------------------------------------------------
    async def _supervise(self) -> list[dict[str, Any]]:
        while True:
            try:
                return await self._watch()
            except ActorFailed as failure:
                await self._recover(failure)

    async def _watch(self) -> list[dict[str, Any]]:
        """Until the ingest actors are done (their stats), or an actor fails (raises)."""
        cfg = self._config
        sup = cfg.supervision
        ckpt = cfg.checkpoint
        now = time.monotonic()
        next_ckpt = now + (ckpt.interval_s or float("inf"))
        next_ping = now + sup.ping_interval_s
        events_at_ckpt = self._manifest.events_read if self._manifest else 0
        pings: dict[str, tuple[float, ray.ObjectRef]] = {}
        done: dict[int, dict[str, Any]] = {}
        next_count = now
        while len(done) < len(self._runs):
            await asyncio.sleep(TICK_S)
            pending = [r for i, r in enumerate(self._runs) if i not in done]
            ready, _ = ray.wait(pending, num_returns=len(pending), timeout=0)
            for ref in ready:
                i = self._runs.index(ref)
                try:
                    done[i] = ray.get(ref)
                except ray.exceptions.RayError as e:
                    raise ActorFailed(await self._culprit(f"ingest-{i}"), _cause(e)) from None
            now = time.monotonic()
            if now >= next_ping:
                next_ping = now + sup.ping_interval_s
                for name, actor in self._named():
                    if name not in pings:
                        pings[name] = (now, actor.ready.remote())
            for name, (sent, ref) in list(pings.items()):
                if ray.wait([ref], timeout=0)[0]:
                    del pings[name]
                    try:
                        ray.get(ref)
                    except ray.exceptions.RayError as e:
                        raise ActorFailed(name, _cause(e)) from None
                elif now - sent > sup.ping_timeout_s:
                    raise ActorFailed(name, f"no answer to a ping for {sup.ping_timeout_s} s "
                                            "(hung)")
            # Checkpoints run beside the watch: a hung actor is found even mid-checkpoint.
            ckpt_task = self._ckpt_task
            if ckpt_task is not None and ckpt_task.done():
                self._ckpt_task = None
                committed = ckpt_task.result()  # an actor's failure during it raises here
                if committed is not None:
                    events_at_ckpt = committed.events_read
                next_ckpt = time.monotonic() + (ckpt.interval_s or float("inf"))
            if self._store is None or done or self._stopped or self._ckpt_task is not None:
                continue
            due = now >= next_ckpt
            if (due or ckpt.every_events) and now >= next_count:
                next_count = now + 0.5
                events, positions = await self._progress()
                if ckpt.every_events and events - events_at_ckpt >= ckpt.every_events:
                    due = True
                elif due and positions == self._positions():  # nothing read since the last
                    due = False
                    next_ckpt = now + (ckpt.interval_s or float("inf"))
            else:
                due = False
            if due:
                self._ckpt_task = asyncio.create_task(self._checkpoint())
        if self._ckpt_task is not None:
            task, self._ckpt_task = self._ckpt_task, None
            await task  # ends at once: the ingest actors have stopped reading
        stats = [done[i] for i in range(len(self._runs))]
        if self._store is not None:  # drained (ended or stopped): a final, exact checkpoint
            await self._final_checkpoint(stats)
        return stats

    async def _progress(self) -> tuple[int, dict[str, int]]:
        """Events read so far, and the positions the ingest actors have reached."""
        try:
            stats = await asyncio.gather(*(a.stats.remote() for a in self._ingest))
        except ray.exceptions.RayError as e:  # an ingest actor died: restart, not the end
            raise ActorFailed(await self._culprit("supervisor"), _cause(e)) from None
        positions = self._positions()
        for st in stats:
            positions.update(st["positions"])
        return sum(st["events"] for st in stats), positions

    async def _culprit(self, reporter: str) -> str:
        """Which actor failed: the first that no longer answers, else the reporter."""
        for name, actor in self._named():
            try:
                await asyncio.wait_for(actor.ready.remote(), 2.0)
            except ray.exceptions.RayError:
                return name
            except TimeoutError:
                continue
        return reporter

    async def _recover(self, failure: ActorFailed) -> None:
        """Restart the data path from the last checkpoint, per the failed role's policy;
        a restart that fails again counts as another failure. Raises RunFailed when the
        policy escalates."""
        while True:
            role = failure.actor.split("-")[0]
            self._log.record("failure", failure.actor, failure.error)
            policy = self._policies.get(role, self._policies["scorer"])
            decision = policy.on_failure(failure.error)
            if isinstance(decision, Escalate):
                self._log.record("escalation", failure.actor, decision.reason)
                await self._teardown()
                raise RunFailed(f"pipeline {self._config.name}: {failure.actor} failed and was "
                                f"not restarted: {decision.reason}")
            failed_at = time.time()
            if self._ckpt_task is not None:  # never committed: its folder has no manifest
                self._ckpt_task.cancel()
                self._ckpt_task = None
            await asyncio.sleep(decision.delay_s)
            checkpoint = self._manifest.id if self._manifest else None
            try:
                await self._rebuild(failure.actor)
            except ActorFailed as again:
                failure = again
                continue
            self._restarts += 1
            self._log.record("restart", failure.actor, failure.error, checkpoint=checkpoint,
                             attempt=decision.attempt, delay_s=decision.delay_s,
                             strategy=self._config.supervision.strategy,
                             resumed_at=self._resumed_at,
                             rebuilt_in_s=round(self._resumed_at - failed_at, 3))
            return

    # -- checkpoints -------------------------------------------------------------------
    async def _checkpoint(self) -> Manifest | None:
        """An aligned checkpoint through the running pipeline; None if abandoned."""
        async with self._control_lock:  # every part reflects the same deployment
            return await self._aligned_checkpoint()

    async def _aligned_checkpoint(self) -> Manifest | None:
        assert self._store is not None
        seq, self._seq = self._seq, self._seq + 1
        ckpt = checkpoint_id(seq)
        started = time.monotonic()
        n = len(self._ingest)
        hold = n > 1
        try:
            results = await asyncio.wait_for(asyncio.gather(
                *(a.barrier.remote(ckpt, seq, n, hold) for a in self._ingest)),
                self._config.checkpoint.timeout_s)
            if any(r is None for r in results):  # an ingest actor finished meanwhile
                self._log.record("checkpoint_abandoned", "supervisor",
                                 "an ingest actor stopped reading", checkpoint=ckpt)
                await self._resume_all()
                return None
            refs = [ref for r in results for ref in r["scorer_parts"]]
            scorer_parts = await asyncio.wait_for(asyncio.gather(*refs),
                                                  self._config.checkpoint.timeout_s)
        except TimeoutError:
            self._log.record("checkpoint_abandoned", "supervisor", "timed out", checkpoint=ckpt)
            await self._resume_all()
            return None
        except ray.exceptions.RayError as e:
            raise ActorFailed(await self._culprit("supervisor"),
                              f"during checkpoint {ckpt}: {_cause(e)}") from None
        parts = [*results, *(p for p in scorer_parts if p is not None)]
        positions = self._positions()
        for r in results:
            positions.update(r["positions"])
        manifest = await self._commit(seq, ckpt, parts, positions,
                                      sum(r["events"] for r in results), final=False)
        await self._resume_all()
        duration = time.monotonic() - started
        # How long reading or scoring stood still for it: held ingest actors wait for the
        # whole checkpoint; a single one only while it injects, and scorers while they write.
        writes = [p.get("write_s", 0.0) for p in scorer_parts if p is not None]
        pause = duration if hold else (max(r["inject_s"] for r in results)
                                       + max(writes, default=0.0))
        self._note_checkpoint(manifest, pause, duration)
        try:
            await asyncio.gather(*(s.committed.remote(ckpt) for s in self._scorers))
        except ray.exceptions.RayError as e:  # a scorer died just after the commit
            raise ActorFailed(await self._culprit("supervisor"),
                              f"after checkpoint {ckpt}: {_cause(e)}") from None
        return manifest

    async def _final_checkpoint(self, stats: list[dict[str, Any]]) -> None:
        """After the source is exhausted and drained: the final model, as a checkpoint."""
        assert self._store is not None
        seq, self._seq = self._seq, self._seq + 1
        ckpt = checkpoint_id(seq)
        started = time.monotonic()
        ingest_parts = await asyncio.gather(*(a.part.remote(ckpt) for a in self._ingest))
        scorer_parts = await asyncio.gather(*(s.barrier.remote(ckpt, seq, 1, self._generation)
                                              for s in self._scorers))
        positions = self._positions()
        for p in ingest_parts:
            positions.update(p["positions"])
        manifest = await self._commit(seq, ckpt, [*ingest_parts, *scorer_parts], positions,
                                      sum(s["events"] for s in stats), final=True)
        await asyncio.gather(*(s.committed.remote(ckpt) for s in self._scorers))
        self._note_checkpoint(manifest, 0.0, time.monotonic() - started)

    def _positions(self) -> dict[str, int]:
        """Positions a new checkpoint starts from: its predecessor's (a Kafka partition
        that handed out nothing since stays where it was)."""
        return dict(self._manifest.positions if self._manifest else self._baseline)

    async def _commit(self, seq: int, ckpt: str, parts: list[dict[str, Any]],
                      positions: dict[str, int], events: int, *, final: bool) -> Manifest:
        assert self._store is not None
        cfg = self._config
        manifest = Manifest(id=ckpt, seq=seq, created_at=time.time(), pipeline=cfg.name,
                            config_hash=cfg.config_hash(), positions=positions,
                            parts={p["name"]: Part.model_validate(p["part"]) for p in parts},
                            events_read=events, final=final,
                            deployment=deployment_to_json(self._lifecycle.deployment),
                            control_position=self._control.position)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._store.commit, manifest)
        parent, self._manifest = self._manifest, manifest
        await loop.run_in_executor(None, self._store.prune, cfg.checkpoint.keep)
        scorers = [p for p in parts if "learned" in p]
        await loop.run_in_executor(None, self._register, manifest, parent, scorers)
        return manifest

    def _register(self, manifest: Manifest, parent: Manifest | None,
                  scorers: list[dict[str, Any]]) -> None:
        """Record the checkpoint as a model version; a registry that fails is logged, and
        the pipeline goes on (the checkpoint itself is committed)."""
        if self._registry is None:
            return
        from pipelines.registry import river_version_id

        spec = self._config.scoring.model
        try:
            self._registry.register_checkpoint(
                self._store_url, manifest,
                model_class=" | ".join(step.name for step in spec.steps),
                params={"steps": [step.model_dump(mode="json") for step in spec.steps],
                        "version": spec.version},
                n_learned=sum(p["learned"] for p in scorers),
                parent_id=river_version_id(manifest.pipeline, parent.id) if parent else None,
                metrics=merge_metrics(scorers), start_positions=self._baseline or None)
        except Exception as e:
            self._log.record("registry_error", "supervisor", _cause(e), checkpoint=manifest.id)

    def _note_checkpoint(self, manifest: Manifest, pause_s: float, duration_s: float) -> None:
        size = sum(p.bytes for p in manifest.parts.values())
        info = {"id": manifest.id, "events_read": manifest.events_read, "bytes": size,
                "pause_s": round(pause_s, 4), "duration_s": round(duration_s, 4),
                "final": manifest.final}
        self._checkpoints.append(info)
        del self._checkpoints[:-100]
        self._n_checkpoints += 1
        self._log.record("checkpoint", "supervisor", "final" if manifest.final else "periodic",
                         checkpoint=manifest.id, bytes=size, pause_s=info["pause_s"],
                         duration_s=info["duration_s"], positions=manifest.positions)

    async def _resume_all(self) -> None:
        await asyncio.gather(*(a.resume.remote() for a in self._ingest),
                             return_exceptions=True)

    # -- what the driver asks ----------------------------------------------------------
    async def scale_ingest(self, n_actors: int) -> int:
        """Grow or shrink the ingest group of a Kafka source (the group rebalances).

        Embedded sources deal their partitions once, at start, so they cannot scale.
        """
        if self._config.source.kind != "kafka":
            raise PipelineError(f"scale_ingest: a {self._config.source.kind} source deals its "
                                "partitions at start; only a Kafka source's group can scale")
        while len(self._ingest) < n_actors:
            actor = self._new_ingest(len(self._ingest) + len(self._retired), [])
            await actor.ready.remote()
            self._ingest.append(actor)
            self._runs.append(actor.run.remote())
        while len(self._ingest) > n_actors:
            actor, run = self._ingest.pop(), self._runs.pop()
            await actor.stop.remote()  # drains, commits, leaves the group
            self._retired.append(await run)
        return len(self._ingest)

    async def wait(self) -> dict[str, Any]:
        """Until every ingest actor has drained; then the run's summary."""
        assert self._main is not None
        try:
            ingest_stats = list(await self._main)
        except PipelineError:
            raise
        except Exception as e:
            await self.stop()
            raise RunFailed(f"pipeline {self._config.name} failed: {_cause(e)}") from None
        ingest_stats += self._retired
        self._stop_control()
        sink_stats = await self._sink.close.remote()
        scorer_stats = await asyncio.gather(*(s.stats.remote() for s in self._scorers))
        summary = build_summary(
            name=self._config.name, ingest=ingest_stats, scorers=list(scorer_stats),
            sink=sink_stats, wall_s=time.time() - self._started,
            metrics_window=self._config.scoring.metrics_window, stopped=self._stopped)
        summary["supervision"] = self._supervision_summary()
        summary["deployment"] = self._arms_summary(list(scorer_stats))
        return summary

    def _supervision_summary(self) -> dict[str, Any]:
        return {"restarts": self._restarts, "n_checkpoints": self._n_checkpoints,
                "checkpoints": list(self._checkpoints),
                "last_checkpoint": self._manifest.id if self._manifest else None,
                "log": self._log.entries[-20:]}

    async def pids(self) -> dict[str, int]:
        """The worker process of every actor (for operators and fault drills)."""
        names = self._named()
        pids = await asyncio.gather(*(a.pid.remote() for _, a in names))
        return dict(zip([n for n, _ in names], pids, strict=True))

    async def status(self) -> dict[str, Any]:
        """A progress snapshot: events read, predictions written, accuracy so far."""
        try:
            ingest = await asyncio.gather(*(a.stats.remote() for a in self._ingest))
            scorers = await asyncio.gather(*(s.stats.remote() for s in self._scorers))
        except ray.exceptions.RayError:  # mid-restart: the log says why
            return {"pipeline": self._config.name, "restarting": True,
                    "supervision": self._supervision_summary()}
        summary = build_summary(
            name=self._config.name, ingest=list(ingest), scorers=list(scorers),
            sink={"predictions_written": sum(i["acked"]["predictions"] for i in ingest),
                  "dead_letters_written": sum(i["acked"]["dead_letters"] for i in ingest)},
            wall_s=time.time() - self._started,
            metrics_window=self._config.scoring.metrics_window, stopped=self._stopped)
        summary["supervision"] = self._supervision_summary()
        summary["deployment"] = self._arms_summary(list(scorers))
        return summary

    async def stop(self) -> None:
        """Stop reading everywhere; in-flight batches still drain."""
        self._stopped = True
        await asyncio.gather(*(a.stop.remote() for a in self._ingest), return_exceptions=True)


async def _settled(ref: ray.ObjectRef) -> None:
    """Wait for a call to end, however it ends."""
    try:
        await ref
    except Exception:
        return


def _cause(error: BaseException) -> str:
    # A RayTaskError names the actor and wraps the original exception: keep one line.
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"
