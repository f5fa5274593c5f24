"""The ingest actor's core: decode, validate, dedupe, route; track what may be committed.

Runtime-free; ``actors.ingest`` wraps it with the Ray sends and the in-flight bounds.

>>> from pipelines.config import PipelineConfig
>>> cfg = PipelineConfig.model_validate({"name": "t", "source": {"kind": "synthetic"},
...                                      "scoring": {"n_actors": 2}})
>>> core = IngestCore(cfg, task="binary")
>>> from pipelines.protocol import SourceMessage
>>> ok = {"record_id": "r1", "key": "k", "features": {"x": 1.0}}
>>> routed, dead = core.route([SourceMessage("loans", 0, 0, "event", ok, None, None, 0.0),
...                            SourceMessage("loans", 0, 1, "event", ok, None, None, 0.0)])
>>> sum(len(r) for r in routed), [d.error for d in dead]
(1, ['duplicate record_id (seen within the last 100000 records)'])
"""

from __future__ import annotations

import time
import zlib
from collections import deque
from typing import Any

import orjson

from pipelines.audit.suppression import Suppression
from pipelines.config import FileSourceConfig, PipelineConfig
from pipelines.models import Task
from pipelines.protocol import DeadLetter, Event, Feedback, SourceMessage
from pipelines.validation import RecentIds, RecordValidator

__all__ = ["Batcher", "IngestCore", "PositionTracker", "scorer_of"]

_NONE: dict[int, str] = {}


def scorer_of(key: str, n_scorers: int) -> int:
    """The scorer that owns ``key`` (a stable hash, the same in every process).

    >>> scorer_of("applicant-1", 4) == scorer_of("applicant-1", 4)
    True
    """
    return zlib.crc32(key.encode("utf-8")) % n_scorers


class IngestCore:
    """Turns source messages into routed events and feedback, or dead letters."""

    def __init__(self, config: PipelineConfig, *, task: Task,
                 suppressed: Suppression | None = None) -> None:
        src = config.source
        self.suppressed = suppressed
        """Erased subjects whose records are refused (``riffle forget --suppress``); None
        when there are none, and then the only cost is one ``is None`` test a record."""
        self.validator = RecordValidator(
            task=task,
            max_abs_value=config.ingest.max_abs_value,
            categorical_features=config.ingest.categorical_features,
            required_features=src.features if isinstance(src, FileSourceConfig) else None,
        )
        self.seen = RecentIds(config.ingest.dedupe_window)
        self.n_scorers = config.scoring.n_actors
        self.counts = {"events": 0, "feedback": 0, "dead_letters": 0, "duplicates": 0,
                       "invalid": 0, "feedback_invalid": 0}

    def route(
        self, messages: list[SourceMessage]
    ) -> tuple[list[list[Event | Feedback]], list[DeadLetter]]:
        """Per scorer, the valid items in arrival order; and the dead letters.

        The batch is validated in one call per kind; records are then routed in order.
        """
        n = self.n_scorers
        routed: list[list[Event | Feedback]] = [[] for _ in range(n)]
        dead: list[DeadLetter] = []
        counts = self.counts
        events = [m.payload for m in messages if m.kind == "event" and m.payload is not None]
        feedback = [m.payload for m in messages if m.kind != "event" and m.payload is not None]
        bad_events = self.validator.invalid_events(events) if events else _NONE  # type: ignore[arg-type]
        bad_feedback = (self.validator.invalid_feedback(feedback)  # type: ignore[arg-type]
                        if feedback else _NONE)
        n_feedback = sum(m.kind != "event" for m in messages)
        counts["events"] += len(messages) - n_feedback
        counts["feedback"] += n_feedback
        seen, crc32, suppressed = self.seen, zlib.crc32, self.suppressed
        new = tuple.__new__  # a named tuple without the Python frame of its __new__
        i_event = i_feedback = 0
        read_at = time.time()
        for m in messages:
            payload = m.payload
            if payload is None:
                dead.append(self._dead(m, m.error or "empty message", None, "DecodeError"))
                continue
            if m.kind == "event":
                error = bad_events.get(i_event) if bad_events else None
                i_event += 1
                if error is None:
                    record_id = payload["record_id"]
                    if suppressed is not None and suppressed.matches(payload["key"]):
                        dead.append(self._erased(m, suppressed))
                        continue
                    if not seen.add(record_id):
                        counts["duplicates"] += 1
                        dead.append(self._dead(m, "duplicate record_id (seen within the last "
                                                  f"{seen.max_size} records)", record_id,
                                               "DuplicateRecord"))
                        continue
                    key = payload["key"]
                    item: Event | Feedback = new(Event, (
                        record_id, key, payload.get("event_time") or read_at,
                        payload["features"], m.partition, m.offset, read_at, m.topic))
                    routed[crc32(key.encode()) % n if n > 1 else 0].append(item)
                    continue
            else:
                error = bad_feedback.get(i_feedback) if bad_feedback else None
                i_feedback += 1
                if error is None:
                    key = payload["key"]
                    if suppressed is not None and suppressed.matches(key):
                        dead.append(self._erased(m, suppressed))
                        continue
                    item = new(Feedback, (payload["record_id"], key, payload["label"],
                                          payload.get("event_time") or read_at, m.partition,
                                          m.offset, read_at, m.topic))
                    routed[crc32(key.encode()) % n if n > 1 else 0].append(item)
                    continue
            rid = payload.get("record_id")
            dead.append(self._dead(m, error, rid if isinstance(rid, str) else None,
                                   "InvalidRecord"))
        counts["dead_letters"] += len(dead)
        return routed, dead

    def snapshot(self) -> dict[str, Any]:
        """The dedupe memory and counters, for a checkpoint."""
        return {"seen": self.seen.ids(), "counts": dict(self.counts)}

    def restore(self, state: dict[str, Any]) -> None:
        self.seen = RecentIds(self.seen.max_size, state["seen"])
        self.counts = dict(state["counts"])

    def _erased(self, m: SourceMessage, suppressed: Suppression) -> DeadLetter:
        """A record of an erased subject: dead-lettered without its content (the dead
        letters must not hold the subject's data again), under the subject's hash."""
        self.counts["erased"] = self.counts.get("erased", 0) + 1
        hashed = suppressed.hash_of(m.payload["key"])  # type: ignore[index]
        return DeadLetter(None, m.kind, orjson.dumps({"subject": hashed}), "erased subject",
                          "ErasedSubject", m.topic, m.partition, m.offset, None)

    def _dead(self, m: SourceMessage, error: str, record_id: str | None,
              error_class: str) -> DeadLetter:
        if m.kind != "event":
            self.counts["feedback_invalid"] += 1
        elif error_class != "DuplicateRecord":
            self.counts["invalid"] += 1
        raw = (m.raw if m.raw is not None
               else orjson.dumps(m.payload, default=repr, option=orjson.OPT_NON_STR_KEYS))
        return DeadLetter(record_id, m.kind, raw, error, error_class, m.topic, m.partition,
                          m.offset, m.key)


class PositionTracker:
    """Which source positions are safe to commit: everything before them is written.

    Reads are numbered in chunks; every unit sent downstream (a scorer batch, a batch
    of dead letters) names the oldest chunk it carries. A chunk's positions may be
    committed once no unit of it or of an older chunk is unwritten or unsent.

    >>> t = PositionTracker()
    >>> t.chunk_read(0, {"events[0]": 10}); t.chunk_read(1, {"events[0]": 20})
    >>> t.unit_sent("a", 0); t.unit_sent("b", 1)
    >>> t.unit_acked("b"); t.committable(oldest_unsent=None)
    >>> t.unit_acked("a"); t.committable(oldest_unsent=None)
    {'events[0]': 20}
    """

    def __init__(self) -> None:
        self._chunks: dict[int, dict[str, int]] = {}
        self._units: dict[Any, int] = {}
        self.committed: dict[str, int] = {}

    def chunk_read(self, chunk: int, positions: dict[str, int]) -> None:
        self._chunks[chunk] = dict(positions)

    def unit_sent(self, unit: Any, oldest_chunk: int) -> None:
        self._units[unit] = oldest_chunk

    def unit_acked(self, unit: Any) -> None:
        del self._units[unit]

    def forget(self, names: set[str]) -> None:
        """Partitions given up: their positions are another owner's to commit now.

        Keeping them would commit a stale (older) offset if the partition came back.
        """
        for positions in (self.committed, *self._chunks.values()):
            for name in names:
                positions.pop(name, None)

    def committable(self, oldest_unsent: int | None) -> dict[str, int] | None:
        """New positions to commit, given the oldest chunk still held unsent; or None."""
        blockers = list(self._units.values())
        if oldest_unsent is not None:
            blockers.append(oldest_unsent)
        limit = min(blockers) if blockers else None
        done = [c for c in self._chunks if limit is None or c < limit]
        if not done:
            return None
        newest = max(done)
        positions = self._chunks[newest]
        for c in done:
            del self._chunks[c]
        self.committed.update(positions)
        return positions


class Batcher:
    """Cuts routed items into scorer batches: at ``batch_size`` items, or once the oldest
    item of a buffer has waited ``linger_s`` (or at once, when forced).

    Each buffer remembers from which read chunk its items came, so every batch names the
    oldest chunk it carries (for :class:`PositionTracker`), and so does what stays behind.

    >>> b = Batcher(2, batch_size=3, linger_s=0.05)
    >>> b.add(0, [["e1", "e2"], ["e3"]], now=0.0); b.add(1, [["e4", "e5"], []], now=0.01)
    >>> b.cut(now=0.02)                     # buffer 0 is full; buffer 1 lingers
    [(0, ['e1', 'e2', 'e4'], 0)]
    >>> b.oldest_chunk(), len(b)
    (0, 2)
    >>> b.cut(now=0.06)                     # buffer 1 has waited long enough
    [(1, ['e3'], 0)]
    >>> b.cut(now=0.07, force=True)         # the rest of 0 lingers from its cut; forced
    [(0, ['e5'], 1)]
    >>> b.cut(now=0.08), b.oldest_chunk()
    ([], None)
    """

    def __init__(self, n_scorers: int, *, batch_size: int, linger_s: float) -> None:
        self.batch_size = batch_size
        self.linger_s = linger_s
        self._buffers: list[list[Any]] = [[] for _ in range(n_scorers)]
        self._since = [0.0] * n_scorers  # when each buffer got its oldest waiting item
        # Per buffer, [chunk, items] of what it holds, oldest first: a cut batch takes its
        # items from the front, and the rest still knows its oldest chunk.
        self._segments: list[deque[list[int]]] = [deque() for _ in range(n_scorers)]

    def add(self, chunk: int, routed: list[list[Any]], *, now: float) -> None:
        """The items of read chunk ``chunk``, per scorer."""
        for s, items in enumerate(routed):
            if items:
                buf = self._buffers[s]
                if not buf:
                    self._since[s] = now
                buf.extend(items)
                self._segments[s].append([chunk, len(items)])

    def cut(self, *, now: float, force: bool = False) -> list[tuple[int, list[Any], int]]:
        """The batches due now: ``(scorer, items, oldest chunk)``; never over batch_size."""
        out = []
        size = self.batch_size
        for s, buf in enumerate(self._buffers):
            while buf and (force or len(buf) >= size or now - self._since[s] >= self.linger_s):
                head, buf = buf[:size], buf[size:]
                self._buffers[s] = buf
                out.append((s, head, self._take_segments(s, len(head))))
                if buf and len(buf) < size and not force:
                    self._since[s] = now  # the rest waits for its own linger
        return out

    def _take_segments(self, s: int, n: int) -> int:
        segments = self._segments[s]
        oldest = segments[0][0]
        while n:
            head = segments[0]
            took = min(n, head[1])
            head[1] -= took
            n -= took
            if not head[1]:
                segments.popleft()
        return oldest

    def oldest_chunk(self) -> int | None:
        """The oldest read chunk with items still held here (None when empty)."""
        pending = [seg[0][0] for seg in self._segments if seg]
        return min(pending) if pending else None

    def __len__(self) -> int:
        return sum(len(b) for b in self._buffers)
