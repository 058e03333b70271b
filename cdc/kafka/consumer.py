"""Reading Kafka: whole topics for `cdc consume`, and the schema topic for both sides.

With `cdc.kafka.producer`, the only code that imports a Kafka client; what
leaves it are plain `Message` tuples and `cdc.errors.SinkError`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from cdc import redact
from cdc.errors import ConfigError, SinkError
from cdc.kafka.clientconfig import ClientConfig, as_client
from cdc.kafka.connection import check_connection, check_reachable

__all__ = [
    "Message",
    "SchemaTopicReader",
    "TopicReader",
    "check_reachable",
    "consumer_error",
    "read_schema_records",
]


class Message(NamedTuple):
    """One consumed record, as bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def consumer_error(exc: Exception, client: ClientConfig | str) -> SinkError:
    """A kafka-python error as one line (its classes differ between 2.x and 3.x: go by name)."""
    client = as_client(client)
    text = redact.redact(str(exc))
    servers = client.bootstrap_servers
    if type(exc).__name__ == "NoBrokersAvailable" or "bootstrap" in text.lower():
        if client.secured:
            return SinkError(
                f"kafka at {servers} did not let the client in ({client.describe()}): {text}; check the "
                "login and TLS settings (--kafka-config); kafka-python's log lines above say why"
            )
        return SinkError(
            f"cannot reach the broker at {servers}: check --bootstrap-servers, that Kafka runs, and "
            "whether its listener needs security.protocol and a login (--kafka-config)",
            retriable=True,
        )
    return SinkError(
        f"kafka ({servers}): {text}; check the broker and the topic names",
        retriable=bool(getattr(exc, "retriable", False)),
    )


def _consumer(client: ClientConfig, **config: Any) -> Any:
    """kafka-python's KafkaConsumer with the shared settings and ``config`` on top."""
    from kafka import KafkaConsumer  # noqa: PLC0415 - kept local: this package is the only importer

    try:
        return KafkaConsumer(**{**client.kafka_python(), **config})
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(f"invalid kafka consumer setting: {redact.redact(str(exc))}") from None


class TopicReader:
    """A consumer over whole topics: every partition assigned (no group, nothing committed), or
    subscribed in ``group`` (offsets committed). A context manager.

    Raises `SinkError` when the broker cannot be reached or a topic does not exist.
    """

    def __init__(
        self,
        topics: Sequence[str],
        client: ClientConfig | str,
        *,
        group: str | None = None,
        from_beginning: bool = False,
        config: dict[str, Any] | None = None,
    ) -> None:
        from kafka import TopicPartition  # noqa: PLC0415 - kept local: this package is the only importer
        from kafka.errors import KafkaError  # noqa: PLC0415

        self.client = client = as_client(client)
        check_connection(client)
        self.bootstrap_servers = bootstrap_servers = client.bootstrap_servers
        self._kafka_error = KafkaError
        try:
            self._consumer = _consumer(
                client,
                group_id=group,
                enable_auto_commit=group is not None,
                auto_offset_reset="earliest" if from_beginning else "latest",
                allow_auto_create_topics=False,
                # committed records only: what an exactly-once connector aborted never shows (on
                # non-transactional topics both levels read the same)
                **{"isolation_level": "read_committed", **(config or {})},
            )
        except KafkaError as exc:
            raise consumer_error(exc, client) from None
        try:
            #: every topic of the cluster, as seen at the start
            self.existing: set[str] = set(self._consumer.topics())
            missing = [t for t in topics if t not in self.existing]
            if missing:
                raise SinkError(
                    f"topic {', '.join(missing)} does not exist on {bootstrap_servers}: check the name "
                    "(cdc writes <prefix>.<schema>.<table>, <prefix>.messages, <prefix>.schemas)"
                )
            if group is None:
                partitions = [
                    TopicPartition(t, p)
                    for t in topics
                    for p in sorted(self._consumer.partitions_for_topic(t) or ())
                ]
                self._consumer.assign(partitions)
                if from_beginning:
                    self._consumer.seek_to_beginning(*partitions)
                else:
                    self._consumer.seek_to_end(*partitions)
            else:
                self._consumer.subscribe(list(topics))
        except KafkaError as exc:
            self.close()
            raise consumer_error(exc, client) from None
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def poll(self, timeout: float, max_records: int | None = None) -> list[Message]:
        """The records that arrived within ``timeout`` seconds (at most ``max_records``)."""
        try:
            batches = self._consumer.poll(timeout_ms=int(timeout * 1000), max_records=max_records)
        except self._kafka_error as exc:
            raise consumer_error(exc, self.client) from None
        return [
            Message(m.topic, m.partition, m.offset, m.key, m.value)
            for batch in batches.values()
            for m in batch
        ]

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing after a failed connect may raise anything
            self._consumer.close()


class SchemaTopicReader:
    """Reads compacted side topics (``<prefix>.schemas``, ``<prefix>.offsets``) from the beginning, in
    steps, to their current end; committed records only (a record of an aborted transaction never
    counts)."""

    def __init__(self, client: ClientConfig | str, topics: Sequence[str], **config: Any) -> None:
        from kafka import TopicPartition  # noqa: PLC0415
        from kafka.errors import KafkaError  # noqa: PLC0415

        self.client = client = as_client(client)
        check_connection(client)
        self.topics = list(topics)
        self.bootstrap_servers = client.bootstrap_servers
        try:
            self._consumer = _consumer(
                client,
                enable_auto_commit=False,
                allow_auto_create_topics=False,
                fetch_max_wait_ms=100,
                **{"isolation_level": "read_committed", **config},
            )
            self._partitions = [
                TopicPartition(topic, p)
                for topic in self.topics
                for p in sorted(self._consumer.partitions_for_topic(topic) or ())
            ]
            self._consumer.assign(self._partitions)
            if self._partitions:
                self._consumer.seek_to_beginning(*self._partitions)
        except KafkaError as exc:
            raise consumer_error(exc, client) from None

    def close(self) -> None:
        self._consumer.close()

    def records(self, timeout: float = 30.0) -> Iterator[tuple[bytes | None, bytes | None]]:
        """The raw (key, value) records from where the last call stopped to the current end."""
        from kafka.errors import KafkaError  # noqa: PLC0415

        if not self._partitions:
            return
        try:
            # The end from ListOffsets can be short of the true end (Tansu reports the last batch's
            # base offset + 1), but a position past it means the last batch was read: complete.
            ends = self._consumer.end_offsets(self._partitions)
            deadline = time.monotonic() + timeout
            while any(self._consumer.position(tp) < end for tp, end in ends.items()):
                if time.monotonic() > deadline:
                    raise SinkError(
                        f"reading the schema topic {', '.join(self.topics)} took over {timeout:.0f} s: "
                        "is the broker overloaded?",
                        retriable=True,
                    )
                for batch in self._consumer.poll(timeout_ms=200).values():
                    for message in batch:
                        yield message.key, message.value
        except KafkaError as exc:
            raise consumer_error(exc, self.client) from None


def read_latest(client: ClientConfig | str, topic: str, **config: Any) -> dict[bytes, bytes]:
    """The last committed value of every key of the compacted ``topic`` (a tombstone removes the key);
    empty when the topic does not exist."""
    latest: dict[bytes, bytes] = {}
    for key, value in read_schema_records(client, topic, **config):
        if key is None:
            continue
        if value is None:
            latest.pop(bytes(key), None)
        else:
            latest[bytes(key)] = bytes(value)
    return latest


def read_schema_records(
    client: ClientConfig | str, topic: str, **config: Any
) -> list[tuple[bytes | None, bytes | None]]:
    """Every record of the schema topic ``topic`` (for `cdc.avro.AvroSerializer.load_schema_records`)."""
    reader = SchemaTopicReader(client, [topic], **config)
    try:
        return list(reader.records())
    finally:
        reader.close()
