"""IngestActor: owns source partitions; reads, validates and routes micro-batches by key.

Flow control: per scorer at most ``max_in_flight`` batches are sent and not yet
written by the sink; at the limit the actor waits for the oldest, so a slow scorer
slows reading instead of growing memory. A batch goes out when it holds
``batch_size`` records or its oldest record has waited ``linger_s``.

Positions are committed to the source only once the sink has acknowledged every
record before them (at-least-once).

Checkpoints: on ``barrier`` the actor sends out everything it has routed, waits for the
sink's acks of it, records its source positions and its dedupe memory, and sends each
scorer a barrier behind the data. With several ingest actors it then holds (reads
nothing) until ``resume``, so that no scorer sees a record after the positions before
every barrier has arrived.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import ray
from ray.actor import ActorHandle

from pipelines.allocator import pin_mmap_threshold, tune_gc
from pipelines.audit.suppression import Suppression
from pipelines.checkpoint import CheckpointStore, Manifest, dumps_state, loads_state
from pipelines.config import PipelineConfig
from pipelines.faults import Drills
from pipelines.ingest import Batcher, IngestCore, PositionTracker
from pipelines.models import Task
from pipelines.monitoring.instruments import IngestMeters
from pipelines.monitoring.resources import process_figures
from pipelines.monitoring.telemetry import Telemetry
from pipelines.monitoring.tracing import IngestSpans
from pipelines.protocol import Barrier, Batch, IngestPart, SinkBatch, encode_batch
from pipelines.sources import open_pipeline_reader

log = logging.getLogger(__name__)

COMMIT_INTERVAL_S = 0.5  # commit acknowledged positions at most this often (and at the end)


BARRIER_TIMEOUT_S = 60.0


def _without_task_events(method: Any) -> Any:
    """``method`` as a call Ray keeps no task events of.

    Ray records every task (task events) for its dashboard and state API, and its GCS
    keeps the records until it holds 100,000 tasks: with two tasks per batch the GCS
    grew by ~33 MiB per million events. The calls this actor makes (batches, barriers)
    and the calls it answers (pings, stats, barriers) go without; riffle's stats count
    what they did.
    """
    return method.options(enable_task_events=False)


# run() in one thread; barrier (which waits for the loop), stop, stats, ping beside it.
@ray.remote(max_restarts=0, max_concurrency=4, enable_task_events=False)
class IngestActor:
    def __init__(self, config: PipelineConfig, *, name: str, partitions: list[int], task: Task,
                 scorers: list[ActorHandle], sink: ActorHandle, generation: int = 0,
                 store_url: str | None = None, restore: Manifest | None = None,
                 feedback_channel: str | None = None) -> None:
        pin_mmap_threshold()  # a long run's RSS stays with its live data (pipelines.allocator)
        Drills(config.runtime.fault_drills, name).fire("start")
        self.name = name
        self._config = config
        self._cfg = config.ingest
        self._partitions = partitions
        self._channel = Path(feedback_channel) if feedback_channel else None
        """The embedded feedback channel this actor reads (one actor of an embedded source)."""
        self._task = task
        self._store = CheckpointStore(store_url) if store_url else None
        self._barrier_lock = threading.Lock()
        self._running = False
        self._telemetry: Telemetry | None = None
        self._meters: IngestMeters | None = None
        self._spans: IngestSpans | None = None
        if config.telemetry.active:
            t = self._telemetry = Telemetry(config.telemetry, pipeline=config.name, actor=name,
                                            role="ingest")
            self._meters = IngestMeters(t, counts=lambda: self._core.counts,
                                        in_flight=lambda: sum(len(q) for q in self._lanes))
            kafka = config.source.kind == "kafka"
            self._spans = IngestSpans(t.tracer, system="kafka" if kafka else "riffle",
                                      consumer_group=config.kafka.group_id if kafka else None,
                                      from_headers=kafka)
        self._setup(generation, scorers, sink, restore)
        tune_gc()  # the imports and the reader out of the collector's sight (pipelines.allocator)

    def _setup(self, generation: int, scorers: list[ActorHandle], sink: ActorHandle,
               restore: Manifest | None) -> None:
        """All the state of one generation of the pipeline: at start, and on reset."""
        self._generation = generation
        self._core = IngestCore(self._config, task=self._task, suppressed=Suppression.load(
            self._store.url if self._store is not None else None))  # riffle forget --suppress
        positions = None
        if restore is not None:
            assert self._store is not None
            positions = restore.positions
            if self.name in restore.parts:
                self._core.restore(loads_state(self._store.read_part(restore, self.name)))
        self._reader = open_pipeline_reader(self._config, self._partitions, positions,
                                            on_revoke=self._drain, client_id=self.name,
                                            feedback_channel=self._channel)
        self._scorers = scorers
        self._sink = sink
        self._process = [_without_task_events(sc.process) for sc in scorers]
        self._write = _without_task_events(sink.write)
        self._tracker = PositionTracker()
        self._stop = threading.Event()
        n = len(scorers)
        self._batcher = Batcher(n, batch_size=self._cfg.batch_size, linger_s=self._cfg.linger_s)
        self._lanes: list[deque[ray.ObjectRef]] = [deque() for _ in range(n + 1)]  # [n]: dead
        self._lane_of: dict[ray.ObjectRef, int] = {}
        self._seq = 0
        self._chunk = 0
        self._traces: dict[int, str] = {}
        """Per chunk read and not yet all sent, the traceparent of its route span."""
        self._in_flight_peak = 0
        self._commits: dict[str, int] = {}
        self._last_commit = 0.0
        self._acked = {"predictions": 0, "dead_letters": 0, "batches": 0, "commits": 0}
        self._started_at: float | None = None
        self._finished_at: float | None = None
        self._first_read_at: float | None = None  # throughput is measured from here...
        self._last_ack_at: float | None = None    # ...to here: not the idle time around
        self._aborted = False
        self._barrier_request: Barrier | None = None
        self._barrier_done = threading.Event()
        self._barrier_result: IngestPart | None = None
        self._hold = threading.Event()   # set: hold reading until resume()
        self._checkpoint_pause_s = 0.0

    def ready(self) -> str:
        return self.name

    def pid(self) -> int:
        return os.getpid()

    def telemetry(self, flush: bool = False) -> list[Any]:
        """This actor's metrics now (``flush``: the run ends, exporters send what they hold)."""
        return self._telemetry.snapshot(flush=flush) if self._telemetry is not None else []

    def reset(self, generation: int, scorers: list[ActorHandle], sink: ActorHandle,
              restore: Manifest | None) -> str:
        """Rewind to a checkpoint (or the start) after another actor failed: a new reader
        from its positions, the dedupe memory of then, nothing in flight. The run of the
        old generation must have ended (see abort)."""
        assert not self._running, "reset while running: abort first"
        self._setup(generation, scorers, sink, restore)
        return self.name

    def stop(self) -> None:
        """Stop reading; what was read is still scored and written before run() returns."""
        self._stop.set()
        self._hold.clear()

    def abort(self) -> None:
        """Stop at once, commit nothing, leave the consumer group (before a restart)."""
        self._aborted = True
        self._stop.set()
        self._hold.clear()
        if not self._running:
            self._close_reader()

    def barrier(self, barrier: Barrier) -> IngestPart | None:
        """The run loop sends ``barrier`` to every scorer behind what it routed; returns
        the positions, this actor's part and the scorers' part refs (None if the actor is
        done reading: the checkpoint is then abandoned)."""
        with self._barrier_lock:
            if not self._running:
                return None
            self._barrier_done.clear()
            self._barrier_result = None
            self._barrier_request = barrier
        if not self._barrier_done.wait(BARRIER_TIMEOUT_S):
            return None
        return self._barrier_result

    def _close_reader(self) -> None:
        try:
            self._reader.close()
        except Exception as e:  # already closed, or its broker is away: nothing to keep
            log.debug("closing the reader: %s", e)

    def resume(self) -> None:
        """The checkpoint is committed (or abandoned): read on."""
        self._hold.clear()

    def part(self, ckpt: str) -> IngestPart:
        """This actor's part of a checkpoint taken after it finished (nothing in flight)."""
        assert self._store is not None and not self._running
        part = self._store.write_part(ckpt, self.name, dumps_state(self._core.snapshot()))
        return IngestPart(self.name, part, self._reader.positions(),
                          self._core.counts["events"])

    def stats(self) -> dict[str, Any]:
        return {**self._core.counts, "acked": dict(self._acked), "partitions": self._partitions,
                "committed": dict(self._commits), "name": self.name,
                "started_at": self._started_at, "finished_at": self._finished_at,
                "first_read_at": self._first_read_at, "last_ack_at": self._last_ack_at,
                "in_flight_peak": self._in_flight_peak,
                "buffered": len(self._batcher),
                "positions": self._reader.positions(),
                "checkpoint_pause_s": self._checkpoint_pause_s, "process": process_figures()}

    def run(self) -> dict[str, Any]:
        """Read until the source is exhausted or stop() is called; drain; return stats."""
        self._running = True
        try:
            return self._run()
        except BaseException:
            self._aborted = True  # this generation is over: nothing more goes out (_drain)
            self._close_reader()  # e.g. a scorer died: leave the consumer group now
            raise
        finally:
            with self._barrier_lock:
                self._running = False
                if self._barrier_request is not None:  # asked for too late: abandoned
                    self._barrier_request = None
                    self._barrier_done.set()

    def _run(self) -> dict[str, Any]:
        reader = self._reader
        self._started_at = time.time()
        while True:
            if self._aborted:
                reader.close()
                return self.stats()
            if self._barrier_request is not None:
                self._inject_barrier()
            finishing = self._stop.is_set() or reader.exhausted
            holding = self._hold.is_set()
            read_ns = time.time_ns()
            messages = [] if finishing or holding else reader.read(self._cfg.batch_size)
            if messages:
                if self._first_read_at is None:
                    self._first_read_at = time.time()
                self._route(messages, (read_ns, time.time_ns()))
            idle = not messages
            self._flush(force=idle)
            self._collect(0)
            self._commit(force=False)
            if finishing and not len(self._batcher) and not any(self._lanes):
                break
            if idle:
                # Nothing to read right now: wait on acks (or a short while) instead of spinning.
                self._collect(max(self._cfg.linger_s, 0.001))
        self._commit(force=True)
        reader.close()
        self._finished_at = time.time()
        return self.stats()

    def _inject_barrier(self) -> None:
        assert self._barrier_request is not None and self._store is not None
        barrier = self._barrier_request
        started = time.monotonic()
        self._flush(force=True)  # everything routed goes out ahead of the barrier...
        # ...and is written: the positions tell a restart that every record before them
        # is done. A sink lost after the commit with such records' writes still queued
        # would lose them for good (no restart replays them).
        while any(self._lanes):
            self._collect(0.05)
        positions = self._reader.positions()
        part = self._store.write_part(barrier.checkpoint, self.name,
                                      dumps_state(self._core.snapshot()))
        refs = tuple(_without_task_events(scorer.barrier).remote(barrier, self._generation)
                     for scorer in self._scorers)
        if barrier.hold:
            self._hold.set()
        with self._barrier_lock:
            self._barrier_result = IngestPart(
                self.name, part, positions, self._core.counts["events"],
                inject_s=time.monotonic() - started, scorer_parts=refs)
            self._barrier_request = None
            self._barrier_done.set()
        self._checkpoint_pause_s += time.monotonic() - started

    # -- the steps of the loop ---------------------------------------------------------
    def _route(self, messages: list, read_ns: tuple[int, int] = (0, 0)) -> None:
        chunk = self._chunk
        self._chunk += 1
        if self._spans is None:
            routed, dead = self._core.route(messages)
        else:
            span = self._spans.route(messages, read_ns)
            routed, dead = self._core.route(messages)
            self._traces[chunk] = self._spans.routed(span, len(dead))
        self._tracker.chunk_read(chunk, self._reader.positions())
        if dead:
            self._send(len(self._scorers), chunk,
                       lambda: self._write.remote(SinkBatch.of_dead_letters(dead)))
        self._batcher.add(chunk, routed, now=time.monotonic())

    def _flush(self, *, force: bool) -> None:
        cut = self._batcher.cut(now=time.monotonic(), force=force)
        if not cut:
            return
        traces, meters = self._traces, self._meters
        for s, items, oldest in cut:
            data = encode_batch(Batch(self._seq, items, traces.get(oldest, ""), time.time()))
            if meters is not None:
                meters.sent(len(items))
            self._seq += 1
            process = self._process[s]
            # The scorer's output goes to the sink by reference: it never comes back here.
            self._send(s, oldest, lambda p=process, d=data, g=self._generation:
                       self._write.remote(p.remote(d, g)))
        if traces:  # the chunks all sent
            first = self._batcher.oldest_chunk()
            for chunk in [c for c in traces if first is None or c < first]:
                del traces[chunk]

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
        self._tracker.committable(self._batcher.oldest_chunk())
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
        then forget their positions (committing them later could move offsets back).

        Not after a failure or an abort (closing the reader revokes too): a batch may have
        been lost on the way, and the rest would reach the scorers without it; the
        restart rewinds to the checkpoint anyway."""
        if self._aborted:
            return
        self._flush(force=True)
        while any(self._lanes):
            self._collect(0.05)
        self._commit(force=True)
        self._tracker.forget(revoked)
