"""A stand-in for the streaming connector: a real slot's changes, encoded with cdc.avro, in Kafka.

`capture` creates a publication and a slot, runs the statements, reads the
slot until they are all decoded, turns the pgoutput messages into
`ChangeEvent`s the way DESIGN.md says the connector does (TOAST placeholder,
delete + tombstone, truncate, logical messages) and produces them, each
schema record acknowledged before the first data record that uses it.

Tests depend only on `capture`'s signature and on `Captured`; once the
connector exists, its body becomes "run the connector until it confirmed the
statements' LSN".
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from cdc import avro
from cdc.events import (
    UNAVAILABLE_PLACEHOLDER,
    ChangeEvent,
    SourceInfo,
    Table,
    Transaction,
    pg_ts_to_ms,
    table_from_relation,
)
from cdc.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Decoder,
    Delete,
    Insert,
    LogicalMessage,
    Relation,
    ReplicaIdentity,
    Truncate,
    Update,
    XLogData,
    decode_copy_data,
)
from cdc.replication import ReplicationConnection
from tests.fix_servers import TestDb

END_PREFIX = "cdc-test-end"  # the logical message that marks the end of the statements


@dataclass
class Captured:
    """What went to Kafka: the events in order, and records per topic (tombstones included)."""

    events: list[ChangeEvent]
    source: SourceInfo
    serializer: avro.AvroSerializer
    topics: dict[str, int] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)  # every table version seen


def capture(
    db: TestDb,
    bootstrap_servers: str,
    prefix: str,
    tables: Sequence[str],
    statements: Sequence[str],
    *,
    timeout: float = 30.0,
) -> Captured:
    """Stream ``statements`` (run one by one, after the slot exists) on ``tables`` to Kafka."""
    suffix = secrets.token_hex(3)
    slot, publication = f"slot_{suffix}", f"pub_{suffix}"
    db.execute(f"CREATE PUBLICATION {publication} FOR TABLE {', '.join(tables)}")
    source = SourceInfo(name="test", db=db.name)
    serializer = avro.AvroSerializer(prefix, source)
    with ReplicationConnection(db.dsn) as repl:
        repl.create_slot(slot)
        for statement in statements:
            db.execute(statement)
        db.execute("SELECT pg_logical_emit_message(false, %s, '')", (END_PREFIX,))
        repl.start(slot, publication)
        builder = _read_events(repl, timeout)
    captured = Captured(builder.events, source, serializer, tables=builder.versions)
    _produce(captured, bootstrap_servers)
    return captured


class _EventBuilder:
    """pgoutput messages -> ChangeEvents, one table version per distinct Relation."""

    def __init__(self) -> None:
        self.tables: dict[int, Table] = {}
        self.versions: list[Table] = []
        self.txn: Transaction | None = None
        self.events: list[ChangeEvent] = []
        self.done = False

    def table(self, relation: Relation) -> Table:
        table = self.tables.get(relation.relation_id)
        fresh = table_from_relation(relation, None, 1 if table is None else table.version + 1)
        if table is None or not table.same_shape(fresh):
            self.tables[relation.relation_id] = table = fresh
            self.versions.append(fresh)
        return table

    def add(self, message: Any, lsn: int) -> None:
        if isinstance(message, Begin):
            self.txn = Transaction(message.xid, message.final_lsn, pg_ts_to_ms(message.commit_ts))
        elif isinstance(message, Commit):
            self.txn = None
        elif isinstance(message, Relation):
            self.table(message)
        elif isinstance(message, Insert):
            table = self.table(message.relation)
            self._event("c", table, None, _row(table, message.new, None), lsn)
        elif isinstance(message, Update):
            table = self.table(message.relation)
            before = None if message.old is None else _row(table, message.old, None)
            self._event("u", table, before, _row(table, message.new, before), lsn)
        elif isinstance(message, Delete):
            table = self.table(message.relation)
            self._event("d", table, _row(table, message.old, None), None, lsn)
        elif isinstance(message, Truncate):
            for relation in message.relations:
                self._event("t", self.table(relation), None, None, lsn)
        elif isinstance(message, LogicalMessage):
            if message.prefix == END_PREFIX:
                self.done = True
                return
            self._event("m", None, None, None, lsn, message)

    def _event(
        self,
        op: str,
        table: Table | None,
        before: list[Any] | None,
        after: list[Any] | None,
        lsn: int,
        message: LogicalMessage | None = None,
    ) -> None:
        txn = self.txn
        event = ChangeEvent(
            op,
            table,
            before,
            after,
            lsn=lsn,
            commit_lsn=txn.commit_lsn if txn else lsn,
            xid=txn.xid if txn else 0,
            commit_ts_ms=txn.commit_ts_ms if txn else int(time.time() * 1000),
        )
        if txn is not None:
            event.total_order, event.data_collection_order = txn.next_order(table.relation_id if table else 0)
            event.transaction_id = txn.id
        if message is not None:
            event.message_prefix, event.message_content = message.prefix, message.content
        self.events.append(event)


def _row(table: Table, values: list[Any], old: list[Any] | None) -> list[Any]:
    """Text values -> wire values; an unchanged TOAST value from the old row (FULL) or the placeholder."""
    row: list[Any] = []
    full = table.replica_identity == ReplicaIdentity.FULL
    for i, (column, value) in enumerate(zip(table.columns, values, strict=True)):
        if value is None:
            row.append(None)
        elif value is UNCHANGED:
            row.append(old[i] if full and old is not None else UNAVAILABLE_PLACEHOLDER)
        else:
            assert isinstance(value, bytes), "the stand-in reads text format only"
            row.append(column.type.parse(value))
    return row


def _read_events(repl: ReplicationConnection, timeout: float) -> _EventBuilder:
    decoder = Decoder()
    builder = _EventBuilder()
    deadline = time.monotonic() + timeout
    while not builder.done:
        if time.monotonic() > deadline:
            raise AssertionError(f"the slot did not deliver the statements within {timeout} s")
        frame = repl.read(1.0)
        if frame is None:
            continue
        copy = decode_copy_data(frame)
        if isinstance(copy, XLogData):
            builder.add(decoder.decode(copy.payload), copy.wal_start)
    return builder


def ensure_topic(admin: KafkaAdminClient, topic: str, config: dict[str, str] | None = None) -> None:
    """One partition: brokers that create topics on first use (Tansu) give them several."""
    with contextlib.suppress(TopicAlreadyExistsError):
        admin.create_topics([NewTopic(topic, 1, 1, topic_configs=config or {})])


def _produce(captured: Captured, bootstrap_servers: str) -> None:
    serializer = captured.serializer
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers)
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5)
    try:
        ensure_topic(admin, serializer.schema_topic, dict(avro.SCHEMA_TOPIC_CONFIG))
        for event in captured.events:
            topic = serializer.topic_for(event)
            if topic not in captured.topics:
                ensure_topic(admin, topic)
                captured.topics[topic] = 0
            key, value = serializer.encode(event)
            for schema_key, schema_value in serializer.take_schema_records():
                # the schema must be in Kafka before the first record that uses it
                producer.send(serializer.schema_topic, key=schema_key, value=schema_value).get(timeout=30)
            producer.send(topic, key=key, value=value)
            captured.topics[topic] += 1
            if event.op == "d" and event.table is not None:
                key_values = event.key_values()
                if key_values is not None:
                    tombstone_key = serializer.encode_key(event.table, key_values)
                    producer.send(topic, key=tombstone_key, value=None)
                    captured.topics[topic] += 1
        producer.flush(timeout=30)
    finally:
        producer.close()
        admin.close()
