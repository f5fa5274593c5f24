"""IngestActor: owns source partitions; reads, validates and routes micro-batches by key.

Flow control: per scorer at most ``max_in_flight`` batches are sent and not yet
written by the sink; at the limit the actor waits for the oldest, so a slow scorer
slows reading instead of growing memory. A batch goes out when it holds
``batch_size`` records or its oldest record has waited ``linger_s``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import ray
from ray.actor import ActorHandle

from pipelines.config import PipelineConfig
from pipelines.ingest import IngestCore, PositionTracker, dead_letter_line
from pipelines.models import Task
from pipelines.protocol import Batch, Event, Feedback, SinkBatch, encode_batch
from pipelines.sources import open_reader


@ray.remote(max_restarts=0, max_concurrency=2)  # run() in one thread; stop()/stats() beside it
class IngestActor:
    def __init__(self, config: PipelineConfig, *, name: str, partitions: list[int], task: Task,
                 scorers: list[ActorHandle], sink: ActorHandle,
                 positions: dict[int, int] | None = None) -> None:
        self.name = name
        self._config = config
        self._partitions = partitions
        self._reader = open_reader(config.source, partitions, positions)
        self._core = IngestCore(config, task=task, source_name=self._reader.name)
        self._scorers = scorers
        self._sink = sink
        self._tracker = PositionTracker()
        self._stop = threading.Event()
        self._acked = {"predictions": 0, "dead_letters": 0, "batches": 0}
        self._started_at: float | None = None
        self._finished_at: float | None = None

    def ready(self) -> str:
        return self.name

    def stop(self) -> None:
        """Stop reading; what was read is still scored and written before run() returns."""
        self._stop.set()

    def stats(self) -> dict[str, Any]:
        return {**self._core.counts, "acked": dict(self._acked), "partitions": self._partitions,
                "committed": dict(self._tracker.committed),
                "started_at": self._started_at, "finished_at": self._finished_at}

    def run(self) -> dict[str, Any]:
        """Read until the source is exhausted or stop() is called; drain; return stats."""
        cfg = self._config.ingest
        n = len(self._scorers)
        buffers: list[list[Event | Feedback]] = [[] for _ in range(n)]
        since = [0.0] * n  # when each buffer got its first item
        oldest = [0] * n   # the oldest chunk each buffer holds
        in_flight: list[deque[ray.ObjectRef]] = [deque() for _ in range(n + 1)]  # [n]: dead letters
        self._unit_lane: dict[ray.ObjectRef, int] = {}
        seq = 0
        chunk = 0
        reader, core, tracker = self._reader, self._core, self._tracker
        self._started_at = time.time()

        def reserve(lane: int) -> None:
            # Backpressure: wait for the oldest unit of this lane when it is full.
            while len(in_flight[lane]) >= cfg.max_in_flight:
                ray.wait([in_flight[lane][0]])
                self._collect(in_flight, 0)

        def track(lane: int, ref: ray.ObjectRef, chunk_of_unit: int) -> None:
            in_flight[lane].append(ref)
            self._unit_lane[ref] = lane
            tracker.unit_sent(ref, chunk_of_unit)

        while True:
            finishing = self._stop.is_set() or reader.exhausted
            messages = [] if finishing else reader.read(cfg.batch_size)
            now = time.monotonic()
            if messages:
                routed, dead = core.route(messages)
                tracker.chunk_read(chunk, reader.positions())
                if dead:
                    lines = b"".join(dead_letter_line(d) + b"\n" for d in dead)
                    reserve(n)
                    track(n, self._sink.write.remote(SinkBatch(b"", 0, [], lines, len(dead))),
                          chunk)
                for s, items in enumerate(routed):
                    if items:
                        if not buffers[s]:
                            since[s], oldest[s] = now, chunk
                        buffers[s].extend(items)
                chunk += 1
            idle = not messages
            for s in range(n):
                buf = buffers[s]
                if buf and (len(buf) >= cfg.batch_size or idle or now - since[s] >= cfg.linger_s):
                    batch = Batch(seq, buf)
                    seq += 1
                    buffers[s] = []
                    reserve(s)
                    # The scorer's output goes to the sink by reference: it never comes back here.
                    track(s, self._sink.write.remote(
                        self._scorers[s].process.remote(encode_batch(batch))), oldest[s])
            self._collect(in_flight, 0)
            pending = [oldest[s] for s in range(n) if buffers[s]]
            tracker.committable(min(pending) if pending else None)
            if finishing and not any(buffers) and not any(in_flight):
                break
            if idle:
                # Nothing to read right now: wait on acks (or a short while) instead of spinning.
                self._collect(in_flight, max(cfg.linger_s, 0.001))
        reader.close()
        tracker.committable(None)
        self._finished_at = time.time()
        return self.stats()

    def _collect(self, in_flight: list[deque[ray.ObjectRef]], timeout: float) -> None:
        refs = [r for lane in in_flight for r in lane]
        if not refs:
            if timeout:
                time.sleep(timeout)
            return
        if timeout:
            ray.wait(refs, num_returns=1, timeout=timeout)
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            ack = ray.get(ref)  # a failed scorer or sink raises here: the supervisor's business
            lane = self._unit_lane.pop(ref)
            in_flight[lane].remove(ref)
            self._tracker.unit_acked(ref)
            self._acked["predictions"] += ack.n_predictions
            self._acked["dead_letters"] += ack.n_dead_letters
            self._acked["batches"] += 1
