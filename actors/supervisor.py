"""Supervisor: builds the topology, watches it, restarts it; a coordinator.

It builds the topology (:class:`~actors.topology.Topology`: a sink, the scorers, then
the ingest actors that own the source partitions). While the pipeline runs it

- watches every actor two ways: Ray's notice of a death (a call to it fails) and a
  ping every ``ping_interval_s`` that must be answered within ``ping_timeout_s`` (a
  hung actor counts as failed);
- answers a failure with its role's restart policy: the data path is rebuilt from the
  last committed checkpoint after a backoff (every scorer takes input from every
  ingest actor, so the connected region is the whole data path, as in Flink's region
  failover), or, past ``max_restarts`` within ``within_s``, escalates: the run stops
  with an error naming the actor and its last failure;
- starts aligned checkpoints when its :class:`~pipelines.checkpoint.CheckpointSchedule`
  says (every ``interval_s`` seconds or ``every_events`` events), taken by its
  :class:`~actors.checkpointer.Checkpointer`;
- runs the control path (:class:`~actors.control.ControlPath`): commands and
  checkpoints take turns, and a rebuild waits for both; a forget request is applied by
  :class:`~actors.erasure.Erasure` on the same turn (the watch pauses while it swaps);
- writes every failure, restart, escalation and checkpoint to ``supervision.jsonl``.

A resumed run starts from the newest checkpoint whose every part matches its hash
(:func:`~pipelines.checkpoint.resume_point`), checked before any actor starts.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, NoReturn

import ray

from actors.checkpointer import Checkpointer
from actors.control import ControlPath
from actors.erasure import Erasure
from actors.topology import Topology
from pipelines.checkpoint import CheckpointSchedule, CheckpointStore, Manifest, resume_point
from pipelines.config import PipelineConfig
from pipelines.errors import ActorFailed, PipelineError, RunFailed, cause_line
from pipelines.kafka import ensure_topics, group_positions, rewind_group
from pipelines.models import Task, build_model, task_of
from pipelines.monitoring.instruments import SupervisorMeters
from pipelines.monitoring.quality import References, merge_quality
from pipelines.monitoring.resources import resources_of
from pipelines.monitoring.telemetry import Telemetry
from pipelines.summary import build_summary
from pipelines.supervision import Escalate, RestartPolicy, SupervisionLog

TICK_S = 0.05
TELEMETRY_TIMEOUT_S = 2.0
"""How long an actor gets to answer a metrics snapshot (else its last one stands)."""


@ray.remote(max_restarts=0, num_cpus=0)
class Supervisor:
    def __init__(self, config: PipelineConfig, out_dir: str, store_url: str | None = None,
                 task: Task | None = None) -> None:
        self._config = config
        self._out_dir = Path(out_dir)
        # The driver works the task out while Ray starts (actors.driver.model_task).
        self._task: Task = task or task_of(build_model(config.scoring.model))
        self._stopped = False
        self._started = 0.0
        self._store_url = store_url or config.checkpoint_store_url(self._out_dir)
        self._log = SupervisionLog(self._out_dir / "supervision.jsonl")
        sup = config.supervision
        self._policies = {"scorer": RestartPolicy(sup.scorer), "ingest": RestartPolicy(sup.ingest),
                          "sink": RestartPolicy(sup.sink)}
        self._control: ControlPath
        self._erasure: Erasure
        self._actors: Topology
        self._checkpoints: Checkpointer | None = None
        """None without a checkpoint store (checkpoints disabled, not resuming)."""
        self._manifest: Manifest | None = None
        """The checkpoint a resumed run starts from (then the Checkpointer's last one)."""
        self._restarts = 0
        self._main: asyncio.Task[list[dict[str, Any]]] | None = None
        self._ckpt_task: asyncio.Task[Manifest | None] | None = None
        self._resumed_at = 0.0
        self._swapping = False
        """A forget rewinds the data path: the watch loop looks away meanwhile."""
        self._failure: ActorFailed | None = None
        """A failure met by a forget, for the watch loop to recover from."""
        self._telemetry: Telemetry | None = None
        self._meters: SupervisorMeters | None = None
        if config.telemetry.active:
            self._telemetry = Telemetry(config.telemetry, pipeline=config.name,
                                        actor="supervisor", role="supervisor")
            self._meters = SupervisorMeters(self._telemetry)

        self._references = References(None, config.name)
        """The registered metrics the arms' serving quality is held against."""
        self._latency_ask: asyncio.Future[Any] | None = None

    # -- the topology ------------------------------------------------------------------
    async def start(self, resume: bool = False) -> list[str]:
        """Create sink, scorers and ingest actors (from the last intact checkpoint if
        ``resume``); wait until all answer; start reading and supervising. Returns what
        the operator should be told (one line each): a damaged checkpoint passed over."""
        cfg = self._config
        loop = asyncio.get_running_loop()
        if cfg.kafka.create_topics and "kafka" in (cfg.source.kind, cfg.output.kind):
            partitions = getattr(cfg.source, "partitions", 1)
            await loop.run_in_executor(None, ensure_topics, cfg.kafka, partitions)
        store = seq = None
        if cfg.checkpoint.enabled or resume:
            store = await loop.run_in_executor(None, CheckpointStore, self._store_url)
            seq = await loop.run_in_executor(None, store.next_seq)
        registry = None
        if cfg.registry.enabled:
            from pipelines.registry import Registry

            registry = await loop.run_in_executor(None, Registry,
                                                  cfg.registry_url(self._out_dir))
        if registry is not None:
            self._references = References(_registered_metrics(registry), cfg.name)
        notices = []
        if resume:
            assert store is not None
            notices = await self._resume_from(store)
        else:
            self._log.record("start", "supervisor", "riffle run")
        baseline: dict[str, int] = {}
        if cfg.source.kind == "kafka" and store is not None:
            # Where this run starts reading: what a failure before the first checkpoint
            # rewinds to, and what each checkpoint's positions start from.
            if self._manifest is not None:
                baseline = dict(self._manifest.positions)
                await loop.run_in_executor(None, rewind_group, cfg.kafka, baseline)
            else:
                baseline = await loop.run_in_executor(None, group_positions, cfg.kafka)
        self._control = await loop.run_in_executor(None, lambda: ControlPath(
            cfg, out_dir=self._out_dir, log=self._log, registry=registry, task=self._task,
            scorers=lambda: (self._actors.scorers, self._actors.generation),
            resume_from=self._manifest if resume else None))
        self._actors = Topology(cfg, out_dir=self._out_dir, task=self._task,
                                store_url=self._store_url if store is not None else None,
                                control=self._control)
        if store is not None and seq is not None:
            self._checkpoints = Checkpointer(
                cfg, store=store, log=self._log, control=self._control, registry=registry,
                seq=seq, manifest=self._manifest, baseline=baseline)
            await loop.run_in_executor(None, self._checkpoints.prepare_audit)
        self._erasure = Erasure(
            cfg, out_dir=self._out_dir, store_url=self._store_url, log=self._log,
            checkpoints=self._checkpoints, data_path=lambda: self._actors,
            rewind=lambda: self._rebuild_data_path("supervisor"))  # every actor in place
        self._control.on_forget = self._forget
        self._started = time.time()
        try:
            await self._build(append=resume)
        except ActorFailed as e:
            await self._recover(e)  # a crash loop escalates here (RunFailed)
        self._main = asyncio.create_task(self._supervise())
        self._control.start(stopped=lambda: self._stopped)
        return notices

    async def _resume_from(self, store: CheckpointStore) -> list[str]:
        """Choose the checkpoint a resumed run starts from: the newest whose every part
        matches its hash. Checked here, before any actor starts: an actor restoring a
        damaged part would fail, be restarted from it and fail again until it escalates."""
        point = await asyncio.get_running_loop().run_in_executor(None, resume_point, store)
        if point is None:
            raise PipelineError(f"--resume: no committed checkpoint in {self._store_url}")
        self._manifest = point.manifest
        for damage in point.damaged:
            self._log.record("checkpoint_damaged", "supervisor",
                             f"{damage}; resuming from {point.manifest.id}",
                             checkpoint=damage.checkpoint, part=damage.part,
                             path=damage.path, resumed_from=point.manifest.id)
        self._log.record("resume", "supervisor", "riffle run --resume",
                         checkpoint=point.manifest.id)
        return [point.fallback] if point.fallback is not None else []

    async def _build(self, *, append: bool) -> None:
        """Create every actor, restored from the last checkpoint if there is one."""
        await self._actors.build(self._last_checkpoint(), append=append)
        if not append:  # before the first event: every record sees the launch
            await self._control.launch()
        self._actors.start_reading()

    async def _rebuild(self, failed: str) -> None:
        """After ``failed`` failed: replace it (every actor, for all_for_one) and rewind
        the others in place to the last checkpoint, as a new generation. Batches of the
        old generation still queued anywhere are ignored."""
        async with self._control.lock:  # no command half-applied meanwhile
            await self._rebuild_data_path(failed)

    async def _rebuild_data_path(self, failed: str) -> None:
        cfg = self._config

        async def rewind_source() -> None:
            if self._checkpoints is None:
                return
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self._checkpoints.discard_uncommitted)
            if cfg.source.kind != "kafka":
                return
            # The group's commits ran ahead of the checkpoint: set them back to its positions.
            try:
                await loop.run_in_executor(
                    None, rewind_group, cfg.kafka, self._checkpoints.positions())
            except Exception as e:  # the broker is away: this restart fails, the next retries
                raise ActorFailed(failed,
                                  f"rewinding the consumer group: {cause_line(e)}") from None

        gone = await self._actors.rewind(failed, self._last_checkpoint(),
                                         all_for_one=cfg.supervision.strategy == "all_for_one",
                                         rewind_source=rewind_source)
        self._resumed_at = time.time()
        # Actors found dead on the way were replaced in this rewind: each is a failure on
        # record, and a rewind that was not a failure's recovery (a forget's swap) was
        # their restart.
        for name in sorted(gone):
            why = "found dead while rewinding (its worker or node died)"
            self._log.record("failure", name, f"{why}; replaced in the same rewind")
            # A failure like any other for its role's restart policy: a crash loop that
            # shows up only as actors found dead still escalates.
            decision = self._policy(name).on_failure(why)
            if isinstance(decision, Escalate):
                await self._escalate(name, decision)
        if gone and failed == "supervisor":
            last = self._last_checkpoint()
            self._restarted(min(gone), "found dead while rewinding", replaced=sorted(gone),
                            checkpoint=last.id if last else None)

    def _policy(self, actor: str) -> RestartPolicy:
        """The restart policy of ``actor``'s role."""
        return self._policies.get(actor.split("-")[0], self._policies["scorer"])

    async def _escalate(self, actor: str, decision: Escalate) -> NoReturn:
        """The policy gave up on ``actor``: the data path down, the run failed."""
        self._log.record("escalation", actor, decision.reason)
        await self._teardown()
        raise RunFailed(f"pipeline {self._config.name}: {actor} failed and was not "
                        f"restarted: {decision.reason}")

    def _restarted(self, actor: str, reason: str, **details: Any) -> None:
        """One restart on record: counted (summary and metric) and logged."""
        self._restarts += 1
        if self._meters is not None:
            self._meters.restarted(actor.split("-")[0])
        self._log.record("restart", actor, reason, strategy=self._config.supervision.strategy,
                         resumed_at=self._resumed_at, **details)

    async def _forget(self, request: str) -> None:
        """A forget request (the control path holds its lock). A failure it meets (an
        actor's, or one that may leave reading held) is recovered from by the watch
        loop: the data path restarts from the last checkpoint, the rebuilt one once it
        is committed."""
        self._swapping = True
        try:
            await self._erasure.forget(request)
        except ActorFailed as e:
            self._failure = ActorFailed(await self._culprit(e.actor), e.error)
        except Exception as e:
            self._failure = ActorFailed("supervisor", f"during a forget: {cause_line(e)}")
        finally:
            self._swapping = False
        if self._stopped:  # stopped meanwhile: the rewound ingest actors stop too
            await self.stop()

    def _last_checkpoint(self) -> Manifest | None:
        return self._checkpoints.manifest if self._checkpoints else self._manifest

    async def _teardown(self) -> None:
        """Kill the data path; ingest actors first leave their consumer group."""
        self._control.stop()
        self._cancel_checkpoint()
        await self._actors.abort()
        self._actors.kill()

    # -- supervision -------------------------------------------------------------------
    async def _supervise(self) -> list[dict[str, Any]]:
        while True:
            try:
                return await self._watch()
            except ActorFailed as failure:
                await self._recover(failure)

    async def _watch(self) -> list[dict[str, Any]]:
        """Until the ingest actors are done (their stats), or an actor fails (raises)."""
        sup = self._config.supervision
        now = time.monotonic()
        last = self._last_checkpoint()
        schedule = CheckpointSchedule(self._config.checkpoint, now=now,
                                      events_read=last.events_read if last else 0)
        next_ping = now + sup.ping_interval_s
        pings: dict[str, tuple[float, ray.ObjectRef]] = {}
        done: dict[int, dict[str, Any]] = {}
        actors = self._actors
        while len(done) < len(actors.runs):
            await asyncio.sleep(TICK_S)
            if self._failure is not None:
                failure, self._failure = self._failure, None
                raise failure
            if self._swapping:  # old runs end and actors are replaced: not failures
                pings.clear()
                continue
            pending = [r for i, r in enumerate(actors.runs) if i not in done]
            ready, _ = ray.wait(pending, num_returns=len(pending), timeout=0)
            for ref in ready:
                i = actors.runs.index(ref)
                try:
                    done[i] = ray.get(ref)
                except ray.exceptions.RayError as e:
                    raise ActorFailed(await self._culprit(f"ingest-{i}"), cause_line(e)) from None
            now = time.monotonic()
            if now >= next_ping:
                next_ping = now + sup.ping_interval_s
                for name, actor in actors.named():
                    if name not in pings:
                        pings[name] = (now, actor.ready.remote())
            for name, (sent, ref) in list(pings.items()):
                if ray.wait([ref], timeout=0)[0]:
                    del pings[name]
                    try:
                        ray.get(ref)
                    except ray.exceptions.RayError as e:
                        raise ActorFailed(name, cause_line(e)) from None
                elif now - sent > sup.ping_timeout_s:
                    raise ActorFailed(name, f"no answer to a ping for {sup.ping_timeout_s} s "
                                            "(hung)")
            # Checkpoints run beside the watch: a hung actor is found even mid-checkpoint.
            ckpt_task = self._ckpt_task
            if ckpt_task is not None and ckpt_task.done():
                self._ckpt_task = None
                committed = ckpt_task.result()  # an actor's failure during it raises here
                schedule.taken(time.monotonic(),
                               events_read=committed.events_read if committed else None)
            if (self._checkpoints is None or done or self._stopped
                    or self._ckpt_task is not None or not schedule.wants_progress(now)):
                continue
            events, positions = await self._progress()
            if schedule.due(now, events=events,
                            moved=positions != self._checkpoints.positions()):
                self._ckpt_task = asyncio.create_task(self._checkpoint())
        if self._ckpt_task is not None:
            task, self._ckpt_task = self._ckpt_task, None
            await task  # ends at once: the ingest actors have stopped reading
        stats = [done[i] for i in range(len(actors.runs))]
        if self._checkpoints is not None:  # drained (ended or stopped): a final, exact one
            await self._checkpoints.final(actors.ingest, actors.scorers, stats,
                                          actors.generation)
        return stats

    async def _progress(self) -> tuple[int, dict[str, int]]:
        """Events read so far, and the positions the ingest actors have reached."""
        assert self._checkpoints is not None
        try:
            stats = await asyncio.gather(*(a.stats.remote() for a in self._actors.ingest))
        except ray.exceptions.RayError as e:  # an ingest actor died: restart, not the end
            raise ActorFailed(await self._culprit("supervisor"), cause_line(e)) from None
        positions = self._checkpoints.positions()
        for st in stats:
            positions.update(st["positions"])
        return sum(st["events"] for st in stats), positions

    async def _checkpoint(self) -> Manifest | None:
        """An aligned checkpoint through the running pipeline; None if abandoned."""
        assert self._checkpoints is not None
        async with self._control.lock:  # every part reflects the same deployment
            try:
                return await self._checkpoints.aligned(self._actors.ingest,
                                                       self._actors.scorers)
            except ActorFailed as e:
                raise ActorFailed(await self._culprit(e.actor), e.error) from None

    def _cancel_checkpoint(self) -> None:
        if self._ckpt_task is not None:  # never committed: its folder has no manifest
            self._ckpt_task.cancel()
            self._ckpt_task = None

    async def _culprit(self, reporter: str) -> str:
        """Which actor failed: the first that no longer answers, else the reporter."""
        for name, actor in self._actors.named():
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
            self._log.record("failure", failure.actor, failure.error)
            decision = self._policy(failure.actor).on_failure(failure.error)
            if isinstance(decision, Escalate):
                await self._escalate(failure.actor, decision)
            failed_at = time.time()
            self._cancel_checkpoint()
            await asyncio.sleep(decision.delay_s)
            last = self._last_checkpoint()
            checkpoint = last.id if last else None
            try:
                await self._rebuild(failure.actor)
            except ActorFailed as again:
                failure = again
                continue
            self._restarted(failure.actor, failure.error, checkpoint=checkpoint,
                            attempt=decision.attempt, delay_s=decision.delay_s,
                            rebuilt_in_s=round(self._resumed_at - failed_at, 3))
            return

    # -- what the driver asks ----------------------------------------------------------
    async def scale_ingest(self, n_actors: int) -> int:
        """Grow or shrink the ingest group of a Kafka source (the group rebalances).

        Embedded sources deal their partitions once, at start, so they cannot scale.
        """
        if self._config.source.kind != "kafka":
            raise PipelineError(f"scale_ingest: a {self._config.source.kind} source deals its "
                                "partitions at start; only a Kafka source's group can scale")
        return await self._actors.scale_ingest(n_actors)

    async def wait(self) -> dict[str, Any]:
        """Until every ingest actor has drained; then the run's summary."""
        assert self._main is not None
        try:
            ingest_stats = list(await self._main)
        except PipelineError:
            raise
        except Exception as e:
            await self.stop()
            raise RunFailed(f"pipeline {self._config.name} failed: {cause_line(e)}") from None
        ingest_stats += self._actors.retired
        self._control.stop()
        sink_stats = await self._actors.sink.close.remote()
        scorer_stats = await asyncio.gather(*(s.stats.remote() for s in self._actors.scorers))
        return await self._summary(ingest_stats, list(scorer_stats), sink_stats)

    async def _summary(self, ingest: list[dict[str, Any]], scorers: list[dict[str, Any]],
                       sink: dict[str, Any]) -> dict[str, Any]:
        summary = build_summary(
            name=self._config.name, ingest=ingest, scorers=scorers, sink=sink,
            wall_s=time.time() - self._started,
            metrics_window=self._config.scoring.metrics_window, stopped=self._stopped)
        summary["supervision"] = self._supervision_summary()
        summary["deployment"] = self._control.summary(scorers)
        parts = [s.get("quality") for s in scorers]
        refs = await asyncio.get_running_loop().run_in_executor(
            None, self._references.resolve, parts)
        summary["quality"] = merge_quality(parts, refs, pipeline=self._config.name)
        summary["resources"] = resources_of(ingest, scorers)

        summary["drift"] = self._control.retrainer.summary()
        return summary

    async def _recent_latency(self) -> dict[str, Any]:
        """The sink's end-to-end latency since the last status (one question at a time:
        a sink that waits for its broker is not asked again meanwhile)."""
        if self._latency_ask is None:
            self._latency_ask = asyncio.ensure_future(
                self._actors.sink.recent_latency.remote())
        ask = self._latency_ask
        done, _ = await asyncio.wait({ask}, timeout=1.0)
        if not done:
            return {}
        self._latency_ask = None
        try:
            return dict(ask.result())
        except ray.exceptions.RayError:
            return {}

    def _supervision_summary(self) -> dict[str, Any]:
        ckpts = self._checkpoints
        last = self._last_checkpoint()
        return {"restarts": self._restarts, "n_checkpoints": ckpts.n_taken if ckpts else 0,
                "checkpoints": [c._asdict() for c in ckpts.history] if ckpts else [],
                "last_checkpoint": last.id if last else None,
                "log": self._log.entries[-20:]}

    async def pids(self) -> dict[str, int]:
        """The worker process of every actor (for operators and fault drills)."""
        names = self._actors.named()
        pids = await asyncio.gather(*(a.pid.remote() for _, a in names))
        return dict(zip([n for n, _ in names], pids, strict=True))

    async def status(self) -> dict[str, Any]:
        """A progress snapshot: events read, predictions written, accuracy so far."""
        try:
            ingest = await asyncio.gather(*(a.stats.remote() for a in self._actors.ingest))
            scorers = await asyncio.gather(*(s.stats.remote() for s in self._actors.scorers))
        except ray.exceptions.RayError:  # mid-restart: the log says why
            return {"pipeline": self._config.name, "restarting": True,
                    "supervision": self._supervision_summary()}
        summary = await self._summary(
            list(ingest), list(scorers),
            {"predictions_written": sum(i["acked"]["predictions"] for i in ingest),
             "dead_letters_written": sum(i["acked"]["dead_letters"] for i in ingest)})
        summary["latency_recent_ms"] = await self._recent_latency()
        return summary

    async def metrics(self, flush: bool = False) -> dict[str, list[Any]]:
        """Every actor's metrics snapshot and this one's, by actor name (the driver serves
        their union). An actor that does not answer in time is left out: the driver keeps
        its last snapshot. ``flush``: the run ends; exporters send what they hold."""
        if self._telemetry is None:
            return {}
        if self._meters is not None and self._checkpoints is not None:
            self._meters.checkpoints(self._checkpoints.history, self._checkpoints.n_taken)
        out: dict[str, list[Any]] = {"supervisor": self._telemetry.snapshot(flush=flush)}
        names = self._actors.named() if hasattr(self, "_actors") else []

        async def one(actor: Any) -> list[Any]:
            return await asyncio.wait_for(
                actor.telemetry.options(enable_task_events=False).remote(flush),
                TELEMETRY_TIMEOUT_S)

        answers = await asyncio.gather(*(one(a) for _, a in names), return_exceptions=True)
        for (name, _), answer in zip(names, answers, strict=True):
            if isinstance(answer, list):
                out[name] = answer
        return out

    async def stop(self) -> None:
        """Stop reading everywhere; in-flight batches still drain."""
        self._stopped = True
        await asyncio.gather(*(a.stop.remote() for a in self._actors.ingest),
                             return_exceptions=True)


def _registered_metrics(registry: Any) -> Any:
    """A version id to the metrics it was registered with (None: no such version)."""
    from pipelines.errors import RegistryError

    def lookup(version: str) -> dict[str, Any] | None:
        try:
            return dict(registry.get(version).metrics)
        except RegistryError:
            return None
    return lookup
