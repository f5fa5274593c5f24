"""Merging each partition's events and feedback in timestamp order.

Events and feedback live in two topics. Consumed independently, one runs ahead of the
other — after a backlog, a consumer may read thousands of labels before their events,
or score thousands of events before a single label, and the model learns late. Like
Kafka Streams' timestamp synchronisation (KIP-695, ``max.task.idle.ms``), the aligner
releases a partition's messages in timestamp order (an event before feedback of the
same millisecond). While one side has nothing held, the other side waits on that
side's lag on the broker:

- lag known and > 0 (the fetched position is behind the high watermark): older
  messages may be on their way, so the other side is held, for as long as it takes.
  Memory stays bounded: the reader pauses a side once it holds ``align_max_held``.
- lag unknown (that side's end or position not known yet): held at most ``max_wait_s``.
- lag 0 (caught up, or the side is not ours): released at once.

>>> from pipelines.protocol import SourceMessage
>>> def m(kind, ts): return SourceMessage(kind, 0, int(ts), kind, {}, b"", None, ts)
>>> def lag_of(n):
...     return lambda kind, partition: n
>>> a = TopicAligner(max_wait_s=1.0)
>>> a.add([m("feedback", 5.0), m("feedback", 9.0)])
>>> a.release(lag_of(3), now=0.0)      # events on the broker, not fetched yet: hold
[]
>>> a.release(lag_of(3), now=60.0)     # however long it takes
[]
>>> a.add([m("event", 4.0), m("event", 7.0)])
>>> [(x.kind, x.timestamp) for x in a.release(lag_of(3), now=60.0)]
[('event', 4.0), ('feedback', 5.0), ('event', 7.0)]
>>> a.release(lag_of(None), now=60.0)  # lag unknown: wait up to max_wait_s...
[]
>>> [(x.kind, x.timestamp) for x in a.release(lag_of(None), now=61.0)]  # ...then go
[('feedback', 9.0)]
>>> a.add([m("event", 12.0)])
>>> [(x.kind, x.timestamp) for x in a.release(lag_of(0), now=61.0)]  # caught up: go
[('event', 12.0)]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from pipelines.protocol import SourceMessage

__all__ = ["Lag", "TopicAligner"]

_OTHER = {"event": "feedback", "feedback": "event"}

Lag = Callable[[str, int], int | None]
"""``lag(kind, partition)``: messages of that side on the broker not fetched yet; 0 when
caught up (or when the side is not ours to wait for), None when not known yet."""


class TopicAligner:
    def __init__(self, *, max_wait_s: float = 0.5) -> None:
        self.max_wait_s = max_wait_s
        self._buf: dict[tuple[str, int], deque[SourceMessage]] = {}
        # partition -> since when one side has waited on the other's unknown lag
        self._unknown_since: dict[int, float] = {}

    def add(self, messages: list[SourceMessage]) -> None:
        for msg in messages:
            key = (msg.kind, msg.partition)
            q = self._buf.get(key)
            if q is None:
                q = self._buf[key] = deque()
            q.append(msg)

    def release(self, lag: Lag, *, now: float) -> list[SourceMessage]:
        """What may go now, per partition in timestamp order.

        ``lag`` is asked at most once per partition and call, and only when one side of
        the partition has nothing held.
        """
        out: list[SourceMessage] = []
        for p in sorted({p for _, p in self._buf}):
            ev = self._buf.get(("event", p)) or deque()
            fb = self._buf.get(("feedback", p)) or deque()
            while ev and fb:
                out.append((ev if ev[0].timestamp <= fb[0].timestamp else fb).popleft())
            src = ev or fb
            if not src:
                self._unknown_since.pop(p, None)
                continue
            behind = lag(_OTHER[src[0].kind], p)
            if behind is None:
                since = self._unknown_since.setdefault(p, now)
                if now - since < self.max_wait_s:
                    continue  # the other side may hold something older: wait a little
                # Waited long enough: this side goes (and keeps going while unknown).
            elif behind > 0:
                self._unknown_since.pop(p, None)
                continue  # older messages may be on their way: wait for them
            else:
                self._unknown_since.pop(p, None)
            out.extend(src)
            src.clear()
        return out

    def drop(self, partitions: set[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Forget what is held for partitions taken away.

        Returns, per ``(kind, partition)`` that held messages, the offset of the oldest:
        the first offset not handed out, where reading must resume to see them again.
        """
        first: dict[tuple[str, int], int] = {}
        for key in partitions:
            q = self._buf.pop(key, None)
            if q:
                first[key] = q[0].offset
            self._unknown_since.pop(key[1], None)
        return first

    def held(self, kind: str, partition: int) -> int:
        q = self._buf.get((kind, partition))
        return len(q) if q else 0

    @property
    def n_held(self) -> int:
        return sum(len(q) for q in self._buf.values())
