"""Holding scored records until their label arrives (and labels until their record does).

The scorer learns on the features it stored at prediction time, never on later ones,
so a label cannot leak into its own prediction. Both waits are bounded, by count and
by age; whatever is dropped is counted.

>>> buf = LabelBuffer(max_pending=2, ttl_s=60.0, clock=lambda: 0.0)
>>> buf.add("r1", "features-of-r1") is None
True
>>> buf.match("r1", True)
'features-of-r1'
>>> buf.match("r1", True) is None, buf.counts["labels_duplicate"]
(True, 1)
>>> buf.match("r9", False) is None, buf.n_early     # a label before its event is held...
(True, 1)
>>> buf.add("r9", "features-of-r9"), buf.counts["labels_early"]   # ...and learned on arrival
((False,), 1)
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from typing import Any, Generic, TypeVar

from pipelines.validation import RecentIds

__all__ = ["LabelBuffer"]

T = TypeVar("T")


class LabelBuffer(Generic[T]):
    """Scored records waiting for labels, and early labels waiting for records.

    Counts: ``labels_expired`` (a scored record whose label never came in time),
    ``labels_unmatched`` (a label that matched no record: unknown, too late, or whose
    record never came), ``labels_late`` (of the unmatched, those after their record
    expired), ``labels_duplicate`` and ``labels_early`` (came before its record, and was
    learned when the record came).
    """

    def __init__(self, *, max_pending: int, ttl_s: float, memory: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_pending = max_pending
        self.ttl_s = ttl_s
        self._clock = clock
        self._pending: OrderedDict[str, tuple[float, T]] = OrderedDict()
        self._early: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._learned = RecentIds(memory)
        self._expired = RecentIds(memory)
        self.counts = dict.fromkeys(("labels_expired", "labels_unmatched", "labels_late",
                                     "labels_duplicate", "labels_early"), 0)

    def add(self, record_id: str, entry: T) -> tuple[Any] | None:
        """Hold ``entry`` for ``record_id``; returns ``(label,)`` if its label came first."""
        early = self._early.pop(record_id, None)
        if early is not None:
            self._learned.add(record_id)
            self.counts["labels_early"] += 1
            return (early[1],)
        pending = self._pending
        pending[record_id] = (self._clock(), entry)
        if len(pending) > self.max_pending:
            rid, _ = pending.popitem(last=False)
            self._expire_one(rid)
        return None

    def match(self, record_id: str, label: Any) -> T | None:
        """The entry the label is for, or None (the label is then counted or held)."""
        held = self._pending.pop(record_id, None)
        if held is not None:
            self._learned.add(record_id)
            return held[1]
        counts = self.counts
        if record_id in self._early or record_id in self._learned:
            counts["labels_duplicate"] += 1
        elif record_id in self._expired:
            counts["labels_late"] += 1
            counts["labels_unmatched"] += 1
        else:
            self._early[record_id] = (self._clock(), label)
            if len(self._early) > self.max_pending:
                self._early.popitem(last=False)
                counts["labels_unmatched"] += 1
        return None

    def _expire_one(self, record_id: str) -> None:
        self.counts["labels_expired"] += 1
        self._expired.add(record_id)

    def expire(self) -> None:
        """Drop what has waited longer than ``ttl_s``."""
        deadline = self._clock() - self.ttl_s
        pending, early = self._pending, self._early
        while pending and next(iter(pending.values()))[0] <= deadline:
            self._expire_one(pending.popitem(last=False)[0])
        while early and next(iter(early.values()))[0] <= deadline:
            early.popitem(last=False)
            self.counts["labels_unmatched"] += 1

    def forget(self, record_ids: Collection[str],
               where: Callable[[T], bool] | None = None) -> int:
        """Drop every trace of ``record_ids`` (and of pending entries ``where`` holds
        true): held entries, early labels and the memory of learned or expired ids (an
        erasure, ``riffle forget``). Returns how many entries or labels were dropped.

        >>> buf = LabelBuffer(max_pending=9, ttl_s=60.0, clock=lambda: 0.0)
        >>> _ = buf.add("r1", "k1"), buf.add("r2", "k2"), buf.match("r3", True)
        >>> buf.forget({"r3"}, where=lambda entry: entry == "k1"), buf.n_pending, buf.n_early
        (2, 1, 0)
        """
        ids = set(record_ids)
        drop = [rid for rid, (_, entry) in self._pending.items()
                if rid in ids or (where is not None and where(entry))]
        for rid in drop:
            del self._pending[rid]
        early = [rid for rid in self._early if rid in ids]
        for rid in early:
            del self._early[rid]
        ids.update(drop)
        for name in ("_learned", "_expired"):
            memory: RecentIds = getattr(self, name)
            setattr(self, name, RecentIds(memory.max_size,
                                          [r for r in memory.ids() if r not in ids]))
        return len(drop) + len(early)

    # A checkpoint carries ages, not clock readings: a monotonic clock means nothing in
    # another process or on another host, where the buffer may be restored.
    def __getstate__(self) -> dict[str, Any]:
        now = self._clock()
        state = {k: v for k, v in self.__dict__.items() if k != "_clock"}
        for name in ("_pending", "_early"):
            state[name] = OrderedDict((rid, (now - t, v))
                                      for rid, (t, v) in self.__dict__[name].items())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._clock = time.monotonic
        now = self._clock()
        for name in ("_pending", "_early"):
            setattr(self, name, OrderedDict((rid, (now - age, v))
                                            for rid, (age, v) in state[name].items()))

    def waited_s(self, record_ids: list[str]) -> list[float]:
        """How long each of these scored records has waited for its label so far (ids
        not held are left out): a label arriving now has this delay."""
        pending, now = self._pending, self._clock()
        return [now - held[0] for held in map(pending.get, record_ids) if held is not None]

    @property
    def n_pending(self) -> int:
        return len(self._pending)

    @property
    def n_early(self) -> int:
        return len(self._early)
