"""Kafka plumbing shared by sources, sinks and the CLI: client options, topics, headers."""

from __future__ import annotations

import os
from typing import Any

from pipelines.config import KafkaConfig
from pipelines.errors import SourceError

__all__ = ["admin_client", "client_options", "connect_headers", "ensure_topics",
           "group_positions", "producer", "rewind_group"]

# Reconnect quickly after a broker outage; kafka-python's default backs off up to 30 s.
RECONNECT_BACKOFF_MAX_MS = 2_000


def client_options(cfg: KafkaConfig, *, client_id: str) -> dict[str, Any]:
    """Options every kafka-python client of riffle shares (connection and security)."""
    opts: dict[str, Any] = {
        "bootstrap_servers": cfg.bootstrap_servers,
        "client_id": client_id,
        "request_timeout_ms": cfg.request_timeout_ms,
        "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
        "security_protocol": cfg.security_protocol,
    }
    if cfg.sasl_mechanism is not None:
        password = os.environ.get("RIFFLE_KAFKA_PASSWORD")
        if password is None:
            raise SourceError(f"kafka.sasl_mechanism is {cfg.sasl_mechanism}: set the password "
                              "in the environment variable RIFFLE_KAFKA_PASSWORD")
        opts.update(sasl_mechanism=cfg.sasl_mechanism,
                    sasl_plain_username=cfg.sasl_plain_username, sasl_plain_password=password)
    return opts


def producer(cfg: KafkaConfig, *, client_id: str) -> Any:
    """An idempotent producer that waits for all in-sync replicas, batching by ``linger_ms``."""
    from kafka import KafkaProducer

    return KafkaProducer(
        **client_options(cfg, client_id=client_id),
        acks="all",
        linger_ms=cfg.linger_ms,
        batch_size=256 * 1024,
        max_request_size=cfg.max_request_size,
        delivery_timeout_ms=cfg.delivery_timeout_ms,
    )


def admin_client(cfg: KafkaConfig, *, client_id: str = "riffle-admin") -> Any:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        return KafkaAdminClient(**client_options(cfg, client_id=client_id))
    except KafkaError as e:
        raise SourceError(f"kafka at {cfg.bootstrap_servers}: cannot connect: "
                          f"{type(e).__name__}") from None


def ensure_topics(cfg: KafkaConfig, partitions: int) -> list[str]:
    """Create riffle's topics that are missing; returns the names created."""
    from kafka.admin import NewTopic

    admin = admin_client(cfg)
    try:
        existing = set(admin.list_topics())
        topics = cfg.topics
        wanted = [topics.events, topics.feedback, topics.predictions, topics.dead_letters,
                  topics.models, topics.shadow]
        missing = [t for t in dict.fromkeys(wanted) if t not in existing]
        if missing:
            admin.create_topics(
                [NewTopic(t, partitions if t != topics.models else 1, cfg.replication_factor)
                 for t in missing],
                timeout_ms=cfg.request_timeout_ms, raise_errors=False)
        return missing
    finally:
        admin.close()


def connect_headers(error_class: str, message: str, topic: str, partition: int,
                    offset: int) -> list[tuple[str, bytes]]:
    """Kafka Connect's dead-letter headers: the error and where the record came from.

    >>> dict(connect_headers("InvalidRecord", "key: Field required", "ev", 3, 42))[
    ...     "__connect.errors.offset"]
    b'42'
    """
    return [
        ("__connect.errors.exception.class.name", error_class.encode()),
        ("__connect.errors.exception.message", message.encode()),
        ("__connect.errors.topic", topic.encode()),
        ("__connect.errors.partition", str(partition).encode()),
        ("__connect.errors.offset", str(offset).encode()),
    ]


def rewind_group(cfg: KafkaConfig, positions: dict[str, int], *, timeout_s: float = 30.0
                 ) -> None:
    """Set the consumer group's committed offsets to ``positions`` (a checkpoint's,
    ``{"topic[p]": offset}``), so that the group's next members read from there.

    Offsets of a group can only be altered while it has no member: members that are
    still listed (a consumer whose process was killed stays until its session times
    out) are removed first. The caller has closed its own consumers.
    """
    import time

    import kafka.errors as Errors
    from kafka.admin import MemberToRemove
    from kafka.structs import OffsetAndMetadata, TopicPartition

    offsets = {}
    for name, offset in positions.items():
        topic, _, rest = name.rpartition("[")
        offsets[TopicPartition(topic, int(rest.rstrip("]")))] = OffsetAndMetadata(offset, "", -1)
    admin = admin_client(cfg, client_id=f"{cfg.group_id}-rewind")
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            group = _retrying(lambda: admin.describe_groups([cfg.group_id]),
                              what=f"group {cfg.group_id}").get(cfg.group_id, {})
            members = [m["member_id"] for m in group.get("members", [])]
            if members:
                admin.remove_group_members(
                    cfg.group_id, [MemberToRemove(member_id=m, reason="riffle: rewind to a "
                                                  "checkpoint") for m in members])
            if offsets:
                errors = admin.alter_group_offsets(cfg.group_id, offsets)
                failed = {tp: e for tp, e in errors.items() if e is not Errors.NoError}
            else:
                failed = {}
            if not failed:
                return
            if time.monotonic() > deadline:
                raise SourceError(f"kafka group {cfg.group_id}: cannot set its offsets to the "
                                  f"checkpoint's within {timeout_s} s: {failed}")
            time.sleep(0.2)
    finally:
        admin.close()


def group_positions(cfg: KafkaConfig) -> dict[str, int]:
    """Where the consumer group would start reading the events and feedback topics now,
    ``{"topic[p]": offset}``: its committed offsets, else the start or end of the log as
    ``auto_offset_reset`` says (a checkpoint's positions start from these)."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    admin = admin_client(cfg, client_id=f"{cfg.group_id}-positions")
    consumer = KafkaConsumer(**client_options(cfg, client_id=f"{cfg.group_id}-positions"),
                             enable_auto_commit=False)
    try:
        committed = _retrying(lambda: admin.list_group_offsets({cfg.group_id: None}),
                              what=f"the committed offsets of group {cfg.group_id}"
                              ).get(cfg.group_id, {})
        tps = [TopicPartition(topic, p)
               for topic in (cfg.topics.events, cfg.topics.feedback)
               for p in sorted(consumer.partitions_for_topic(topic) or ())]
        fallback = (consumer.beginning_offsets(tps) if cfg.auto_offset_reset == "earliest"
                    else consumer.end_offsets(tps))
        out = {}
        for tp in tps:
            meta = committed.get(tp)
            offset = meta.offset if meta is not None and meta.offset >= 0 else fallback[tp]
            out[f"{tp.topic}[{tp.partition}]"] = int(offset)
        return out
    finally:
        consumer.close()
        admin.close()


def _retrying(call: Any, *, what: str, timeout_s: float = 30.0) -> Any:
    """``call()``, again while the broker answers with a retriable error (a group
    coordinator that is still being elected on a fresh broker, a leader moving)."""
    import time

    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except KafkaError as e:
            if not getattr(e, "retriable", False) or time.monotonic() > deadline:
                raise SourceError(f"kafka: cannot get {what}: {e}") from None
            time.sleep(0.25)
