"""Events into Kafka: one `RecordWriter` per producer, used by every stage that writes.

The stream, the snapshot workers and the incremental snapshots all do the
same thing with an event: encode it, make sure the schema it needs is on the
schema topic (acknowledged) before the record that uses it, and hand the
record to the producer with the checkpoint token that tracks its delivery.
That is written once, here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cdc.avro.confluent import SchemaIds
from cdc.checkpoint import InFlight
from cdc.config import Settings
from cdc.errors import ConfigError
from cdc.events import ChangeEvent, JsonSerializer, Serializer, SourceInfo, Table, schemas_topic
from cdc.kafka import Producer, TopicSettings, check_reachable, make_producer, read_schema_records


class RecordWriter:
    """A serializer and the producer it writes to; closing it closes the producer."""

    def __init__(self, serializer: Serializer, producer: Producer, topic_prefix: str) -> None:
        self.serializer = serializer
        self.producer = producer
        self.prefix = topic_prefix
        self.topics = serializer.topics  # the messages' and side topics' names depend on the format
        self.schema_topic = schemas_topic(topic_prefix)
        # the per-event path calls these: bound once
        self._encode = serializer.encode
        self._take_schemas = serializer.take_schema_records
        self._send = producer.send
        self.poll = producer.poll
        self.flush = producer.flush
        self.ensure_topic = producer.ensure_topic

    def write(self, event: ChangeEvent, token: InFlight, topic: str | None = None) -> None:
        """Encode ``event`` and queue it on ``topic`` (default: its own), its schema first."""
        key, value = self._encode(event)
        if topic is None:
            topic = self.topics.of(event)
            self.producer.ensure_topic(topic)
        records = self._take_schemas()
        if records:
            self._publish_schemas(records)
        self._send(topic, key, value, token)

    def tombstone(self, topic: str, table: Table, key: list[Any], token: InFlight) -> None:
        """A null value under ``key``, so that compacted topics forget it."""
        encoded = self.serializer.encode_key(table, key)
        records = self._take_schemas()
        if records:
            self._publish_schemas(records)
        self._send(topic, encoded, None, token)

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

    def _publish_schemas(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Schema records go to the (compacted) schema topic, acknowledged, before their record."""
        self.producer.ensure_topic(self.schema_topic, compact=True)
        for key, value in records:
            self.producer.send_and_wait(self.schema_topic, key, value, timeout=60)

    def close(self) -> None:
        try:
            self.producer.close()
        finally:
            self.serializer.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_serializer(settings: Settings, source: SourceInfo) -> Serializer:
    """The serializer of ``--format`` (and ``--schema-registry-url``): the one place a format plugs in.

    Avro starts from what the schema topic already holds; with a Schema Registry it registers its
    schemas there instead. Made anew for every session: after a broker restart (or a new cluster)
    the schema topic may have lost schemas this process published, and a fresh registry publishes
    them again before the first record that needs them.
    """
    if settings.compat == "debezium":
        return _debezium_serializer(settings, source)
    if settings.format == "json":
        return JsonSerializer(settings.topic_prefix, source)
    from cdc.avro import AvroSerializer  # noqa: PLC0415 - fastavro only when used

    if settings.schema_registry_url:
        return AvroSerializer(settings.topic_prefix, source, _registry(settings))
    serializer = AvroSerializer(settings.topic_prefix, source)
    serializer.load_schema_records(
        read_schema_records(settings.bootstrap_servers, schemas_topic(settings.topic_prefix))
    )
    return serializer


def _registry(settings: Settings) -> SchemaIds:
    """The Schema Registry client of the settings, checked: a wrong address or password fails the
    start, not the first event."""
    from cdc.schema_registry import RegistryClient  # noqa: PLC0415 - an optional dependency

    check_reachable(settings.bootstrap_servers)  # the schema topic's read does it otherwise
    registry = RegistryClient(settings.schema_registry_url, settings.schema_registry_config)
    try:
        registry.check()
    except BaseException:
        registry.close()
        raise
    return registry


def _debezium_serializer(settings: Settings, source: SourceInfo) -> Serializer:
    """``--compat debezium``: Debezium's JSON (JsonConverter), or its Avro through a Schema Registry."""
    from cdc.debezium import DebeziumAvroSerializer, DebeziumJsonSerializer, options_of  # noqa: PLC0415

    options = options_of(settings)
    if settings.format == "json":
        return DebeziumJsonSerializer(
            settings.topic_prefix,
            source,
            options,
            schemas=settings.json_schemas,
            transaction_metadata=settings.transaction_metadata,
        )
    if not settings.schema_registry_url:
        raise ConfigError(
            "--compat debezium --format avro writes through a Schema Registry: "
            "give --schema-registry-url (or use --format json)"
        )
    return DebeziumAvroSerializer(
        settings.topic_prefix,
        source,
        options,
        _registry(settings),
        transaction_metadata=settings.transaction_metadata,
    )


def open_writer(settings: Settings, source: SourceInfo, client_id: str) -> RecordWriter:
    """A producer and a serializer as ``settings`` say; the caller closes the writer.

    The serializer first: reading the schema topic is also the quick check that the broker
    answers (a producer would retry for seconds before saying it does not).
    """
    serializer = make_serializer(settings, source)
    producer = make_producer(
        settings.producer,
        settings.bootstrap_servers,
        client_id,
        settings.max_buffer_mb,
        TopicSettings(settings.topic_partitions, settings.topic_replication_factor, settings.topic_configs),
        settings.producer_configs,
    )
    return RecordWriter(serializer, producer, settings.topic_prefix)
