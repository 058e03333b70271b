"""Reading Kafka: whole topics for `cdc consume`, and the schema topic for both sides.

With `cdc.kafka.producer`, the only code that imports a Kafka client; what
leaves it are plain `Message` tuples and `cdc.errors.SinkError`.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from cdc.errors import SinkError


class Message(NamedTuple):
    """One consumed record, as bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def consumer_error(exc: Exception, bootstrap_servers: str) -> SinkError:
    """A kafka-python error as one line (its classes differ between 2.x and 3.x: go by name)."""
    text = str(exc)
    if type(exc).__name__ == "NoBrokersAvailable" or "bootstrap" in text.lower():
        return SinkError(
            f"cannot reach the broker at {bootstrap_servers}: check --bootstrap-servers and that Kafka runs",
            retriable=True,
        )
    return SinkError(
        f"kafka ({bootstrap_servers}): {text}; check the broker and the topic names",
        retriable=bool(getattr(exc, "retriable", False)),
    )


def check_reachable(bootstrap_servers: str, timeout: float = 5.0) -> None:
    """Fail fast, with a clear message, when no bootstrap server accepts a connection.

    kafka-python retries for 30 s before giving up (and then leaks the sockets
    of its attempts); a plain TCP connect answers in milliseconds.
    """
    reasons = []
    for server in (s.strip() for s in bootstrap_servers.split(",")):
        host, sep, port = server.rpartition(":")
        if not sep or not port.isdigit():
            host, port = server, "9092"
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
        except OSError as exc:
            reasons.append(f"{server}: {exc.strerror or exc}")
        else:
            return
    raise SinkError(
        f"cannot reach the broker at {bootstrap_servers} ({'; '.join(reasons)}): "
        "check --bootstrap-servers and that Kafka runs",
        retriable=True,
    )


class TopicReader:
    """A consumer over whole topics: every partition assigned (no group, nothing committed), or
    subscribed in ``group`` (offsets committed). A context manager.

    Raises `SinkError` when the broker cannot be reached or a topic does not exist.
    """

    def __init__(
        self,
        topics: Sequence[str],
        bootstrap_servers: str,
        *,
        group: str | None = None,
        from_beginning: bool = False,
        config: dict[str, Any] | None = None,
    ) -> None:
        from kafka import KafkaConsumer, TopicPartition  # noqa: PLC0415 - kept local: only importer
        from kafka.errors import KafkaError  # noqa: PLC0415

        check_reachable(bootstrap_servers)
        self.bootstrap_servers = bootstrap_servers
        self._kafka_error = KafkaError
        try:
            self._consumer = KafkaConsumer(
                bootstrap_servers=bootstrap_servers,
                group_id=group,
                enable_auto_commit=group is not None,
                auto_offset_reset="earliest" if from_beginning else "latest",
                allow_auto_create_topics=False,
                # committed records only: what an exactly-once connector aborted never shows (on
                # non-transactional topics both levels read the same)
                **{"isolation_level": "read_committed", **(config or {})},
            )
        except KafkaError as exc:
            raise consumer_error(exc, bootstrap_servers) from None
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
            raise consumer_error(exc, bootstrap_servers) from None
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
            raise consumer_error(exc, self.bootstrap_servers) from None
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

    def __init__(self, bootstrap_servers: str, topics: Sequence[str], **config: Any) -> None:
        from kafka import KafkaConsumer, TopicPartition  # noqa: PLC0415
        from kafka.errors import KafkaError  # noqa: PLC0415

        check_reachable(bootstrap_servers)
        self.topics = list(topics)
        self.bootstrap_servers = bootstrap_servers
        try:
            self._consumer = KafkaConsumer(
                bootstrap_servers=bootstrap_servers,
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
            raise consumer_error(exc, bootstrap_servers) from None

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
            raise consumer_error(exc, self.bootstrap_servers) from None


def read_latest(bootstrap_servers: str, topic: str, **config: Any) -> dict[bytes, bytes]:
    """The last committed value of every key of the compacted ``topic`` (a tombstone removes the key);
    empty when the topic does not exist."""
    latest: dict[bytes, bytes] = {}
    for key, value in read_schema_records(bootstrap_servers, topic, **config):
        if key is None:
            continue
        if value is None:
            latest.pop(bytes(key), None)
        else:
            latest[bytes(key)] = bytes(value)
    return latest


def read_schema_records(
    bootstrap_servers: str, topic: str, **config: Any
) -> list[tuple[bytes | None, bytes | None]]:
    """Every record of the schema topic ``topic`` (for `cdc.avro.AvroSerializer.load_schema_records`)."""
    reader = SchemaTopicReader(bootstrap_servers, [topic], **config)
    try:
        return list(reader.records())
    finally:
        reader.close()
