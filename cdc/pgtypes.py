"""Postgres types: text-format value -> wire value -> Avro type and JSON rendering.

A registry of small pure functions looked up by type OID, as psycopg does.
`column_type` is called once per column of each relation version; the
per-row work is then one ``parse`` call per value.

Wire values (what `parse` returns, what Avro encodes, what `render` takes):

    int2 int4 int8 oid      int
    float4 float8           float (nan and infinities included)
    numeric(p,s)            decimal.Decimal (Decimal('NaN') possible)
    numeric                 str, the exact digits ("NaN", "Infinity")
    bool                    bool
    text varchar bpchar ... str
    bytea                   bytes
    date                    int, days since 1970-01-01 (+-infinity: int32 max/min)
    time                    int, microseconds since midnight
    timetz                  str "HH:MM:SS.ffffff+HH:MM"
    timestamp               int, microseconds since 1970-01-01 (+-infinity: int64 max/min)
    timestamptz             int, microseconds since 1970-01-01 UTC (same)
    interval                str, ISO 8601 duration
    uuid                    str
    json jsonb              str
    arrays                  list of element wire values (None for NULL)
    enum                    str; domain: its base type's wire value
    anything else           str, Postgres text output

The replication and snapshot connections set the session output settings of
`cdc.replication.OUTPUT_SETTINGS` (UTC, ISO dates, iso_8601 intervals, hex
bytea, extra_float_digits=3); the parsers rely on them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Parse = Callable[[bytes], Any]
Render = Callable[[Any], Any]


@dataclass(slots=True, frozen=True)
class ColumnType:
    """How one column's values are converted, encoded and rendered."""

    oid: int
    typmod: int
    name: str
    parse: Parse
    avro: Any  # the Avro type of a non-null value (a JSON-able schema fragment)
    render: Render

    def unavailable(self, placeholder: str) -> Any:
        """The wire value standing for an unchanged TOAST value the server did not send."""
        return placeholder


def _str(value: bytes) -> str:
    return value.decode()


def _same(value: Any) -> Any:
    return value


_SIMPLE: dict[int, tuple[str, Parse, Any]] = {
    16: ("bool", lambda v: v == b"t", "boolean"),
    20: ("int8", int, "long"),
    21: ("int2", int, "int"),
    23: ("int4", int, "int"),
    26: ("oid", int, "long"),
    25: ("text", _str, "string"),
    1043: ("varchar", _str, "string"),
    1042: ("bpchar", _str, "string"),
    19: ("name", _str, "string"),
}


def column_type(oid: int, typmod: int = -1, catalog: TypeCatalog | None = None) -> ColumnType:
    """The converters for a column of type ``oid`` (and ``typmod``)."""
    simple = _SIMPLE.get(oid)
    if simple is not None:
        name, parse, avro = simple
        return ColumnType(oid, typmod, name, parse, avro, _same)
    return ColumnType(oid, typmod, f"oid{oid}", _str, "string", _same)


class TypeCatalog:
    """Non-built-in types (enums, domains, extension types), resolved once per OID.

    ``lookup`` runs the catalog query for a list of OIDs (on a normal
    connection); it is None in pure contexts, where every unknown type falls
    back to its text output.
    """

    def __init__(self, lookup: Callable[[list[int]], list[tuple[Any, ...]]] | None = None) -> None:
        self.lookup = lookup
        self.rows: dict[int, tuple[Any, ...]] = {}
