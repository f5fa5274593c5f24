"""Supervisor: builds the topology from the config and owns it.

It is the one place that creates actors: a sink, the scorers, then the ingest actors
that own the source partitions. (Restarts and checkpoints build on this.)
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
from pipelines.config import PipelineConfig
from pipelines.errors import PipelineError
from pipelines.kafka import ensure_topics
from pipelines.models import build_model, task_of
from pipelines.summary import build_summary


def assign_partitions(n_partitions: int, n_ingest: int) -> list[list[int]]:
    """Partitions dealt round-robin to ingest actors.

    >>> assign_partitions(5, 2)
    [[0, 2, 4], [1, 3]]
    """
    return [list(range(i, n_partitions, n_ingest)) for i in range(n_ingest)]


@ray.remote(max_restarts=0, num_cpus=0)
class Supervisor:
    def __init__(self, config: PipelineConfig, out_dir: str) -> None:
        self._config = config
        self._out_dir = Path(out_dir)
        self._task = task_of(build_model(config.scoring.model))
        self._stopped = False
        self._runs: list[ray.ObjectRef] = []
        self._started = 0.0

    async def start(self) -> None:
        """Create sink, scorers and ingest actors; wait until all answer; start reading."""
        cfg = self._config
        n_scorers = cfg.scoring.n_actors
        window = max(1, cfg.scoring.metrics_window // n_scorers)
        if cfg.kafka.create_topics and "kafka" in (cfg.source.kind, cfg.output.kind):
            partitions = getattr(cfg.source, "partitions", 1)
            await asyncio.get_running_loop().run_in_executor(
                None, ensure_topics, cfg.kafka, partitions)
        self._sink = SinkActor.options(num_cpus=0).remote(cfg, self._out_dir)
        self._scorers = [
            ScorerActor.options(num_cpus=cfg.scoring.num_cpus).remote(
                cfg.scoring, name=f"scorer-{i}", metrics_window=window)
            for i in range(n_scorers)
        ]
        self._ingest = [self._new_ingest(i, parts) for i, parts in enumerate(
            assign_partitions(cfg.source.partitions, cfg.ingest.n_actors))]
        await asyncio.gather(*(a.ready.remote() for a in
                               [self._sink, *self._scorers, *self._ingest]))
        self._started = time.time()
        self._runs = [a.run.remote() for a in self._ingest]
        self._retired: list[dict[str, Any]] = []

    def _new_ingest(self, index: int, partitions: list[int]) -> Any:
        cfg = self._config
        return IngestActor.options(num_cpus=cfg.ingest.num_cpus).remote(
            cfg, name=f"ingest-{index}", partitions=partitions, task=self._task,
            scorers=self._scorers, sink=self._sink)

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
        ingest_stats: list[dict[str, Any]] = []
        try:
            # Ingest actors may be added while we wait: gather until none is left.
            while len(ingest_stats) < len(self._runs):
                ingest_stats += await asyncio.gather(*self._runs[len(ingest_stats):])
        except Exception as e:
            await self.stop()
            raise PipelineError(f"pipeline {self._config.name} failed: {_cause(e)}") from None
        ingest_stats += self._retired
        sink_stats = await self._sink.close.remote()
        scorer_stats = await asyncio.gather(*(s.stats.remote() for s in self._scorers))
        return build_summary(
            name=self._config.name, ingest=list(ingest_stats), scorers=list(scorer_stats),
            sink=sink_stats, wall_s=time.time() - self._started,
            metrics_window=self._config.scoring.metrics_window, stopped=self._stopped)

    async def status(self) -> dict[str, Any]:
        """A progress snapshot: events read, predictions written, accuracy so far."""
        ingest = await asyncio.gather(*(a.stats.remote() for a in self._ingest))
        scorers = await asyncio.gather(*(s.stats.remote() for s in self._scorers))
        return build_summary(
            name=self._config.name, ingest=list(ingest), scorers=list(scorers),
            sink={"predictions_written": sum(i["acked"]["predictions"] for i in ingest),
                  "dead_letters_written": sum(i["acked"]["dead_letters"] for i in ingest)},
            wall_s=time.time() - self._started,
            metrics_window=self._config.scoring.metrics_window, stopped=self._stopped)

    async def stop(self) -> None:
        """Stop reading everywhere; in-flight batches still drain."""
        self._stopped = True
        await asyncio.gather(*(a.stop.remote() for a in self._ingest), return_exceptions=True)


def _cause(error: BaseException) -> str:
    # A RayTaskError names the actor and wraps the original exception: keep one line.
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"
