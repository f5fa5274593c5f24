"""The actors of one run: made, rewound and replaced here, on the Supervisor's word.

A sink, the scorers, then the ingest actors (each takes the handles of the ones made
before it). Every actor carries the pipeline's *generation*: a restart bumps it, so
batches and barriers of an older generation still queued anywhere are ignored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import ray

from actors.control import ControlPath
from actors.ingest import IngestActor
from actors.scorer import ScorerActor
from actors.sink import SinkActor
from pipelines.checkpoint import Manifest
from pipelines.config import PipelineConfig
from pipelines.errors import ActorFailed, cause_line
from pipelines.models import Task
from pipelines.sources.channel import FILE as CHANNEL_FILE

ABORT_TIMEOUT_S = 5.0
"""How long an ingest actor gets to stop reading and leave its consumer group."""
GONE_TIMEOUT_S = 2.0
"""How long an actor gets to answer before a rewind; one that is dead is replaced."""
RUN_END_TIMEOUT_S = 10.0
"""How long an aborted run gets to end; one that does not is stuck, and replaced."""


def assign_partitions(n_partitions: int, n_ingest: int) -> list[list[int]]:
    """Partitions dealt round-robin to ingest actors.

    >>> assign_partitions(5, 2)
    [[0, 2, 4], [1, 3]]
    """
    return [list(range(i, n_partitions, n_ingest)) for i in range(n_ingest)]


class Topology:
    """The sink, scorers and ingest actors in service, and their ``run`` calls."""

    def __init__(self, config: PipelineConfig, *, out_dir: Path, task: Task,
                 store_url: str | None, control: ControlPath) -> None:
        self._config = config
        self._out_dir = out_dir
        self._task = task
        self._store_url = store_url
        """Where the actors write and read their parts (None: no checkpoints)."""
        self._control = control
        self.sink: Any = None
        self.scorers: list[Any] = []
        self.ingest: list[Any] = []
        self.runs: list[ray.ObjectRef] = []
        """Per ingest actor, its ``run()`` call: it ends with the actor's stats."""
        self.retired: list[dict[str, Any]] = []
        """Stats of ingest actors taken out of a Kafka group (scale_ingest)."""
        self.generation = 0

    def named(self) -> list[tuple[str, Any]]:
        return [("sink", self.sink),
                *((f"scorer-{i}", s) for i, s in enumerate(self.scorers)),
                *((f"ingest-{i}", a) for i, a in enumerate(self.ingest))]

    async def build(self, restore: Manifest | None, *, append: bool) -> None:
        """Create every actor (restored from ``restore``) and wait until all answer."""
        cfg = self._config
        self.sink = self._new_sink(append)
        self.scorers = [self._new_scorer(i, restore) for i in range(cfg.scoring.n_actors)]
        self.ingest = [self._new_ingest(i, parts, restore) for i, parts in enumerate(
            assign_partitions(cfg.source.partitions, cfg.ingest.n_actors))]
        await self.all_ready()

    def start_reading(self) -> None:
        self.runs = [a.run.remote() for a in self.ingest]

    async def all_ready(self) -> None:
        for name, actor in self.named():
            try:
                await asyncio.wait_for(actor.ready.remote(),
                                       self._config.supervision.start_timeout_s)
            except (TimeoutError, ray.exceptions.RayError) as e:
                raise ActorFailed(name, cause_line(e)) from None

    async def abort(self) -> None:
        """Every ingest actor stops reading at once and commits nothing more."""
        await asyncio.gather(*(asyncio.wait_for(a.abort.remote(), ABORT_TIMEOUT_S)
                               for a in self.ingest), return_exceptions=True)

    def kill(self) -> None:
        for _, actor in self.named():
            if actor is not None:
                ray.kill(actor, no_restart=True)

    async def rewind(self, failed: str, restore: Manifest | None, *, all_for_one: bool,
                     rewind_source: Callable[[], Awaitable[None]]) -> set[str]:
        """After ``failed`` failed: replace it (every actor, for all_for_one) and rewind
        the others in place to ``restore`` (or the start), as a new generation; then
        read on. ``rewind_source`` runs once no actor reads any more. Returns the other
        actors found dead on the way (their worker or node died), replaced as well."""
        cfg = self._config
        self.generation += 1
        gen = self.generation
        # Stop reading everywhere; the failed actor goes; the old runs end (a run waiting
        # on the failed actor ends when that one is killed).
        await self.abort()
        replace = {name for name, _ in self.named()} if all_for_one else {failed}
        gone = await self._gone() - {failed}  # a node lost took every actor on it
        replace |= gone
        for name, actor in self.named():
            if name in replace:
                ray.kill(actor, no_restart=True)
        ended = await asyncio.gather(
            *(asyncio.wait_for(_settled(r), RUN_END_TIMEOUT_S) for r in self.runs),
            return_exceptions=True)
        for i, outcome in enumerate(ended):
            if isinstance(outcome, TimeoutError):  # stuck: replaced as well
                replace.add(f"ingest-{i}")
                ray.kill(self.ingest[i], no_restart=True)
        await rewind_source()
        if "sink" in replace:
            self.sink = self._new_sink(append=True)
        resets = []
        for i, scorer in enumerate(self.scorers):
            if f"scorer-{i}" in replace:
                self.scorers[i] = self._new_scorer(i, restore)
            else:
                resets.append((f"scorer-{i}", scorer.reset.remote(
                    gen, restore, self._control.deployment,
                    self._control.artifacts_for(f"scorer-{i}"))))
        parts = assign_partitions(cfg.source.partitions, len(self.ingest))
        for i, actor in enumerate(self.ingest):
            if f"ingest-{i}" in replace:
                self.ingest[i] = self._new_ingest(i, parts[i] if i < len(parts) else [],
                                                  restore)
            else:
                resets.append((f"ingest-{i}", actor.reset.remote(
                    gen, self.scorers, self.sink, restore)))
        for name, ref in resets:
            try:
                await asyncio.wait_for(ref, cfg.supervision.ping_timeout_s)
            except (TimeoutError, ray.exceptions.RayError) as e:
                raise ActorFailed(name, f"while rewinding: {cause_line(e)}") from None
        await self.all_ready()
        self.start_reading()
        return gone

    async def _gone(self) -> set[str]:
        """The actors that no longer exist (their worker or their node died): replaced
        together with the failed one, in one restart. One that is only slow stays."""
        named = self.named()
        answers = await asyncio.gather(
            *(asyncio.wait_for(actor.ready.remote(), GONE_TIMEOUT_S) for _, actor in named),
            return_exceptions=True)
        return {name for (name, _), answer in zip(named, answers, strict=True)
                if isinstance(answer, ray.exceptions.RayActorError)}

    async def scale_ingest(self, n_actors: int) -> int:
        """Grow or shrink the ingest group (of a Kafka source: the group rebalances)."""
        while len(self.ingest) < n_actors:
            actor = self._new_ingest(len(self.ingest) + len(self.retired), [])
            await actor.ready.remote()
            self.ingest.append(actor)
            self.runs.append(actor.run.remote())
        while len(self.ingest) > n_actors:
            actor, run = self.ingest.pop(), self.runs.pop()
            await actor.stop.remote()  # drains, commits, leaves the group
            self.retired.append(await run)
        return len(self.ingest)

    def _placed(self, role: Literal["ingest", "scoring", "sink"]) -> dict[str, Any]:
        """Ray's placement options for ``role`` (``runtime.placement``)."""
        return self._config.runtime.placement.options(role)

    def _new_sink(self, append: bool) -> Any:
        return SinkActor.options(num_cpus=0, **self._placed("sink")).remote(
            self._config, self._out_dir, append=append)

    def _new_scorer(self, index: int, restore: Manifest | None) -> Any:
        cfg = self._config
        return ScorerActor.options(num_cpus=cfg.scoring.num_cpus,
                                   **self._placed("scoring")).remote(
            cfg.scoring, name=f"scorer-{index}",
            metrics_window=max(1, cfg.scoring.metrics_window // cfg.scoring.n_actors),
            generation=self.generation, store_url=self._store_url,
            restore=restore, drills=cfg.runtime.fault_drills,
            deployment=self._control.deployment,
            artifacts=self._control.artifacts_for(f"scorer-{index}"),
            audit_rows=cfg.audit.segment_rows if cfg.audit.enabled else None,
            telemetry=cfg.telemetry, pipeline=cfg.name)

    def _new_ingest(self, index: int, partitions: list[int],
                    restore: Manifest | None = None) -> Any:
        cfg = self._config
        return IngestActor.options(num_cpus=cfg.ingest.num_cpus,
                                   **self._placed("ingest")).remote(
            cfg, name=f"ingest-{index}", partitions=partitions, task=self._task,
            scorers=self.scorers, sink=self.sink, generation=self.generation,
            store_url=self._store_url, restore=restore,
            # The service's labels on an embedded source (pipelines.sources.channel).
            feedback_channel=str(self._out_dir / CHANNEL_FILE)
            if index == 0 and cfg.source.kind != "kafka" else None)


async def _settled(ref: ray.ObjectRef) -> None:
    """Wait for a call to end, however it ends."""
    try:
        await ref
    except Exception:
        return
