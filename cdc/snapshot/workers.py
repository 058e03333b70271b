"""The workers of the initial snapshot: COPY chunks in the exported snapshot, into Kafka.

Processes, not threads: parsing and encoding rows is CPU-bound Python, and
the GIL would hold threads to one core. Spawned, not forked: fork is unsafe
with the producer's threads. A small snapshot (many small tables) runs the
same workers as threads of the connector (`serve`): a process costs a second
or more to start and import, more than reading the rows. Each worker joins the slot's exported snapshot
on its own connection, opens its own `RecordWriter`, and asks the
coordinator (`cdc.snapshot.initial`) for chunks over a pipe.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final

import psycopg
from psycopg import sql

from cdc import exactly_once, logs, pg
from cdc.checkpoint import InFlight
from cdc.config import Settings
from cdc.errors import (
    CdcError,
    CheckpointError,
    ConfigError,
    DecodeError,
    SchemaError,
    SinkError,
    SourceError,
    SourceUnavailable,
    TransformError,
)
from cdc.events import Serializer, SourceInfo, Table, table_topic
from cdc.pgtypes import TypeCatalog
from cdc.snapshot.tables import TableSpec, copy_rows, copy_statement, row_reader, table_from_spec
from cdc.writer import open_writer

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

log = logging.getLogger(__name__)

#: SQLSTATE of "invalid snapshot identifier": the exported snapshot is gone (its exporting
#: connection died); a new session exports another
_GONE_SNAPSHOT: Final = frozenset({"22023"})

#: Rows a worker encodes and hands to the producer at once (`RecordWriter.write_reads`); between
#: batches it reports acknowledged chunks and looks for an abort.
_BATCH: Final = 1024

#: A snapshot writes for throughput, not latency: its producer waits up to 20 ms to fill a batch
#: (the stream's 2 ms made the 1M-row snapshot's requests small: 224-234k rows/s, 237-249k with
#: 20; the broker's CPU per row fell by a quarter). ``--producer-config linger.ms=...`` still wins.
_SNAPSHOT_PRODUCER: Final = {"linger.ms": "20"}
_LINGER_NAMES: Final = frozenset({"linger.ms", "queue.buffering.max.ms", "linger_ms"})


def snapshot_settings(settings: Settings) -> Settings:
    """``settings`` for a snapshot worker's writer: `_SNAPSHOT_PRODUCER` unless the user set a linger."""
    if _LINGER_NAMES & settings.producer_configs.keys():
        return settings
    return replace(settings, producer_configs={**_SNAPSHOT_PRODUCER, **settings.producer_configs})


# # One duplex pipe per worker. Worker -> coordinator: ("ready"|"want", n) asks for a
# chunk, ("progress", table, rows), ("chunk", table, index, rows, last row | None)
# once Kafka acknowledged every row of a chunk but its last, ("error", class, text,
# retriable), ("exit", n). Coordinator -> worker: ("task", table, index), ("done",)
# or ("abort",). Pipes need no semaphores, and chunks go to whichever worker is free.


@dataclass(slots=True, frozen=True)
class WorkerJob:
    """Everything a worker process needs; pickled to it."""

    settings: Settings
    source: SourceInfo
    snapshot_name: str
    specs: dict[str, TableSpec]
    bounds: dict[str, list[list[str]]]
    lsn: int
    ts_ms: int
    log_level: int
    system_id: str = ""


@dataclass(slots=True, frozen=True)
class Shared:
    """What a worker thread takes from its coordinator instead of building it again: the tables
    and their Avro schemas and encoders (per table, a few milliseconds of the GIL each)."""

    tables: dict[str, Table]
    serializer: Serializer


ERRORS: dict[str, type[CdcError]] = {
    cls.__name__: cls
    for cls in (
        SourceError,
        SourceUnavailable,
        DecodeError,
        SchemaError,
        SinkError,
        CheckpointError,
        ConfigError,
        TransformError,
    )
}


class _Aborted(Exception):
    """The coordinator asked the worker to stop."""


def _die_with_parent(parent: int) -> None:
    """Linux: SIGKILL this worker when the connector dies (even by kill -9)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def worker_main(job: WorkerJob, number: int, parent: int, pipe: Connection) -> None:
    """Entry point of a snapshot worker process: read chunks, produce rows, report acked chunks."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the connector decides when to stop
    s = job.settings
    level = logging.getLevelName(job.log_level).lower()
    logs.configure(s.log_format, level, s.log_file, prefix=f"worker-{number}")  # the connector's log
    # these lines bypass the connector's console (and its progress bars): only what matters
    logging.getLogger("kafka").setLevel(max(job.log_level, logging.WARNING))
    serve(job, number, pipe)


def serve(job: WorkerJob, number: int, pipe: Connection, shared: Shared | None = None) -> None:
    """A worker's life, in its process or in a thread of the connector (``shared`` given): read the
    chunks handed out until told "done" or "abort"; errors go to the coordinator as one line."""
    try:
        with _Worker(job, number, pipe, shared) as worker:
            worker.run()
    except CdcError as exc:
        pipe.send(("error", type(exc).__name__, str(exc), bool(getattr(exc, "retriable", False))))
    except Exception as exc:  # a bug: keep the traceback in the log, report one line
        log.exception("snapshot worker %s failed", number)
        pipe.send(("error", "SourceError", f"snapshot worker crashed: {exc!r}; see the log", False))
    with contextlib.suppress(OSError):
        pipe.send(("exit", number))
        pipe.close()


class _Worker:
    """One connection that joins the shared snapshot once per chunk, and one record writer.

    Each chunk is its own REPEATABLE READ transaction importing the exported
    snapshot, so the ACCESS SHARE lock it takes on its table lasts one chunk:
    the application's TRUNCATE or ALTER TABLE waits at most that long (and
    the queries queued behind it too), never for the whole snapshot.
    """

    def __init__(self, job: WorkerJob, number: int, pipe: Connection, shared: Shared | None = None) -> None:
        s = job.settings
        self.job = job
        self.number = number
        self.pipe = pipe
        self.conn = pg.connect(s.dsn, f"cdc-{s.name}-snapshot-{number}")
        try:
            with pg.errors("joining the snapshot"):
                self.conn.autocommit = False
                self.conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                self.conn.read_only = True
            with self._in_snapshot(), pg.errors("reading the types of the snapshot"):
                # types and tables as the session resolves them, as of the snapshot
                catalog = TypeCatalog.from_connection(self.conn)
                self.tables = {name: table_from_spec(spec, catalog) for name, spec in job.specs.items()}
            if shared is not None:  # the coordinator's, when equal: its codecs are keyed by the object
                theirs = shared.tables
                self.tables = {n: theirs[n] if theirs.get(n) == t else t for n, t in self.tables.items()}
            self.exactly_once = s.delivery == "exactly-once"
            transactional = exactly_once.transactional_id(s, number) if self.exactly_once else ""
            self.writer = open_writer(
                snapshot_settings(s), job.source, f"cdc-{s.name}-snapshot-{number}", transactional,
                like=None if shared is None else shared.serializer,
            )  # fmt: skip
        except BaseException:
            self.conn.close()
            raise
        self.readers = {name: row_reader(t) for name, t in self.tables.items()}
        self.topics = {name: table_topic(s.topic_prefix, t) for name, t in self.tables.items()}
        self.pending: deque[tuple[str, int, InFlight, int, list[Any] | None]] = deque()

    @contextlib.contextmanager
    def _in_snapshot(self, spec: TableSpec | None = None) -> Iterator[str | None]:
        """One transaction in the exported snapshot; ended (its locks released) on the way out.
        With ``spec``, its table is locked and checked at once: yields `table_changed`'s verdict."""
        # the first statement of the transaction: every worker reads the same snapshot
        join = sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(self.job.snapshot_name))
        changed = None
        try:
            if spec is None:
                with pg.errors("joining the snapshot", retriable=_GONE_SNAPSHOT):
                    self.conn.execute(join)
            else:
                changed = table_changed(self.conn, spec, join)
            yield changed
        finally:
            with pg.errors("ending a snapshot transaction"):
                self.conn.rollback()

    def __enter__(self) -> _Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()
        self.writer.close()

    def run(self) -> None:
        pipe = self.pipe
        pipe.send(("ready", self.number))
        try:
            while True:
                while not pipe.poll(0.05):  # meanwhile, report what Kafka acknowledged
                    self._report()
                order = pipe.recv()
                if order[0] != "task":
                    break
                self._chunk(order[1], order[2], bool(order[3]) if len(order) > 3 else False)
                self._report()
                pipe.send(("want", self.number))
        except _Aborted:
            pass
        if not self.writer.flush(60):
            raise SinkError("kafka did not acknowledge the snapshot rows within 60 s", retriable=True)
        self._report()

    def _report(self) -> None:
        """Tell the coordinator about chunks whose rows Kafka acknowledged."""
        self.writer.poll()
        pending = self.pending
        while pending and not pending[0][2].pending:
            table, index, _, rows, held = pending.popleft()
            self.pipe.send(("chunk", table, index, rows, held))

    def _chunk(self, name: str, index: int, last: bool = False) -> None:
        """Read chunk ``index`` of ``name``; produce its rows but the last, which goes to the coordinator.

        With exactly-once the rows and the chunk's done record are one Kafka transaction, and the
        last row is produced here too (marked "last" when the coordinator says this chunk is the
        snapshot's very last). A table rewritten or dropped since the snapshot began cannot be read
        in it: the coordinator hears so, and the chunk is not read.
        """
        job = self.job
        spec, table = job.specs[name], self.tables[name]
        bounds = job.bounds[name]
        after = bounds[index - 1] if index > 0 else None
        upto = bounds[index] if index < len(bounds) else None
        statement = copy_statement(spec, table, after, upto)
        read, topic = self.readers[name], self.topics[name]
        write_lines, pipe = self.writer.write_lines, self.pipe
        lsn, ts_ms = job.lsn, job.ts_ms
        token = InFlight(lsn)
        batch: list[bytes] = []
        add = batch.append
        rows = reported = 0
        with self._in_snapshot(spec) as changed:
            if changed is not None:
                pipe.send(("changed", name, index, changed))
                return
            if self.exactly_once:
                self.writer.producer.begin_transaction()
            for line in copy_rows(self.conn, statement):
                add(line)
                if len(batch) > _BATCH:  # written but its last row, which may be the chunk's last
                    write_lines(table, batch[:_BATCH], read, lsn, ts_ms, "true", token, topic)
                    rows += _BATCH
                    del batch[:_BATCH]
                    self._report()  # chunks Kafka acknowledged meanwhile get recorded without waiting
                    if rows - reported >= 4096:
                        pipe.send(("progress", name, rows - reported))
                        reported = rows
                    if pipe.poll():  # only an abort arrives unasked; the chunk is read again next time
                        raise _Aborted
            held: list[Any] | None = read(batch.pop()) if batch else None
            if batch:
                write_lines(table, batch, read, lsn, ts_ms, "true", token, topic)
            rows += len(batch) + (held is not None)
        pipe.send(("progress", name, rows - reported))
        if not self.exactly_once:
            self.pending.append((name, index, token, rows, held))
            return
        if held is not None:
            marker = "last" if last else "true"
            self.writer.write_reads(table, [held], lsn, ts_ms, marker, token, topic)
        exactly_once.commit_chunk(
            self.writer, job.settings, job.system_id, job.source.db, lsn, name, index, rows
        )
        self.writer.poll()
        pipe.send(("chunk", name, index, rows, None))


#: What `table_changed` finds: the table can no longer be read in the exported snapshot.
REWRITTEN: Final = "rewritten"
DROPPED: Final = "dropped"


def table_changed(
    conn: psycopg.Connection[Any], spec: TableSpec, first: sql.Composed | None = None
) -> str | None:
    """Lock ``spec``'s table for this transaction (ACCESS SHARE) and tell whether the snapshot can
    still read it: None, or `DROPPED` (gone, or its name now another table's) or `REWRITTEN`.

    TRUNCATE and table-rewriting ALTER TABLE are not MVCC-safe: an older
    snapshot sees a rewritten table as empty. A rewrite shows as a file node
    that differs from the one the snapshot's catalog has; the lock keeps a new
    one out while the chunk is read. ``first`` (the transaction's SET
    TRANSACTION SNAPSHOT) goes in the same round trip: a snapshot of many small
    tables is made of these.
    """
    name = sql.Identifier(spec.schema, spec.name)
    params = {"name": name.as_string(None), "oid": spec.relation_id}
    with pg.errors(f"locking {spec.qualified_name} for the snapshot", retriable=_GONE_SNAPSHOT):
        try:
            with conn.pipeline():
                if first is not None:
                    conn.execute(first)
                conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(name))
                cursor = conn.execute(_CHANGED, params)
            row = cursor.fetchone()
        except psycopg.errors.UndefinedTable:
            return DROPPED  # the caller ends the (failed) transaction
    if row is None or not row[0]:
        return DROPPED  # the lock went to a table created since under the same name: never read
    return REWRITTEN if row[1] else None


_CHANGED: Final = sql.SQL(
    # the table, or each leaf of a partitioned one (pg_partition_tree has no rows for a plain table);
    # each looked up by its oid: a join on pg_class scanned all of it once per chunk, 2.5 ms a chunk
    # with 3,000 tables (0.16 ms this way), quadratic in the tables of a snapshot
    """SELECT coalesce(to_regclass(%(name)s)::oid = %(oid)s::oid, false),
              (SELECT count(*)
                 FROM (SELECT %(oid)s::oid
                       UNION SELECT relid FROM pg_partition_tree(%(oid)s::oid::regclass)) AS t(relid)
                WHERE (SELECT c.relkind = 'r' AND c.relfilenode IS DISTINCT FROM pg_relation_filenode(c.oid)
                         FROM pg_class c WHERE c.oid = t.relid))"""
)


def send(pipe: Connection, order: tuple[Any, ...]) -> None:
    """Send ``order`` to a worker; one that is gone is noticed by the reader of its pipe."""
    with contextlib.suppress(OSError):
        pipe.send(order)
