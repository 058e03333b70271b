"""The streaming pipeline: slot -> decoder -> events -> writer (serializer + producer) -> checkpoint.

`Connector.run` owns the lifecycle: it opens a *session* (catalog checks,
publication, slot, record writer, START_REPLICATION), streams until asked to
stop, and on a lost Postgres or Kafka connection closes everything, backs
off exponentially and starts a new session from the last persisted
position. Nothing is confirmed that Kafka has not acknowledged (see
`cdc.checkpoint`), so a restarted session re-sends at most the transactions
in flight: delivery is at-least-once, and a graceful stop finishes the
transaction it is in so that a stop/start cycle repeats nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from cdc import exactly_once, pg, replication, slots, snapshot
from cdc.change import ChangeEvent, Transaction, changed_key
from cdc.checkpoint import InFlight, Offsets, OffsetStore, Tracker
from cdc.config import Settings
from cdc.errors import DecodeError, DeliveryFailed, SinkError, SlotLost, SourceUnavailable
from cdc.events import (
    Serializer,
    SourceInfo,
    Table,
    TableVersions,
    pg_ts_to_ms,
    pg_ts_to_us,
    table_from_relation,
    table_topic,
)
from cdc.lsn import format_lsn
from cdc.pgoutput import (
    UNCHANGED,
    XLOGDATA,
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
    TupleData,
    Type,
    Update,
    decode_copy_data,
)
from cdc.pgtypes import RowParser, TypeCatalog, row_parser
from cdc.shaping import catalog as shaping
from cdc.shaping.select import Selection
from cdc.snapshot.gap import close_gap
from cdc.status import OpCount, Status
from cdc.writer import RecordWriter, open_writer

log = logging.getLogger(__name__)

#: the longest the stream loop waits for WAL while records are in flight: their acknowledgements
#: count (commit-to-ack, last ack) within this, the next tick only confirms them
ACK_WAIT = 0.002


@dataclass(slots=True)
class _TableState:
    """A table version plus what the hot path needs from it, built once."""

    table: Table
    topic: str
    parse: RowParser
    counts: dict[str, OpCount]  # events and bytes by op, in the Status


class Connector:
    """Runs sessions until `stop` is set; a context for one connector process."""

    def __init__(
        self,
        settings: Settings,
        stop: threading.Event | None = None,
        publish: Callable[[Status], None] | None = None,
    ) -> None:
        self.settings = settings
        self.stop = stop or threading.Event()
        self.stop_now = threading.Event()  # a second request: do not wait for the open transaction
        self.status = Status(slot=settings.slot, publish=publish)
        self.store = OffsetStore(settings.instance_dir)
        self.serializer: Serializer | None = None  # the current (or last) session's: for inspection
        self.slot_lost = ""  # the server said the slot is lost; --on-slot-lost recreate replaces it

    # -- lifecycle -----------------------------------------------------------------

    def run(self) -> None:
        """Stream until stopped; retry lost connections with exponential backoff.

        However it ends, the status says so last: ``stopped``, or ``failed`` with the error
        that ended it (and an unfinished snapshot shows as ``interrupted``).
        """
        try:
            self._run()
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                self._ended("stopped")
            else:
                self._ended("failed", " ".join(str(exc).split()) or type(exc).__name__)
            raise
        self._ended("stopped")

    def _ended(self, state: str, error: str = "") -> None:
        status = self.status
        status.state = state
        status.ended_at = time.time()
        if error:
            status.last_error = error
        if status.snapshot.get("phase") == "running":
            status.snapshot["phase"] = "interrupted"  # the next start resumes it
        status.report()

    def _run(self) -> None:
        self.store.load()
        status = self.status
        delay = 0.5
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self._session()
                break
            except SlotLost as exc:
                # the stream clears last_error: still ours, the replacement never streamed
                if self.settings.on_slot_lost != "recreate" or status.last_error == f"slot lost: {exc}":
                    raise
                self.slot_lost = str(exc)
                status.last_error = f"slot lost: {exc}"
                status.reconnects["slot_lost"] += 1
                continue
            except (SourceUnavailable, SinkError) as exc:
                status.delivery_errors += isinstance(exc, DeliveryFailed)
                if isinstance(exc, SinkError) and not exc.retriable:
                    raise
                if not status.progressed:
                    raise  # never streamed: a bad address or a server that is down is reported, not retried
                if time.monotonic() - started > 60:
                    delay = 0.5  # the last session ran a while: start the backoff over
                status.state = "reconnecting"
                status.last_error = str(exc)
                status.reconnects["postgres" if isinstance(exc, SourceUnavailable) else "kafka"] += 1
                status.report()
                log.warning("%s; reconnecting in %.1f s", exc, delay)
                if self.stop.wait(delay):
                    break
                delay = min(delay * 2, self.settings.reconnect_max_seconds)

    def _session(self) -> None:
        s = self.settings
        self.status.sessions += 1
        with pg.connect(s.dsn, f"cdc-{s.name}") as conn:
            replication.check_wal_level(conn)
            replication.check_role(conn)
            tables = self._tables(conn)
            capture = shaping.plan(conn, s, tables)  # patterns, column lists, row filters
            slots.check_failover(conn, s)
            slots.check_heartbeat_query(conn, s)
            # held a moment longer by the walsender of a connector that just stopped
            slot = replication.await_release(conn, replication.find_slot(conn, s.slot))
            if slot is not None:
                replication.validate_slot(conn, slot)
                slot = slots.unless_lost(conn, s, slot, self.status, self.slot_lost)
                self.slot_lost = ""
            else:
                replication.check_slot_capacity(conn)
            replication.check_publication(conn, s.publication, tables, capture.published)
            gap = slots.pending_gap(s) is not None  # a lost slot is being replaced
            database = replication.current_database(conn)
            with pg.errors("reading the type catalog"):
                catalog = TypeCatalog.from_connection(conn)
            source = SourceInfo(name=s.name, db=database)
            # every precondition (the broker and a walsender included) before anything is created:
            # a refused start leaves no publication and no slot behind
            eos = s.delivery == "exactly-once"
            with (
                open_writer(
                    s, source, f"cdc-{s.name}", exactly_once.transactional_id(s) if eos else ""
                ) as writer,
                replication.ReplicationConnection(s.dsn, f"cdc-{s.name}") as repl,
            ):
                self.serializer = writer.serializer
                writer.records = self.status.records_per_topic
                writer.shaping_counts = self.status.shaping
                self.status.tables = capture.tables
                system = repl.identify_system()
                replication.ensure_publication(conn, s.publication, tables, capture.published)
                slot_lsn = slot.confirmed_flush_lsn or 0 if slot else 0
                exported = None
                if slot is None:
                    # the exported snapshot is valid until the next command on `repl`
                    try:
                        slot_lsn, exported = repl.create_slot(
                            s.slot,
                            export_snapshot=s.snapshot != "never" and not gap,
                            failover=s.failover_slot,
                            waiting=replication.slot_creation_waits(conn, s.slot),
                            stop=self.stop,
                        )
                    except SourceUnavailable:
                        if self.stop.is_set():
                            log.info("stopped while waiting for the slot's consistent point")
                            return
                        raise
                elif slots.needs_failover(conn, s, s.slot):
                    repl.enable_failover(s.slot)
                start = slots.resume_point(s, self.store, slot_lsn, system, database)
                committed = exactly_once.Committed()
                if eos:
                    # what Kafka committed is never written again: stream from past it
                    committed = exactly_once.read_committed(s, system.system_id, database)
                    if committed.lsn > start:
                        log.info("resuming at %s: kafka committed up to there", format_lsn(committed.lsn))
                        start = committed.lsn
                offsets = Offsets(start, s.slot, system.system_id, database, system.timeline)
                self.store.save(offsets)
                if gap:
                    close_gap(s, self.status, conn, writer, catalog, system.system_id, database, slot_lsn)
                # the initial snapshot (or its rest) runs before START_REPLICATION
                new_slot = slot is None and not gap
                begin = snapshot.Start(
                    system.system_id, database, slot_lsn, new_slot, exported, source, committed.chunks
                )
                if not snapshot.before_streaming(s, self.status, self.stop, conn, writer, catalog, begin):
                    return  # stopped during the snapshot, or --snapshot initial-only
                session = _Session(s, self.status, self.stop, self.stop_now, self.store, repl, conn)
                batch = None
                if eos:
                    batch = exactly_once.TransactionBatch(
                        writer, s, system.system_id, database, committed.lsn
                    )
                session.stream(writer, catalog, offsets, batch, capture)

    def _tables(self, conn: psycopg.Connection[Any]) -> list[str]:
        """The listed tables to stream: at start all must exist; a reconnect leaves out dropped ones.

        A table dropped while streaming has left the publication with its last
        change: the others keep streaming (a reconnect must not end the
        connector), with a warning; the next `cdc start` refuses until
        ``--tables`` no longer lists it.
        """
        tables = self.settings.tables
        if shaping.shaped(self.settings):  # patterns among them: the exact names must exist
            tables = Selection.from_settings(self.settings).names
        if not self.status.progressed:
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
        settings: Settings,
        status: Status,
        stop: threading.Event,
        stop_now: threading.Event,
        store: OffsetStore,
        repl: replication.ReplicationConnection,
        conn: psycopg.Connection[Any],
    ) -> None:
        self.settings = settings
        self.status = status
        self.stop = stop
        self.stop_now = stop_now
        self.store = store
        self.repl = repl
        self.conn = conn  # the catalog connection: types, primary keys
        self.decoder = Decoder()
        self.tables: dict[int, _TableState] = {}
        self.versions = TableVersions()
        self.txn: Transaction | None = None
        self.entry: InFlight | None = None
        self.prefix = settings.topic_prefix
        self.placeholder = settings.unavailable_placeholder
        self.tombstones = settings.tombstones
        self.transaction_metadata = settings.transaction_metadata
        self.skipped_ops = settings.skipped_ops
        # Debezium's forms: a key change is a delete (and its tombstone) and a create; a delete of a
        # keyless row gets a tombstone too (null key)
        self.split_key_changes = self.keyless_tombstones = settings.compat == "debezium"
        self.last_end_lsn: int | None = None  # of the last transaction received (Debezium's sequence)
        self._heartbeat_token = InFlight(0)  # heartbeats belong to no transaction
        self.monitor = slots.SlotMonitor(conn, settings, status)  # slot health, --heartbeat-query
        self._next_heartbeat = 0.0
        #: one handler per message type (the decoder already refused anything else)
        self._handlers: dict[type[Message], Callable[[Any, int], None]] = {
            Insert: self._insert,
            Update: self._update,
            Delete: self._delete,
            Begin: self._begin,
            Commit: self._commit,
            Relation: self._relation,
            Truncate: self._truncate,
            LogicalMessage: self._message,
            Type: self._type,
            Origin: self._origin,
        }
        self._regular = dict(self._handlers)
        self.batch: exactly_once.TransactionBatch | None = None

    # -- the loop --------------------------------------------------------------------

    def stream(
        self,
        writer: RecordWriter,
        catalog: TypeCatalog,
        offsets: Offsets,
        batch: exactly_once.TransactionBatch | None = None,
        capture: shaping.Capture | None = None,
    ) -> None:
        """Stream until stopped. With ``batch`` (``--delivery exactly-once``) every record goes out in a
        Kafka transaction that commits the position it reaches, and only that is confirmed. With
        ``capture`` (patterns, column rules) tables that start matching join while streaming."""
        s = self.settings
        self.writer = writer
        self.batch = batch
        self.catalog = catalog
        self.offsets = offsets
        self.tracker = Tracker(confirmed=offsets.lsn)
        self.tracker.latencies = self.status.latencies
        self.wal_end = self.received = offsets.lsn
        self.incremental = snapshot.IncrementalSnapshots(s, self.status, writer, self.versions, catalog)
        # tables created later that match --tables patterns join the capture
        # and a listed table dropped and created again (or dropped from the publication) is put back
        self.watcher = (
            shaping.TableWatcher(
                self.conn, s, self.status, capture, self.incremental.joined, self.incremental.recreated
            )
            if capture is not None
            else None
        )
        try:
            self._stream()
        finally:
            self.incremental.close()

    def _stream(self) -> None:
        s = self.settings
        repl = self.repl
        status = self.status
        # messages always: the watermarks of incremental snapshots are logical messages
        repl.start(s.slot, s.publication, self.offsets.lsn, messages=True)
        status.progressed = True
        status.state = "running"
        status.confirmed_lsn = self.offsets.lsn
        status.last_error = ""
        self._confirm(force=True)
        interval = s.status_interval
        next_status = time.monotonic() + interval
        handlers = self._handlers
        decode_xlogdata = self.decoder.decode_xlogdata
        poll = self.writer.poll
        stop, stop_now = self.stop, self.stop_now
        incremental = self.incremental
        batch = self.batch
        backlog = self.writer.backlog
        while True:
            if stop.is_set() and (self.txn is None or stop_now.is_set()):
                break
            force = False
            wait = min(next_status - time.monotonic(), interval)
            if batch is not None and batch.active and self.txn is None:
                wait = min(wait, batch.deadline - time.monotonic())
            if wait > ACK_WAIT and backlog()[0]:
                # records in flight: take their acknowledgements as they come, not at the next tick
                # (the commit-to-ack figures and the last-ack time were late by up to an interval)
                wait = ACK_WAIT
            frame = repl.read(max(0.0, wait))
            # drain what is already buffered without touching the clock for each frame
            for _ in range(4096):
                if frame is None:
                    break
                if frame[0] == XLOGDATA:
                    wal_start, wal_end, message = decode_xlogdata(frame)
                    handler = handlers.get(type(message))
                    if handler is None:
                        # streaming and two-phase are never requested: their messages mean a protocol bug
                        raise DecodeError(
                            f"unexpected {type(message).__name__} message: cdc does not request it",
                            kind=type(message).__name__,
                        )
                    handler(message, wal_start)
                    self.received = wal_start
                    self.wal_end = max(self.wal_end, wal_end)
                else:
                    keepalive = decode_copy_data(frame)
                    assert isinstance(keepalive, Keepalive)  # anything else raised DecodeError
                    self.wal_end = max(self.wal_end, keepalive.wal_end)
                    force = force or keepalive.reply_requested
                    break
                frame = repl.read(0)
            if poll():
                status.last_ack_at = time.time()
            now = time.monotonic()
            if batch is not None and batch.active and self.txn is None and now >= batch.deadline:
                batch.commit()  # lingered long enough: what it holds becomes visible and confirmable
            if force or now >= next_status:
                self._confirm(force=force)
                next_status = now + interval
                if s.heartbeat_interval and now >= self._next_heartbeat:
                    self._heartbeat()
                    self._next_heartbeat = now + s.heartbeat_interval
                incremental.tick(self.offsets.lsn)
                self.monitor.tick()
                if self.watcher is not None:
                    self.watcher.tick()
            if incremental.ready:
                incremental.step()
        self._finish()

    def _finish(self) -> None:
        """Graceful end: flush the producer, confirm what Kafka holds, report."""
        self.status.state = "stopping"
        if self.batch is not None and self.txn is None:
            self.batch.commit()
        if not self.writer.flush(30):
            log.warning("kafka did not acknowledge everything within 30 s; confirming only what it did")
        if self.writer.poll():
            self.status.last_ack_at = time.time()
        self._confirm(force=True)
        log.info("stopped at %s", format_lsn(self.offsets.lsn))

    def _confirm(self, force: bool = False) -> None:
        """Persist, then confirm to the server, the highest safe LSN."""
        tracker = self.tracker
        safe = tracker.safe_lsn()
        idle = tracker.idle() and self.txn is None
        if self.batch is not None:
            # only what Kafka committed; idle (nothing open anywhere), the server's WAL end
            idle = idle and not self.batch.active
            safe = max(self.batch.committed, self.wal_end) if idle else self.batch.committed
        elif idle:
            safe = tracker.advance_idle(self.wal_end)
        if safe > self.offsets.lsn:
            self.offsets.lsn = safe
            self.store.save(self.offsets)
        status = self.status
        status.received_lsn = max(self.received, self.offsets.lsn)
        status.confirmed_lsn = self.offsets.lsn
        status.wal_end = self.wal_end
        status.behind_since = tracker.oldest_commit_ms() / 1000
        if idle:
            status.caught_up_at = time.time()
        status.producer_queue = status.queued(*self.writer.backlog())
        # idle, ask the server for a keepalive now: its wal_end is confirmed at the next tick,
        # so WAL of unpublished tables is released within two status intervals, not ~30 s
        self.repl.send_status(
            max(self.received, self.offsets.lsn), self.offsets.lsn, reply=idle and not force
        )
        status.report()

    # -- messages, one handler each ---------------------------------------------------

    def _insert(self, message: Insert, lsn: int) -> None:
        # the row stays text: the writer's format may encode it from there (RecordWriter.write_text)
        self._emit("c", self._table(message.relation), None, None, lsn, message.new)

    def _update(self, message: Update, lsn: int) -> None:
        state = self._table(message.relation)
        if message.old is None and UNCHANGED not in message.new:
            # no old row (so no key change) and nothing to fill in: the row stays text, as an insert's
            self._emit("u", state, None, None, lsn, message.new)
            return
        after = state.parse(message.new)
        before = None
        if message.old is not None:
            before = state.parse(message.old)
            if UNCHANGED in before:
                before = self._unchanged(state, before, None)
        full = message.old_kind == ord("O") or state.table.replica_identity == ReplicaIdentity.FULL
        if UNCHANGED in after:
            after = self._unchanged(state, after, before if full else None)
        old_key = None if before is None else changed_key(state.table, before, after)
        if old_key is not None and self.split_key_changes:
            self._delete_row(state, before, old_key, lsn)
            self._emit("c", state, None, after, lsn)
            return
        if self._emit("u", state, before, after, lsn) and self.tombstones and old_key is not None:
            self._tombstone(state, old_key)

    def _delete(self, message: Delete, lsn: int) -> None:
        state = self._table(message.relation)
        before = state.parse(message.old)
        if UNCHANGED in before:
            before = self._unchanged(state, before, None)
        key = [before[i] for i in state.table.key_indexes] if state.table.has_key else None
        self._delete_row(state, before, key, lsn)

    def _delete_row(self, state: _TableState, before: Any, key: list[Any] | None, lsn: int) -> None:
        """A delete event, then (unless skipped) a tombstone for its key."""
        if (
            self._emit("d", state, before, None, lsn)
            and self.tombstones
            and (key is not None or self.keyless_tombstones)
        ):
            self._tombstone(state, key or [])

    def _truncate(self, message: Truncate, lsn: int) -> None:
        for relation in message.relations:
            self._emit("t", self._table(relation), None, None, lsn)

    def _begin(self, message: Begin, lsn: int) -> None:
        batch = self.batch
        if batch is not None:
            if message.final_lsn < batch.committed:
                # Kafka committed it already (the server skips what is before the start: a guard)
                log.info("skipping transaction %s: already committed to kafka", message.xid)
                self._skipping(True)
                return
            batch.open()
        self.txn = Transaction(
            message.xid,
            message.final_lsn,
            pg_ts_to_ms(message.commit_ts),
            commit_ts_us=pg_ts_to_us(message.commit_ts),
            previous_end_lsn=self.last_end_lsn,
        )
        self.entry = self.tracker.begin(message.final_lsn, self.txn.commit_ts_ms)
        if not self.status.first_event_at:
            self.status.first_event_at = time.time()

    def _commit(self, message: Commit, lsn: int) -> None:
        if self.entry is None:
            raise DecodeError("Commit without Begin", kind="COMMIT")
        if self.transaction_metadata and self.txn is not None and self.txn.events:
            self._transaction_marker("END", self.txn)
        self.tracker.commit(self.entry, message.end_lsn)
        events = 0
        if self.txn is not None:
            events = self.txn.events
            self.incremental.recent.append(self.txn.xid)  # a read taken after now must see it
        self.txn = self.entry = None
        self.last_end_lsn = message.end_lsn
        self.status.transactions += 1
        if self.batch is not None and self.batch.ended(message.end_lsn, events):
            self.batch.commit()

    def _skipping(self, on: bool) -> None:
        """Between Begin and Commit of a transaction Kafka already holds: drop its messages."""
        handlers = self._handlers
        for kind in (Insert, Update, Delete, Truncate, LogicalMessage):
            handlers[kind] = self._skip if on else self._regular[kind]
        handlers[Commit] = self._skipped if on else self._commit

    @staticmethod
    def _skip(message: Message, lsn: int) -> None:
        pass

    def _skipped(self, message: Commit, lsn: int) -> None:
        self._skipping(False)
        self.last_end_lsn = message.end_lsn

    def _type(self, message: Type, lsn: int) -> None:
        self.catalog.forget(message.type_oid)  # it may have changed since we looked it up

    @staticmethod
    def _origin(message: Origin, lsn: int) -> None:
        log.debug("%s", message)

    def _relation(self, relation: Relation, lsn: int = 0) -> None:
        primary_key = None
        if relation.replica_identity in (ReplicaIdentity.FULL, ReplicaIdentity.NOTHING):
            primary_key = replication.primary_key(self.conn, relation.relation_id)
        with pg.errors("reading the type catalog"):
            self.catalog.prefetch(c.type_oid for c in relation.columns)
            table = table_from_relation(relation, self.catalog, primary_key=primary_key)
        previous = table.version
        table = self.versions.resolve(table)
        if table.version > 1 and table.version != previous:
            log.info("table %s changed: schema version %s", table.qualified_name, table.version)
        topic = table_topic(self.prefix, table)
        self.tables[relation.relation_id] = _TableState(
            table,
            topic,
            row_parser([c.type for c in table.columns]),
            self.status.op_counts(table.qualified_name),
        )
        self.writer.ensure_topic(topic)

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
                total, per_table, txn.id, "false", message.prefix, message.content,
                txn.commit_ts_us, txn.previous_end_lsn,
            )  # fmt: skip
            self.writer.write(event, self.entry)
            self.status.events_total += 1
            return
        # outside a transaction: its own unit of confirmation, just past its LSN
        batch = self.batch
        if batch is not None:
            if message.lsn < batch.committed:
                return  # Kafka holds it already
            batch.open()
        entry = self.tracker.begin(message.lsn)
        self.last_end_lsn = message.lsn  # Debezium's sequence counts it as committed at its LSN
        event = ChangeEvent(
            "m", None, None, None, message.lsn, message.lsn, 0, int(time.time() * 1000),
            message_prefix=message.prefix, message_content=message.content, last_commit_lsn=message.lsn,
        )  # fmt: skip
        self.writer.write(event, entry)
        self.status.events_total += 1
        self.tracker.commit(entry, message.lsn + 1)
        if batch is not None and batch.ended(message.lsn + 1, 1):
            batch.commit()

    # -- producing ---------------------------------------------------------------------

    def _emit(
        self,
        op: str,
        state: _TableState,
        before: list[Any] | None,
        after: list[Any] | None,
        lsn: int,
        text: TupleData | None = None,
    ) -> bool:
        """Write one change event; False when ``--skip-ops`` leaves its op out. ``text``: the after
        row still as the server's text (``after`` None), parsed only where something needs it."""
        txn = self.txn
        entry = self.entry
        if txn is None or entry is None:
            raise DecodeError(f"{op} change outside a transaction", kind="pgoutput")
        table = state.table
        if table.relation_id == self.incremental.watched:
            if text is not None:
                after, text = state.parse(text), None
            self.incremental.changed(txn.xid, op, table, before, after)
        if op in self.skipped_ops:
            return False
        if self.transaction_metadata and not txn.events:
            self._transaction_marker("BEGIN", txn)
        total, per_table = txn.next_order(table.relation_id)
        event = ChangeEvent(
            op, table, before, after, lsn, txn.commit_lsn, txn.xid, txn.commit_ts_ms,
            total, per_table, txn.id, "false", None, None, txn.commit_ts_us, txn.previous_end_lsn,
        )  # fmt: skip
        if text is None:
            size = self.writer.write(event, entry, state.topic)
        else:
            size = self.writer.write_text(event, text, state.parse, entry, state.topic)
        count = state.counts[op]
        count.events += 1
        count.bytes += size
        self.status.events_total += 1
        return True

    def _tombstone(self, state: _TableState, key: list[Any]) -> None:
        assert self.entry is not None
        self.writer.tombstone(state.topic, state.table, key, self.entry)

    def _transaction_marker(self, status: str, txn: Transaction) -> None:
        """BEGIN before a transaction's first event, END after its last (``--transaction-metadata``).

        Both belong to the transaction's checkpoint entry: its end LSN is confirmed
        only once Kafka holds them too. Transactions without events get neither.
        """
        assert self.entry is not None
        collections = None
        if status == "END":
            names = {rid: state.table.qualified_name for rid, state in self.tables.items()}
            collections = [
                {"data_collection": names.get(rid, "messages") if rid else "messages", "event_count": n}
                for rid, n in txn.per_table.items()
            ]
        value = {
            "status": status,
            "id": txn.id,
            "event_count": txn.events if status == "END" else None,
            "data_collections": collections,
            "ts_ms": txn.commit_ts_ms,
        }
        self.writer.write_fixed(
            "transaction", self.writer.topics.transaction, {"id": txn.id}, value, self.entry
        )

    def _heartbeat(self) -> None:
        """A record on ``<prefix>.heartbeat``: consumers see the connector alive when nothing changes."""
        name = self.settings.name
        value = {"name": name, "lsn": self.offsets.lsn, "ts_ms": int(time.time() * 1000)}
        # not part of any transaction: its acknowledgement confirms nothing
        if self.batch is not None:
            self.batch.open()  # with exactly-once, in the next Kafka transaction
        self.writer.write_fixed(
            "heartbeat", self.writer.topics.heartbeat, {"name": name}, value, self._heartbeat_token
        )
        self.status.last_heartbeat_at = time.time()
