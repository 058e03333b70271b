"""Incremental snapshots while streaming: the watermark method of the DBLog paper.

``cdc snapshot TABLE...`` (or a table added to ``--tables``) re-reads a
captured table in key chunks on the stream thread. Per chunk: a low
watermark (``pg_logical_emit_message``), the read (the next
``--snapshot-chunk-rows`` keys, in a REPEATABLE READ transaction whose
snapshot is recorded), a high watermark. While the stream catches up to the
high watermark, every streamed change to a buffered key by a transaction the
read did not see drops that key from the buffer; at the high watermark the
rest is written (``source.snapshot = "incremental"``) in the high
watermark's transaction, so the checkpoint confirms it only once Kafka holds
it. A streamed change therefore always wins over the older read
(docs/architecture.md has the argument).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Final

import orjson
import psycopg

from cdc import pg
from cdc.change import ChangeEvent, Transaction
from cdc.checkpoint import InFlight
from cdc.config import Settings
from cdc.control import answer_request, pending_requests
from cdc.errors import DecodeError, SourceError, SourceUnavailable
from cdc.events import Table, TableVersions, table_topic
from cdc.pgoutput import LogicalMessage
from cdc.pgtypes import TypeCatalog
from cdc.snapshot.state import IncrementalTask, SnapshotStore
from cdc.snapshot.tables import (
    TableSpec,
    captured_tables,
    copy_fields,
    copy_rows,
    copy_statement,
    describe_table,
    freeze,
    normalize_table,
    row_reader,
    table_from_spec,
)
from cdc.status import Status
from cdc.writer import RecordWriter

log = logging.getLogger(__name__)

#: Prefix of the watermark messages an incremental snapshot writes to the WAL.
WATERMARK_PREFIX: Final = "cdc.watermark"


@dataclass(slots=True, frozen=True)
class PgSnapshot:
    """``pg_current_snapshot()`` of a read: which transactions it sees."""

    xmin: int
    xmax: int
    xip: frozenset[int]  # 32-bit xids in progress

    @classmethod
    def parse(cls, text: str) -> PgSnapshot:
        xmin, xmax, xip = text.split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) & 0xFFFFFFFF for x in xip.split(",") if x))

    def invisible(self, xid: int) -> bool:
        """Did the read not see transaction ``xid`` (a committed, 32-bit xid)?"""
        if (xid - self.xmax) & 0xFFFFFFFF < 0x80000000:
            return True  # xid >= xmax (modulo 2^32): not finished when the read began
        return xid in self.xip

    def before_xmin(self, xid: int) -> bool:
        return (xid - self.xmin) & 0xFFFFFFFF >= 0x80000000


@dataclass(slots=True)
class _Chunk:
    """A chunk read, waiting for its high watermark in the stream."""

    id: str
    task: IncrementalTask
    table: Table
    rows: dict[tuple[Any, ...], list[Any]]
    snapshot: PgSnapshot
    last_key: list[str] | None
    final: bool
    read: int


@dataclass(slots=True)
class _Watched:
    """The table an incremental snapshot is reading."""

    task: IncrementalTask
    spec: TableSpec
    table: Table
    next_key: list[str] | None


class IncrementalSnapshots:
    """The stream session's incremental snapshots (DBLog watermarks), driven by its hooks.

    The stream drives it, one way: `changed` for every streamed change to
    the table it reads (the session calls it when the change's relation id
    is `watched`), `watermark` for messages with `WATERMARK_PREFIX`, `tick`
    every status interval (requests, progress), `step` whenever `ready` (read
    the next chunk). It writes its rows with the session's writer, in the
    high watermark's transaction, and takes table versions from the
    session's `TableVersions`.
    """

    def __init__(
        self,
        settings: Settings,
        status: Status,
        writer: RecordWriter,
        versions: TableVersions,
        catalog: TypeCatalog,
    ) -> None:
        self.settings = settings
        self.status = status
        self.writer = writer
        self.versions = versions
        #: relation id of the table being read (-1: none): its streamed changes go to `changed`
        self.watched = -1
        self.reading: _Watched | None = None
        self.store = SnapshotStore(self.settings.instance_dir)
        self.state = self.store.load()
        self.reader: psycopg.Connection[Any] | None = None
        self.catalog = catalog
        self.chunk: _Chunk | None = None
        self.touched: set[int] = set()  # xids of streamed changes to the watched table
        #: xids of the transactions the stream delivered last (any table): a read must see them all
        self.recent: deque[int] = deque(maxlen=256)
        self.settling: deque[tuple[InFlight, IncrementalTask, list[str] | None, int, bool]] = deque()
        self.ready = bool(self.state.incremental)
        self.retry_at = 0.0
        self.dropped = 0  # buffered rows a newer streamed change replaced
        self._publish_stats()

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None

    # -- hooks ------------------------------------------------------------------------

    def changed(
        self, xid: int, op: str, table: Table, before: list[Any] | None, after: list[Any] | None
    ) -> None:
        """A streamed change to the watched table; drops the keys a buffered read must not overwrite."""
        self.touched.add(xid)
        chunk = self.chunk
        if chunk is None or not chunk.snapshot.invisible(xid):
            return  # the read saw this transaction: its rows already include the change
        if op == "t":
            self.dropped += len(chunk.rows)
            chunk.rows.clear()
            return
        rows = chunk.rows
        for row in (before, after):
            if row is not None and rows.pop(freeze([row[i] for i in table.key_indexes]), None) is not None:
                self.dropped += 1

    def watermark(self, message: LogicalMessage, txn: Transaction | None, entry: InFlight | None) -> None:
        """A watermark in the stream: at the high one, emit what is left of the buffered chunk."""
        try:
            mark = orjson.loads(message.content)
        except orjson.JSONDecodeError:
            log.warning("ignoring a malformed watermark message")
            return
        chunk = self.chunk
        if mark.get("slot") != self.settings.slot or chunk is None or mark.get("id") != chunk.id:
            return  # another connector's, or one replayed after a restart
        if txn is None or entry is None:
            raise DecodeError("a watermark outside a transaction", kind="MESSAGE")
        if mark.get("kind") != "high":
            log.debug("low watermark %s", chunk.id)
            if chunk.task.clear_first and chunk.task.last_key is None:
                self._clear(chunk, message, txn, entry)
            return
        table = self.versions.resolve(chunk.table)
        topic = table_topic(self.settings.topic_prefix, table)
        self.writer.ensure_topic(topic)
        for values in chunk.rows.values():
            event = ChangeEvent(  # by position, as `snapshot_read`
                "r", table, None, values, message.lsn, txn.commit_lsn, txn.xid, txn.commit_ts_ms,
                0, 0, None, "incremental",
            )  # fmt: skip
            self.writer.write(event, entry, topic)
        self.status.events_total += len(chunk.rows)
        self.status.events_per_table[table.qualified_name] += len(chunk.rows)
        self.status.snapshot["incremental_dropped"] = self.dropped
        self.settling.append((entry, chunk.task, chunk.last_key, len(chunk.rows), chunk.final))
        log.debug(
            "chunk %s of %s: %d rows read, %d emitted",
            chunk.id, table.qualified_name, chunk.read, len(chunk.rows),
        )  # fmt: skip
        self.chunk = None
        self.ready = self.reading is not None
        if self.reading is None:
            self.watched = -1  # the table's last chunk is out: its changes need no watching any more

    def _clear(self, chunk: _Chunk, message: LogicalMessage, txn: Transaction, entry: InFlight) -> None:
        """A truncate event before the first rows read again: what the topic holds of the table is
        gone (dropped, or changed while outside the publication). In the low watermark's transaction,
        so it follows every change streamed before and precedes the rows of the read. Not with
        ``t`` in ``--skip-ops`` (``--compat debezium``'s default): those consumers take no truncates."""
        table = self.versions.resolve(chunk.table)
        if "t" in self.settings.skipped_ops:
            log.info(
                "table %s: its rows read again, without a truncate event first (--skip-ops t)",
                table.qualified_name,
            )
            return
        topic = table_topic(self.settings.topic_prefix, table)
        self.writer.ensure_topic(topic)
        event = ChangeEvent(
            "t", table, None, None, message.lsn, txn.commit_lsn, txn.xid, txn.commit_ts_ms,
            snapshot="incremental",
        )  # fmt: skip
        self.writer.write(event, entry, topic)
        log.info("table %s: a truncate event first, then its rows read again", table.qualified_name)

    def recreated(self, tables: list[str]) -> None:
        """Tables dropped and created again, or put back into the publication after they left it
        (`cdc.shaping.catalog.TableWatcher`): the topic holds rows they no longer have, so a truncate
        event goes first, then every row is read again."""
        for name in tables:
            self.state.incremental = [t for t in self.state.incremental if t.table != name]
            if self.settings.snapshot == "never":
                log.warning(
                    "table %s was dropped and created again (or left the publication): its rows are not "
                    "read again (--snapshot never): `cdc snapshot %s` reads them",
                    name,
                    name,
                )
                continue
            log.warning(
                "table %s was dropped and created again (or left the publication for a while): its topic "
                "gets a truncate event, then every row is read again (incremental snapshot)",
                name,
            )
            self.state.incremental.append(IncrementalTask(name, clear_first=True))
            if self.reading is not None and self.reading.task.table == name:
                self.reading = None  # the read in progress was of the old table
        self.store.save(self.state)
        self.ready = self.ready or self.chunk is None
        self._publish_stats()

    def joined(self, tables: list[str]) -> None:
        """Tables that joined the capture while streaming (`cdc.shaping.catalog.TableWatcher`): their
        rows from before the publication took them are not in the stream, so they are read now."""
        queued = {task.table for task in self.state.incremental}
        for name in tables:
            if self.settings.snapshot == "never":
                log.warning(
                    "table %s joined the capture; its rows from before are not read (--snapshot never): "
                    "`cdc snapshot %s` reads them",
                    name,
                    name,
                )
            elif name not in queued:
                log.info("table %s joined the capture: queueing an incremental snapshot of it", name)
                self.state.incremental.append(IncrementalTask(name))
        self.state.tables = sorted({*self.state.tables, *tables})
        self.store.save(self.state)
        self.ready = self.ready or self.chunk is None
        self._publish_stats()

    def tick(self, confirmed: int) -> None:
        """Every status interval: take requests, record the chunks whose high watermark's transaction
        is confirmed (``confirmed``: Kafka holds it, committed when exactly-once)."""
        self._take_requests()
        changed = False
        while self.settling and 0 < self.settling[0][0].end_lsn <= confirmed:
            _, task, last_key, rows, final = self.settling.popleft()
            task.last_key = last_key
            task.rows += rows
            changed = True
            if final:
                log.info("incremental snapshot of %s complete: %s rows", task.table, f"{task.rows:,}")
                self.state.incremental = [t for t in self.state.incremental if t is not task]
        if changed:
            self.store.save(self.state)
            self._publish_stats()
        if self.reading is None and self.chunk is None:
            self.ready = self._startable() is not None

    def step(self) -> None:
        """Read the next chunk between a low and a high watermark."""
        if time.monotonic() < self.retry_at:
            return
        watched = self.reading or self._next_table()
        if watched is None:
            self.ready = False
            return
        limit = self.settings.snapshot_chunk_rows
        reader = self._reader()
        chunk_id = secrets.token_hex(8)
        statement = copy_statement(watched.spec, watched.table, watched.next_key, None, limit)
        keys = watched.table.key_indexes
        read_row = row_reader(watched.table)
        rows: dict[tuple[Any, ...], list[Any]] = {}
        last: bytes | None = None
        try:
            self._emit_watermark(reader, chunk_id, "low")
            with pg.errors("incremental snapshot read"), reader.transaction():
                row = reader.execute("SELECT pg_current_snapshot()::text").fetchone()
                assert row is not None
                snapshot = PgSnapshot.parse(str(row[0]))
                for line in copy_rows(reader, statement):
                    values = read_row(line)
                    rows[freeze([values[i] for i in keys])] = values
                    last = line
        except SourceUnavailable:
            raise
        except SourceError as exc:  # the table was dropped or altered, or privileges changed
            log.warning("incremental snapshot of %s dropped: %s", watched.task.table, exc)
            self._drop(watched.task)
            return
        # a transaction the stream already delivered but the read did not see yet (a commit
        # that is in the WAL but not yet visible): the read is older than the topic; read again
        if any(snapshot.invisible(xid) for xid in self.touched) or any(
            snapshot.invisible(xid) for xid in self.recent
        ):
            log.debug("chunk of %s read too early; reading it again", watched.task.table)
            self.retry_at = time.monotonic() + 0.05
            return
        self.touched = {xid for xid in self.touched if not snapshot.before_xmin(xid)}
        last_key = watched.next_key
        if last is not None:
            fields = copy_fields(last)
            last_key = [str((fields[i] or b"").decode()) for i in keys]
        final = len(rows) < limit
        self.chunk = _Chunk(chunk_id, watched.task, watched.table, rows, snapshot, last_key, final, len(rows))
        self._emit_watermark(reader, chunk_id, "high")
        watched.next_key = last_key
        self.ready = False
        if final:
            # still watched until the high watermark: a change streamed before it must drop its keys
            self.reading = None

    # -- internals ---------------------------------------------------------------------

    def _startable(self) -> IncrementalTask | None:
        """The first queued table not being read nor waiting for Kafka."""
        busy = {id(task) for _, task, *_ in self.settling}
        return next((t for t in self.state.incremental if id(t) not in busy), None)

    def _next_table(self) -> _Watched | None:
        while (task := self._startable()) is not None:
            try:
                spec = describe_table(self._catalog_conn(), task.table, self.settings.publication)
            except SourceUnavailable:
                raise
            except SourceError as exc:
                log.warning("incremental snapshot of %s dropped: %s", task.table, exc)
                self._drop(task)
                continue
            table = table_from_spec(spec, self.catalog)
            if not table.has_key:
                log.warning(
                    "incremental snapshot of %s dropped: it has no primary key or replica identity index",
                    task.table,
                )
                self._drop(task)
                continue
            where = "from the start" if task.last_key is None else f"after key {task.last_key}"
            log.info("incremental snapshot of %s: reading %s", task.table, where)
            self.reading = _Watched(task, spec, table, task.last_key)
            self.touched = set()
            self.watched = table.relation_id
            return self.reading
        return None

    def _drop(self, task: IncrementalTask) -> None:
        self.state.incremental = [t for t in self.state.incremental if t is not task]
        self.store.save(self.state)
        if self.reading is not None and self.reading.task is task:
            self.reading = None
            self.watched = -1
        self._publish_stats()

    def _reader(self) -> psycopg.Connection[Any]:
        if self.reader is None:
            s = self.settings
            self.reader = pg.connect(s.dsn, f"cdc-{s.name}-incremental")
            with pg.errors("opening the incremental snapshot connection"):
                self.reader.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                self.reader.read_only = True
        return self.reader

    def _catalog_conn(self) -> psycopg.Connection[Any]:
        return self._reader()

    def _emit_watermark(self, reader: psycopg.Connection[Any], chunk_id: str, kind: str) -> None:
        content = orjson.dumps({"slot": self.settings.slot, "id": chunk_id, "kind": kind}).decode()
        with pg.errors("writing a watermark", "grant EXECUTE on pg_logical_emit_message to the role"):
            reader.execute("SELECT pg_logical_emit_message(true, %s, %s)", (WATERMARK_PREFIX, content))

    def _take_requests(self) -> None:
        for path, wanted in pending_requests(self.settings.instance_dir):
            accepted, rejected = self._accept(wanted)
            answer_request(path, accepted, rejected)

    def _accept(self, wanted: list[str]) -> tuple[list[str], dict[str, str]]:
        s = self.settings
        captured = set(captured_tables(self._catalog_conn(), s.tables, s.publication, s.exclude_tables))
        accepted: list[str] = []
        rejected: dict[str, str] = {}
        queued = {task.table for task in self.state.incremental}
        for requested in wanted:
            name = normalize_table(requested)
            if name not in captured:
                rejected[requested] = (
                    f"table {name} is not captured by connector {s.name!r}: add it to --tables and "
                    "restart (a table added to --tables is snapshotted automatically)"
                )
                continue
            if name not in queued:
                self.state.incremental.append(IncrementalTask(name))
                queued.add(name)
                log.info("incremental snapshot of %s requested", name)
            accepted.append(name)
        if accepted:
            self.store.save(self.state)
            self.ready = self.ready or self.chunk is None
            self._publish_stats()
        return accepted, rejected

    def _publish_stats(self) -> None:
        self.status.snapshot["incremental"] = [
            {"table": task.table, "rows": task.rows} for task in self.state.incremental
        ]
