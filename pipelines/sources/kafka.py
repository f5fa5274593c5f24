"""Events and feedback from Kafka, read by the ingest actors' consumer group.

Offsets are never committed on a timer: the ingest actor commits a position only once
the sink has acknowledged every record before it, and before giving partitions up in
a rebalance it drains what is in flight and commits (at-least-once, few duplicates).
What the timestamp aligner holds at a revoke was never handed out, so never committed:
it is dropped, and read again by the next owner, or by this reader if the partition
comes back to it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from pipelines.config import KafkaConfig, KafkaSourceConfig
from pipelines.kafka import client_options
from pipelines.monitoring.tracing import header_trace
from pipelines.protocol import SourceMessage
from pipelines.sources.align import TopicAligner
from pipelines.sources.base import decode_json_object

__all__ = ["KafkaReader", "decode_value"]

log = logging.getLogger(__name__)

# How long the aligner's one lookup of a partition's end may block the read loop.
END_OFFSET_TIMEOUT_MS = 2_000


def decode_value(value: bytes | None, key: bytes | None, *, max_bytes: int,
                 require_key: bool) -> tuple[dict[str, Any] | None, str | None]:
    """``(payload, None)`` for a decodable record, else ``(None, reason)``.

    >>> decode_value(b'{"key": "k1"}', b"k1", max_bytes=100, require_key=True)
    ({'key': 'k1'}, None)
    >>> decode_value(b'\\xff', b"k", max_bytes=100, require_key=True)[1][:40]
    'invalid JSON: str is not valid UTF-8: su'
    >>> decode_value(None, b"k", max_bytes=100, require_key=True)[1]
    'null value (a tombstone is not an event)'
    >>> decode_value(b'{"key": "k1"}', None, max_bytes=100, require_key=True)[1]
    'no message key: an event must be keyed by its key (k1) to keep its partition'
    """
    if value is None:
        return None, "null value (a tombstone is not an event)"
    if len(value) > max_bytes:
        return None, f"message of {len(value)} bytes exceeds max_message_bytes ({max_bytes})"
    payload, error = decode_json_object(value)
    if payload is None:
        return None, error
    if require_key:
        expected = payload.get("key")
        if key is None:
            return None, ("no message key: an event must be keyed by its key "
                          f"({expected}) to keep its partition")
        if isinstance(expected, str) and key != expected.encode("utf-8"):
            return None, (f"message key {key!r} differs from the record's key {expected!r}")
    return payload, None


class KafkaReader:
    """A kafka-python consumer in the ingest group, subscribed to events and feedback."""

    def __init__(self, source: KafkaSourceConfig, kafka: KafkaConfig, *, max_message_bytes: int,
                 client_id: str, on_revoke: Callable[[set[str]], None] | None = None,
                 poll_timeout_s: float = 0.1) -> None:
        from kafka import ConsumerRebalanceListener, KafkaConsumer
        from kafka.coordinator.assignors.range import RangePartitionAssignor

        self.name = "kafka"
        self._source = source
        self._topics = {kafka.topics.events: "event", kafka.topics.feedback: "feedback"}
        self._topic_of = {kind: topic for topic, kind in self._topics.items()}
        self._aligner = TopicAligner(max_wait_s=source.align_max_wait_s)
        self._paused: set[Any] = set()
        # Per partition revoked while we held messages of it: the first offset not handed
        # out. Used by the next assignment only (see _assigned).
        self._rewind: dict[Any, int] = {}
        self._end_offsets: dict[Any, int | None] = {}  # see _end_offset
        self._max_bytes = max_message_bytes
        self._poll_ms = max(1, int(poll_timeout_s * 1000))
        self._next: dict[str, int] = {}
        self._tps: dict[str, Any] = {}
        self._on_revoke = on_revoke
        self._last_message = time.monotonic()  # handed out
        self._last_fetch = time.monotonic()    # read from the broker
        self._last_poll = time.monotonic()     # asked the broker
        self._assigned_at: float | None = None
        self._in_rebalance = False
        self.counts = {"commits": 0, "commit_failures": 0, "rebalances": 0}
        self._consumer = KafkaConsumer(
            **client_options(kafka, client_id=client_id),
            group_id=kafka.group_id,
            enable_auto_commit=False,
            auto_offset_reset=kafka.auto_offset_reset,
            session_timeout_ms=kafka.session_timeout_ms,
            heartbeat_interval_ms=kafka.heartbeat_interval_ms,
            max_poll_interval_ms=kafka.max_poll_interval_ms,
            max_partition_fetch_bytes=kafka.max_partition_fetch_bytes,
            # Range keeps partition p of both topics on the same member: a key's events
            # and feedback are read by one ingest actor.
            partition_assignment_strategy=(RangePartitionAssignor,),
        )
        reader = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                reader._revoked(revoked, lost=False)

            def on_partitions_lost(self, lost: Any) -> None:
                reader._revoked(lost, lost=True)

            def on_partitions_assigned(self, assigned: Any) -> None:
                reader._assigned(assigned)

        # Know the topics' partitions before joining: a group leader without that metadata
        # assigns nothing, and the group takes another round to recover.
        for topic in self._topics:
            self._consumer.partitions_for_topic(topic)
        self._consumer.subscribe(topics=list(self._topics), listener=Listener())
        # ...and so must the group coordinator, which takes its view of the subscribed
        # topics from the first metadata update after subscribe(): without one before the
        # first join, the leader assigns from an empty view and rejoins at once. With
        # kafka-python 3.0.12 such a rejoin can hang for good when a poll's timeout ends
        # during it (the SyncGroup answer is never applied; the member stays rebalancing,
        # reads nothing, and is expelled at the session timeout). topics() is that update.
        self._consumer.topics()

    def _revoked(self, revoked: Any, *, lost: bool) -> None:
        self.counts["rebalances"] += 1
        try:
            if revoked and self._on_revoke is not None:
                # Drain and commit while the partitions are still ours (when lost, the
                # commit fails, but the drain still hands everything read to the sink).
                # The callback runs on the consumer's own event loop, so the commit must
                # not block it (see commit).
                self._in_rebalance = True
                try:
                    self._on_revoke({f"{tp.topic}[{tp.partition}]" for tp in revoked})
                finally:
                    self._in_rebalance = False
        finally:
            self._forget(revoked, lost=lost)

    def _forget(self, revoked: Any, *, lost: bool) -> None:
        from kafka.structs import TopicPartition

        for tp in revoked:
            self._next.pop(f"{tp.topic}[{tp.partition}]", None)
            self._end_offsets.pop(tp, None)
            if lost:
                # Another member may have read on since we lost it: its committed offset
                # (which kafka-python fetches, having dropped our position) is the truth.
                self._rewind.pop(tp, None)
        # kafka-python keeps a partition's paused flag when it is assigned back: nothing
        # of it is held any more, so nothing of it is ahead.
        paused = set(revoked) & self._consumer.paused()
        if paused:
            self._consumer.resume(*paused)
        self._paused.difference_update(revoked)
        # What is held unreleased was never handed out, so never committed.
        first = self._aligner.drop({(self._topics[tp.topic], tp.partition) for tp in revoked})
        if not lost:
            for (kind, partition), offset in first.items():
                tp = TopicPartition(self._topic_of[kind], partition)
                self._rewind[tp] = min(offset, self._rewind.get(tp, offset))

    def _assigned(self, assigned: Any) -> None:
        self._assigned_at = time.monotonic()
        for tp in assigned:
            self._tps[f"{tp.topic}[{tp.partition}]"] = tp
        # A partition revoked and assigned back in the same (eager) rebalance keeps its
        # fetch position in kafka-python (assign_from_subscribed), which is past the held
        # messages we dropped: read again from the first of them. Only those partitions,
        # and only right after our own revoke: one that went elsewhere meanwhile resumes
        # at its new owner's commits, and one lost (membership expired) was forgotten, as
        # kafka-python forgot its position. So a seek only moves back over messages we
        # held, never over what another member read and committed since.
        rewind, self._rewind = self._rewind, {}
        for tp, offset in rewind.items():
            if tp in assigned:
                log.info("%s[%d] assigned back: reading again from %d, the first message "
                         "held at the revoke", tp.topic, tp.partition, offset)
                self._consumer.seek(tp, offset)  # local: no request inside the callback

    def read(self, max_n: int) -> list[SourceMessage]:
        # poll returns as soon as records are there; the timeout only bounds an idle wait.
        # It must not be tiny: kafka-python 3.0 completes a group (re)join only across
        # polls of some length (with 10 ms polls a rejoin was seen to stall until the
        # session timed out).
        self._unpark()
        records = self._consumer.poll(timeout_ms=self._poll_ms, max_records=max_n)
        fetched: list[SourceMessage] = []
        require_key = self._source.require_message_key
        for tp, messages in records.items():
            kind = self._topics[tp.topic]
            for m in messages:
                payload, error = decode_value(m.value, m.key, max_bytes=self._max_bytes,
                                              require_key=require_key and kind == "event")
                fetched.append(SourceMessage(tp.topic, tp.partition, m.offset, kind, payload,
                                             m.value if m.value is not None else b"", error,
                                             m.timestamp / 1000.0, m.key,
                                             header_trace(m.headers) if m.headers else ""))
        now = self._last_poll = time.monotonic()
        if fetched:
            self._last_fetch = now
        if not self._source.align_topics:
            out = fetched
        else:
            self._aligner.add(fetched)
            out = self._aligner.release(self._lag, now=now)
            self._pause_runaways()
        for msg in out:  # positions move with what is handed out, not with what is held
            self._next[f"{msg.topic}[{msg.partition}]"] = msg.offset + 1
        if out:
            self._last_message = now
        return out

    def _unpark(self) -> None:
        """Work around kafka-python 3.0.12 (the latest): records of a partition paused
        halfway through a fetch are parked, and handed back after its resume only when
        the fetcher's current-records slot is empty (None); but a slot whose records are
        used up keeps the object, and a parked partition is never fetched again, so a
        partition we paused (``_pause_runaways``) could stall for good with its lag
        unread. Emptying a used-up slot lets the next poll take the parked records."""
        fetcher = getattr(self._consumer, "_fetcher", None)
        if fetcher is None or not getattr(fetcher, "_paused_partition_records", None):
            return
        current = getattr(fetcher, "_next_partition_records", None)
        if current is not None and not current:
            fetcher._next_partition_records = None

    def _lag(self, kind: str, partition: int) -> int | None:
        """Messages of that side on the broker and not yet read (see TopicAligner)."""
        from kafka.errors import KafkaError
        from kafka.structs import TopicPartition

        tp = TopicPartition(self._topic_of[kind], partition)
        if tp not in self._consumer.assignment():
            return 0  # not ours (revoked, or that topic has fewer partitions): no wait
        highwater = self._consumer.highwater(tp)
        if highwater is None:
            highwater = self._end_offset(tp)
        if highwater is None:
            return None
        try:
            # The consumer's position, not the last offset we saw: it also moves over
            # offsets that carry no record (transaction markers, compacted gaps).
            position = self._consumer.position(tp, timeout_ms=0)
        except KafkaError:
            return None
        if position is None:
            return None
        return max(highwater - position, 0)

    def _end_offset(self, tp: Any) -> int | None:
        """The end of a partition whose high watermark the consumer does not know yet.

        kafka-python learns it only when it parses a fetch of that partition, which, after
        a backlog, may come many polls behind the other topic's big fetch: meanwhile the
        aligner would wait as if the lag were unknown. Asked once per assignment; a
        failed lookup leaves it unknown.
        """
        if tp in self._end_offsets:
            return self._end_offsets[tp]
        self._end_offsets[tp] = None
        try:
            end = self._consumer.end_offsets([tp], timeout_ms=END_OFFSET_TIMEOUT_MS).get(tp)
        except Exception as e:  # a hint only: the broker away, no leader, a timeout...
            log.info("end offset of %s[%d] unknown: %s", tp.topic, tp.partition, e)
            return None
        self._end_offsets[tp] = end
        return end

    def _pause_runaways(self) -> None:
        # A side far ahead of the other is paused instead of buffered without bound.
        cap = self._source.align_max_held
        for tp in self._consumer.assignment():
            held = self._aligner.held(self._topics[tp.topic], tp.partition)
            if held > cap and tp not in self._paused:
                self._consumer.pause(tp)
                self._paused.add(tp)
            elif held < cap // 2 and tp in self._paused:
                self._consumer.resume(tp)
                self._paused.discard(tp)

    @property
    def exhausted(self) -> bool:
        """Polls for ``idle_stop_s`` brought nothing, and nothing was handed out.

        Only time spent asking counts: while the caller does not read (backpressure, a
        checkpoint holding the input), the source is not idle. Held messages normally go
        within ``align_max_wait_s``, or as soon as the other side's known lag is read;
        held past the idle time plus that wait with nothing read, the other side's fetch
        is stuck (say, the broker is away): the run ends anyway, and as held messages
        were never handed out, they were never committed either; the next run reads them.
        """
        idle = self._source.idle_stop_s
        if idle is None or self._assigned_at is None:
            return False
        quiet = self._last_poll - max(self._last_message, self._last_fetch, self._assigned_at)
        if self._aligner.n_held:
            return quiet > idle + self._source.align_max_wait_s
        return quiet > idle

    @property
    def n_held(self) -> int:
        """Messages read from the broker and not handed out yet (waiting for alignment)."""
        return self._aligner.n_held

    def positions(self) -> dict[str, int]:
        return dict(self._next)

    def commit(self, positions: dict[str, int]) -> None:
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        owned = self._consumer.assignment()
        offsets = {self._tps[name]: OffsetAndMetadata(offset, "", -1)
                   for name, offset in positions.items()
                   if name in self._tps and self._tps[name] in owned}
        if not offsets:
            return
        try:
            if self._in_rebalance:
                # Queued on the consumer's loop ahead of the group rejoin; the broker takes
                # commits of the old generation while the group prepares to rebalance.
                # Its outcome is counted when known (on a later poll).
                self._consumer.commit_async(offsets=offsets, callback=self._commit_done)
            else:
                self._consumer.commit(offsets=offsets)
                self.counts["commits"] += 1
        except KafkaError as e:  # the broker is away or the group rebalances: retried later
            self._commit_done(offsets, e)

    def _commit_done(self, offsets: dict[Any, Any], result: Any) -> None:
        if isinstance(result, BaseException):
            self.counts["commit_failures"] += 1
            log.warning("commit of %d offsets failed: %s", len(offsets), result)
        else:
            self.counts["commits"] += 1

    def close(self) -> None:
        # Closing revokes our partitions, and the revoke forgets their positions; a closed
        # reader still tells where it stopped (the final checkpoint records that).
        positions = dict(self._next)
        self._consumer.close(autocommit=False)
        self._next = positions
