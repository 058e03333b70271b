"""Tables as the snapshots see them: described from the catalog, cut into key chunks, read with COPY.

A snapshot row must become exactly the event the stream would make of the
same row: `describe_table` builds from the catalog the columns, types and
key flags the Relation message carries (so `table_from_spec` gives a `Table`
of the same shape, hence the same Avro schema), and `copy_fields` undoes
COPY's escapes so each value is byte for byte the text pgoutput sends.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import generators, pq, sql
from psycopg.errors import error_from_result

from cdc import pg, replication
from cdc.errors import DecodeError, SourceError
from cdc.events import Table, TableColumn
from cdc.pgoutput import ReplicaIdentity
from cdc.pgtypes import TypeCatalog, column_type, row_parser
from cdc.shaping.select import Selection, TablePattern


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
    #: the publication's row filter of the table (PostgreSQL 15+), as the server prints it: the
    #: snapshot reads only the rows the stream would send
    row_filter: str | None = None
    #: at most this many rows when described (from the heap's size); None: unknown
    max_rows: int | None = None

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"


def normalize_table(table: str) -> str:
    return ".".join(replication.split_table(table))


def captured_tables(
    conn: psycopg.Connection[Any], tables: list[str], publication: str, exclude: list[str] | None = None
) -> list[str]:
    """The tables this connector captures: ``--tables`` names, or the tables of its publication that
    ``--tables`` patterns (every table without any) and ``--exclude-tables`` select."""
    selection = Selection(
        tuple(TablePattern.parse(t) for t in tables), tuple(TablePattern.parse(t) for t in exclude or ())
    )
    if selection.exact:
        return [normalize_table(t) for t in tables]
    published = replication.publication_tables(conn, publication)
    return sorted({*selection.pick(published[1] if published else ()), *selection.names})


_CHECK_TABLE: Final = "check the table and the role's privileges"


def _query(conn: psycopg.Connection[Any], query: pg.Query, params: Any = None) -> list[tuple[Any, ...]]:
    return pg.query(conn, query, params, doing="snapshot planning", fix=_CHECK_TABLE)


_GENERATED: Final = sql.SQL(
    "coalesce((SELECT p.pubgencols = 's' FROM pg_publication p WHERE p.pubname = %(pub)s), false)"
)
_LISTED: Final = sql.SQL(
    """(SELECT json_build_array(pr.prattrs::int2[], pg_get_expr(pr.prqual, pr.prrelid))
          FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
         WHERE p.pubname = %(pub)s AND pr.prrelid = c.oid)"""
)
_INDEX: Final = sql.SQL(
    """(SELECT coalesce(json_agg(a.attname ORDER BY k.n), '[]') FROM pg_index i
          CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = c.oid AND i.{})"""
)
#: the heap's size; pg_relation_size waits for a lock the table's ACCESS EXCLUSIVE holder blocks
_SIZE: Final = sql.SQL(
    """CASE WHEN c.relkind = 'p'
            THEN (SELECT coalesce(sum(pg_relation_size(t.relid)), 0) FROM pg_partition_tree(c.oid) t)
            ELSE pg_relation_size(c.oid) END::bigint"""
)
#: everything `describe_table` needs in one round trip: a database of thousands of small tables
#: is planned in seconds
_DESCRIBE: Final = sql.SQL(
    """SELECT c.oid, n.nspname, c.relname, c.relkind, c.relreplident,
              CASE WHEN c.relkind = 'p'
                   THEN (SELECT coalesce(sum(greatest(l.reltuples, 0)), 0) FROM pg_partition_tree(c.oid) t
                           JOIN pg_class l ON l.oid = t.relid WHERE t.isleaf)
                   ELSE greatest(c.reltuples, 0) END::bigint,
              {size},
              {listed},
              (SELECT coalesce(json_agg(json_build_array(a.attnum, a.attname, a.atttypid::int8, a.atttypmod,
                                                         format_type(a.atttypid, a.atttypmod))
                                        ORDER BY a.attnum), '[]')
                 FROM pg_attribute a
                WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                  AND (a.attgenerated = '' OR (a.attgenerated = 's' AND {generated}))),
              {primary},
              {replident}
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = to_regclass(%(table)s)"""
)


def describe_table(
    conn: psycopg.Connection[Any], table: str, publication: str, size: bool = False
) -> TableSpec:
    """Build the spec of ``table`` so that it matches the Relation message pgoutput sends.

    Published columns: not dropped, not generated (PostgreSQL 18 publishes
    stored generated columns when the publication says so), restricted to the
    publication's column list if it has one. Key flags follow the replica
    identity: DEFAULT -> primary key, INDEX -> that index, FULL -> every column.
    The publication's row filter (PostgreSQL 15+) is kept for `copy_statement`:
    a hand-made publication's as well as the one cdc makes from ``--row-filter``.
    With ``size``, `TableSpec.max_rows` bounds the rows by the heap's size (which
    waits for a lock that an ACCESS EXCLUSIVE holder keeps).
    """
    version = conn.info.server_version
    generated = _GENERATED if version >= 180000 else sql.SQL("false")
    listed = _LISTED if version >= 150000 else sql.SQL("NULL::json")
    rows = _query(
        conn,
        _DESCRIBE.format(
            generated=generated,
            listed=listed,
            size=_SIZE if size else sql.SQL("NULL::bigint"),
            primary=_INDEX.format(sql.Identifier("indisprimary")),
            replident=_INDEX.format(sql.Identifier("indisreplident")),
        ),
        {"table": replication.quote_table(table), "pub": publication},
    )
    if not rows:
        raise SourceError(f"table {table} does not exist: create it or fix --tables")
    oid, schema, name, kind, replident, estimate, heap, listed_row, columns, primary, by_index = rows[0]
    attrs: list[int] | None = None
    row_filter: str | None = None
    if listed_row is not None:
        if listed_row[0] is not None:
            attrs = [int(a) for a in listed_row[0]]
        if listed_row[1] is not None:
            row_filter = str(listed_row[1])
    if attrs is not None:
        columns = [c for c in columns if c[0] in attrs]
    identity: set[str] = set()
    if replident == "d":
        identity = set(primary)
    elif replident == "i":
        identity = set(by_index)
    elif replident == "f":
        identity = {str(c[1]) for c in columns}
    return TableSpec(
        relation_id=int(oid),
        schema=str(schema),
        name=str(name),
        kind=str(kind),
        replica_identity=ord(replident),
        columns=tuple(
            ColumnSpec(str(n), int(t), int(m), str(f), str(n) in identity) for _, n, t, m, f in columns
        ),
        primary_key=tuple(str(c) for c in primary),
        estimate=int(estimate),
        row_filter=row_filter,
        max_rows=None if heap is None else int(heap) // _MIN_ROW_BYTES,
    )


#: a heap row takes at least its 24-byte header and a 4-byte line pointer: a table's size over
#: this bounds its row count, so a small table is planned as one chunk without reading its keys
_MIN_ROW_BYTES: Final = 28


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
    the first ``limit`` keys after ``after`` in key order. Only the rows the
    publication's row filter admits, as the stream sends only those.
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
    if spec.row_filter is not None:
        # as the server printed it from the publication (pg_get_expr): SQL it parses again
        conditions.append(sql.SQL("({})").format(sql.SQL(spec.row_filter)))
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
    """The rows of a COPY TO STDOUT, each without its newline.

    The rows libpq already holds are taken from it straight (`PGconn.get_copy_data`): 0.36 us a
    row, where psycopg's `Copy.read` costs 0.72 (a generator and a wait per row), a tenth of a
    snapshot worker's CPU. `Copy.read` still waits when none is buffered, and when libpq says the
    COPY ended, its result is collected as psycopg's own ``copy_from`` does.
    """
    with (
        pg.errors("snapshot read", _CHECK_TABLE),
        conn.cursor() as cur,
        cur.copy(statement) as copy,
    ):
        read, buffered = copy.read, conn.pgconn.get_copy_data
        while data := read():
            yield bytes(data[:-1])
            while (got := buffered(1))[0] > 0:
                yield bytes(got[1][:-1])
            if got[0] < 0:  # the end (or an error) came right after the buffered rows
                _end_copy(conn)
                return


def _end_copy(conn: psycopg.Connection[Any]) -> None:
    """The final result of a COPY TO whose end `PGconn.get_copy_data` returned, checked.

    psycopg's `Copy` did not see the end, so its exit does nothing more (a COPY TO's ``finish``
    only cancels on an error); the connection is ready for the next command.
    """
    results = conn.wait(generators.fetch_many(conn.pgconn))
    if not results or results[0].status != pq.ExecStatus.COMMAND_OK:
        if results:
            raise error_from_result(results[0], encoding=conn.info.encoding)
        raise psycopg.OperationalError("the COPY ended without a result")


def freeze(values: list[Any]) -> tuple[Any, ...]:
    """A key as a dict key (arrays are lists: make them tuples)."""
    return tuple(freeze(v) if isinstance(v, list) else v for v in values)
