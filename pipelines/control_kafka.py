"""The control stream on Kafka: the ``kafka.topics.models`` topic, partition 0.

A position is the partition's offset. The Supervisor keeps its position in its
checkpoints, so the consumer joins no group and commits nothing: it is assigned the
partition and seeks. The topic is created with one partition when it is missing (and
``kafka.create_topics`` allows it); senders write to partition 0 whatever the topic has,
so the commands stay one ordered log.

Clients connect on first use, so constructing a channel costs nothing (the CLI that only
sends never starts a consumer). Connecting waits at most ``kafka.request_timeout_ms``:
an unreachable broker is a one-line :class:`~pipelines.errors.SourceError`, for the CLI
as for the Supervisor. Once connected, a broker outage makes :meth:`KafkaControl.read`
return nothing until it is back (kafka-python reconnects by itself).
"""

from __future__ import annotations

from typing import Any

from pipelines.config import KafkaConfig
from pipelines.errors import SourceError, named_line
from pipelines.kafka import _retrying, admin_client, client_options

__all__ = ["KafkaControl"]

# A send is acked or failed by the producer within delivery_timeout_ms; a flush that
# lasts this much longer than that is stuck.
_FLUSH_MARGIN_S = 5.0


class KafkaControl:
    """The control channel on ``kafka.topics.models`` (a
    :class:`~pipelines.control.ControlChannel`).

    ``poll_timeout_s``: how long :meth:`read` may wait for a message when none is
    fetched yet (0: it answers at once with what the consumer has).
    """

    def __init__(self, kafka: KafkaConfig, *, client_id: str, poll_timeout_s: float = 0.0
                 ) -> None:
        self.topic = kafka.topics.models
        self.name = f"kafka:{self.topic}[0]"
        """Where the messages are read, for logs: ``kafka:riffle.models[0]`` (``@offset``
        appended names one message)."""
        self.position = 0
        self._kafka = kafka
        self._client_id = client_id
        self._timeout_ms = kafka.request_timeout_ms
        self._poll_ms = max(0, int(poll_timeout_s * 1000))
        self._producer: Any = None
        self._consumer: Any = None
        self._tp: Any = None
        self._topic_ready = False

    # -- the ControlChannel protocol -------------------------------------------------

    def send(self, message: bytes) -> None:
        """Append ``message``; returns once the broker has it (``acks=all``)."""
        from kafka.errors import KafkaError

        producer = self._connected_producer()
        flush_timeout_s = self._kafka.delivery_timeout_ms / 1000 + _FLUSH_MARGIN_S
        try:
            future = producer.send(self.topic, value=message, partition=0)
            producer.flush(timeout=flush_timeout_s)
            future.get(timeout=0)  # done after the flush: raises the send's own failure
        except KafkaError as e:
            raise SourceError(f"control channel {self.name} at {self._servers}: cannot send "
                              f"a command: {named_line(e)}") from None

    def read(self) -> list[tuple[int, bytes]]:
        """The messages fetched since :attr:`position`, each with its offset; advances it."""
        from kafka.errors import KafkaError

        consumer = self._connected_consumer()
        try:
            fetched = consumer.poll(timeout_ms=self._poll_ms)
        except KafkaError as e:
            raise SourceError(f"control channel {self.name}@{self.position}: cannot read: "
                              f"{named_line(e)}") from None
        records = fetched.get(self._tp, [])
        if records:
            self.position = records[-1].offset + 1
        return [(r.offset, r.value if r.value is not None else b"") for r in records]

    def seek(self, position: int | None) -> None:
        """Read from offset ``position`` next; ``None``: from the partition's end."""
        if position is None:
            consumer = self._connected_consumer()
            position = int(_retrying(
                lambda: consumer.end_offsets([self._tp], timeout_ms=self._timeout_ms)[self._tp],
                what=f"the end of {self.name}", timeout_s=self._timeout_ms / 1000))
        if position < 0:
            raise ValueError(f"a position is an offset >= 0, not {position}")
        self.position = position
        if self._consumer is not None:  # else the consumer starts there when it connects
            self._consumer.seek(self._tp, position)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=self._timeout_ms / 1000)
            self._producer = None
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
            self._consumer = None

    # -- connecting ------------------------------------------------------------------

    @property
    def _servers(self) -> str:
        servers = self._kafka.bootstrap_servers
        return servers if isinstance(servers, str) else ",".join(servers)

    def _connected_producer(self) -> Any:
        if self._producer is None:
            from kafka import KafkaProducer

            # Not pipelines.kafka.producer(): that one is tuned for throughput and waits
            # kafka-python's own 30 s to bootstrap and 60 s for metadata; a command is one
            # message, and its sender should hear of a dead broker within the request
            # timeout.
            self._producer = self._connect(lambda: KafkaProducer(
                **client_options(self._kafka, client_id=self._client_id), acks="all",
                linger_ms=0, max_request_size=self._kafka.max_request_size,
                delivery_timeout_ms=self._kafka.delivery_timeout_ms,
                bootstrap_timeout_ms=self._timeout_ms, max_block_ms=self._timeout_ms))
            self._ensure_topic()
        return self._producer

    def _connected_consumer(self) -> Any:
        if self._consumer is None:
            from kafka import KafkaConsumer
            from kafka.structs import TopicPartition

            consumer = self._connect(lambda: KafkaConsumer(
                **client_options(self._kafka, client_id=self._client_id), group_id=None,
                enable_auto_commit=False,
                # A position the log no longer has (retention, a recreated topic): read
                # what is there rather than skip it.
                auto_offset_reset="earliest",
                max_partition_fetch_bytes=self._kafka.max_partition_fetch_bytes,
                bootstrap_timeout_ms=self._timeout_ms))
            try:
                self._ensure_topic()
            except SourceError:
                consumer.close(autocommit=False)
                raise
            self._tp = TopicPartition(self.topic, 0)
            consumer.assign([self._tp])
            consumer.seek(self._tp, self.position)
            self._consumer = consumer
        return self._consumer

    def _connect(self, make: Any) -> Any:
        from kafka.errors import KafkaError

        try:
            return make()
        except (KafkaError, OSError) as e:
            raise SourceError(f"control channel {self.name} at {self._servers}: cannot "
                              f"connect: {named_line(e)}") from None

    def _ensure_topic(self) -> None:
        """Create the topic with one partition if it is missing, and wait for its leader."""
        if self._topic_ready:
            return
        from kafka.errors import KafkaError, TopicAlreadyExistsError

        admin = admin_client(self._kafka, client_id=f"{self._client_id}-admin")
        try:
            if self.topic not in admin.list_topics():
                if not self._kafka.create_topics:
                    raise SourceError(f"control channel {self.name}: topic {self.topic} does "
                                      "not exist and kafka.create_topics is off")
                try:
                    admin.create_topics({self.topic: {
                        "num_partitions": 1,
                        "replication_factor": self._kafka.replication_factor}},
                        timeout_ms=self._timeout_ms)
                except TopicAlreadyExistsError:
                    pass  # another riffle created it meanwhile
            admin.wait_for_topics([self.topic], timeout_ms=self._timeout_ms)
        except KafkaError as e:
            raise SourceError(f"control channel {self.name}: cannot create or find topic "
                              f"{self.topic}: {named_line(e)}") from None
        finally:
            admin.close()
        self._topic_ready = True

