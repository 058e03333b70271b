"""Events into Kafka: one `RecordWriter` per producer, used by every stage that writes.

The stream, the snapshot workers and the incremental snapshots all do the
same thing with an event: encode it, make sure the schema it needs is on the
schema topic (acknowledged) before the record that uses it, and hand the
record to the producer with the checkpoint token that tracks its delivery.
That is written once, here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from cdc.checkpoint import InFlight
from cdc.config import Settings
from cdc.errors import SinkError
from cdc.events import ChangeEvent, JsonSerializer, Serializer, SourceInfo, Table, event_topic, schemas_topic
from cdc.kafka import ClientConfig, Producer, TopicSettings, client_config, make_producer, read_schema_records


class RecordWriter:
    """A serializer and the producer it writes to; closing it closes the producer."""

    def __init__(self, serializer: Serializer, producer: Producer, topic_prefix: str) -> None:
        self.serializer = serializer
        self.producer = producer
        self.prefix = topic_prefix
        self.schema_topic = schemas_topic(topic_prefix)
        #: records produced per topic; the connector hands in its `Status.records_per_topic`
        self.records: Counter[str] = Counter()
        # the per-event path calls these: bound once
        self._encode = serializer.encode
        self._take_schemas = serializer.take_schema_records
        self._send = producer.send
        self.poll = producer.poll
        self.flush = producer.flush
        self.ensure_topic = producer.ensure_topic

    def write(self, event: ChangeEvent, token: InFlight, topic: str | None = None) -> int:
        """Encode ``event`` and queue it on ``topic`` (default: its own), its schema first.

        Returns the bytes of its key and value.
        """
        key, value = self._encode(event)
        if topic is None:
            topic = event_topic(self.prefix, event)
            self.producer.ensure_topic(topic)
        records = self._take_schemas()
        if records:
            self._publish_schemas(records)
        self._send(topic, key, value, token)
        self.records[topic] += 1
        return len(value) + len(key) if key is not None else len(value)

    def tombstone(self, topic: str, table: Table, key: list[Any], token: InFlight) -> None:
        """A null value under ``key``, so that compacted topics forget it."""
        encoded = self.serializer.encode_key(table, key)
        records = self._take_schemas()
        if records:
            self._publish_schemas(records)
        self._send(topic, encoded, None, token)
        self.records[topic] += 1

    def write_fixed(
        self, kind: str, topic: str, key: dict[str, Any], value: dict[str, Any], token: InFlight
    ) -> None:
        """A record of a side topic (``transaction``, ``heartbeat``) in its fixed schema."""
        self.producer.ensure_topic(topic)
        encoded_key, encoded_value = self.serializer.encode_fixed(kind, topic, key, value)
        records = self._take_schemas()
        if records:
            self._publish_schemas(records)
        self._send(topic, encoded_key, encoded_value, token)
        self.records[topic] += 1

    def publish_schemas(self, tables: Sequence[Table], timeout: float = 60) -> None:
        """The schemas of ``tables``, all sent, then waited for at once: one round trip for many
        tables instead of one per schema (an initial snapshot of many small tables)."""
        for table in tables:
            self.serializer.prepare(table)
        records = self._take_schemas()
        if not records:
            return
        self.producer.ensure_topic(self.schema_topic, compact=True)
        token = InFlight(0)
        transactional = bool(self.producer.transactional_id)
        if transactional:
            self.producer.begin_transaction()
        for key, value in records:
            self._send(self.schema_topic, key, value, token)
        if transactional:
            self.producer.commit_transaction(timeout)
        if not self.producer.flush(timeout) or (self.producer.poll() >= 0 and token.pending):
            raise SinkError(
                f"kafka did not acknowledge {len(records)} schema records within {timeout:g} s",
                retriable=True,
            )

    def _publish_schemas(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Schema records go to the (compacted) schema topic, acknowledged, before their record."""
        self.producer.ensure_topic(self.schema_topic, compact=True)
        for key, value in records:
            self.producer.send_and_wait(self.schema_topic, key, value, timeout=60)
        self.records[self.schema_topic] += len(records)

    def backlog(self) -> tuple[int, int]:
        """Records and bytes the producer holds that Kafka has not acknowledged yet."""
        return self.producer.backlog()

    def close(self) -> None:
        self.producer.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_serializer(settings: Settings, source: SourceInfo, client: ClientConfig | None = None) -> Serializer:
    """The serializer of ``--format``; Avro starts from what the schema topic already holds.

    Made anew for every session: after a broker restart (or a new cluster) the
    schema topic may have lost schemas this process published, and a fresh
    registry publishes them again before the first record that needs them.
    """
    if settings.format == "json":
        return JsonSerializer(settings.topic_prefix, source)
    from cdc.avro import AvroSerializer  # noqa: PLC0415 - fastavro only when used

    serializer = AvroSerializer(settings.topic_prefix, source)
    client = client or client_config(settings)
    serializer.load_schema_records(read_schema_records(client, schemas_topic(settings.topic_prefix)))
    return serializer


def open_writer(
    settings: Settings, source: SourceInfo, client_id: str, transactional_id: str = ""
) -> RecordWriter:
    """A producer and a serializer as ``settings`` say; the caller closes the writer.

    Both reach Kafka with the process's one client configuration (`cdc.kafka.client_config`).
    The serializer first: reading the schema topic is also the quick check that the broker
    answers (a producer would retry for seconds before saying it does not). With
    ``transactional_id`` the producer is transactional (``--delivery exactly-once``).
    """
    client = client_config(settings)
    serializer = make_serializer(settings, source, client)
    producer = make_producer(
        settings.producer,
        client,
        client_id,
        settings.max_buffer_mb,
        TopicSettings(settings.topic_partitions, settings.topic_replication_factor, settings.topic_configs),
        settings.producer_configs,
        transactional_id,
    )
    return RecordWriter(serializer, producer, settings.topic_prefix)
