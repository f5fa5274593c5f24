"""Kafka plumbing shared by sources, sinks and the CLI: client options, topics, headers."""

from __future__ import annotations

import os
from typing import Any

from pipelines.config import KafkaConfig
from pipelines.errors import SourceError

__all__ = ["admin_client", "client_options", "connect_headers", "ensure_topics", "producer"]

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
                  topics.models]
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
