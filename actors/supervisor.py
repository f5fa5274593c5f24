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
from pipelines.checkpoint import CheckpointStore, Manifest, Part, checkpoint_id
from pipelines.config import PipelineConfig
from pipelines.errors import PipelineError, RunFailed
from pipelines.kafka import ensure_topics
from pipelines.models import build_model, task_of
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
class Supervisor:
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
        self._seq = 1
        self._ingest: list[Any] = []
        self._runs: list[ray.ObjectRef] = []
        self._scorers: list[Any] = []
        self._sink: Any = None
        self._done: list[dict[str, Any]] = []
        self._retired: list[dict[str, Any]] = []
        self._checkpoints: list[dict[str, Any]] = []
        self._restarts = 0
        self._main: asyncio.Task[list[dict[str, Any]]] | None = None
        self._generation = 0

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
        if resume:
            assert self._store is not None
            self._manifest = await loop.run_in_executor(None, self._store.latest)
            if self._manifest is None:
                raise PipelineError(f"--resume: no committed checkpoint in {self._store_url}")
            self._log.record("resume", "supervisor", "riffle run --resume",
                             checkpoint=self._manifest.id)
        else:
            self._log.record("start", "supervisor", "riffle run")
        self._started = time.time()
        try:
            await self._build(append=resume)
        except ActorFailed as e:
            await self._recover(e)  # a crash loop escalates here (RunFailed)
        self._main = asyncio.create_task(self._supervise())

    async def _build(self, *, append: bool) -> None:
        """Create every actor, restored from ``self._manifest`` if there is one."""
        cfg = self._config
        self._generation += 1
        restore = self._manifest.model_dump(mode="json") if self._manifest else None
        store = self._store_url if self._store is not None else None
        n_scorers = cfg.scoring.n_actors
        window = max(1, cfg.scoring.metrics_window // n_scorers)
        self._sink = SinkActor.options(num_cpus=0).remote(cfg, self._out_dir, append=append)
        self._scorers = [
            ScorerActor.options(num_cpus=cfg.scoring.num_cpus).remote(
                cfg.scoring, name=f"scorer-{i}", metrics_window=window, store_url=store,
                restore=restore, drills=cfg.runtime.fault_drills)
            for i in range(n_scorers)
        ]
        self._ingest = [self._new_ingest(i, parts, restore) for i, parts in enumerate(
            assign_partitions(cfg.source.partitions, cfg.ingest.n_actors))]
        await self._all_ready()
        self._runs = [a.run.remote() for a in self._ingest]

    def _named(self) -> list[tuple[str, Any]]:
        return [("sink", self._sink),
                *((f"scorer-{i}", s) for i, s in enumerate(self._scorers)),
                *((f"ingest-{i}", a) for i, a in enumerate(self._ingest))]

    async def _all_ready(self) -> None:
        for name, actor in self._named():
            try:
                await asyncio.wait_for(actor.ready.remote(),
                                       self._config.supervision.ping_timeout_s * 4)
            except (TimeoutError, ray.exceptions.RayError) as e:
                raise ActorFailed(name, _cause(e)) from None

    def _new_ingest(self, index: int, partitions: list[int],
                    restore: dict[str, Any] | None = None) -> Any:
        cfg = self._config
        return IngestActor.options(num_cpus=cfg.ingest.num_cpus).remote(
            cfg, name=f"ingest-{index}", partitions=partitions, task=self._task,
            scorers=self._scorers, sink=self._sink,
            store_url=self._store_url if self._store is not None else None, restore=restore)

    async def _teardown(self) -> None:
        """Kill the data path; ingest actors first leave their consumer group."""
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
            if self._store is None or done or self._stopped:
                continue
            due = now >= next_ckpt
            if not due and ckpt.every_events:
                read = await self._events_read()
                due = read - events_at_ckpt >= ckpt.every_events
            if due:
                committed = await self._checkpoint()
                if committed is not None:
                    events_at_ckpt = committed.events_read
                next_ckpt = time.monotonic() + (ckpt.interval_s or float("inf"))
        stats = [done[i] for i in range(len(self._runs))]
        if self._store is not None:  # drained (ended or stopped): a final, exact checkpoint
            await self._final_checkpoint(stats)
        return stats

    async def _events_read(self) -> int:
        stats = await asyncio.gather(*(a.stats.remote() for a in self._ingest))
        return sum(s["events"] for s in stats)

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
            await self._teardown()
            await asyncio.sleep(decision.delay_s)
            checkpoint = self._manifest.id if self._manifest else None
            try:
                await self._build(append=True)
            except ActorFailed as again:
                failure = again
                continue
            self._restarts += 1
            self._log.record("restart", failure.actor, failure.error, checkpoint=checkpoint,
                             attempt=decision.attempt, delay_s=decision.delay_s,
                             rebuilt_in_s=round(time.time() - failed_at, 3))
            return

    # -- checkpoints -------------------------------------------------------------------
    async def _checkpoint(self) -> Manifest | None:
        """An aligned checkpoint through the running pipeline; None if abandoned."""
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
        positions: dict[str, int] = {}
        for r in results:
            positions.update(r["positions"])
        manifest = await self._commit(seq, ckpt, parts, positions,
                                      sum(r["events"] for r in results), final=False)
        await self._resume_all()
        pause = time.monotonic() - started
        await asyncio.gather(*(s.committed.remote(ckpt) for s in self._scorers))
        self._note_checkpoint(manifest, pause)
        return manifest

    async def _final_checkpoint(self, stats: list[dict[str, Any]]) -> None:
        """After the source is exhausted and drained: the final model, as a checkpoint."""
        assert self._store is not None
        seq, self._seq = self._seq, self._seq + 1
        ckpt = checkpoint_id(seq)
        started = time.monotonic()
        ingest_parts = await asyncio.gather(*(a.part.remote(ckpt) for a in self._ingest))
        scorer_parts = await asyncio.gather(*(s.barrier.remote(ckpt, seq, 1)
                                              for s in self._scorers))
        positions: dict[str, int] = {}
        for p in ingest_parts:
            positions.update(p["positions"])
        manifest = await self._commit(seq, ckpt, [*ingest_parts, *scorer_parts], positions,
                                      sum(s["events"] for s in stats), final=True)
        await asyncio.gather(*(s.committed.remote(ckpt) for s in self._scorers))
        self._note_checkpoint(manifest, time.monotonic() - started)

    async def _commit(self, seq: int, ckpt: str, parts: list[dict[str, Any]],
                      positions: dict[str, int], events: int, *, final: bool) -> Manifest:
        assert self._store is not None
        cfg = self._config
        manifest = Manifest(id=ckpt, seq=seq, created_at=time.time(), pipeline=cfg.name,
                            config_hash=cfg.config_hash(), positions=positions,
                            parts={p["name"]: Part.model_validate(p["part"]) for p in parts},
                            events_read=events, final=final)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._store.commit, manifest)
        self._manifest = manifest
        await loop.run_in_executor(None, self._store.prune, cfg.checkpoint.keep)
        return manifest

    def _note_checkpoint(self, manifest: Manifest, pause_s: float) -> None:
        size = sum(p.bytes for p in manifest.parts.values())
        info = {"id": manifest.id, "events_read": manifest.events_read, "bytes": size,
                "pause_s": round(pause_s, 4), "final": manifest.final}
        self._checkpoints.append(info)
        self._log.record("checkpoint", "supervisor", "final" if manifest.final else "periodic",
                         checkpoint=manifest.id, bytes=size, pause_s=info["pause_s"],
                         positions=manifest.positions)

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
        sink_stats = await self._sink.close.remote()
        scorer_stats = await asyncio.gather(*(s.stats.remote() for s in self._scorers))
        summary = build_summary(
            name=self._config.name, ingest=ingest_stats, scorers=list(scorer_stats),
            sink=sink_stats, wall_s=time.time() - self._started,
            metrics_window=self._config.scoring.metrics_window, stopped=self._stopped)
        summary["supervision"] = self._supervision_summary()
        return summary

    def _supervision_summary(self) -> dict[str, Any]:
        return {"restarts": self._restarts, "checkpoints": list(self._checkpoints),
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
        return summary

    async def stop(self) -> None:
        """Stop reading everywhere; in-flight batches still drain."""
        self._stopped = True
        await asyncio.gather(*(a.stop.remote() for a in self._ingest), return_exceptions=True)


def _cause(error: BaseException) -> str:
    # A RayTaskError names the actor and wraps the original exception: keep one line.
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"
