"""IngestActor: owns source partitions; reads, validates and routes micro-batches by key.

Flow control: per scorer at most ``max_in_flight`` batches are sent and not yet
written by the sink; at the limit the actor waits for the oldest, so a slow scorer
slows reading instead of growing memory. A batch goes out when it holds
``batch_size`` records or its oldest record has waited ``linger_s``.

Positions are committed to the source only once the sink has acknowledged every
record before them (at-least-once).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import ray
from ray.actor import ActorHandle

from pipelines.config import PipelineConfig
from pipelines.ingest import IngestCore, PositionTracker
from pipelines.models import Task
from pipelines.protocol import Batch, Event, Feedback, SinkBatch, encode_batch
from pipelines.sources import open_pipeline_reader

COMMIT_INTERVAL_S = 0.5  # commit acknowledged positions at most this often (and at the end)


@ray.remote(max_restarts=0, max_concurrency=2)  # run() in one thread; stop()/stats() beside it
class IngestActor:
    def __init__(self, config: PipelineConfig, *, name: str, partitions: list[int], task: Task,
                 scorers: list[ActorHandle], sink: ActorHandle,
                 positions: dict[str, int] | None = None) -> None:
        self.name = name
        self._config = config
        self._cfg = config.ingest
        self._partitions = partitions
        self._core = IngestCore(config, task=task)
        self._reader = open_pipeline_reader(config, partitions, positions,
                                            on_revoke=self._drain, client_id=name)
        self._scorers = scorers
        self._sink = sink
        self._tracker = PositionTracker()
        self._stop = threading.Event()
        n = len(scorers)
        self._buffers: list[list[Event | Feedback]] = [[] for _ in range(n)]
        self._since = [0.0] * n   # when each buffer got its first item
        self._oldest = [0] * n    # the oldest chunk each buffer holds
        self._lanes: list[deque[ray.ObjectRef]] = [deque() for _ in range(n + 1)]  # [n]: dead
        self._lane_of: dict[ray.ObjectRef, int] = {}
        self._seq = 0
        self._chunk = 0
        self._in_flight_peak = 0
        self._commits: dict[str, int] = {}
        self._last_commit = 0.0
        self._acked = {"predictions": 0, "dead_letters": 0, "batches": 0, "commits": 0}
        self._started_at: float | None = None
        self._finished_at: float | None = None
        self._first_read_at: float | None = None  # throughput is measured from here...
        self._last_ack_at: float | None = None    # ...to here: not the idle time around

    def ready(self) -> str:
        return self.name

    def stop(self) -> None:
        """Stop reading; what was read is still scored and written before run() returns."""
        self._stop.set()

    def stats(self) -> dict[str, Any]:
        return {**self._core.counts, "acked": dict(self._acked), "partitions": self._partitions,
                "committed": dict(self._commits), "name": self.name,
                "started_at": self._started_at, "finished_at": self._finished_at,
                "first_read_at": self._first_read_at, "last_ack_at": self._last_ack_at,
                "in_flight_peak": self._in_flight_peak,
                "buffered": sum(len(b) for b in self._buffers)}

    def run(self) -> dict[str, Any]:
        """Read until the source is exhausted or stop() is called; drain; return stats."""
        reader = self._reader
        self._started_at = time.time()
        while True:
            finishing = self._stop.is_set() or reader.exhausted
            messages = [] if finishing else reader.read(self._cfg.batch_size)
            if messages:
                if self._first_read_at is None:
                    self._first_read_at = time.time()
                self._route(messages)
            idle = not messages
            self._flush(force=idle)
            self._collect(0)
            self._commit(force=False)
            if finishing and not any(self._buffers) and not any(self._lanes):
                break
            if idle:
                # Nothing to read right now: wait on acks (or a short while) instead of spinning.
                self._collect(max(self._cfg.linger_s, 0.001))
        self._commit(force=True)
        reader.close()
        self._finished_at = time.time()
        return self.stats()

    # -- the steps of the loop ---------------------------------------------------------
    def _route(self, messages: list) -> None:
        routed, dead = self._core.route(messages)
        chunk = self._chunk
        self._chunk += 1
        self._tracker.chunk_read(chunk, self._reader.positions())
        if dead:
            self._send(len(self._scorers), chunk,
                       lambda: self._sink.write.remote(SinkBatch.of_dead_letters(dead)))
        now = time.monotonic()
        for s, items in enumerate(routed):
            if items:
                if not self._buffers[s]:
                    self._since[s], self._oldest[s] = now, chunk
                self._buffers[s].extend(items)

    def _flush(self, *, force: bool) -> None:
        now = time.monotonic()
        cfg = self._cfg
        size = cfg.batch_size
        for s in range(len(self._buffers)):
            buf = self._buffers[s]
            while buf and (force or len(buf) >= size or now - self._since[s] >= cfg.linger_s):
                # Batches never exceed batch_size: a large read is cut into several.
                head, buf = buf[:size], buf[size:]
                self._buffers[s] = buf
                data = encode_batch(Batch(self._seq, head))
                self._seq += 1
                scorer = self._scorers[s]
                # The scorer's output goes to the sink by reference: it never comes back here.
                self._send(s, self._oldest[s],
                           lambda sc=scorer, d=data: self._sink.write.remote(sc.process.remote(d)))
                if buf and len(buf) < size and not force:
                    self._since[s] = now  # the rest waits for its own linger

    def _send(self, lane: int, chunk: int, submit: Any) -> None:
        # Backpressure: wait for the oldest unit of this lane while it is full.
        while len(self._lanes[lane]) >= self._cfg.max_in_flight:
            ray.wait([self._lanes[lane][0]])
            self._collect(0)
        ref = submit()
        self._lanes[lane].append(ref)
        self._in_flight_peak = max(self._in_flight_peak, len(self._lanes[lane]))
        self._lane_of[ref] = lane
        self._tracker.unit_sent(ref, chunk)

    def _collect(self, timeout: float) -> None:
        refs = [r for lane in self._lanes for r in lane]
        if not refs:
            if timeout:
                time.sleep(timeout)
            return
        if timeout:
            ray.wait(refs, num_returns=1, timeout=timeout)
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            ack = ray.get(ref)  # a failed scorer or sink raises here: the supervisor's business
            self._lanes[self._lane_of.pop(ref)].remove(ref)
            self._tracker.unit_acked(ref)
            self._acked["predictions"] += ack.n_predictions
            self._acked["dead_letters"] += ack.n_dead_letters
            self._acked["batches"] += 1
        if ready:
            self._last_ack_at = time.time()

    def _commit(self, *, force: bool) -> None:
        pending = [self._oldest[s] for s, buf in enumerate(self._buffers) if buf]
        self._tracker.committable(min(pending) if pending else None)
        now = time.monotonic()
        if force or now - self._last_commit >= COMMIT_INTERVAL_S:
            self._last_commit = now
            if self._tracker.committed:
                positions = dict(self._tracker.committed)
                self._reader.commit(positions)
                self._acked["commits"] += 1
                for name, offset in positions.items():  # what this actor ever committed
                    self._commits[name] = max(offset, self._commits.get(name, 0))

    def _drain(self, revoked: set[str]) -> None:
        """Before partitions are taken away: send everything, wait for every ack, commit;
        then forget their positions (committing them later could move offsets back)."""
        self._flush(force=True)
        while any(self._lanes):
            self._collect(0.05)
        self._commit(force=True)
        self._tracker.forget(revoked)
