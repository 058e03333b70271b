"""Change events -> SQL for a target table. Pure: no I/O; `cdc.sink.postgres` runs what this builds.

Three pieces, each a small pure function of what it is given:

- `change_from_record`: a consumed record (decoded by `cdc.consume`, Avro or
  JSON, both rendered as DESIGN.md's type table) -> a `Change`, with its
  position ``(commit_lsn, total_order)`` and, for Avro, the `Shape` of its
  table from the writer schemas (every column's ``pg.oid``, ``pg.typmod``,
  ``pg.type``; the key from the key schema).
- `column_sql`: the SQL type a target column gets when the sink creates the
  table: the source type itself when the target knows it, else one mapped
  back from the Avro type (an enum or an extension type becomes ``text``).
- `statements`: one change -> the statements that apply it to a
  `TargetTable` (its columns' types read from the target's catalog):

      c, r, u   INSERT ... ON CONFLICT (key) DO UPDATE SET <the columns the event carries>
      u, key changed
                WITH moved AS (UPDATE t SET key = new, ... WHERE key = old RETURNING 1)
                INSERT ... SELECT ... WHERE NOT EXISTS (SELECT FROM moved) ON CONFLICT ...
      d         DELETE FROM t WHERE key = ...
      t         TRUNCATE t
      (keyless) INSERT; UPDATE / DELETE of one row equal to ``before`` (REPLICA IDENTITY FULL)

  A column holding the connector's placeholder of an unchanged TOAST value is
  left out, so it keeps the value the target has. Every value goes as text
  with an explicit cast to the target column's type (its name without a
  type modifier, so that the assignment checks the length and rounds as an
  INSERT would), so the server parses it as it parses its own output; only
  what the JSON rendering changed is undone here: bytea from base64, arrays
  from JSON lists, dates and timestamps of years BC from ISO's signed years.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from cdc.consume import Record
from cdc.errors import SchemaError

#: A change's place in the source's history: (commit LSN, index in its transaction from 1; 0 for
#: snapshot reads and the connector's other events outside a transaction).
Position = tuple[int, int]

ENVELOPE_OPS: Final = frozenset("cudrtm")


@dataclass(slots=True, frozen=True)
class SourceColumn:
    """A column of a source table as its change records describe it."""

    name: str
    oid: int  # pg.oid; 0 when the records carry no types (--format json)
    typmod: int
    type_name: str  # pg.type ("numeric", "text[]", "mood"), or the type guessed from a JSON value
    avro: str  # the Avro kind of its values: "long", "decimal", "array:string", ... ("" for JSON)


@dataclass(slots=True, frozen=True)
class Shape:
    """One version of a source table: its columns in order and its key (the Kafka record key's)."""

    table: str  # schema.table
    columns: tuple[SourceColumn, ...]
    key: tuple[str, ...]
    exact: bool  # from writer schemas; False: guessed from the values of a JSON record

    def column(self, name: str) -> SourceColumn | None:
        for column in self.columns:
            if column.name == name:
                return column
        return None


@dataclass(slots=True)
class Change:
    """One consumed record: a change event of a cdc topic, or any other record (``op`` empty).

    ``key``, ``before``, ``after`` are rendered as DESIGN.md's type table says,
    by column name; ``value`` is the record's value as decoded, whatever it is
    (an outbox event's payload: JSON decoded; its key the aggregate id, its
    ``headers`` ``id`` and ``type``).
    """

    topic: str
    partition: int
    offset: int
    timestamp: int  # the Kafka record's, Unix ms
    value: Any
    key: Any = None
    op: str = ""  # c u d r t m; "" for a record that is not a change event
    table: str | None = None  # schema.table
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    commit_lsn: int = 0
    total_order: int = 0
    commit_ts_ms: int = 0
    transaction_id: str | None = None
    snapshot: str | None = None
    message_prefix: str | None = None
    message_content: bytes | None = None
    shape: Shape | None = None
    size: int = 0  # bytes as consumed: for the batch bounds
    headers: dict[str, bytes] = field(default_factory=dict)  # the Kafka record's (an outbox event's id, type)

    @property
    def position(self) -> Position | None:
        """(commit_lsn, total_order), unique and increasing for the connector's changes; None for a
        record that is not one."""
        return (self.commit_lsn, self.total_order) if self.op else None

    @property
    def source(self) -> dict[str, Any]:
        value = self.value if isinstance(self.value, dict) else {}
        source = value.get("source")
        return source if isinstance(source, dict) else {}


def change_from_record(record: Record, shape: Shape | None = None, size: int = 0) -> Change | None:
    """The `Change` of a decoded record; None for a tombstone (the delete before it did the work)."""
    value = record.value
    if value is None:
        return None
    change = Change(record.topic, record.partition, record.offset, record.timestamp, value, record.key)
    change.size = size
    if record.headers:
        change.headers = dict(record.headers)
    if not (
        isinstance(value, dict) and value.get("op") in ENVELOPE_OPS and isinstance(value.get("source"), dict)
    ):
        return change  # not a change event: a handler makes of it what it is
    source = value["source"]
    transaction = value.get("transaction") or {}
    change.op = value["op"]
    if source.get("schema") is not None and source.get("table") is not None:
        change.table = f"{source['schema']}.{source['table']}"
    change.before = value.get("before")
    change.after = value.get("after")
    change.commit_lsn = int(source.get("commit_lsn") or 0)
    change.commit_ts_ms = int(source.get("ts_ms") or 0)
    change.snapshot = source.get("snapshot")
    if transaction:
        change.total_order = int(transaction.get("total_order") or 0)
        change.transaction_id = transaction.get("id")
    message = value.get("message")
    if change.op == "m" and isinstance(message, dict):
        change.message_prefix = message.get("prefix")
        content = message.get("content")
        change.message_content = base64.b64decode(content) if isinstance(content, str) else content
    change.shape = shape
    return change


# -- shapes ---------------------------------------------------------------------------------------


def _branches(avro_type: Any) -> list[Any]:
    return [b for b in (avro_type if isinstance(avro_type, list) else [avro_type]) if b != "null"]


def avro_kind(avro_type: Any) -> str:
    """The kind of a column's non-null values: a primitive, a logical type, ``array:<kind>``."""
    branches = _branches(avro_type)
    if not branches:
        return "null"
    first = branches[0]
    if isinstance(first, dict):
        logical = first.get("logicalType")
        if isinstance(logical, str):
            return logical
        kind = first.get("type")
        if kind == "array":
            return "array:" + avro_kind(first.get("items"))
        if isinstance(kind, str | list | dict):
            return avro_kind(kind)
    return str(first)


def _row_record(value_schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``Value`` record of an envelope schema (defined inline in its ``before`` field)."""
    for field_ in value_schema.get("fields", ()):
        if field_.get("name") == "before":
            for branch in _branches(field_.get("type")):
                if isinstance(branch, dict) and branch.get("type") == "record":
                    return branch
    raise SchemaError(f"not a cdc change envelope: {value_schema.get('name')!r} has no before record")


def _source_column(field_: Mapping[str, Any]) -> SourceColumn:
    return SourceColumn(
        str(field_.get("pg.name") or field_["name"]),
        int(field_.get("pg.oid") or 0),
        int(field_.get("pg.typmod", -1)),
        str(field_.get("pg.type") or ""),
        avro_kind(field_.get("type")),
    )


def shape_from_schemas(
    table: str, key_schema: Mapping[str, Any] | None, value_schema: Mapping[str, Any]
) -> Shape:
    """The shape of a table version from its writer schemas (`cdc.avro.value_schema` / `key_schema`)."""
    columns = tuple(_source_column(f) for f in _row_record(value_schema)["fields"])
    key: tuple[str, ...] = ()
    if key_schema is not None and key_schema.get("type") == "record":
        key = tuple(str(f.get("pg.name") or f["name"]) for f in key_schema["fields"])
    return Shape(table, columns, key, exact=True)


def _guess(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "bigint"
    if isinstance(value, float):
        return "double precision"
    if isinstance(value, list | dict):
        return "jsonb"
    return "text"


def shape_from_values(table: str, key: Mapping[str, Any] | None, row: Mapping[str, Any]) -> Shape:
    """A shape guessed from a JSON record (no types travel with ``--format json``)."""
    columns = tuple(SourceColumn(name, 0, -1, _guess(value), "") for name, value in row.items())
    return Shape(table, columns, tuple(key or ()), exact=False)


#: SQL types for the Avro kinds, for a column whose source type the target does not have.
_SQL_OF_AVRO: Final = {
    "boolean": "boolean",
    "int": "integer",
    "long": "bigint",
    "float": "real",
    "double": "double precision",
    "string": "text",
    "bytes": "bytea",
    "decimal": "numeric",
    "date": "date",
    "time-micros": "time",
    "timestamp-micros": "timestamptz",
    "local-timestamp-micros": "timestamp",
    "uuid": "uuid",
}

#: The first OID of objects created after initdb: below it, a type is built in, the same everywhere.
FIRST_NORMAL_OID: Final = 16384


def column_sql(column: SourceColumn, builtin: Mapping[tuple[int, int], str], known: frozenset[str]) -> str:
    """The SQL type of a column the sink creates.

    ``builtin``: the target's ``format_type`` of the built-in (oid, typmod) pairs; ``known``:
    the names of ``pg.type`` that exist in the target (an enum or a domain made there too).
    """
    if column.oid and column.oid < FIRST_NORMAL_OID and (column.oid, column.typmod) in builtin:
        return builtin[(column.oid, column.typmod)]
    if column.type_name and column.type_name in known:
        return quote_type(column.type_name)
    if column.avro:
        kind, depth = column.avro, 0
        while kind.startswith("array:"):
            kind, depth = kind[6:], depth + 1
        return _SQL_OF_AVRO.get(kind, "text") + "[]" * depth
    return column.type_name or "text"


def quote_type(name: str) -> str:
    """A type name as SQL: ``schema.name`` parts quoted, ``[]`` kept."""
    base, brackets = name, ""
    while base.endswith("[]"):
        base, brackets = base[:-2], brackets + "[]"
    return ".".join(ident(part) for part in base.split(".")) + brackets


# -- the target's side ----------------------------------------------------------------------------

#: Kinds of target columns whose values need more than ``str``: see `param`.
KINDS: Final = frozenset({"bytea", "array", "date", "timestamp", "timestamptz", "json", "bool", "other"})


@dataclass(slots=True, frozen=True)
class TargetColumn:
    """A column of a target table as its catalog says."""

    name: str
    cast: str  # the type to cast a value to: its name without a type modifier, quoted
    kind: str  # one of KINDS (of the base type, for a domain)
    element: str = ""  # arrays: the kind of their elements
    delimiter: str = ","  # arrays: between elements


@dataclass(slots=True)
class TargetTable:
    """A target table: its columns by name, and the key its rows are identified by."""

    schema: str
    name: str
    columns: dict[str, TargetColumn]
    key: tuple[str, ...]  # its primary key (or the unique key matching the record key); () for none
    _sql: dict[Any, str] = field(default_factory=dict, repr=False)  # statements by their shape

    @property
    def qualified(self) -> str:
        return f"{ident(self.schema)}.{ident(self.name)}"

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


def ident(name: str) -> str:
    """An identifier quoted for SQL (and ``%`` doubled: the text goes through psycopg's placeholders)."""
    return '"' + name.replace('"', '""').replace("%", "%%") + '"'


def split_table(name: str, default_schema: str = "public") -> tuple[str, str]:
    schema, dot, table = name.partition(".")
    return (schema, table) if dot else (default_schema, schema)


# -- values -------------------------------------------------------------------------------------

_SIGNED_YEAR = re.compile(r"([+-])(\d{4,})(-.*)", re.S)


def _calendar(text: str) -> str:
    """A rendered date or timestamp as Postgres reads it: ISO's signed years (``-0043`` is 44 BC,
    ``+10000``) become ``0044-... BC`` and ``10000-...``; a trailing ``Z`` is ``+00``."""
    match = _SIGNED_YEAR.fullmatch(text)
    if match is None:
        return text
    sign, digits, rest = match.groups()
    year = -int(digits) if sign == "-" else int(digits)
    if rest.endswith("Z"):
        rest = rest[:-1] + "+00"
    if year >= 1:
        return f"{year:04d}{rest}"
    return f"{1 - year:04d}{rest} BC"


def _scalar_text(value: Any, kind: str) -> str | bytes:
    """One non-null rendered value as the text (or bytes) its column's type reads."""
    if kind == "bytea":
        if isinstance(value, str):
            return base64.b64decode(value)
        return bytes(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    text = str(value)
    if kind in ("date", "timestamp", "timestamptz"):
        return _calendar(text)
    return text


def _array_element(value: Any, kind: str, delimiter: str) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, list):
        return _array_literal(value, kind, delimiter)
    text = _scalar_text(value, kind)
    if isinstance(text, bytes):
        text = "\\x" + text.hex()
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _array_literal(values: list[Any], kind: str, delimiter: str) -> str:
    return "{" + delimiter.join(_array_element(v, kind, delimiter) for v in values) + "}"


def param(value: Any, column: TargetColumn) -> str | bytes | None:
    """A rendered value as the parameter for ``%s::<column.cast>``."""
    if value is None:
        return None
    if column.kind == "array" and isinstance(value, list):
        return _array_literal(value, column.element, column.delimiter)
    if column.kind == "json" and not isinstance(value, str):
        return orjson.dumps(value).decode()
    return _scalar_text(value, column.kind)


def unavailable(value: Any, column: TargetColumn | None, placeholder: str) -> bool:
    """Is this the connector's placeholder of an unchanged TOAST value (the column keeps its value)?"""
    if isinstance(value, str):
        if value == placeholder:
            return True
        return column is not None and column.kind == "bytea" and value == _b64(placeholder)
    return isinstance(value, list) and value == [placeholder]


_B64: dict[str, str] = {}


def _b64(text: str) -> str:
    found = _B64.get(text)
    if found is None:
        found = _B64[text] = base64.b64encode(text.encode()).decode()
    return found


# -- statements -----------------------------------------------------------------------------------

Statement = tuple[str, tuple[Any, ...]]


class CannotApply(SchemaError):
    """A change the target table cannot take as it is (no key to find the row by, ...)."""


def statements(change: Change, table: TargetTable, placeholder: str) -> list[Statement]:
    """The statements that apply ``change`` to ``table`` (empty: nothing to do, e.g. a message).

    Raises `CannotApply` when the row cannot be found (a delete without key or before row).
    """
    op = change.op
    if op == "t":
        return [(f"TRUNCATE {table.qualified}", ())]
    if op in ("c", "r", "u"):
        row = change.after
        if row is None:
            raise CannotApply(f"a {op!r} event of {change.table} without an after row")
        if not table.key:
            if op == "u":
                return _keyless_update(change, table, row, placeholder)
            return [_insert(table, row, placeholder)]
        old = _old_key(change, table) if op == "u" else None
        if old is not None:
            return [_move(table, old, row, placeholder)]
        return [_upsert(table, row, placeholder)]
    if op == "d":
        if not table.key:
            return _keyless_delete(change, table, placeholder)
        key = _key_values(change, table, change.key, change.before)
        return [_delete(table, key)]
    return []  # m: logical messages are not rows


def _available(
    table: TargetTable, row: Mapping[str, Any], placeholder: str
) -> list[tuple[TargetColumn, Any]]:
    """The row's columns the target has, without those the connector could not send (TOAST)."""
    columns = table.columns
    found = []
    for name, value in row.items():
        column = columns.get(name)
        if column is not None and not unavailable(value, column, placeholder):
            found.append((column, value))
    return found


def _cast(column: TargetColumn) -> str:
    return f"%s::{column.cast}"


def _insert(table: TargetTable, row: Mapping[str, Any], placeholder: str) -> Statement:
    pairs = _available(table, row, placeholder)
    names = tuple(c.name for c, _ in pairs)
    text = table._sql.get(("insert", names))
    if text is None:
        columns = ", ".join(ident(c.name) for c, _ in pairs)
        values = ", ".join(_cast(c) for c, _ in pairs)
        text = table._sql[("insert", names)] = f"INSERT INTO {table.qualified} ({columns}) VALUES ({values})"
    return text, tuple(param(v, c) for c, v in pairs)


def _conflict(table: TargetTable, names: tuple[str, ...]) -> str:
    keys = ", ".join(ident(k) for k in table.key)
    updates = [f"{ident(n)} = EXCLUDED.{ident(n)}" for n in names if n not in table.key]
    if not updates:
        return f" ON CONFLICT ({keys}) DO NOTHING"
    return f" ON CONFLICT ({keys}) DO UPDATE SET " + ", ".join(updates)


def _upsert(table: TargetTable, row: Mapping[str, Any], placeholder: str) -> Statement:
    pairs = _available(table, row, placeholder)
    names = tuple(c.name for c, _ in pairs)
    missing = [k for k in table.key if k not in names]
    if missing:
        raise CannotApply(f"the row has no value for the key column {missing[0]!r} of {table}")
    text = table._sql.get(("upsert", names))
    if text is None:
        columns = ", ".join(ident(n) for n in names)
        values = ", ".join(_cast(c) for c, _ in pairs)
        text = f"INSERT INTO {table.qualified} ({columns}) VALUES ({values})" + _conflict(table, names)
        table._sql[("upsert", names)] = text
    return text, tuple(param(v, c) for c, v in pairs)


def _key_values(
    change: Change, table: TargetTable, *rows: Mapping[str, Any] | None
) -> list[tuple[TargetColumn, Any]]:
    """The target key of the row a change is about, from the first of ``rows`` that has it."""
    values = []
    for name in table.key:
        for row in rows:
            if isinstance(row, Mapping) and row.get(name) is not None:
                values.append((table.columns[name], row[name]))
                break
        else:
            raise CannotApply(
                f"a {change.op!r} event of {change.table} does not carry the key column {name!r} of {table}"
            )
    return values


def _old_key(change: Change, table: TargetTable) -> list[tuple[TargetColumn, Any]] | None:
    """For an update that changed the key: the old key (from ``before``); None otherwise."""
    before, after = change.before, change.after
    if not before or after is None:
        return None
    if any(before.get(k) is None for k in table.key):
        return None
    if all(before.get(k) == after.get(k) for k in table.key):
        return None
    return [(table.columns[k], before[k]) for k in table.key]


def _where(columns: list[TargetColumn]) -> str:
    return " AND ".join(f"{ident(c.name)} = {_cast(c)}" for c in columns)


def _delete(table: TargetTable, key: list[tuple[TargetColumn, Any]]) -> Statement:
    text = table._sql.get("delete")
    if text is None:
        text = table._sql["delete"] = f"DELETE FROM {table.qualified} WHERE {_where([c for c, _ in key])}"
    return text, tuple(param(v, c) for c, v in key)


def _move(
    table: TargetTable, old: list[tuple[TargetColumn, Any]], row: Mapping[str, Any], placeholder: str
) -> Statement:
    """A key change: the row moves to its new key keeping what the event does not carry (TOAST);
    when the old row is not there, the new one is inserted."""
    pairs = _available(table, row, placeholder)
    names = tuple(c.name for c, _ in pairs)
    text = table._sql.get(("move", names))
    if text is None:
        sets = ", ".join(f"{ident(c.name)} = {_cast(c)}" for c, _ in pairs)
        columns = ", ".join(ident(n) for n in names)
        values = ", ".join(_cast(c) for c, _ in pairs)
        text = (
            f"WITH moved AS (UPDATE {table.qualified} SET {sets} WHERE {_where([c for c, _ in old])} "
            f"RETURNING 1) INSERT INTO {table.qualified} ({columns}) SELECT {values} "
            "WHERE NOT EXISTS (SELECT FROM moved)" + _conflict(table, names)
        )
        table._sql[("move", names)] = text
    values_ = tuple(param(v, c) for c, v in pairs)
    return text, values_ + tuple(param(v, c) for c, v in old) + values_


def _match(table: TargetTable, row: Mapping[str, Any], placeholder: str) -> tuple[str, tuple[Any, ...]]:
    """A condition finding one row equal to ``row`` (a keyless table's), by its ctid."""
    pairs = _available(table, row, placeholder)
    condition = " AND ".join(f"{ident(c.name)} IS NOT DISTINCT FROM {_cast(c)}" for c, _ in pairs) or "true"
    return (
        f"ctid = (SELECT ctid FROM {table.qualified} WHERE {condition} LIMIT 1)",
        tuple(param(v, c) for c, v in pairs),
    )


def _keyless_update(
    change: Change, table: TargetTable, row: Mapping[str, Any], placeholder: str
) -> list[Statement]:
    if not change.before:
        raise CannotApply(
            f"an update of {change.table}, which has no key, without its old row: give the source table a "
            "primary key or REPLICA IDENTITY FULL"
        )
    pairs = _available(table, row, placeholder)
    sets = ", ".join(f"{ident(c.name)} = {_cast(c)}" for c, _ in pairs)
    condition, values = _match(table, change.before, placeholder)
    return [
        (
            f"UPDATE {table.qualified} SET {sets} WHERE {condition}",
            tuple(param(v, c) for c, v in pairs) + values,
        )
    ]


def _keyless_delete(change: Change, table: TargetTable, placeholder: str) -> list[Statement]:
    if not change.before:
        raise CannotApply(
            f"a delete of {change.table}, which has no key, without its old row: give the source table a "
            "primary key or REPLICA IDENTITY FULL"
        )
    condition, values = _match(table, change.before, placeholder)
    return [(f"DELETE FROM {table.qualified} WHERE {condition}", values)]
