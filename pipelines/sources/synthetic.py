"""Synthetic loan applications: River's Agrawal generator, optionally with a concept change.

Each partition is its own deterministic stream (seed ``seed + partition``), and its
applicants are the keys of the pool that hash to that partition, so partitions can be
generated independently by different ingest actors and replayed from any position.
With one partition the events are exactly ``Agrawal(seed=seed)`` (or the
``ConceptDriftStream`` around it), which the exactness tests rely on.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

from river.datasets import synth

from pipelines.config import SyntheticSourceConfig
from pipelines.protocol import SourceMessage
from pipelines.sources.base import PartitionLog, RateLimiter, partition_of

__all__ = ["SyntheticReader", "make_stream", "partition_share"]


def partition_share(n_events: int | None, partition: int, n_partitions: int) -> int | None:
    """How many of ``n_events`` partition ``partition`` generates (``None``: endless)."""
    if n_events is None:
        return None
    return n_events // n_partitions + (1 if partition < n_events % n_partitions else 0)


def make_stream(cfg: SyntheticSourceConfig, partition: int) -> Iterator[tuple[dict, Any]]:
    """The River stream of one partition: ``(features, label)`` pairs, endless."""
    seed = cfg.seed + partition
    stream = synth.Agrawal(classification_function=cfg.classification_function, seed=seed)
    if cfg.drift is None:
        return iter(stream)
    drifted = synth.Agrawal(classification_function=cfg.drift.to_function, seed=seed)
    # The change happens at the same share of every partition's stream.
    position = cfg.drift.position // cfg.partitions
    width = max(1, cfg.drift.width // cfg.partitions)
    return iter(synth.ConceptDriftStream(
        stream=stream, drift_stream=drifted, position=position, width=width, seed=seed
    ))


def _key_pool(n_keys: int, partition: int, n_partitions: int) -> list[str]:
    pool = [k for i in range(n_keys)
            if partition_of(k := f"applicant-{i:07d}", n_partitions) == partition]
    i = n_keys
    while not pool:  # fewer keys than partitions: find one that lands here
        if partition_of(k := f"applicant-{i:07d}", n_partitions) == partition:
            pool.append(k)
        i += 1
    return pool


class _SyntheticPartition:
    def __init__(self, cfg: SyntheticSourceConfig, partition: int, start: int) -> None:
        self.stream = make_stream(cfg, partition)
        self.keys = _key_pool(cfg.n_keys, partition, cfg.partitions)
        self.rng = random.Random(f"{cfg.seed}-{partition}")
        self.remaining = partition_share(cfg.n_events, partition, cfg.partitions)
        self.prefix = f"{cfg.name}-{cfg.seed}-{partition}-"
        self.index = 0
        self.log = PartitionLog(partition, topic=cfg.name, delay_events=cfg.label_delay_events,
                                delay_s=cfg.label_delay_s, start=start)

    def generate(self, n: int, now: float) -> None:
        log, keys, rng = self.log, self.keys, self.rng
        for _ in range(n if self.remaining is None else min(n, self.remaining)):
            x, y = next(self.stream)
            record_id = f"{self.prefix}{self.index}"
            key = keys[rng.randrange(len(keys))]
            self.index += 1
            log.append_event(
                {"record_id": record_id, "key": key, "event_time": now, "features": x},
                feedback={"record_id": record_id, "key": key, "label": y, "event_time": now},
                now=now,
            )
            if self.remaining is not None:
                self.remaining -= 1
        if self.remaining == 0:
            log.finish()
            self.remaining = -1  # finished, once
        elif log.delay_s:
            log.release(now)

    @property
    def done(self) -> bool:
        return self.remaining == -1 and not self.log.buffered


class SyntheticReader:
    """Reads the owned partitions of the synthetic loan stream, round-robin."""

    def __init__(self, cfg: SyntheticSourceConfig, partitions: list[int],
                 positions: dict[str, int] | None = None) -> None:
        positions = positions or {}
        self.name = cfg.name
        self._parts = [_SyntheticPartition(cfg, p, positions.get(f"{cfg.name}[{p}]", 0))
                       for p in partitions]
        share = len(partitions) / cfg.partitions
        self._limiter = RateLimiter(cfg.rate_per_s * share if cfg.rate_per_s else None)
        now = time.time()
        for part in self._parts:  # resuming: regenerate what comes before at full speed
            while part.log.next_offset < part.log.start and not part.done:
                part.generate(1, now)
        self._turn = 0

    def read(self, max_n: int) -> list[SourceMessage]:
        live = [p for p in self._parts if not p.done]
        if not live:
            return []
        budget = self._limiter.allowance(max_n)
        now = time.time()
        per_part, extra = divmod(budget, len(live))
        self._turn = (self._turn + 1) % len(live)  # who gets the remainder rotates
        out: list[SourceMessage] = []
        for i, part in enumerate(live):
            n = per_part + (1 if (i - self._turn) % len(live) < extra else 0)
            if n:
                part.generate(n, now)
            elif part.log.delay_s:
                part.log.release(now)
            # Everything generated is handed out: feedback rides along with its events.
            out.extend(part.log.take(part.log.buffered))
        return out

    @property
    def exhausted(self) -> bool:
        return all(p.done for p in self._parts)

    def positions(self) -> dict[str, int]:
        return {p.log.name: p.log.position for p in self._parts}

    def commit(self, positions: dict[str, int]) -> None:
        """Nothing to do: embedded positions live in checkpoints."""

    def close(self) -> None:
        """Nothing to release."""
