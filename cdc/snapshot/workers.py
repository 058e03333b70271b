"""The worker processes of the initial snapshot: COPY chunks in the exported snapshot, into Kafka.

Processes, not threads: parsing and encoding rows is CPU-bound Python, and
the GIL would hold threads to one core. Spawned, not forked: fork is unsafe
with the producer's threads. Each worker joins the slot's exported snapshot
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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import psycopg
from psycopg import sql

from cdc import pg, redact
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
)
from cdc.events import ChangeEvent, SourceInfo, table_topic
from cdc.pgtypes import TypeCatalog
from cdc.snapshot.tables import TableSpec, copy_rows, copy_statement, row_reader, table_from_spec
from cdc.writer import open_writer

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

log = logging.getLogger(__name__)

#: SQLSTATE of "invalid snapshot identifier": the exported snapshot is gone (its exporting
#: connection died); a new session exports another
_GONE_SNAPSHOT: Final = frozenset({"22023"})

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
    logging.basicConfig(level=job.log_level, format=f"%(asctime)s %(levelname)s worker-{number}: %(message)s")
    redact.install()
    # these lines bypass the connector's console (and its progress bars): only what matters
    logging.getLogger("kafka").setLevel(max(job.log_level, logging.WARNING))
    try:
        with _Worker(job, number, pipe) as worker:
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
    """One connection in the shared snapshot and one record writer (producer + serializer)."""

    def __init__(self, job: WorkerJob, number: int, pipe: Connection) -> None:
        s = job.settings
        self.job = job
        self.number = number
        self.pipe = pipe
        self.conn = pg.connect(s.dsn, f"cdc-{s.name}-snapshot-{number}")
        try:
            with pg.errors("joining the snapshot", retriable=_GONE_SNAPSHOT):
                self.conn.autocommit = False
                self.conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                self.conn.read_only = True
                # the first statement of the transaction: every worker reads the same snapshot
                self.conn.execute(
                    sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(job.snapshot_name))
                )
            _hold_tables(self.conn, list(job.specs.values()))
            self.writer = open_writer(s, job.source, f"cdc-{s.name}-snapshot-{number}")
        except BaseException:
            self.conn.close()
            raise
        with pg.errors("reading the types of the snapshot"):
            catalog = TypeCatalog.from_connection(self.conn)  # as the session resolves them, as of S0
        self.tables = {name: table_from_spec(spec, catalog) for name, spec in job.specs.items()}
        self.readers = {name: row_reader(t) for name, t in self.tables.items()}
        self.topics = {name: table_topic(s.topic_prefix, t) for name, t in self.tables.items()}
        self.pending: deque[tuple[str, int, InFlight, int, list[Any] | None]] = deque()

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
                self._chunk(order[1], order[2])
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

    def _chunk(self, name: str, index: int) -> None:
        """Read chunk ``index`` of ``name``; produce its rows but the last, which goes to the coordinator."""
        job = self.job
        spec, table = job.specs[name], self.tables[name]
        bounds = job.bounds[name]
        after = bounds[index - 1] if index > 0 else None
        upto = bounds[index] if index < len(bounds) else None
        statement = copy_statement(spec, table, after, upto)
        read, topic = self.readers[name], self.topics[name]
        write, pipe = self.writer.write, self.pipe
        lsn, ts_ms = job.lsn, job.ts_ms
        token = InFlight(lsn)
        held: list[Any] | None = None
        rows = reported = 0
        for line in copy_rows(self.conn, statement):
            values = read(line)
            if held is not None:
                write(ChangeEvent("r", table, None, held, lsn, lsn, 0, ts_ms, snapshot="true"), token, topic)
            held = values
            rows += 1
            if not rows & 1023:
                self._report()  # chunks Kafka acknowledged meanwhile get recorded without waiting
                if rows - reported >= 4096:
                    pipe.send(("progress", name, rows - reported))
                    reported = rows
                if pipe.poll():  # only an abort arrives unasked; the chunk is read again next time
                    raise _Aborted
        pipe.send(("progress", name, rows - reported))
        self.pending.append((name, index, token, rows, held))


def _hold_tables(conn: psycopg.Connection[Any], specs: list[TableSpec]) -> None:
    """Lock the tables (ACCESS SHARE) for the snapshot, and refuse any rewritten since it began.

    TRUNCATE and table-rewriting ALTER TABLE are not MVCC-safe: an older
    snapshot sees a rewritten table as empty. The lock keeps them out until
    the snapshot ends; one that slipped in between the slot's creation and
    this lock shows as a file node changed under the snapshot.
    """
    if not specs:
        return
    names = sql.SQL(", ").join(sql.Identifier(s.schema, s.name) for s in specs)
    with pg.errors("locking the snapshot's tables", "check the role's privileges on the tables"):
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(names))
    rewritten = pg.query(
        conn,
        """SELECT c.oid::regclass::text FROM pg_class c
            WHERE c.oid = ANY(%s) AND c.relkind = 'r' AND c.relfilenode <> pg_relation_filenode(c.oid)""",
        ([s.relation_id for s in specs],),
    )
    if rewritten:
        raise SourceUnavailable(
            f"table {rewritten[0][0]} was rewritten (TRUNCATE, ALTER TABLE, CLUSTER or VACUUM FULL) as "
            "the snapshot began; start again: the snapshot resumes from a new one"
        )


def send(pipe: Connection, order: tuple[Any, ...]) -> None:
    """Send ``order`` to a worker; one that is gone is noticed by the reader of its pipe."""
    with contextlib.suppress(OSError):
        pipe.send(order)
