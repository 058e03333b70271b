"""The target database: its tables as the sink sees them, its transactions, and the positions table.

One connection, not in autocommit: the runner opens a transaction, the
handler applies changes in it (in pipeline mode for `TableApplier`: the
statements go out without waiting for each answer), and `commit` writes the
position reached in every partition to the positions table, then commits.
Rows and positions commit together, so the target never holds a change
without its position or a position without its change: after a crash the
sink resumes from the positions, and never applies a change twice.

    CREATE TABLE cdc_sink_positions (
        "group" text, topic text, "partition" int,          -- the key
        "offset" bigint,      -- the last record of the partition that is applied (or skipped)
        lsn pg_lsn, total_order bigint,  -- its position in the source: repeats at or below it are dropped
        commit_ts timestamptz, record_ts bigint, applied_at timestamptz)

A position row is updated only if it still holds the offset this process
read it with (``WHERE "offset" = <expected>``): when another process of the
group took the partition and moved on, the update finds nothing, the whole
transaction rolls back (`Fenced`) and the sink starts over from the
positions. Every Postgres error goes through `cdc.pg`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import psycopg

from cdc import pg
from cdc.errors import CdcError, ConfigError
from cdc.kafka import Partition
from cdc.lsn import format_lsn, parse_lsn
from cdc.sink.apply import (
    Change,
    Position,
    Shape,
    Statement,
    TargetColumn,
    TargetTable,
    column_sql,
    ident,
    shape_from_values,
    split_table,
    statements,
)

log = logging.getLogger(__name__)

#: Server errors worth a new attempt rather than the end of the sink.
RETRIABLE: Final = frozenset({"40001", "40P01", "55P03", "57014"})

_FIX: Final = "check the target table and the role's privileges on the target"


class Fenced(CdcError):
    """Another process of the group moved a position this one was about to write: start over."""


@dataclass(slots=True, frozen=True)
class Stored:
    """A partition's position as the target holds it."""

    offset: int
    position: Position
    record_ts: int = -1
    commit_ts_ms: int = 0


#: Statements a `TableApplier` collects before it sends them.
_FLUSH_EVERY: Final = 2_000

_KIND_OF_BASE: Final = {
    "bytea": "bytea",
    "date": "date",
    "timestamp": "timestamp",
    "timestamptz": "timestamptz",
    "json": "json",
    "jsonb": "json",
    "bool": "bool",
}

_COLUMNS: Final = """
SELECT a.attname, format('%%I.%%I', tn.nspname, t.typname), b.typname, b.typcategory::text,
       coalesce(eb.typname, ''), coalesce(e.typdelim::text, ',')
  FROM pg_attribute a
  JOIN pg_type t ON t.oid = a.atttypid
  JOIN pg_namespace tn ON tn.oid = t.typnamespace
  JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
  LEFT JOIN pg_type e ON e.oid = b.typelem AND b.typcategory = 'A'
  LEFT JOIN pg_type eb ON eb.oid = CASE WHEN e.typtype = 'd' THEN e.typbasetype ELSE e.oid END
 WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum
"""

#: Unique indexes of a table on plain columns, the primary key first.
_KEYS: Final = """
SELECT i.indisprimary, array_agg(a.attname::text ORDER BY k.ord)
  FROM pg_index i
 CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
 WHERE i.indrelid = %s AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
 GROUP BY i.indexrelid, i.indisprimary
 ORDER BY i.indisprimary DESC
"""


_TABLE: Final = """
SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
"""

_LOAD: Final = """
SELECT topic, "partition", "offset", lsn::text, total_order, record_ts,
       (extract(epoch FROM commit_ts) * 1000)::bigint
  FROM {table}
 WHERE "group" = %s AND (topic, "partition") IN (SELECT * FROM unnest(%s::text[], %s::int[]))
"""

#: A partition's new position, written only over the offset this process read (else: no row back).
_STORE: Final = """
INSERT INTO {table} AS p ("group", topic, "partition", "offset", lsn, total_order, commit_ts, record_ts)
VALUES (%s, %s, %s, %s, %s::pg_lsn, %s, to_timestamp(%s::float8 / 1000), %s)
ON CONFLICT ("group", topic, "partition") DO UPDATE
   SET "offset" = EXCLUDED."offset", lsn = EXCLUDED.lsn, total_order = EXCLUDED.total_order,
       commit_ts = EXCLUDED.commit_ts, record_ts = EXCLUDED.record_ts, applied_at = now()
 WHERE p."offset" = %s
RETURNING 1
"""


def _kind(base: str, category: str) -> str:
    if category == "A":
        return "array"
    return _KIND_OF_BASE.get(base, "other")


class Target:
    """The target database of a sink: one connection, a context manager."""

    def __init__(
        self, dsn: str, positions_table: str, group: str, application_name: str = "cdc-sink"
    ) -> None:
        self.dsn = dsn
        self.group = group
        schema, _, name = positions_table.rpartition(".")
        self.positions = f"{ident(schema)}.{ident(name)}" if schema else ident(name)
        self.positions_name = positions_table
        self.conn = pg.connect(dsn, application_name, autocommit=False)
        self._pipeline: Any = None
        self._queued: list[Statement] = []
        self.tables: dict[tuple[str, str], TargetTable] = {}

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._queued.clear()
        self._pipeline = None
        with contextlib.suppress(psycopg.Error):  # a connection already lost
            self.conn.close()

    # -- set-up -------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the positions table unless it exists (once, whichever process of a group is first)."""
        with pg.errors(f"creating the positions table {self.positions_name}", _FIX):
            self.conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"cdc.sink:{self.positions_name}",)
            )
            self.conn.execute(
                f'CREATE TABLE IF NOT EXISTS {self.positions} ("group" text NOT NULL, topic text NOT NULL, '
                '"partition" int NOT NULL, "offset" bigint NOT NULL, lsn pg_lsn NOT NULL, '
                "total_order bigint NOT NULL, commit_ts timestamptz, record_ts bigint NOT NULL, "
                'applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY ("group", topic, "partition"))'
            )
            self.conn.commit()

    def load_positions(self, partitions: Iterable[Partition]) -> dict[Partition, Stored]:
        """The stored positions of ``partitions`` (those without one are left out)."""
        wanted = list(partitions)
        if not wanted:
            return {}
        with pg.errors("reading the positions", _FIX, RETRIABLE):
            rows = self.conn.execute(
                _LOAD.format(table=self.positions),
                (self.group, [p.topic for p in wanted], [p.partition for p in wanted]),
            ).fetchall()
        self.rollback()  # end the read: positions are read again, fresh, in every transaction
        return {
            Partition(topic, partition): Stored(
                offset, (parse_lsn(lsn), total_order), record_ts, commit_ts or 0
            )
            for topic, partition, offset, lsn, total_order, record_ts, commit_ts in rows
        }

    # -- transactions ---------------------------------------------------------------------------

    def begin(self, pipeline: bool) -> None:
        """Start collecting statements; with ``pipeline`` they are sent without waiting for answers."""
        if pipeline and self._pipeline is None:
            self._pipeline = self.conn.pipeline()
            self._pipeline.__enter__()

    def execute(self, statements: Sequence[Statement]) -> None:
        with pg.errors("applying changes to the target", _FIX, RETRIABLE):
            for text, params in statements:
                self.conn.execute(text, params)

    def queue(self, statements: Sequence[Statement]) -> None:
        """Run ``statements`` in this transaction, soon: they are collected and sent in order, a run
        of one statement as one executemany, before anything else runs on the connection that may
        depend on them (a catalog read, DDL, the commit); `rollback` drops them."""
        self._queued += statements
        if len(self._queued) >= _FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        """Send what `queue` collected."""
        queued, self._queued = self._queued, []
        if not queued:
            return
        with pg.errors("applying changes to the target", _FIX, RETRIABLE), self.conn.cursor() as cursor:
            for text, group in itertools.groupby(queued, key=lambda s: s[0]):
                cursor.executemany(text, [params for _, params in group])

    def _sync(self) -> None:
        """Leave pipeline mode: every statement sent is answered (an error among them raises here)."""
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            with pg.errors("applying changes to the target", _FIX, RETRIABLE):
                pipeline.__exit__(None, None, None)

    def _exit_pipeline(self) -> None:
        """Leave pipeline mode after a failure, whatever it still holds (the transaction is rolled back)."""
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            with contextlib.suppress(psycopg.Error):
                pipeline.__exit__(None, None, None)

    def commit(self, positions: Mapping[Partition, tuple[Stored, int | None]]) -> None:
        """Write each partition's new position (if the row still holds the expected offset), then commit.

        ``positions``: partition -> (the new position, the offset the row holds now, None: no row).
        Raises `Fenced` (after rolling back) when a row moved under this process.
        """
        self.flush()
        self._sync()
        with pg.errors("storing the positions", _FIX, RETRIABLE):
            for partition, (stored, expected) in positions.items():
                row = self.conn.execute(
                    _STORE.format(table=self.positions),
                    (
                        self.group,
                        partition.topic,
                        partition.partition,
                        stored.offset,
                        # records that are not change events (an outbox's) have no position: 0/0
                        format_lsn(max(stored.position[0], 0)),
                        max(stored.position[1], 0),
                        stored.commit_ts_ms or None,
                        stored.record_ts,
                        expected,
                    ),
                ).fetchone()
                if row is None:
                    self.rollback()
                    raise Fenced(
                        f"the position of {partition.topic}[{partition.partition}] moved under this sink "
                        f"(another process of group {self.group!r}): starting over from the stored positions"
                    )
            self.conn.commit()

    def rollback(self) -> None:
        """Forget everything since the last commit (the tables created in it, the queue too)."""
        self._queued.clear()
        self._exit_pipeline()
        self.tables.clear()
        with contextlib.suppress(psycopg.Error):  # a lost connection rolls back by itself
            self.conn.rollback()

    # -- tables -------------------------------------------------------------------------------

    def table(self, schema: str, name: str, key_hint: Sequence[str] = ()) -> TargetTable | None:
        """The target table ``schema.name`` as its catalog says (cached), None if it does not exist.

        Its key is its primary key, else a unique index on the record key's columns (``key_hint``).
        """
        found = self.tables.get((schema, name))
        if found is not None:
            return found
        self.flush()
        with pg.errors(f"reading the catalog of the target table {schema}.{name}", _FIX, RETRIABLE):
            row = self.conn.execute(
                "SELECT to_regclass(%s)::oid", (f"{ident(schema)}.{ident(name)}",)
            ).fetchone()
            oid = row[0] if row else None
            if oid is None:
                return None
            columns = {
                attname: TargetColumn(attname, cast, _kind(base, category), _kind(element, ""), delimiter)
                for attname, cast, base, category, element, delimiter in self.conn.execute(_COLUMNS, (oid,))
            }
            keys = self.conn.execute(_KEYS, (oid,)).fetchall()
        key: tuple[str, ...] = ()
        for primary, names in keys:
            if primary or set(names) == set(key_hint):
                key = tuple(names)
                break
        found = TargetTable(schema, name, columns, key)
        self.tables[(schema, name)] = found
        return found

    def create(self, schema: str, name: str, shape: Shape) -> TargetTable:
        """Create ``schema.name`` for ``shape`` (its key as primary key), unless another process did."""
        self.flush()
        with pg.errors(f"creating the target table {schema}.{name}", _FIX, RETRIABLE):
            self._lock(schema, name)
            existing = self.table(schema, name, shape.key)
            if existing is not None:
                return existing
            types = self._types(shape.columns)
            columns = [f"{ident(c.name)} {types[c.name]}" for c in shape.columns]
            if shape.key:
                columns.append(f"PRIMARY KEY ({', '.join(ident(k) for k in shape.key)})")
            self.conn.execute(f"CREATE SCHEMA IF NOT EXISTS {ident(schema)}")
            self.conn.execute(
                f"CREATE TABLE IF NOT EXISTS {ident(schema)}.{ident(name)} ({', '.join(columns)})"
            )
        created = self.table(schema, name, shape.key)
        assert created is not None
        log.info(
            "created the target table %s.%s (%s columns%s)",
            schema, name, len(shape.columns), f", key {', '.join(shape.key)}" if shape.key else ", no key",
        )  # fmt: skip
        return created

    def add_columns(self, table: TargetTable, shape: Shape, names: Sequence[str]) -> TargetTable:
        """Add the columns ``names`` of ``shape`` that ``table`` lacks (a column added at the source)."""
        self.flush()
        with pg.errors(f"adding columns to the target table {table}", _FIX, RETRIABLE):
            self._lock(table.schema, table.name)
            self.tables.pop((table.schema, table.name), None)
            current = self.table(table.schema, table.name, shape.key)
            assert current is not None
            wanted = [c for c in shape.columns if c.name in names and c.name not in current.columns]
            types = self._types(wanted)
            for column in wanted:
                added = f"{ident(column.name)} {types[column.name]}"
                self.conn.execute(f"ALTER TABLE {current.qualified} ADD COLUMN IF NOT EXISTS {added}")
        if wanted:
            log.info("added to the target table %s: %s", table, ", ".join(c.name for c in wanted))
        self.tables.pop((table.schema, table.name), None)
        updated = self.table(table.schema, table.name, shape.key)
        assert updated is not None
        return updated

    def _lock(self, schema: str, name: str) -> None:
        """Held until the transaction ends: one process of a group creates or alters a table at a time."""
        self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"cdc.sink:{schema}.{name}",))

    def _types(self, columns: Sequence[Any]) -> dict[str, str]:
        """The SQL type of each column to create (`cdc.sink.apply.column_sql`), asked of the target."""
        pairs = [(c.oid, c.typmod) for c in columns if c.oid]
        builtin = {
            (oid, typmod): text
            for oid, typmod, text in self.conn.execute(
                "SELECT o::int8, m, format_type(o, m) FROM unnest(%s::oid[], %s::int[]) AS x(o, m) "
                "WHERE o < 16384 AND EXISTS (SELECT FROM pg_type WHERE oid = o)",
                ([p[0] for p in pairs], [p[1] for p in pairs]),
            )
        }
        names = sorted({c.type_name for c in columns if c.type_name and c.oid})
        known = frozenset(
            name
            for (name,) in self.conn.execute(
                "SELECT n FROM unnest(%s::text[]) AS n WHERE to_regtype(n) IS NOT NULL", (names,)
            )
        )
        return {c.name: column_sql(c, builtin, known) for c in columns}


class TableApplier:
    """The handler of `cdc sink postgres`: each change applied to its table in the target.

    A source table ``schema.table`` goes to the same name in the target, or to
    the one ``table_map`` gives. A missing table is created from the change's
    `Shape` (with ``create_tables``), and so is a column the source added.
    """

    pipeline = True  # its statements need no answer: the runner sends them in pipeline mode

    def __init__(self, table_map: Mapping[str, str], placeholder: str, create_tables: bool = True) -> None:
        self.table_map = dict(table_map)
        self.placeholder = placeholder
        self.create_tables = create_tables
        self.target: Target | None = None
        self._warned: set[str] = set()

    def open(self, target: Target) -> None:
        """Called by the runner with each new target connection."""
        self.target = target

    def __call__(self, db: psycopg.Connection[Any], change: Change) -> None:
        if change.op in ("", "m") or change.table is None:
            return  # logical messages and foreign records are not rows
        target = self.target
        assert target is not None, "TableApplier used outside a Sink"
        schema, name = split_table(self.table_map.get(change.table, change.table))
        table = self._table(target, schema, name, change)
        if table is None:
            return
        target.queue(statements(change, table, self.placeholder))

    def _table(self, target: Target, schema: str, name: str, change: Change) -> TargetTable | None:
        known = target.tables.get((schema, name))
        if known is not None and (change.after is None or all(c in known.columns for c in change.after)):
            return known
        shape = change.shape
        row = change.after or change.before or {}
        if shape is None and row:
            shape = shape_from_values(
                change.table or "", change.key if isinstance(change.key, dict) else None, row
            )
        hint = shape.key if shape is not None else ()
        table = target.table(schema, name, hint)
        if table is None:
            if change.op in ("d", "t") and (shape is None or not shape.exact):
                return None  # nothing there to delete, and no types to create it with
            if not self.create_tables or shape is None:
                raise ConfigError(
                    f"the target table {schema}.{name} (for {change.table}) does not exist: create it, "
                    "or let the sink create it (--create-tables)"
                )
            return target.create(schema, name, shape)
        missing = [column for column in row if column not in table.columns]
        if missing:
            if self.create_tables and shape is not None:
                return target.add_columns(table, shape, missing)
            if str(table) not in self._warned:
                self._warned.add(str(table))
                log.warning(
                    "the target table %s has no column %s: its values are dropped", table, ", ".join(missing)
                )
        return table
