"""The streaming pipeline: slot -> decoder -> events -> serializer -> producer -> checkpoint.

`Connector.run` owns the lifecycle: it opens a *session* (catalog checks,
publication, slot, producer, START_REPLICATION), streams until asked to stop,
and on a lost Postgres or Kafka connection closes everything, backs off
exponentially and starts a new session from the last persisted position.
Nothing is confirmed that Kafka has not acknowledged (see `cdc.checkpoint`),
so a restarted session re-sends at most the transactions in flight:
delivery is at-least-once, and a graceful stop finishes the transaction it is
in so that a stop/start cycle repeats nothing.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from cdc import replication, snapshot
from cdc.checkpoint import InFlight, Offsets, OffsetStore, Tracker
from cdc.config import Settings
from cdc.errors import DecodeError, SinkError, SourceUnavailable
from cdc.events import (
    ChangeEvent,
    JsonSerializer,
    Serializer,
    SourceInfo,
    Table,
    Transaction,
    event_topic,
    heartbeat_topic,
    pg_ts_to_ms,
    schemas_topic,
    table_from_relation,
    table_topic,
    transaction_topic,
)
from cdc.kafka import Producer, TopicSettings, make_producer
from cdc.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Decoder,
    Delete,
    Insert,
    Keepalive,
    LogicalMessage,
    Message,
    Origin,
    Relation,
    ReplicaIdentity,
    Truncate,
    Type,
    Update,
    decode_copy_data,
    format_lsn,
)
from cdc.pgtypes import RowParser, TypeCatalog, row_parser

log = logging.getLogger(__name__)

_XLOG_HEADER = struct.Struct(">QQ")


@dataclass(slots=True)
class Stats:
    """What `cdc status` shows; updated by the pipeline, read by the status writer."""

    state: str = "starting"
    slot: str = ""
    received_lsn: int = 0
    confirmed_lsn: int = 0
    wal_end: int = 0
    events_total: int = 0
    events_per_table: Counter[str] = field(default_factory=Counter)
    sessions: int = 0
    last_error: str = ""
    started_at: float = field(default_factory=time.time)
    first_event_at: float = 0.0  # wall clock of the first change read from the slot
    last_ack_at: float = 0.0  # wall clock of the latest acknowledgement from Kafka
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=4096))
    snapshot: dict[str, Any] = field(default_factory=dict)  # progress of initial / incremental snapshots

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "slot": self.slot,
            "received_lsn": format_lsn(self.received_lsn),
            "confirmed_lsn": format_lsn(self.confirmed_lsn),
            "lag_bytes": max(0, self.wal_end - self.confirmed_lsn),
            "events_total": self.events_total,
            "events_per_table": dict(self.events_per_table),
            "sessions": self.sessions,
            "last_error": self.last_error,
            "started_at": self.started_at,
            "first_event_at": self.first_event_at,
            "last_ack_at": self.last_ack_at,
            "latency_ms": _percentiles(self.latencies),
            "snapshot": self.snapshot,
        }


def _percentiles(samples: deque[float]) -> dict[str, float | int]:
    """p50/p99 commit-to-acknowledgement over the recent transactions."""
    ordered = sorted(samples)
    if not ordered:
        return {"samples": 0}
    return {
        "p50": round(ordered[len(ordered) // 2], 1),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
        "samples": len(ordered),
    }


@dataclass(slots=True)
class _TableState:
    """A table version plus what the hot path needs from it, built once."""

    table: Table
    topic: str
    parse: RowParser


def make_serializer(settings: Settings, source: SourceInfo) -> Serializer:
    """The serializer of ``--format``; Avro starts from what the schema topic already holds.

    Made anew for every session: after a broker restart (or a new cluster) the
    schema topic may have lost schemas this process published, and a fresh
    registry publishes them again before the first record that needs them.
    """
    if settings.format == "json":
        return JsonSerializer(settings.topic_prefix, source)
    from cdc.avro import AvroSerializer  # noqa: PLC0415 - fastavro only when used
    from cdc.consume import read_schema_records  # noqa: PLC0415

    serializer = AvroSerializer(settings.topic_prefix, source)
    serializer.load_schema_records(read_schema_records(settings.bootstrap_servers, settings.topic_prefix))
    return serializer


class Connector:
    """Runs sessions until `stop` is set; a context for one connector process."""

    def __init__(
        self,
        settings: Settings,
        stop: threading.Event | None = None,
        on_status: Callable[[Stats], None] | None = None,
    ) -> None:
        self.settings = settings
        self.stop = stop or threading.Event()
        self.stop_now = threading.Event()  # a second request: do not wait for the open transaction
        self.stats = Stats(slot=settings.slot)
        self.on_status = on_status
        self.store = OffsetStore(settings.instance_dir)
        self.serializer: Serializer | None = None
        self.streamed = False  # set once a session reached START_REPLICATION

    # -- lifecycle -----------------------------------------------------------------

    def run(self) -> None:
        """Stream until stopped; retry lost connections with exponential backoff."""
        self.store.load()
        delay = 0.5
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self._session()
                break
            except (SourceUnavailable, SinkError) as exc:
                if isinstance(exc, SinkError) and not exc.retriable:
                    raise
                if not self.streamed:
                    raise  # never streamed: a bad address or a server that is down is reported, not retried
                if time.monotonic() - started > 60:
                    delay = 0.5  # the last session ran a while: start the backoff over
                self.stats.state = "reconnecting"
                self.stats.last_error = str(exc)
                self._report()
                log.warning("%s; reconnecting in %.1f s", exc, delay)
                if self.stop.wait(delay):
                    break
                delay = min(delay * 2, self.settings.reconnect_max_seconds)
        self.stats.state = "stopped"
        self._report()

    def _report(self) -> None:
        if self.on_status is not None:
            self.on_status(self.stats)

    def _session(self) -> None:
        s = self.settings
        self.stats.sessions += 1
        with replication.connect(s.dsn, f"cdc-{s.name}") as conn:
            replication.check_wal_level(conn)
            replication.check_role(conn)
            tables = self._tables(conn)
            slot = replication.find_slot(conn, s.slot)
            if slot is not None:
                replication.validate_slot(conn, slot)
            else:
                replication.check_slot_capacity(conn)
            replication.ensure_publication(conn, s.publication, tables)
            row = conn.execute("SELECT current_database()").fetchone()
            database = str(row[0]) if row else ""
            catalog = TypeCatalog.from_connection(conn)
            source = SourceInfo(name=s.name, db=database)
            self.serializer = make_serializer(s, source)
            producer = make_producer(
                s.producer,
                s.bootstrap_servers,
                f"cdc-{s.name}",
                s.max_buffer_mb,
                TopicSettings(s.topic_partitions, s.topic_replication_factor, s.topic_configs),
                s.producer_configs,
            )
            try:
                with replication.ReplicationConnection(s.dsn, f"cdc-{s.name}") as repl:
                    system = repl.identify_system()
                    slot_lsn = slot.confirmed_flush_lsn or 0 if slot else 0
                    exported = None
                    if slot is None:
                        # the exported snapshot is valid until the next command on `repl`
                        slot_lsn, exported = repl.create_slot(s.slot, export_snapshot=s.snapshot != "never")
                    saved = self.store.saved
                    start = slot_lsn
                    if (
                        saved.slot == s.slot
                        and saved.system_id == system.system_id
                        and saved.database == database
                        and saved.lsn > start
                    ):
                        log.info("resuming at %s from the state directory", format_lsn(saved.lsn))
                        start = saved.lsn
                    offsets = Offsets(start, s.slot, system.system_id, database)
                    self.store.save(offsets)
                    # snapshot hook: the initial snapshot (or its rest) runs before START_REPLICATION
                    begin = snapshot.Start(system.system_id, database, slot_lsn, slot is None, exported)
                    if not snapshot.before_streaming(self, conn, producer, source, catalog, begin):
                        return  # stopped during the snapshot, or --snapshot initial-only
                    session = _Session(self, repl, conn, producer, catalog, source, offsets)
                    try:
                        session.stream()
                    finally:
                        session.incremental.close()
            finally:
                producer.close()

    def _tables(self, conn: psycopg.Connection[Any]) -> list[str]:
        """The listed tables to stream: at start all must exist; a reconnect leaves out dropped ones.

        A table dropped while streaming has left the publication with its last
        change: the others keep streaming (a reconnect must not end the
        connector), with a warning; the next `cdc start` refuses until
        ``--tables`` no longer lists it.
        """
        tables = self.settings.tables
        if not self.streamed:
            replication.check_tables(conn, tables)
            return tables
        missing = replication.missing_tables(conn, tables)
        for table in missing:
            log.warning(
                "table %s no longer exists (dropped while streaming): streaming the other tables; "
                "the next start refuses until --tables leaves it out",
                table,
            )
        return [t for t in tables if t not in missing]


class _Session:
    """One replication connection's worth of streaming."""

    def __init__(
        self,
        connector: Connector,
        repl: replication.ReplicationConnection,
        conn: psycopg.Connection[Any],
        producer: Producer,
        catalog: TypeCatalog,
        source: SourceInfo,
        offsets: Offsets,
    ) -> None:
        self.connector = connector
        self.settings = connector.settings
        self.stats = connector.stats
        self.repl = repl
        self.conn = conn  # the catalog connection: types, primary keys
        self.producer = producer
        self.catalog = catalog
        self.source = source
        self.offsets = offsets
        assert connector.serializer is not None
        self.serializer = connector.serializer
        self.decoder = Decoder()
        self.tracker = Tracker(confirmed=offsets.lsn)
        self.tracker.latencies = self.stats.latencies
        self.tables: dict[int, _TableState] = {}
        self.versions: dict[str, tuple[Table, int]] = {}
        self.txn: Transaction | None = None
        self.entry: InFlight | None = None
        self.wal_end = offsets.lsn
        self.received = offsets.lsn
        self.prefix = self.settings.topic_prefix
        self.placeholder = self.settings.unavailable_placeholder
        self.tombstones = self.settings.tombstones
        self.transaction_metadata = self.settings.transaction_metadata
        self._heartbeat_token = InFlight(0)  # heartbeats belong to no transaction
        self._next_heartbeat = 0.0
        # incremental snapshots: `watched` is the relation whose changes the buffered chunk must see
        self.watched = -1
        self.incremental = snapshot.IncrementalSnapshots(
            connector, self._produce, producer.ensure_topic, self.versions, self._watch, catalog
        )

    # -- the loop --------------------------------------------------------------------

    def stream(self) -> None:
        s = self.settings
        repl = self.repl
        # messages always: the watermarks of incremental snapshots are logical messages
        repl.start(s.slot, s.publication, self.offsets.lsn, messages=True)
        self.connector.streamed = True
        self.stats.state = "running"
        self.stats.confirmed_lsn = self.offsets.lsn
        self.stats.last_error = ""
        self._confirm(force=True)
        interval = s.status_interval
        next_status = time.monotonic() + interval
        handle = self._handle
        decode = self.decoder.decode
        stop = self.connector.stop
        while True:
            if stop.is_set() and (self.txn is None or self.connector.stop_now.is_set()):
                break
            force = False
            frame = repl.read(max(0.0, min(next_status - time.monotonic(), interval)))
            # drain what is already buffered without touching the clock for each frame
            for _ in range(4096):
                if frame is None:
                    break
                if frame[0] == 0x77:  # XLogData
                    wal_start, wal_end = _XLOG_HEADER.unpack_from(frame, 1)
                    handle(decode(frame[25:]), wal_start)
                    self.received = wal_start
                    self.wal_end = max(self.wal_end, wal_end)
                else:
                    keepalive = decode_copy_data(frame)
                    assert isinstance(keepalive, Keepalive)  # anything else raised DecodeError
                    self.wal_end = max(self.wal_end, keepalive.wal_end)
                    force = force or keepalive.reply_requested
                    break
                frame = repl.read(0)
            if self.producer.poll():
                self.stats.last_ack_at = time.time()
            now = time.monotonic()
            if force or now >= next_status:
                self._confirm(force=force)
                next_status = now + interval
                if s.heartbeat_interval and now >= self._next_heartbeat:
                    self._heartbeat()
                    self._next_heartbeat = now + s.heartbeat_interval
                self.incremental.tick()
            if self.incremental.ready:
                self.incremental.step()
        self._finish()

    def _finish(self) -> None:
        """Graceful end: flush the producer, confirm what Kafka holds, report."""
        self.stats.state = "stopping"
        if not self.producer.flush(30):
            log.warning("kafka did not acknowledge everything within 30 s; confirming only what it did")
        if self.producer.poll():
            self.stats.last_ack_at = time.time()
        self._confirm(force=True)
        log.info("stopped at %s", format_lsn(self.offsets.lsn))

    def _confirm(self, force: bool = False) -> None:
        """Persist, then confirm to the server, the highest safe LSN."""
        tracker = self.tracker
        safe = tracker.safe_lsn()
        idle = tracker.idle() and self.txn is None
        if idle:
            safe = tracker.advance_idle(self.wal_end)
        if safe > self.offsets.lsn:
            self.offsets.lsn = safe
            self.connector.store.save(self.offsets)
        self.stats.received_lsn = max(self.received, self.offsets.lsn)
        self.stats.confirmed_lsn = self.offsets.lsn
        self.stats.wal_end = self.wal_end
        # idle, ask the server for a keepalive now: its wal_end is confirmed at the next tick,
        # so WAL of unpublished tables is released within two status intervals, not ~30 s
        self.repl.send_status(
            max(self.received, self.offsets.lsn), self.offsets.lsn, reply=idle and not force
        )
        self.connector._report()

    # -- messages --------------------------------------------------------------------

    def _handle(self, message: Message, lsn: int) -> None:
        kind = type(message)
        if kind is Insert:
            assert isinstance(message, Insert)
            state = self._table(message.relation)
            self._emit("c", state, None, state.parse(message.new), lsn)
        elif kind is Update:
            assert isinstance(message, Update)
            self._update(message, lsn)
        elif kind is Delete:
            assert isinstance(message, Delete)
            state = self._table(message.relation)
            before = state.parse(message.old)
            if UNCHANGED in before:
                before = self._unchanged(state, before, None)
            self._emit("d", state, before, None, lsn)
            if self.tombstones and state.table.has_key:
                key = [before[i] for i in state.table.key_indexes]
                self._send(state.topic, self.serializer.encode_key(state.table, key), None)
        elif kind is Begin:
            assert isinstance(message, Begin)
            self.txn = Transaction(message.xid, message.final_lsn, pg_ts_to_ms(message.commit_ts))
            self.entry = self.tracker.begin(message.final_lsn, self.txn.commit_ts_ms)
            if not self.stats.first_event_at:
                self.stats.first_event_at = time.time()
        elif kind is Commit:
            assert isinstance(message, Commit)
            if self.entry is None:
                raise DecodeError("Commit without Begin", kind="COMMIT")
            if self.transaction_metadata and self.txn is not None and self.txn.events:
                self._transaction_marker("END", self.txn)
            self.tracker.commit(self.entry, message.end_lsn)
            self.txn = self.entry = None
        elif kind is Relation:
            assert isinstance(message, Relation)
            self._relation(message)
        elif kind is Truncate:
            assert isinstance(message, Truncate)
            for relation in message.relations:
                self._emit("t", self._table(relation), None, None, lsn)
        elif kind is LogicalMessage:
            assert isinstance(message, LogicalMessage)
            self._message(message, lsn)
        elif kind is Type:
            assert isinstance(message, Type)
            self.catalog.forget(message.type_oid)  # it may have changed since we looked it up
        elif kind is Origin:
            log.debug("%s", message)
        else:
            # streaming and two-phase are never requested, so their messages mean a protocol bug
            raise DecodeError(
                f"unexpected {kind.__name__} message: cdc does not request it", kind=kind.__name__
            )

    def _relation(self, relation: Relation) -> None:
        primary_key = None
        if relation.replica_identity in (ReplicaIdentity.FULL, ReplicaIdentity.NOTHING):
            primary_key = replication.primary_key(self.conn, relation.relation_id)
        self.catalog.prefetch(c.type_oid for c in relation.columns)
        table = table_from_relation(relation, self.catalog, primary_key=primary_key)
        name = table.qualified_name
        previous = self.versions.get(name)
        if previous is not None and previous[0].same_shape(table):
            table = previous[0]
        else:
            version = previous[1] + 1 if previous else 1
            table.version = version
            self.versions[name] = (table, version)
            if previous is not None:
                log.info("table %s changed: schema version %s", name, version)
        self.tables[relation.relation_id] = _TableState(
            table, table_topic(self.prefix, table), row_parser([c.type for c in table.columns])
        )
        self.producer.ensure_topic(table_topic(self.prefix, table))

    def _table(self, relation: Relation) -> _TableState:
        state = self.tables.get(relation.relation_id)
        if state is None:
            # the decoder already refuses changes for unknown relations; this is the same guard
            self._relation(relation)
            state = self.tables[relation.relation_id]
        return state

    def _unchanged(self, state: _TableState, row: list[Any], old: list[Any] | None) -> list[Any]:
        """Fill unchanged TOAST values from the old row when it has them, else the placeholder."""
        for i, value in enumerate(row):
            if value is UNCHANGED:
                if old is not None and old[i] is not None and old[i] is not UNCHANGED:
                    row[i] = old[i]
                else:
                    row[i] = state.table.columns[i].type.unavailable(self.placeholder)
        return row

    def _update(self, message: Update, lsn: int) -> None:
        state = self._table(message.relation)
        after = state.parse(message.new)
        before = None
        if message.old is not None:
            before = state.parse(message.old)
            if UNCHANGED in before:
                before = self._unchanged(state, before, None)
        full = message.old_kind == ord("O") or state.table.replica_identity == ReplicaIdentity.FULL
        if UNCHANGED in after:
            after = self._unchanged(state, after, before if full else None)
        event = self._emit("u", state, before, after, lsn)
        if self.tombstones and before is not None:
            old_key = event.old_key_values()
            if old_key is not None:
                self._send(state.topic, self.serializer.encode_key(state.table, old_key), None)

    def _message(self, message: LogicalMessage, lsn: int) -> None:
        if message.prefix == snapshot.WATERMARK_PREFIX:
            self.incremental.watermark(message, self.txn, self.entry)
            return
        if not self.settings.messages:
            return
        txn = self.txn
        if message.transactional and txn is not None and self.entry is not None:
            if self.transaction_metadata and not txn.events:
                self._transaction_marker("BEGIN", txn)
            total, per_table = txn.next_order(0)
            event = ChangeEvent(
                "m", None, None, None, message.lsn, txn.commit_lsn, txn.xid, txn.commit_ts_ms,
                total, per_table, txn.id, None, message.prefix, message.content,
            )  # fmt: skip
            self._produce(event, self.entry)
            return
        # outside a transaction: its own unit of confirmation, just past its LSN
        entry = self.tracker.begin(message.lsn)
        event = ChangeEvent(
            "m", None, None, None, message.lsn, message.lsn, 0, int(time.time() * 1000),
            message_prefix=message.prefix, message_content=message.content,
        )  # fmt: skip
        self._produce(event, entry)
        self.tracker.commit(entry, message.lsn + 1)

    # -- producing ---------------------------------------------------------------------

    def _emit(
        self, op: str, state: _TableState, before: list[Any] | None, after: list[Any] | None, lsn: int
    ) -> ChangeEvent:
        txn = self.txn
        entry = self.entry
        if txn is None or entry is None:
            raise DecodeError(f"{op} change outside a transaction", kind="pgoutput")
        table = state.table
        if self.transaction_metadata and not txn.events:
            self._transaction_marker("BEGIN", txn)
        total, per_table = txn.next_order(table.relation_id)
        event = ChangeEvent(
            op, table, before, after, lsn, txn.commit_lsn, txn.xid, txn.commit_ts_ms,
            total, per_table, txn.id,
        )  # fmt: skip
        self._produce(event, entry, state.topic)
        self.stats.events_per_table[table.qualified_name] += 1
        if table.relation_id == self.watched:
            self.incremental.changed(txn.xid, op, table, before, after)
        return event

    def _watch(self, relation_id: int) -> None:
        self.watched = relation_id

    def _produce(self, event: ChangeEvent, entry: InFlight, topic: str | None = None) -> None:
        key, value = self.serializer.encode(event)
        if topic is None:
            topic = event_topic(self.prefix, event)
            self.producer.ensure_topic(topic)
        records = self.serializer.take_schema_records()
        if records:
            self._publish_schemas(records)
        self.producer.send(topic, key, value, entry)
        self.stats.events_total += 1

    def _publish_schemas(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Schemas the serializer registered (``take_schema_records``) go to the schema topic,
        acknowledged, before their records."""
        if records:
            schema_topic = schemas_topic(self.prefix)
            self.producer.ensure_topic(schema_topic, compact=True)
            for schema_key, schema_value in records:
                self.producer.send_and_wait(schema_topic, schema_key, schema_value, timeout=60)

    def _transaction_marker(self, status: str, txn: Transaction) -> None:
        """BEGIN before a transaction's first event, END after its last (``--transaction-metadata``).

        Both belong to the transaction's checkpoint entry: its end LSN is confirmed
        only once Kafka holds them too. Transactions without events get neither.
        """
        collections = None
        if status == "END":
            names = {rid: state.table.qualified_name for rid, state in self.tables.items()}
            collections = [
                {"data_collection": names.get(rid, "messages") if rid else "messages", "event_count": n}
                for rid, n in txn.per_table.items()
            ]
        topic = transaction_topic(self.prefix)
        self.producer.ensure_topic(topic)
        key, value = self.serializer.encode_fixed(
            "transaction",
            topic,
            {"id": txn.id},
            {
                "status": status,
                "id": txn.id,
                "event_count": txn.events if status == "END" else None,
                "data_collections": collections,
                "ts_ms": txn.commit_ts_ms,
            },
        )
        self._publish_schemas(self.serializer.take_schema_records())
        self._send(topic, key, value)

    def _heartbeat(self) -> None:
        """A record on ``<prefix>.heartbeat``: consumers see the connector alive when nothing changes."""
        topic = heartbeat_topic(self.prefix)
        self.producer.ensure_topic(topic)
        name = self.settings.name
        key, value = self.serializer.encode_fixed(
            "heartbeat",
            topic,
            {"name": name},
            {"name": name, "lsn": self.offsets.lsn, "ts_ms": int(time.time() * 1000)},
        )
        self._publish_schemas(self.serializer.take_schema_records())
        # not part of any transaction: its acknowledgement confirms nothing
        self.producer.send(topic, key, value, self._heartbeat_token)

    def _send(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        assert self.entry is not None
        self.producer.send(topic, key, value, self.entry)
