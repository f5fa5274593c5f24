"""Merging each partition's events and feedback in timestamp order.

Events and feedback live in two topics. Consumed independently, one runs ahead of the
other — after a backlog, a consumer may read thousands of labels before their events,
or score thousands of events before a single label, and the model learns late. Like
Kafka Streams' timestamp synchronisation, the aligner releases a partition's messages
in timestamp order (an event before feedback of the same millisecond) and holds one
side while the other is empty but known to have more on the broker, for at most
``max_wait_s``.

>>> from pipelines.protocol import SourceMessage
>>> def m(kind, ts): return SourceMessage(kind, 0, int(ts), kind, {}, b"", None, ts)
>>> a = TopicAligner(max_wait_s=1.0)
>>> a.add([m("feedback", 5.0), m("feedback", 9.0)])
>>> a.release(lambda kind, p: False, now=0.0)      # events may still come: hold
[]
>>> a.add([m("event", 4.0), m("event", 7.0)])
>>> [(x.kind, x.timestamp) for x in a.release(lambda kind, p: False, now=0.0)]
[('event', 4.0), ('feedback', 5.0), ('event', 7.0)]
>>> [(x.kind, x.timestamp) for x in a.release(lambda kind, p: True, now=0.0)]  # caught up
[('feedback', 9.0)]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from pipelines.protocol import SourceMessage

__all__ = ["TopicAligner"]

_OTHER = {"event": "feedback", "feedback": "event"}


class TopicAligner:
    def __init__(self, *, max_wait_s: float = 0.5) -> None:
        self.max_wait_s = max_wait_s
        self._buf: dict[tuple[str, int], deque[SourceMessage]] = {}
        self._blocked_since: dict[int, float] = {}

    def add(self, messages: list[SourceMessage]) -> None:
        for msg in messages:
            key = (msg.kind, msg.partition)
            q = self._buf.get(key)
            if q is None:
                q = self._buf[key] = deque()
            q.append(msg)

    def release(self, caught_up: Callable[[str, int], bool], *, now: float
                ) -> list[SourceMessage]:
        """What may go now, per partition in timestamp order.

        ``caught_up(kind, partition)`` tells whether that side has nothing more on the
        broker right now (its position is at the high watermark).
        """
        out: list[SourceMessage] = []
        for p in sorted({p for _, p in self._buf}):
            ev = self._buf.get(("event", p)) or deque()
            fb = self._buf.get(("feedback", p)) or deque()
            while ev or fb:
                if ev and fb:
                    src = ev if ev[0].timestamp <= fb[0].timestamp else fb
                    self._blocked_since.pop(p, None)
                else:
                    src = ev or fb
                    missing = "feedback" if src is ev else "event"
                    if caught_up(missing, p):
                        self._blocked_since.pop(p, None)
                    elif now - self._blocked_since.setdefault(p, now) < self.max_wait_s:
                        break  # the other side may hold something older: wait a little
                    # else: waited long enough; this side goes until the other shows up
                out.append(src.popleft())
        return out

    def drop(self, partitions: set[tuple[str, int]]) -> None:
        """Forget what is held for partitions taken away (another member re-reads it)."""
        for key in partitions:
            self._buf.pop(key, None)

    def held(self, kind: str, partition: int) -> int:
        q = self._buf.get((kind, partition))
        return len(q) if q else 0

    @property
    def n_held(self) -> int:
        return sum(len(q) for q in self._buf.values())
