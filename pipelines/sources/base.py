"""What every source shares: partitioning by key, positions, and delayed feedback.

A source is read through a :class:`SourceReader` that owns some partitions. Like a
Kafka topic, each partition is an ordered log whose messages (events and their later
feedback) have consecutive offsets, so a reader can resume from recorded positions.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from typing import Any, Protocol

import orjson
from kafka.partitioner.default import murmur2

from pipelines.protocol import SourceMessage

_new = tuple.__new__

__all__ = ["PartitionLog", "RateLimiter", "SourceReader", "decode_json_object", "partition_of"]


def decode_json_object(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """``(object, None)`` for a JSON object, else ``(None, why not)``: the decode step every
    source shares (a failure becomes a dead letter).

    >>> decode_json_object(b'[1]')
    (None, 'expected a JSON object, got list')
    """
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        return None, f"invalid JSON: {e}"
    if not isinstance(payload, dict):
        return None, f"expected a JSON object, got {type(payload).__name__}"
    return payload, None


@functools.lru_cache(maxsize=262_144)  # keys repeat; murmur2 is pure Python (~5 us)
def partition_of(key: str, n_partitions: int) -> int:
    """The partition of ``key``: Kafka's default partitioner (murmur2), so a stream
    replayed through the embedded source lands in the same partitions as on Kafka.

    >>> partition_of("applicant-000001", 8) == partition_of("applicant-000001", 8)
    True
    >>> {partition_of(f"k{i}", 4) for i in range(100)} == {0, 1, 2, 3}
    True
    """
    return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % n_partitions


class SourceReader(Protocol):
    """Reads the partitions one ingest actor owns."""

    name: str

    def read(self, max_n: int) -> list[SourceMessage]:
        """Up to ``max_n`` messages in partition order; ``[]`` when none is ready now."""
        ...

    @property
    def exhausted(self) -> bool:
        """True when a finite source has nothing more to give."""
        ...

    def positions(self) -> dict[str, int]:
        """Per owned partition (``topic[p]``), the offset of the next message to read."""
        ...

    def commit(self, positions: dict[str, int]) -> None:
        """Everything before ``positions`` is written downstream: record it (Kafka commits)."""
        ...

    def close(self) -> None: ...


class PartitionLog:
    """One partition's log: assigns offsets and releases feedback after its delay.

    Feedback for the ``j``-th event is released once ``delay_events`` further events of
    the partition were emitted, or ``delay_s`` seconds after the event. Messages before
    the resume position ``start`` are produced again (the log is deterministic) but
    dropped, so offsets stay those of the first run.

    >>> log = PartitionLog(0, delay_events=1)
    >>> for i in range(2):
    ...     log.append_event({"record_id": str(i)}, feedback={"record_id": str(i)}, now=0.0)
    >>> [(m.offset, m.kind, m.payload["record_id"]) for m in log.take(10)]
    [(0, 'event', '0'), (1, 'event', '1'), (2, 'feedback', '0')]
    >>> log.finish(); [(m.offset, m.kind) for m in log.take(10)]
    [(3, 'feedback')]
    """

    __slots__ = ("_out", "delay_events", "delay_s", "events_seen", "name", "next_offset",
                 "partition", "pending", "start", "topic")

    def __init__(
        self, partition: int, *, topic: str = "embedded", delay_events: int = 0,
        delay_s: float = 0.0, start: int = 0
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.name = f"{topic}[{partition}]"
        self.delay_events = delay_events
        self.delay_s = delay_s
        self.start = start
        self.next_offset = 0
        self.events_seen = 0
        # (due event count or due time, payload), in the order the events were emitted
        self.pending: deque[tuple[float, dict[str, Any]]] = deque()
        self._out: deque[SourceMessage] = deque()

    def _append(self, kind: str, payload: dict[str, Any] | None, raw: bytes | None,
                error: str | None, now: float) -> None:
        offset = self.next_offset
        self.next_offset += 1
        if offset >= self.start:
            self._out.append(SourceMessage(self.topic, self.partition, offset, kind, payload, raw,
                                           error, now))

    def append_event(self, payload: dict[str, Any] | None, *, feedback: dict[str, Any] | None,
                     now: float, raw: bytes | None = None, error: str | None = None) -> None:
        """Append an event (or an undecodable input) and the feedback it will produce."""
        # The hot path of every embedded source: _append and release() inlined.
        offset = self.next_offset
        self.next_offset = offset + 1
        out = self._out
        # tuple.__new__: a named tuple without the Python frame of its __new__ (hot path)
        if offset >= self.start:
            out.append(_new(SourceMessage, (self.topic, self.partition, offset, "event",
                                            payload, raw, error, now, None, "")))
        self.events_seen = seen = self.events_seen + 1
        pending = self.pending
        if feedback is not None:
            pending.append((seen + self.delay_events if not self.delay_s else now + self.delay_s,
                            feedback))
        if self.delay_s:
            self.release(now)
            return
        while pending and pending[0][0] <= seen:
            offset = self.next_offset
            self.next_offset = offset + 1
            if offset >= self.start:
                out.append(_new(SourceMessage, (self.topic, self.partition, offset, "feedback",
                                                pending.popleft()[1], None, None, now, None, "")))
            else:
                pending.popleft()

    def release(self, now: float) -> None:
        """Append the feedback whose delay has passed."""
        clock = now if self.delay_s else self.events_seen
        while self.pending and self.pending[0][0] <= clock:
            self._append("feedback", self.pending.popleft()[1], None, None, now)

    def finish(self) -> None:
        """The events are over: what feedback is still pending is released now."""
        now = time.time()
        while self.pending:
            self._append("feedback", self.pending.popleft()[1], None, None, now)

    def take(self, max_n: int) -> list[SourceMessage]:
        out = self._out
        if max_n >= len(out):
            taken = list(out)
            out.clear()
            return taken
        return [out.popleft() for _ in range(max_n)]

    @property
    def buffered(self) -> int:
        return len(self._out)

    @property
    def position(self) -> int:
        """The offset of the next message that ``take`` will return."""
        return self._out[0].offset if self._out else max(self.next_offset, self.start)


class RateLimiter:
    """A token bucket: how many events may be read now to keep ``rate_per_s``.

    The bucket holds at most ~50 ms of events, so bursts stay small.

    >>> RateLimiter(None).allowance(500)
    500
    """

    def __init__(self, rate_per_s: float | None) -> None:
        self.rate = rate_per_s
        self._tokens = 0.0
        self._last = time.monotonic()

    def allowance(self, max_n: int) -> int:
        if self.rate is None:
            return max_n
        now = time.monotonic()
        self._tokens = min(self._tokens + (now - self._last) * self.rate,
                           max(1.0, self.rate * 0.05))
        self._last = now
        n = min(max_n, int(self._tokens))
        self._tokens -= n
        return n
