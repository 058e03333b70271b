"""Events into Kafka: one `RecordWriter` per producer, used by every stage that writes.

The stream, the snapshot workers and the incremental snapshots all do the
same thing with an event: encode it, make sure the schema it needs is on the
schema topic (acknowledged) before the record that uses it, and hand the
record to the producer with the checkpoint token that tracks its delivery.
That is written once, here.

With shaping configured (masks, transforms, dead letters: `cdc.shaping`),
`write` is the shaped path: the `Shaper` turns the event into its records
(none, several, a dead letter), which go out with the event's token, so a
dropped event is confirmed like any other and a dead letter is in Kafka
before its position is confirmed. Without, the plain path runs unchanged.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from cdc.avro.confluent import SchemaIds
from cdc.change import ChangeEvent
from cdc.checkpoint import InFlight
from cdc.config import Settings
from cdc.errors import ConfigError, DeliveryFailed, SinkError
from cdc.events import JsonSerializer, Serializer, SourceInfo, Table, schemas_topic, snapshot_read
from cdc.kafka import (
    ClientConfig,
    Producer,
    TopicSettings,
    check_connection,
    client_config,
    make_producer,
    read_schema_records,
)
from cdc.pgoutput import TupleData
from cdc.shaping import deadletter
from cdc.shaping.shaper import Outgoing, Shaper

log = logging.getLogger(__name__)


class RecordWriter:
    """A serializer and the producer it writes to; closing it closes the producer."""

    def __init__(
        self, serializer: Serializer, producer: Producer, topic_prefix: str, shaper: Shaper | None = None
    ) -> None:
        self.serializer = serializer
        self.producer = producer
        self.prefix = topic_prefix
        self.topics = serializer.topics  # the messages' and side topics' names depend on the format
        self.schema_topic = schemas_topic(topic_prefix)
        #: records produced per topic; the connector hands in its `Status.records_per_topic`
        self.records: Counter[str] = Counter()
        # the per-event path calls these: bound once
        self._encode = serializer.encode
        self._encode_text = serializer.encode_text
        self._take_schemas = serializer.take_schema_records
        self._send = producer.send
        self.poll = producer.poll
        self.flush = producer.flush
        self.ensure_topic = producer.ensure_topic
        self.ensure_topics = producer.ensure_topics
        self.shaper = shaper
        self._limits: dict[str, int] | None = None
        if shaper is not None and shaper.on_record_error == "dead-letter":
            self._limits = {}
            if not producer.transactional_id:  # a refusal inside a Kafka transaction aborts it
                self._rejected = producer.keep_rejected()
                self.poll = self._poll_rejected

    @property
    def shaping_counts(self) -> Counter[str]:
        """Events dropped by transforms, transform errors, dead letters (see `Shaper.counts`)."""
        return self.shaper.counts if self.shaper is not None else Counter()

    @shaping_counts.setter
    def shaping_counts(self, counts: Counter[str]) -> None:
        if self.shaper is not None:
            self.shaper.counts = counts

    def write(self, event: ChangeEvent, token: InFlight, topic: str | None = None) -> int:
        """Encode ``event`` and queue it on ``topic`` (default: its own), its schema first.

        Returns the bytes of its key and value.
        """
        # a branch, not a method bound over this one: a compiled (mypyc) class refuses that
        if self.shaper is not None:
            return self._write_shaped(event, token, topic)
        key, value = self._encode(event)
        if topic is None:
            topic = self.topics.of(event)
            self.producer.ensure_topic(topic)
        return self._plain(topic, key, value, token)

    def write_text(
        self,
        event: ChangeEvent,
        text: TupleData,
        parse: Callable[[TupleData], list[Any]],
        token: InFlight,
        topic: str,
    ) -> int:
        """`write` of a streamed event whose after row is still the server's ``text`` (``after`` and
        ``before`` None; ``parse`` makes it the row): the format encodes it from the text where it
        can (`Serializer.encode_text`); shaping gets the row."""
        if self.shaper is not None:
            event.after = parse(text)
            return self._write_shaped(event, token, topic)
        key, value = self._encode_text(event, text, parse)
        return self._plain(topic, key, value, token)

    def _plain(self, topic: str, key: bytes | None, value: bytes, token: InFlight) -> int:
        """The plain path's record out: the schemas it needs first; returns its key's and value's bytes."""
        records = self._take_schemas()
        if records:
            self._publish_schemas(records)
        self._send(topic, key, value, token)
        self.records[topic] += 1
        return len(value) + len(key) if key is not None else len(value)

    def write_reads(
        self,
        table: Table,
        rows: Sequence[list[Any]],
        lsn: int,
        ts_ms: int,
        snapshot: str,
        token: InFlight,
        topic: str,
    ) -> None:
        """Snapshot reads of ``rows`` on ``topic``: `write` of each as an "r" event, in one call (the
        serializer's `encode_reads`) without an event per row."""
        if self.shaper is not None:
            for values in rows:
                self._write_shaped(snapshot_read(table, values, lsn, ts_ms, snapshot), token, topic)
            return
        records = self.serializer.encode_reads(table, rows, lsn, ts_ms, snapshot)
        self._send_reads(topic, records, token)

    def _send_reads(self, topic: str, records: list[tuple[bytes | None, bytes]], token: InFlight) -> None:
        schemas = self._take_schemas()
        if schemas:
            self._publish_schemas(schemas)
        self.producer.send_many(topic, records, token)
        self.records[topic] += len(records)

    def write_lines(
        self,
        table: Table,
        lines: Sequence[bytes],
        read: Callable[[bytes], list[Any]],
        lsn: int,
        ts_ms: int,
        snapshot: str,
        token: InFlight,
        topic: str,
    ) -> None:
        """`write_reads` of the rows of COPY text ``lines`` (``read`` makes one a row), read and
        encoded in one loop where the format can (`Serializer.encode_lines`): no row list per row."""
        if self.shaper is not None:
            self.write_reads(table, [read(line) for line in lines], lsn, ts_ms, snapshot, token, topic)
            return
        records = self.serializer.encode_lines(table, lines, read, lsn, ts_ms, snapshot)
        self._send_reads(topic, records, token)

    def tombstone(self, topic: str, table: Table, key: list[Any], token: InFlight) -> None:
        """A null value under ``key``, so that compacted topics forget it."""
        if self.shaper is not None:
            self._tombstone_shaped(topic, table, key, token)
            return
        encoded = self.serializer.encode_key(table, key)
        records = self._take_schemas()
        if records:
            self._publish_schemas(records)
        self._send(topic, encoded, None, token)
        self.records[topic] += 1

    # -- the shaped path (cdc.shaping) ------------------------------------------------------

    def _write_shaped(self, event: ChangeEvent, token: InFlight, topic: str | None = None) -> int:
        """`write` with shaping: the shaper's records for ``event``, all with its token."""
        if topic is None:
            topic = self.topics.of(event)
            self.producer.ensure_topic(topic)
        assert self.shaper is not None
        outgoing = self.shaper.records(event, topic)
        records = self._take_schemas()
        if records:
            self._publish_schemas(records)
        size = 0
        for shaped in outgoing:
            out = shaped
            if out.topic != topic:
                self.producer.ensure_topic(out.topic)
            if self._limits is not None:
                out = self._cut(out) if out.dead else self._fit(out, event)
            self._send(out.topic, out.key, out.value, token, out.headers)
            self.records[out.topic] += 1
            size += (len(out.value) if out.value else 0) + (len(out.key) if out.key else 0)
        return size

    def _tombstone_shaped(self, topic: str, table: Table, key: list[Any], token: InFlight) -> None:
        """Nothing: with shaping, the tombstone follows each delete the shaper lets through (its topic,
        its key), among the records of the delete itself."""

    def _limit(self, topic: str) -> int:
        """The topic's max.message.bytes (Kafka's default when the broker does not say), asked once."""
        assert self._limits is not None
        limit = self._limits.get(topic)
        if limit is None:
            self.producer.ensure_topic(topic)  # made with --topic-config first, then asked
            limit = self.producer.max_message_bytes(topic) or deadletter.DEFAULT_MAX_MESSAGE_BYTES
            self._limits[topic] = limit
        return limit

    @staticmethod
    def _size(out: Outgoing) -> int:
        """What the record weighs in a batch of its own (the broker compares it with the topic's limit)."""
        return (
            (len(out.key) if out.key else 0)
            + (len(out.value) if out.value else 0)
            + deadletter.headers_size(out.headers)
            + deadletter.RECORD_OVERHEAD
        )

    def _fit(self, out: Outgoing, event: ChangeEvent | None) -> Outgoing:
        """``out``, or its dead letter when it is larger than its topic takes (``--on-record-error
        dead-letter``): found before sending, since a refused record breaks kafka-python's producer."""
        size = self._size(out)
        limit = self._limit(out.topic)
        if size <= limit:
            return out
        assert self.shaper is not None
        error = f"{size:,} bytes, larger than {out.topic}'s max.message.bytes ({limit:,})"
        return self.shaper.refused(out, event, error, self._limit(self.shaper.dead_letter_topic))

    def _cut(self, letter: Outgoing) -> Outgoing:
        """A dead letter made by the shaper (a transform's failure, say), cut to fit its topic."""
        limit = self._limit(letter.topic)
        if self._size(letter) <= limit or letter.value is None:
            return letter
        found = list(letter.headers or [])
        deadletter.set_header(found, "truncated", "true")
        return Outgoing(
            letter.topic, letter.key, deadletter.cut(letter.value, letter.key, found, limit), found, True
        )

    def _poll_rejected(self) -> int:
        """`poll`, then records the broker refused for their size (librdkafka hands them back) go to
        the dead-letter topic with their token: each counts as done once its dead letter is in Kafka.

        The size check before sending normally finds them; this is for a topic whose limit could not
        be read, or was lowered since. The broker refuses a whole batch: a record that is not too
        large itself was refused for its neighbours, and moving it aside would misplace it, so that
        stops the connector instead (nothing after it is confirmed).
        """
        acked = self.producer.poll()
        rejected = self._rejected
        while rejected:
            refused = rejected.popleft()
            assert self.shaper is not None
            out = Outgoing(refused.topic, refused.key, refused.value, refused.headers)
            size = self._size(out)
            self._limits.pop(refused.topic, None)  # type: ignore[union-attr]  # ask the broker again
            limit = self._limit(refused.topic)
            if refused.topic == self.shaper.dead_letter_topic or size <= limit:
                raise DeliveryFailed(
                    f"kafka refused a record of {size:,} bytes for {refused.topic} ({refused.error}): "
                    f"the topic's max.message.bytes ({limit:,}) is below what the producer puts in one "
                    "batch; raise it, or lower the batch (--producer-config batch.size=...)",
                    retriable=False,
                )
            letter = self.shaper.refused(out, None, refused.error, self._limit(self.shaper.dead_letter_topic))
            self._send(letter.topic, letter.key, letter.value, refused.token, letter.headers)
            refused.token.pending -= 1  # the refused record: its dead letter now stands for it
            self.records[letter.topic] += 1
        return acked

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
            # with shaping, the schema its records will have (masked columns, declared ones)
            self.serializer.prepare(table if self.shaper is None else self.shaper.output_table(table))
        records = self._take_schemas()
        if not records:
            return
        log.info("registering %d schemas of %d tables on %s", len(records), len(tables), self.schema_topic)
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

    def backlog(self) -> tuple[int, int | None]:
        """Records and bytes (None: not counted) the producer holds that Kafka has not acknowledged yet."""
        return self.producer.backlog()

    def close(self) -> None:
        try:
            self.producer.close()
        finally:
            self.serializer.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_serializer(
    settings: Settings, source: SourceInfo, client: ClientConfig | None = None, like: Serializer | None = None
) -> Serializer:
    """The serializer of ``--format`` (and ``--schema-registry-url``): the one place a format plugs in.

    Avro starts from what the schema topic already holds; with a Schema Registry it registers its
    schemas there instead. Made anew for every session: after a broker restart (or a new cluster)
    the schema topic may have lost schemas this process published, and a fresh registry publishes
    them again before the first record that needs them. ``like``: a serializer of this process
    (a snapshot worker thread's coordinator) whose native Avro schemas are taken over instead.
    """
    client = client or client_config(settings)
    if settings.compat == "debezium":
        return _debezium_serializer(settings, source, client)
    if settings.format == "json":
        return JsonSerializer(settings.topic_prefix, source)
    from cdc.avro import AvroSerializer  # noqa: PLC0415 - fastavro only when used

    if settings.schema_registry_url:
        return AvroSerializer(settings.topic_prefix, source, _registry(settings, client))
    if isinstance(like, AvroSerializer) and like.framing is None:
        return like.fork()
    serializer = AvroSerializer(settings.topic_prefix, source)
    serializer.load_schema_records(read_schema_records(client, schemas_topic(settings.topic_prefix)))
    return serializer


def _registry(settings: Settings, client: ClientConfig) -> SchemaIds:
    """The Schema Registry client of the settings, checked: a wrong address or password fails the
    start, not the first event."""
    from cdc.schema_registry import RegistryClient  # noqa: PLC0415 - an optional dependency

    check_connection(client)  # the schema topic's read does it otherwise
    registry = RegistryClient(settings.schema_registry_url, settings.schema_registry_config)
    try:
        registry.check()
    except BaseException:
        registry.close()
        raise
    return registry


def _debezium_serializer(settings: Settings, source: SourceInfo, client: ClientConfig) -> Serializer:
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
        _registry(settings, client),
        transaction_metadata=settings.transaction_metadata,
    )


def open_writer(
    settings: Settings,
    source: SourceInfo,
    client_id: str,
    transactional_id: str = "",
    like: Serializer | None = None,
) -> RecordWriter:
    """A producer and a serializer as ``settings`` say; the caller closes the writer.

    Both reach Kafka with the process's one client configuration (`cdc.kafka.client_config`).
    The serializer first: reading the schema topic is also the quick check that the broker
    answers (a producer would retry for seconds before saying it does not). With
    ``transactional_id`` the producer is transactional (``--delivery exactly-once``).
    """
    client = client_config(settings)
    serializer = make_serializer(settings, source, client, like)
    producer = make_producer(
        settings.producer,
        client,
        client_id,
        settings.max_buffer_mb,
        TopicSettings(settings.topic_partitions, settings.topic_replication_factor, settings.topic_configs),
        settings.producer_configs,
        transactional_id,
    )
    shaper = Shaper(settings, serializer, source) if Shaper.wanted(settings) else None
    return RecordWriter(serializer, producer, settings.topic_prefix, shaper)
