"""Snapshots: the consistent initial snapshot, and incremental snapshots while streaming.

Initial snapshot (``--snapshot initial``, the default when the slot is new).
The slot is created exporting its snapshot; every captured table is read
with ``COPY ... TO STDOUT`` inside REPEATABLE READ transactions that import
that snapshot, in key-range chunks, by worker *processes* (one connection and
one producer each, ``--snapshot-workers``), while the replication connection
stays idle so the exported snapshot stays valid. Rows become ``op: "r"``
events with ``source.snapshot`` ``"true"`` (``"last"`` on the final row).
Streaming then starts at the slot's consistent point: no gap, no overlap.

Checkpoint invariant: a chunk is recorded as done in ``snapshot.json`` only
once Kafka acknowledged every row of it, the snapshot is complete only once
every chunk is, and the slot is never confirmed past its consistent point
before that (streaming, the only thing that confirms, starts afterwards).

Resume: after a stop or a crash the next start reads only the chunks not
recorded as done. The exported snapshot is gone by then, so those chunks are
read from a newer (shared, exported again) snapshot while the stream still
replays from the consistent point; replaying older changes over newer rows
converges to the exact table (docs/architecture.md has the argument).

Incremental snapshot (``cdc snapshot TABLE...``, or a table added to
``--tables``): the watermark method of the DBLog paper. In the stream thread,
per chunk: emit a low watermark (``pg_logical_emit_message``), read the chunk
(the next ``--snapshot-chunk-rows`` keys, in a REPEATABLE READ transaction
whose snapshot is recorded), emit a high watermark. While the stream catches
up to the high watermark, every streamed change to a buffered key by a
transaction the read did not see drops that key from the buffer; at the high
watermark the rest is emitted (``source.snapshot = "incremental"``), in the
high watermark's transaction, so the checkpoint confirms it only once Kafka
holds it. A streamed change therefore always wins over the older read.

Requests reach a running connector as files in ``<state-dir>/<name>/requests/``
(`request_snapshot` writes one, the stream loop picks it up every status
interval and answers with a ``.result.json`` file).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import re
import secrets
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson
import psycopg
from psycopg import sql

from cdc import replication
from cdc.checkpoint import InFlight, read_state, write_atomic
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
from cdc.events import ChangeEvent, Serializer, SourceInfo, Table, TableColumn, schemas_topic, table_topic
from cdc.pgoutput import LogicalMessage, ReplicaIdentity, format_lsn, parse_lsn
from cdc.pgtypes import TypeCatalog, column_type, row_parser

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import SpawnProcess

    from cdc.connector import Connector
    from cdc.events import Transaction
    from cdc.kafka import Producer

log = logging.getLogger(__name__)

#: Prefix of the watermark messages an incremental snapshot writes to the WAL.
WATERMARK_PREFIX: Final = "cdc.watermark"
STATE_VERSION: Final = 1
#: Seconds between progress log lines when stderr is not a terminal.
LOG_INTERVAL: Final = 10.0


# -- the state file -------------------------------------------------------------------


@dataclass(slots=True)
class TablePlan:
    """The initial snapshot of one table: chunk bounds and which chunks Kafka holds."""

    bounds: list[list[str]]  # upper key bound of chunk i (text values); the last chunk has none
    done: set[int] = field(default_factory=set)
    rows: int = 0  # rows of the done chunks
    estimate: int = 0

    @property
    def chunks(self) -> int:
        return len(self.bounds) + 1

    def first_pending(self) -> int:
        return next(i for i in range(self.chunks + 1) if i not in self.done)

    def complete(self) -> bool:
        return len(self.done) >= self.chunks


@dataclass(slots=True)
class IncrementalTask:
    """One table to re-read while streaming; ``last_key`` is the last key Kafka holds."""

    table: str
    last_key: list[str] | None = None
    rows: int = 0
    requested_at: float = field(default_factory=time.time)


@dataclass(slots=True)
class SnapshotState:
    """``snapshot.json``: what the connector knows about snapshots of its slot."""

    slot: str = ""
    system_id: str = ""
    database: str = ""
    consistent_lsn: int = 0
    phase: str = ""  # running | complete | skipped (--snapshot never) | abandoned
    tables: list[str] = field(default_factory=list)  # --tables at the last start ([]: all)
    plans: dict[str, TablePlan] = field(default_factory=dict)
    incremental: list[IncrementalTask] = field(default_factory=list)
    started_at: float = 0.0
    completed_at: float = 0.0

    def belongs_to(self, slot: str, system_id: str, database: str) -> bool:
        return (self.slot, self.system_id, self.database) == (slot, system_id, database)


class SnapshotStore:
    """``snapshot.json`` in the connector's directory; written atomically, versioned."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "snapshot.json"

    def load(self) -> SnapshotState:
        data = read_state(self.path, STATE_VERSION, "fix it, or delete it to forget snapshot progress")
        if data is None:
            return SnapshotState()
        try:
            return SnapshotState(
                slot=str(data["slot"]),
                system_id=str(data["system_id"]),
                database=str(data["database"]),
                consistent_lsn=parse_lsn(data["consistent_lsn"]),
                phase=str(data["phase"]),
                tables=[str(t) for t in data.get("tables", [])],
                plans={
                    name: TablePlan(
                        [[str(v) for v in bound] for bound in plan["bounds"]],
                        {int(i) for i in plan["done"]},
                        int(plan["rows"]),
                        int(plan.get("estimate", 0)),
                    )
                    for name, plan in data.get("plans", {}).items()
                },
                incremental=[
                    IncrementalTask(
                        str(task["table"]),
                        None if task.get("last_key") is None else [str(v) for v in task["last_key"]],
                        int(task.get("rows", 0)),
                        float(task.get("requested_at", 0.0)),
                    )
                    for task in data.get("incremental", [])
                ],
                started_at=float(data.get("started_at", 0.0)),
                completed_at=float(data.get("completed_at", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{self.path} is malformed ({exc}); fix or delete it") from None

    def save(self, state: SnapshotState) -> None:
        payload = {
            "version": STATE_VERSION,
            "slot": state.slot,
            "system_id": state.system_id,
            "database": state.database,
            "consistent_lsn": format_lsn(state.consistent_lsn),
            "phase": state.phase,
            "tables": state.tables,
            "plans": {
                name: {
                    "bounds": plan.bounds,
                    "done": sorted(plan.done),
                    "rows": plan.rows,
                    "estimate": plan.estimate,
                }
                for name, plan in state.plans.items()
            },
            "incremental": [
                {
                    "table": task.table,
                    "last_key": task.last_key,
                    "rows": task.rows,
                    "requested_at": task.requested_at,
                }
                for task in state.incremental
            ],
            "started_at": state.started_at,
            "completed_at": state.completed_at,
            "updated_at": time.time(),
        }
        write_atomic(self.path, orjson.dumps(payload, option=orjson.OPT_INDENT_2))


# -- tables from the catalog ----------------------------------------------------------


@dataclass(slots=True, frozen=True)
class ColumnSpec:
    name: str
    type_oid: int
    typmod: int
    type_name: str  # format_type(): how to cast a text key value back
    is_key: bool  # part of the replica identity, as the Relation message flags it


@dataclass(slots=True, frozen=True)
class TableSpec:
    """A published table as the catalog describes it; picklable, for the workers."""

    relation_id: int
    schema: str
    name: str
    kind: str  # relkind: r (table) or p (partitioned)
    replica_identity: int
    columns: tuple[ColumnSpec, ...]
    primary_key: tuple[str, ...]
    estimate: int  # reltuples (summed over partitions), 0 when unknown

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"


def normalize_table(table: str) -> str:
    return ".".join(replication.split_table(table))


def captured_tables(conn: psycopg.Connection[Any], settings: Settings) -> list[str]:
    """The tables this connector captures: ``--tables``, or every table of its publication."""
    if settings.tables:
        return [normalize_table(t) for t in settings.tables]
    published = replication.publication_tables(conn, settings.publication)
    return sorted(published[1]) if published else []


@contextlib.contextmanager
def _pg_errors(connection: str, failed: str, fix: str) -> Iterator[None]:
    """psycopg errors as ours: a lost ``connection`` is retried (SourceUnavailable); any other error
    is "``failed``: <server message>; ``fix``" (SourceError)."""
    try:
        yield
    except psycopg.OperationalError as exc:
        raise SourceUnavailable(f"{connection} connection lost: {str(exc).strip()}") from None
    except psycopg.Error as exc:
        message = exc.diag.message_primary or str(exc).strip()
        raise SourceError(f"{failed}: {message}; {fix}") from None


_CHECK_TABLE: Final = "check the table and the role's privileges"


def _query(
    conn: psycopg.Connection[Any], query: str | sql.SQL | sql.Composed, params: Any = None
) -> list[Any]:
    with _pg_errors("catalog", "snapshot planning failed", _CHECK_TABLE):
        return conn.execute(query, params).fetchall()


def describe_table(conn: psycopg.Connection[Any], table: str, publication: str) -> TableSpec:
    """Build the spec of ``table`` so that it matches the Relation message pgoutput sends.

    Published columns: not dropped, not generated (PostgreSQL 18 publishes
    stored generated columns when the publication says so), restricted to the
    publication's column list if it has one. Key flags follow the replica
    identity: DEFAULT -> primary key, INDEX -> that index, FULL -> every column.
    """
    rows = _query(
        conn,
        """SELECT c.oid, n.nspname, c.relname, c.relkind, c.relreplident, c.reltuples::bigint
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.oid = to_regclass(%s)""",
        (replication.quote_table(table),),
    )
    if not rows:
        raise SourceError(f"table {table} does not exist: create it or fix --tables")
    oid, schema, name, kind, replident, reltuples = rows[0]
    version = conn.info.server_version
    generated = False
    if version >= 180000:
        gen = _query(conn, "SELECT pubgencols::text FROM pg_publication WHERE pubname = %s", (publication,))
        generated = bool(gen) and gen[0][0] == "s"
    attrs: list[int] | None = None
    if version >= 150000:
        listed = _query(
            conn,
            """SELECT pr.prattrs::int2[] FROM pg_publication_rel pr
                 JOIN pg_publication p ON p.oid = pr.prpubid
                WHERE p.pubname = %s AND pr.prrelid = %s""",
            (publication, oid),
        )
        if listed and listed[0][0] is not None:
            attrs = [int(a) for a in listed[0][0]]
    columns = _query(
        conn,
        """SELECT a.attnum, a.attname, a.atttypid::int8, a.atttypmod, format_type(a.atttypid, a.atttypmod)
             FROM pg_attribute a
            WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
              AND (a.attgenerated = '' OR (a.attgenerated = 's' AND %s))
            ORDER BY a.attnum""",
        (oid, generated),
    )
    if attrs is not None:
        columns = [c for c in columns if c[0] in attrs]
    primary = _index_columns(conn, oid, "indisprimary")
    identity: set[str] = set()
    if replident == "d":
        identity = set(primary)
    elif replident == "i":
        identity = set(_index_columns(conn, oid, "indisreplident"))
    elif replident == "f":
        identity = {str(c[1]) for c in columns}
    estimate = max(int(reltuples), 0)
    if kind == "p":
        leaves = _query(
            conn,
            """SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint
                 FROM pg_partition_tree(%s) t JOIN pg_class c ON c.oid = t.relid WHERE t.isleaf""",
            (oid,),
        )
        estimate = int(leaves[0][0]) if leaves else 0
    return TableSpec(
        relation_id=int(oid),
        schema=str(schema),
        name=str(name),
        kind=str(kind),
        replica_identity=ord(replident),
        columns=tuple(
            ColumnSpec(str(n), int(t), int(m), str(f), str(n) in identity) for _, n, t, m, f in columns
        ),
        primary_key=tuple(primary),
        estimate=estimate,
    )


def _index_columns(conn: psycopg.Connection[Any], oid: int, flag: str) -> list[str]:
    rows = _query(
        conn,
        sql.SQL(
            """SELECT a.attname FROM pg_index i
                 CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                WHERE i.indrelid = %s AND i.{} ORDER BY k.n"""
        ).format(sql.Identifier(flag)),
        (oid,),
    )
    return [str(r[0]) for r in rows]


def table_from_spec(spec: TableSpec, catalog: TypeCatalog | None = None) -> Table:
    """The `Table` of a spec: the same shape (`Table.same_shape`) as the streamed relation.

    ``catalog`` resolves enums, domains and extension types as the stream
    session's does (without one they fall back to text).
    """
    if catalog is not None:
        catalog.prefetch(c.type_oid for c in spec.columns)
    primary_key = None
    if spec.replica_identity in (ReplicaIdentity.FULL, ReplicaIdentity.NOTHING):
        primary_key = list(spec.primary_key)  # as the connector keys FULL and NOTHING tables
    columns = [
        TableColumn(c.name, column_type(c.type_oid, c.typmod, catalog), c.is_key) for c in spec.columns
    ]
    return Table(spec.relation_id, spec.schema, spec.name, spec.replica_identity, columns, 1, primary_key)


def key_specs(spec: TableSpec, table: Table) -> list[ColumnSpec]:
    """The key columns (the Kafka key): what chunks are ordered and bounded by."""
    return [spec.columns[i] for i in table.key_indexes]


def chunk_bounds(
    conn: psycopg.Connection[Any], spec: TableSpec, table: Table, chunk_rows: int
) -> list[list[str]]:
    """Every ``chunk_rows``-th key in key order, as text: the upper bounds of the chunks.

    Any bounds cover the whole key space, so they may come from any state of
    the table; they are recorded so a resumed snapshot reads the same ranges.
    """
    keys = key_specs(spec, table)
    if not keys:
        return []
    names = sql.SQL(", ").join(sql.Identifier(k.name) for k in keys)
    texts = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(k.name)) for k in keys)
    query = sql.SQL(
        # the alias cannot collide with a column: only the key columns are selected besides it
        "SELECT {texts} FROM (SELECT {names}, row_number() OVER (ORDER BY {names}) AS __cdc_n "
        "FROM {only}{rel}) s WHERE __cdc_n % {rows} = 0 ORDER BY __cdc_n"
    ).format(
        texts=texts,
        names=names,
        only=sql.SQL("ONLY " if spec.kind != "p" else ""),
        rel=sql.Identifier(spec.schema, spec.name),
        rows=sql.Literal(chunk_rows),
    )
    return [[str(v) for v in row] for row in _query(conn, query)]


def copy_statement(
    spec: TableSpec,
    table: Table,
    after: list[str] | None,
    upto: list[str] | None,
    limit: int | None = None,
) -> sql.Composed:
    """``COPY (SELECT <published columns> ... key range ...) TO STDOUT``.

    ``after`` < key <= ``upto`` (either may be None: unbounded); with ``limit``,
    the first ``limit`` keys after ``after`` in key order.
    """
    keys = key_specs(spec, table)
    key_row = sql.SQL("({})").format(sql.SQL(", ").join(sql.Identifier(k.name) for k in keys))

    def literal_row(values: list[str]) -> sql.Composed:
        return sql.SQL("({})").format(
            sql.SQL(", ").join(
                sql.SQL("{}::{}").format(sql.Literal(v), sql.SQL(k.type_name))
                for k, v in zip(keys, values, strict=True)
            )
        )

    conditions: list[sql.Composable] = []
    if after is not None:
        conditions.append(sql.SQL("{} > {}").format(key_row, literal_row(after)))
    if upto is not None:
        conditions.append(sql.SQL("{} <= {}").format(key_row, literal_row(upto)))
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
    tail: sql.Composable = sql.SQL("")
    if limit is not None:
        tail = sql.SQL(" ORDER BY {} LIMIT {}").format(
            sql.SQL(", ").join(sql.Identifier(k.name) for k in keys), sql.Literal(limit)
        )
    return sql.SQL("COPY (SELECT {cols} FROM {only}{rel}{where}{tail}) TO STDOUT").format(
        cols=sql.SQL(", ").join(sql.Identifier(c.name) for c in spec.columns),
        only=sql.SQL("ONLY " if spec.kind != "p" else ""),
        rel=sql.Identifier(spec.schema, spec.name),
        where=where,
        tail=tail,
    )


# -- COPY text format -> the bytes pgoutput would send ---------------------------------

_UNESCAPED = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}
_ESCAPE = re.compile(rb"\\(.)", re.DOTALL)


def _unescape_one(match: re.Match[bytes]) -> bytes:
    char = match.group(1)
    return _UNESCAPED.get(char, char)


def copy_fields(line: bytes) -> list[bytes | None]:
    """One COPY text row (without its newline) -> the output text of each value, None for NULL.

    COPY TO escapes only backslash, tab, newline, CR, backspace, form feed and
    vertical tab, and writes NULL as ``\\N``; the unescaped value is exactly the
    type's text output, as pgoutput sends it.
    """
    fields: list[bytes | None] = list(line.split(b"\t"))
    if b"\\" in line:
        for i, value in enumerate(fields):
            if value is not None and b"\\" in value:
                fields[i] = None if value == b"\\N" else _ESCAPE.sub(_unescape_one, value)
    return fields


def row_reader(table: Table) -> Callable[[bytes], list[Any]]:
    """COPY text row -> wire values, with the same `pgtypes.row_parser` as streamed rows."""
    parse = row_parser([c.type for c in table.columns])
    name = table.qualified_name

    def read(line: bytes) -> list[Any]:
        try:
            return parse(copy_fields(line))
        except DecodeError as exc:
            raise DecodeError(f"COPY of {name}: {exc}") from None

    return read


def copy_rows(conn: psycopg.Connection[Any], statement: sql.Composed) -> Iterator[bytes]:
    """The rows of a COPY TO STDOUT, each without its newline."""
    with (
        _pg_errors("snapshot", "snapshot read failed", _CHECK_TABLE),
        conn.cursor() as cur,
        cur.copy(statement) as copy,
    ):
        for data in copy:
            yield bytes(data[:-1])


def freeze(values: list[Any]) -> tuple[Any, ...]:
    """A key as a dict key (arrays are lists: make them tuples)."""
    return tuple(freeze(v) if isinstance(v, list) else v for v in values)


# -- the worker processes of the initial snapshot -------------------------------------
#
# One duplex pipe per worker. Worker -> coordinator: ("ready"|"want", n) asks for a
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


_ERRORS: dict[str, type[CdcError]] = {
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
    """One connection in the shared snapshot, one producer, one serializer."""

    def __init__(self, job: WorkerJob, number: int, pipe: Connection) -> None:
        from cdc.connector import make_serializer  # noqa: PLC0415 - the connector imports this module
        from cdc.kafka import TopicSettings, make_producer  # noqa: PLC0415

        s = job.settings
        self.job = job
        self.number = number
        self.pipe = pipe
        self.conn = replication.connect(s.dsn, f"cdc-{s.name}-snapshot-{number}")
        try:
            self.conn.autocommit = False
            self.conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            self.conn.read_only = True
            # the first statement of the transaction: every worker reads the same snapshot
            self.conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(job.snapshot_name)))
            _hold_tables(self.conn, list(job.specs.values()))
            self.producer: Producer = make_producer(
                s.producer,
                s.bootstrap_servers,
                f"cdc-{s.name}-snapshot-{number}",
                s.max_buffer_mb,
                TopicSettings(s.topic_partitions, s.topic_replication_factor, s.topic_configs),
                s.producer_configs,
            )
        except psycopg.Error as exc:
            self.conn.close()
            raise _snapshot_error(exc) from None
        except BaseException:
            self.conn.close()
            raise
        self.serializer: Serializer = make_serializer(s, job.source)
        catalog = TypeCatalog.from_connection(self.conn)  # as the session resolves types, as of the snapshot
        self.tables = {name: table_from_spec(spec, catalog) for name, spec in job.specs.items()}
        self.readers = {name: row_reader(t) for name, t in self.tables.items()}
        self.topics = {name: table_topic(s.topic_prefix, t) for name, t in self.tables.items()}
        self.pending: deque[tuple[str, int, InFlight, int, list[Any] | None]] = deque()

    def __enter__(self) -> _Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()
        self.producer.close()

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
        if not self.producer.flush(60):
            raise SinkError("kafka did not acknowledge the snapshot rows within 60 s", retriable=True)
        self._report()

    def _report(self) -> None:
        """Tell the coordinator about chunks whose rows Kafka acknowledged."""
        self.producer.poll()
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
        encode, take_schemas = self.serializer.encode, self.serializer.take_schema_records
        send, pipe = self.producer.send, self.pipe
        lsn, ts_ms = job.lsn, job.ts_ms
        token = InFlight(lsn)
        held: list[Any] | None = None
        rows = reported = 0
        for line in copy_rows(self.conn, statement):
            values = read(line)
            if held is not None:
                key, value = encode(ChangeEvent("r", table, None, held, lsn, lsn, 0, ts_ms, snapshot="true"))
                records = take_schemas()
                if records:
                    self._send_schemas(records)
                send(topic, key, value, token)
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

    def _send_schemas(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        topic = schemas_topic(self.job.settings.topic_prefix)
        self.producer.ensure_topic(topic, compact=True)
        for key, value in records:
            self.producer.send_and_wait(topic, key, value, timeout=60)


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
    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(names))
    rewritten = conn.execute(
        """SELECT c.oid::regclass::text FROM pg_class c
            WHERE c.oid = ANY(%s) AND c.relkind = 'r' AND c.relfilenode <> pg_relation_filenode(c.oid)""",
        ([s.relation_id for s in specs],),
    ).fetchall()
    if rewritten:
        raise SourceUnavailable(
            f"table {rewritten[0][0]} was rewritten (TRUNCATE, ALTER TABLE, CLUSTER or VACUUM FULL) as "
            "the snapshot began; start again: the snapshot resumes from a new one"
        )


def _send(pipe: Connection, order: tuple[Any, ...]) -> None:
    with contextlib.suppress(OSError):  # the worker is gone: its exit is handled by the reader
        pipe.send(order)


def _snapshot_error(exc: psycopg.Error) -> SourceError:
    text = exc.diag.message_primary or str(exc).strip()
    if isinstance(exc, psycopg.OperationalError) or "invalid snapshot identifier" in text:
        return SourceUnavailable(f"snapshot connection failed: {text}")
    return SourceError(f"snapshot connection failed: {text}; check the role's privileges")


# -- progress ---------------------------------------------------------------------------


class SnapshotProgress:
    """A progress bar per table on a terminal (rich), a log line per table every 10 s otherwise."""

    def __init__(self, tables: dict[str, tuple[int, int]], interactive: bool | None = None) -> None:
        """``tables``: name -> (rows already done, estimated total rows; 0 if unknown)."""
        self.started = time.monotonic()
        self.rows = {name: done for name, (done, _) in tables.items()}
        self.base = dict(self.rows)
        self.totals = {name: total for name, (_, total) in tables.items()}
        self.finished: set[str] = set()
        self.next_log = self.started + LOG_INTERVAL
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.bars: Any = None
        self.ids: dict[str, Any] = {}
        self._handlers: list[tuple[logging.StreamHandler[Any], Any]] = []
        if self.interactive and tables:
            self._start_bars()

    def _start_bars(self) -> None:
        from rich.console import Console  # noqa: PLC0415 - only on a terminal
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn  # noqa: PLC0415

        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:>12,.0f} / ~{task.total:,.0f} rows"),
            TextColumn("{task.fields[rate]:>10} rows/s"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        for name, done in self.rows.items():
            total = max(self.totals[name], done) or None
            self.ids[name] = self.bars.add_task(name, total=total, completed=done, rate="-")
        self.bars.start()
        # log lines go through rich's stderr proxy, above the bars
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.__stderr__:
                self._handlers.append((handler, handler.setStream(sys.stderr)))

    def advance(self, name: str, rows: int) -> None:
        self.rows[name] = self.rows.get(name, 0) + rows
        if self.bars is not None:
            task = self.ids[name]
            self.bars.update(task, advance=rows, rate=f"{self._rate(name):,.0f}")
            total = self.bars.tasks[task].total
            if total is not None and self.rows[name] > total:
                self.bars.update(task, total=self.rows[name])
        elif time.monotonic() >= self.next_log:
            self.next_log = time.monotonic() + LOG_INTERVAL
            for table in self.rows:
                if table not in self.finished:
                    self._log_line(table)

    def _rate(self, name: str) -> float:
        elapsed = max(time.monotonic() - self.started, 1e-3)
        return (self.rows[name] - self.base[name]) / elapsed

    def _log_line(self, name: str) -> None:
        rows, total, rate = self.rows[name], self.totals[name], self._rate(name)
        if total > rows:
            eta = f", ETA {(total - rows) / rate:.0f} s" if rate > 0 else ""
            log.info(
                "snapshot %s: %s of ~%s rows (%.0f%%), %s rows/s%s",
                name, f"{rows:,}", f"{total:,}", 100 * rows / total, f"{rate:,.0f}", eta,
            )  # fmt: skip
        else:
            log.info("snapshot %s: %s rows, %s rows/s", name, f"{rows:,}", f"{rate:,.0f}")

    def table_done(self, name: str, rows: int) -> None:
        self.finished.add(name)
        self.rows[name] = rows
        if self.bars is not None:
            self.bars.update(self.ids[name], completed=rows, total=rows)
        log.info("snapshot of %s done: %s rows", name, f"{rows:,}")

    def close(self) -> None:
        if self.bars is not None:
            self.bars.stop()
            for handler, stream in self._handlers:
                handler.setStream(stream)
            self.bars = None


# -- the initial snapshot --------------------------------------------------------------


class InitialSnapshot:
    """Coordinates the worker processes of the initial snapshot and records their progress."""

    def __init__(
        self,
        connector: Connector,
        conn: psycopg.Connection[Any],
        producer: Producer,
        source: SourceInfo,
        catalog: TypeCatalog,
        state: SnapshotState,
        store: SnapshotStore,
        specs: dict[str, TableSpec],
    ) -> None:
        self.connector = connector
        self.settings = connector.settings
        self.conn = conn
        self.producer = producer
        self.source = source
        self.state = state
        self.store = store
        self.specs = specs
        assert connector.serializer is not None
        self.serializer = connector.serializer
        self.tables = {name: table_from_spec(spec, catalog) for name, spec in specs.items()}
        self.held: tuple[str, int, int, list[Any]] | None = None  # (table, chunk, rows, the chunk's last row)
        self.unacked: deque[tuple[InFlight, str, int, int]] = deque()
        self.ts_ms = int(time.time() * 1000)
        self.progress: SnapshotProgress | None = None

    def run(self, exported: str | None) -> bool:
        """Read every pending chunk; True once the whole snapshot is in Kafka, False if stopped.

        ``exported``: the slot's exported snapshot, or None to read the rest of
        an interrupted snapshot from a new snapshot exported here.
        """
        state, s = self.state, self.settings
        tasks = self._tasks()
        started = time.monotonic()
        total_rows = sum(p.rows for p in state.plans.values())
        for name in state.plans:
            self.producer.ensure_topic(table_topic(s.topic_prefix, self.tables[name]))
        self.progress = SnapshotProgress(
            {name: (plan.rows, plan.estimate) for name, plan in state.plans.items() if not plan.complete()}
        )
        try:
            exporter = None
            if tasks:
                if exported is None:
                    exporter, exported = self._export()
                try:
                    if not self._read(tasks, exported):
                        return False
                finally:
                    if exporter is not None:
                        exporter.close()
            self._finish()
        finally:
            self.progress.close()
        rows = sum(p.rows for p in state.plans.values()) - total_rows
        seconds = time.monotonic() - started
        rate = rows / seconds if seconds > 0 else 0.0
        stats = self.connector.stats.snapshot
        stats.update(rows=rows, seconds=round(seconds, 3), rows_per_second=round(rate))
        log.info(
            "initial snapshot complete: %s rows of %d tables in %.1f s (%s rows/s); streaming from %s",
            f"{rows:,}", len(state.plans), seconds, f"{rate:,.0f}", format_lsn(state.consistent_lsn),
        )  # fmt: skip
        return True

    def _tasks(self) -> list[tuple[str, int]]:
        """Pending chunks, round-robin over the tables so that several tables progress at once."""
        pending = [
            [(name, i) for i in range(plan.chunks) if i not in plan.done]
            for name, plan in self.state.plans.items()
        ]
        tasks = []
        for round_ in range(max((len(p) for p in pending), default=0)):
            tasks += [p[round_] for p in pending if round_ < len(p)]
        return tasks

    def _export(self) -> tuple[psycopg.Connection[Any], str]:
        """A fresh snapshot for the workers to share (the slot's exported one is gone)."""
        s = self.settings
        exporter = replication.connect(s.dsn, f"cdc-{s.name}-snapshot")
        try:
            exporter.autocommit = False
            exporter.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            exporter.read_only = True
            row = exporter.execute("SELECT pg_export_snapshot()").fetchone()
        except psycopg.Error as exc:
            exporter.close()
            raise _snapshot_error(exc) from None
        assert row is not None
        return exporter, str(row[0])

    def _read(self, tasks: list[tuple[str, int]], exported: str) -> bool:
        s = self.settings
        context = multiprocessing.get_context("spawn")  # fork is unsafe with the producer's threads
        workers = min(s.snapshot_workers, len(tasks))
        job = WorkerJob(
            s,
            self.source,
            exported,
            {name: self.specs[name] for name in self.state.plans},
            {name: plan.bounds for name, plan in self.state.plans.items()},
            self.state.consistent_lsn,
            self.ts_ms,
            logging.getLogger().getEffectiveLevel(),
        )
        pipes: dict[int, Connection] = {}
        processes: dict[int, SpawnProcess] = {}
        for n in range(workers):
            ours, theirs = context.Pipe()
            processes[n] = context.Process(
                target=worker_main, args=(job, n, os.getpid(), theirs), name=f"cdc-snapshot-{n}", daemon=True
            )
            pipes[n] = ours
            processes[n].start()
            theirs.close()
        log.info("snapshot: %d chunks of %d tables, %d workers", len(tasks), len(self.state.plans), workers)
        queue_ = deque(tasks)
        error: CdcError | None = None
        aborted = False
        next_report = 0.0
        try:
            while pipes:
                if time.monotonic() >= next_report:
                    next_report = time.monotonic() + s.status_interval
                    self._report()
                for ready in wait(list(pipes.values()), timeout=0.1):
                    n = next(k for k, v in pipes.items() if v is ready)
                    pipe = pipes[n]
                    try:
                        message: tuple[Any, ...] = pipe.recv()
                    except (EOFError, OSError):  # gone without saying goodbye
                        processes[n].join(5)
                        message = ("exit", n)
                        error = error or SourceError(
                            f"snapshot worker {n} died (exit code {processes[n].exitcode}); see the log; "
                            "the next start resumes the snapshot"
                        )
                    if message[0] in ("ready", "want"):
                        order = ("task", *queue_.popleft()) if queue_ and not aborted else ("done",)
                        _send(pipe, order)
                    elif message[0] == "exit":
                        del pipes[n]
                    else:
                        error = error or self._on_message(message)
                self._settle()
                if not aborted and (error is not None or self.connector.stop.is_set()):
                    aborted = True  # what Kafka holds stays recorded; the rest is read next time
                    if error is None:
                        log.info("stopping the snapshot; the next start resumes it")
                    for pipe in pipes.values():
                        _send(pipe, ("abort",))
        finally:
            for pipe in pipes.values():
                _send(pipe, ("abort",))
            for process in processes.values():
                process.join(10)
                if process.is_alive():
                    process.kill()
                    process.join(5)
        if error is not None:
            raise error
        if aborted:
            self._flush_held("true")
            return False
        return True

    def _report(self) -> None:
        """Progress into the connector's status (``cdc status``)."""
        assert self.progress is not None
        tables = self.connector.stats.snapshot.setdefault("tables", {})
        for name, plan in self.state.plans.items():
            tables[name] = {
                "rows": self.progress.rows.get(name, plan.rows),
                "estimate": plan.estimate,
                "chunks": plan.chunks,
                "chunks_done": len(plan.done),
            }
        self.connector._report()

    def _on_message(self, message: tuple[Any, ...]) -> CdcError | None:
        kind = message[0]
        if kind == "progress":
            assert self.progress is not None
            self.progress.advance(message[1], message[2])
            self.connector.streamed = True  # rows flow: a lost connection from now on is retried
        elif kind == "chunk":
            _, name, index, rows, held = message
            if held is None:
                self._chunk_done(name, index, rows)
            else:
                # the final row of the snapshot must carry "last": hold one back until the next arrives
                if self.held is not None:
                    self._emit_held("true")
                self.held = (name, index, rows, held)
        elif kind == "error":
            _, cls_name, text, retriable = message
            cls = _ERRORS.get(cls_name, SourceError)
            if cls is SinkError:
                return SinkError(text, retriable=retriable)
            return cls(text)
        return None

    def _emit_held(self, snapshot: str) -> None:
        assert self.held is not None
        name, index, rows, values = self.held
        self.held = None
        table = self.tables[name]
        lsn = self.state.consistent_lsn
        event = ChangeEvent("r", table, None, values, lsn, lsn, 0, self.ts_ms, snapshot=snapshot)
        key, value = self.serializer.encode(event)
        records = self.serializer.take_schema_records()
        if records:
            topic = schemas_topic(self.settings.topic_prefix)
            self.producer.ensure_topic(topic, compact=True)
            for schema_key, schema_value in records:
                self.producer.send_and_wait(topic, schema_key, schema_value, timeout=60)
        token = InFlight(lsn)
        self.producer.send(table_topic(self.settings.topic_prefix, table), key, value, token)
        self.unacked.append((token, name, index, rows))

    def _flush_held(self, snapshot: str) -> None:
        """Produce the row held back and wait for Kafka, so its chunk counts as done."""
        if self.held is not None:
            self._emit_held(snapshot)
        self.producer.flush(30)
        self._settle()

    def _settle(self) -> None:
        self.producer.poll()
        while self.unacked and not self.unacked[0][0].pending:
            _, name, index, rows = self.unacked.popleft()
            self._chunk_done(name, index, rows)

    def _chunk_done(self, name: str, index: int, rows: int) -> None:
        plan = self.state.plans[name]
        if index in plan.done:
            return
        plan.done.add(index)
        plan.rows += rows
        stats = self.connector.stats
        stats.events_total += rows
        stats.events_per_table[name] += rows
        self.store.save(self.state)
        if plan.complete():
            assert self.progress is not None
            self.progress.table_done(name, plan.rows)

    def _finish(self) -> None:
        """The final row gets "last"; the snapshot is complete once Kafka holds it."""
        if self.held is not None:
            self._emit_held("last")
        if not self.producer.flush(60):
            raise SinkError("kafka did not acknowledge the last snapshot rows within 60 s", retriable=True)
        self._settle()
        if self.unacked or not all(plan.complete() for plan in self.state.plans.values()):
            raise SinkError("kafka did not acknowledge every snapshot row", retriable=True)
        self.state.phase = "complete"
        self.state.completed_at = time.time()
        self.store.save(self.state)
        self.connector.stats.snapshot["phase"] = "complete"
        self._report()


# -- the hook before streaming ---------------------------------------------------------


@dataclass(slots=True)
class Start:
    """What the session knows when it is about to stream."""

    system_id: str
    database: str
    slot_lsn: int  # the slot's confirmed_flush_lsn (its consistent point if just created)
    new_slot: bool
    exported: str | None  # the snapshot the new slot exported


def before_streaming(
    connector: Connector,
    conn: psycopg.Connection[Any],
    producer: Producer,
    source: SourceInfo,
    catalog: TypeCatalog,
    start: Start,
) -> bool:
    """Run the initial snapshot (or what is left of it) before START_REPLICATION.

    Also notices tables added to ``--tables`` since the last start and queues
    incremental snapshots of them. Returns False when the connector must not
    stream: stopped during the snapshot, or ``--snapshot initial-only``.
    Raises `SourceError` when the slot moved past an unfinished snapshot.
    """
    s = connector.settings
    store = SnapshotStore(s.instance_dir)
    state = store.load()
    tables = captured_tables(conn, s)
    listed = [normalize_table(t) for t in s.tables]
    if start.new_slot or not state.belongs_to(s.slot, start.system_id, start.database):
        if not start.new_slot and s.snapshot == "initial-only":
            raise SourceError(
                f"slot {s.slot!r} exists without a snapshot of this connector: --snapshot initial-only "
                "needs a new slot; drop the slot or choose another --slot"
            )
        state = SnapshotState(
            s.slot, start.system_id, start.database, start.slot_lsn, "skipped", listed, started_at=time.time()
        )
        if start.new_slot and s.snapshot != "never":
            state.phase = "running"
            log.info(
                "initial snapshot of %d tables at %s (snapshot %s)",
                len(tables), format_lsn(start.slot_lsn), start.exported,
            )  # fmt: skip
    elif s.snapshot == "initial-only" and state.phase in ("skipped", "abandoned"):
        raise SourceError(
            f"slot {s.slot!r} was created without a snapshot (--snapshot never): --snapshot initial-only "
            "needs a new slot; drop the slot or choose another --slot"
        )
    elif state.phase == "running" and s.snapshot == "never":
        log.warning("the initial snapshot was not finished; --snapshot never abandons it")
        state.phase = "abandoned"
    elif state.phase == "running" and start.slot_lsn != state.consistent_lsn:
        raise SourceError(
            f"slot {s.slot!r} was confirmed to {format_lsn(start.slot_lsn)}, past the unfinished snapshot "
            f"at {format_lsn(state.consistent_lsn)}: changes could be missing; drop the slot and "
            f"{store.path} to snapshot again"
        )
    specs: dict[str, TableSpec] = {}
    if state.phase == "running":
        specs = _plan(conn, s, state, tables, catalog)
    elif s.snapshot != "never":
        _queue_added_tables(state, listed)
    state.tables = listed
    store.save(state)
    connector.stats.snapshot = {"phase": state.phase}
    if state.phase == "running":
        connector.stats.state = "snapshotting"
        connector._report()
        snapshot = InitialSnapshot(connector, conn, producer, source, catalog, state, store, specs)
        if not snapshot.run(start.exported if start.new_slot else None):
            return False
    elif s.snapshot == "initial-only":
        log.info("the initial snapshot is already complete: nothing to do (--snapshot initial-only)")
    return s.snapshot != "initial-only"


def _plan(
    conn: psycopg.Connection[Any], s: Settings, state: SnapshotState, tables: list[str], catalog: TypeCatalog
) -> dict[str, TableSpec]:
    """Describe the tables; chunk the ones not planned yet; log where each resumes."""
    specs = {name: describe_table(conn, name, s.publication) for name in tables}
    for name in [n for n in state.plans if n not in specs]:
        log.info("table %s is no longer captured: dropped from the snapshot", name)
        del state.plans[name]
    resuming = any(plan.done for plan in state.plans.values())
    for name, spec in specs.items():
        plan = state.plans.get(name)
        if plan is None:
            bounds = chunk_bounds(conn, spec, table_from_spec(spec, catalog), s.snapshot_chunk_rows)
            estimate = max(spec.estimate, len(bounds) * s.snapshot_chunk_rows)
            state.plans[name] = TablePlan(bounds, estimate=estimate)
            if resuming:
                log.info("table %s joins the unfinished snapshot", name)
        elif plan.complete():
            log.info("snapshot of %s: already complete (%s rows)", name, f"{plan.rows:,}")
        elif plan.done:
            log.info(
                "snapshot of %s resumes from chunk %d of %d (%d chunks, %s rows already in kafka)",
                name, plan.first_pending() + 1, plan.chunks, len(plan.done), f"{plan.rows:,}",
            )  # fmt: skip
    state.plans = {name: state.plans[name] for name in specs}  # in table order
    return specs


def _queue_added_tables(state: SnapshotState, listed: list[str]) -> None:
    """Tables added to an explicit ``--tables`` since the last start get an incremental snapshot."""
    if not state.tables or not listed:
        return  # all tables: new ones are streamed from their creation
    queued = {task.table for task in state.incremental}
    for name in listed:
        if name not in state.tables and name not in queued:
            log.info("table %s was added to --tables: queueing an incremental snapshot of it", name)
            state.incremental.append(IncrementalTask(name))
    state.incremental = [task for task in state.incremental if task.table in listed]


# -- incremental snapshots ---------------------------------------------------------------


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
    reading: bool = True


class IncrementalSnapshots:
    """The stream session's incremental snapshots (DBLog watermarks), driven by its hooks.

    Hooks: `changed` for every streamed change to the watched table (the
    session calls it when ``relation_id == session.watched``), `watermark` for
    messages with `WATERMARK_PREFIX`, `tick` every status interval (requests,
    progress), `step` whenever `ready` (read the next chunk).
    """

    def __init__(
        self,
        connector: Connector,
        produce: Callable[[ChangeEvent, InFlight, str], None],
        ensure_topic: Callable[[str], None],
        versions: dict[str, tuple[Table, int]],
        watch: Callable[[int], None],
        catalog: TypeCatalog,
    ) -> None:
        self.connector = connector
        self.settings = connector.settings
        self.produce = produce
        self.ensure_topic = ensure_topic
        self.versions = versions
        self.watch = watch
        self.store = SnapshotStore(self.settings.instance_dir)
        self.requests = self.settings.instance_dir / "requests"
        self.state = self.store.load()
        self.reader: psycopg.Connection[Any] | None = None
        self.catalog = catalog
        self.watched: _Watched | None = None
        self.chunk: _Chunk | None = None
        self.touched: set[int] = set()  # xids of streamed changes to the watched table
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
        if mark.get("kind") != "high":
            log.debug("low watermark %s", chunk.id)
            return
        if txn is None or entry is None:
            raise DecodeError("a watermark outside a transaction", kind="MESSAGE")
        table = self._resolve(chunk.table)
        topic = table_topic(self.settings.topic_prefix, table)
        self.ensure_topic(topic)
        for values in chunk.rows.values():
            event = ChangeEvent(
                "r", table, None, values, message.lsn, txn.commit_lsn, txn.xid, txn.commit_ts_ms,
                snapshot="incremental",
            )  # fmt: skip
            self.produce(event, entry, topic)
        self.connector.stats.events_per_table[table.qualified_name] += len(chunk.rows)
        self.connector.stats.snapshot["incremental_dropped"] = self.dropped
        self.settling.append((entry, chunk.task, chunk.last_key, len(chunk.rows), chunk.final))
        log.debug(
            "chunk %s of %s: %d rows read, %d emitted",
            chunk.id, table.qualified_name, chunk.read, len(chunk.rows),
        )  # fmt: skip
        self.chunk = None
        self.ready = self.watched is not None

    def tick(self) -> None:
        """Every status interval: take requests, record chunks Kafka holds."""
        self._take_requests()
        changed = False
        while self.settling and self.settling[0][0].end_lsn and not self.settling[0][0].pending:
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
        if self.watched is None and self.chunk is None:
            self.ready = self._startable() is not None

    def step(self) -> None:
        """Read the next chunk between a low and a high watermark."""
        if time.monotonic() < self.retry_at:
            return
        watched = self.watched or self._next_table()
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
            with reader.transaction():
                row = reader.execute("SELECT pg_current_snapshot()::text").fetchone()
                assert row is not None
                snapshot = PgSnapshot.parse(str(row[0]))
                for line in copy_rows(reader, statement):
                    values = read_row(line)
                    rows[freeze([values[i] for i in keys])] = values
                    last = line
        except psycopg.OperationalError as exc:
            raise SourceUnavailable(f"incremental snapshot connection lost: {str(exc).strip()}") from None
        except SourceUnavailable:
            raise
        except SourceError as exc:  # the table was dropped or altered, or privileges changed
            log.warning("incremental snapshot of %s dropped: %s", watched.task.table, exc)
            self._drop(watched.task)
            return
        # a transaction the stream already delivered but the read did not see yet (a commit
        # that is in the WAL but not yet visible): the read is older than the topic; read again
        if any(snapshot.invisible(xid) for xid in self.touched):
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
            self.watched = None
            self.watch(-1)

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
            self.watched = _Watched(task, spec, table, task.last_key)
            self.touched = set()
            self.watch(table.relation_id)
            return self.watched
        return None

    def _drop(self, task: IncrementalTask) -> None:
        self.state.incremental = [t for t in self.state.incremental if t is not task]
        self.store.save(self.state)
        if self.watched is not None and self.watched.task is task:
            self.watched = None
            self.watch(-1)
        self._publish_stats()

    def _resolve(self, table: Table) -> Table:
        """The session's version of ``table`` when it has the same shape, else a new version."""
        name = table.qualified_name
        previous = self.versions.get(name)
        if previous is not None and previous[0].same_shape(table):
            return previous[0]
        table.version = previous[1] + 1 if previous else 1
        self.versions[name] = (table, table.version)
        return table

    def _reader(self) -> psycopg.Connection[Any]:
        if self.reader is None:
            s = self.settings
            self.reader = replication.connect(s.dsn, f"cdc-{s.name}-incremental")
            self.reader.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            self.reader.read_only = True
        return self.reader

    def _catalog_conn(self) -> psycopg.Connection[Any]:
        return self._reader()

    def _emit_watermark(self, reader: psycopg.Connection[Any], chunk_id: str, kind: str) -> None:
        content = orjson.dumps({"slot": self.settings.slot, "id": chunk_id, "kind": kind}).decode()
        with _pg_errors(
            "incremental snapshot",
            "cannot write a watermark",
            "grant EXECUTE on pg_logical_emit_message to the role",
        ):
            reader.execute("SELECT pg_logical_emit_message(true, %s, %s)", (WATERMARK_PREFIX, content))

    def _take_requests(self) -> None:
        try:
            entries = sorted(os.scandir(self.requests), key=lambda e: e.name)
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.endswith(".request.json"):
                continue
            path = Path(entry.path)
            try:
                wanted = [str(t) for t in orjson.loads(path.read_bytes())["tables"]]
            except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
                log.warning("ignoring the malformed request %s", path)
                path.unlink(missing_ok=True)
                continue
            accepted, rejected = self._accept(wanted)
            result = path.with_name(path.name.replace(".request.json", ".result.json"))
            write_atomic(result, orjson.dumps({"accepted": accepted, "rejected": rejected}))
            path.unlink(missing_ok=True)

    def _accept(self, wanted: list[str]) -> tuple[list[str], dict[str, str]]:
        s = self.settings
        captured = set(captured_tables(self._catalog_conn(), s))
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
        self.connector.stats.snapshot["incremental"] = [
            {"table": task.table, "rows": task.rows} for task in self.state.incremental
        ]


# -- requests from `cdc snapshot` --------------------------------------------------------


@dataclass(slots=True)
class RequestResult:
    accepted: list[str]
    rejected: dict[str, str]
    answered: bool  # False: the connector has not picked the request up yet


def request_snapshot(directory: Path, name: str, tables: list[str], timeout: float = 30.0) -> RequestResult:
    """Ask the running connector to snapshot ``tables`` incrementally; wait for its answer.

    Raises `CdcError` when no connector with this name runs. When it does not
    answer within ``timeout`` (it picks requests up only while streaming, so
    not during its initial snapshot) the request stays queued.
    """
    from cdc import control  # noqa: PLC0415 - control imports the connector, which imports this module

    if not tables:
        raise ConfigError("name at least one table: cdc snapshot schema.table ...")
    pid = control.running_pid(directory)
    if pid is None or pid <= 0:
        raise control.NotRunning(
            f"no connector named {name!r} is running (state dir {directory}): start it, then ask again"
        )
    request_id = f"{time.time_ns()}-{secrets.token_hex(4)}"
    requests = directory / "requests"
    path = requests / f"{request_id}.request.json"
    result = requests / f"{request_id}.result.json"
    write_atomic(path, orjson.dumps({"version": 1, "tables": tables, "requested_at": time.time()}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result.exists():
            try:
                answer = orjson.loads(result.read_bytes())
            except (OSError, orjson.JSONDecodeError) as exc:
                raise CheckpointError(f"cannot read the connector's answer {result}: {exc}") from None
            result.unlink(missing_ok=True)
            return RequestResult(list(answer["accepted"]), dict(answer["rejected"]), True)
        time.sleep(0.05)
    return RequestResult([], {}, False)
