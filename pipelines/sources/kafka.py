"""Events and feedback from Kafka, read by the ingest actors' consumer group.

Offsets are never committed on a timer: the ingest actor commits a position only once
the sink has acknowledged every record before it, and before giving partitions up in
a rebalance it drains what is in flight and commits (at-least-once, few duplicates).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from pipelines.config import KafkaConfig, KafkaSourceConfig
from pipelines.kafka import client_options
from pipelines.protocol import SourceMessage
from pipelines.sources.align import TopicAligner
from pipelines.sources.base import decode_json_object

__all__ = ["KafkaReader", "decode_value"]

log = logging.getLogger(__name__)


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
        self._fetched: dict[tuple[str, int], int] = {}  # next offset fetched, per side
        self._paused: set[Any] = set()
        self._max_bytes = max_message_bytes
        self._poll_ms = max(1, int(poll_timeout_s * 1000))
        self._next: dict[str, int] = {}
        self._tps: dict[str, Any] = {}
        self._on_revoke = on_revoke
        self._last_message = time.monotonic()
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
                reader._revoked(revoked)

            def on_partitions_assigned(self, assigned: Any) -> None:
                reader._assigned(assigned)

        # Know the topics' partitions before joining: a group leader without that metadata
        # assigns nothing, and the group takes another round to recover.
        for topic in self._topics:
            self._consumer.partitions_for_topic(topic)
        self._consumer.subscribe(topics=list(self._topics), listener=Listener())

    def _revoked(self, revoked: Any) -> None:
        self.counts["rebalances"] += 1
        if revoked and self._on_revoke is not None:
            # Drain and commit while the partitions are still ours. The callback runs on
            # the consumer's own event loop, so the commit must not block it (see commit).
            self._in_rebalance = True
            try:
                self._on_revoke({f"{tp.topic}[{tp.partition}]" for tp in revoked})
            finally:
                self._in_rebalance = False
        for tp in revoked:
            self._next.pop(f"{tp.topic}[{tp.partition}]", None)
            self._fetched.pop((self._topics[tp.topic], tp.partition), None)
            self._paused.discard(tp)
        # What is held unreleased was never committed: whoever owns it next reads it again.
        self._aligner.drop({(self._topics[tp.topic], tp.partition) for tp in revoked})

    def _assigned(self, assigned: Any) -> None:
        self._assigned_at = time.monotonic()
        for tp in assigned:
            self._tps[f"{tp.topic}[{tp.partition}]"] = tp

    def read(self, max_n: int) -> list[SourceMessage]:
        # poll returns as soon as records are there; the timeout only bounds an idle wait.
        # It must not be tiny: kafka-python 3.0 completes a group (re)join only across
        # polls of some length (with 10 ms polls a rejoin was seen to stall until the
        # session timed out).
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
                                             m.timestamp / 1000.0, m.key))
            if messages:
                self._fetched[(kind, tp.partition)] = messages[-1].offset + 1
        if not self._source.align_topics:
            out = fetched
        else:
            self._aligner.add(fetched)
            out = self._aligner.release(self._caught_up, now=time.monotonic())
            self._pause_runaways()
        for msg in out:  # positions move with what is handed out, not with what is held
            self._next[f"{msg.topic}[{msg.partition}]"] = msg.offset + 1
        if out:
            self._last_message = time.monotonic()
        return out

    def _caught_up(self, kind: str, partition: int) -> bool:
        """Nothing more of that side is on the broker now (or it is not ours to wait for)."""
        from kafka.structs import TopicPartition

        tp = TopicPartition(self._topic_of[kind], partition)
        if tp not in self._consumer.assignment():
            return True
        highwater = self._consumer.highwater(tp)
        if highwater is None:  # no fetch response yet for it: unknown, so not caught up
            return False
        position = self._fetched.get((kind, partition))
        if position is None:
            try:
                position = self._consumer.position(tp, timeout_ms=0)
            except Exception:  # position not known yet
                return False
        return position is not None and position >= highwater

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
        idle = self._source.idle_stop_s
        if idle is None or self._assigned_at is None or self._aligner.n_held:
            return False
        return time.monotonic() - max(self._last_message, self._assigned_at) > idle

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
                self._consumer.commit_async(offsets=offsets)
            else:
                self._consumer.commit(offsets=offsets)
            self.counts["commits"] += 1
        except KafkaError as e:  # the broker is away or the group rebalances: retried later
            self.counts["commit_failures"] += 1
            log.warning("commit of %d offsets failed: %s", len(offsets), e)

    def close(self) -> None:
        self._consumer.close(autocommit=False)
