"""Postgres types: text-format value -> wire value -> Avro type and JSON rendering.

A registry of small pure functions looked up by type OID, as psycopg does:
`cdc.pgtypes.columns` (the table, `column_type`, `row_parser`),
`cdc.pgtypes.temporal` (dates, times, timestamps), `cdc.pgtypes.catalog`
(`TypeCatalog`, the one part that queries the server).
`column_type` is called once per column of each relation version; the
per-row work is then one ``parse`` call per value (`row_parser` bundles them).

Wire values (what `parse` returns, what Avro encodes, what `render` takes):

    int2 int4 int8 oid      int
    float4 float8           float (nan, infinities and -0.0 included)
    numeric(p,s)            decimal.Decimal; str "NaN" (Avro: the string branch)
    numeric                 str, the exact digits ("NaN", "Infinity", "-Infinity")
    bool                    bool
    text varchar bpchar ... str (bpchar keeps its padding)
    bytea                   bytes
    date                    int, days since 1970-01-01 (+-infinity: int32 max/min)
    time                    int, microseconds since midnight (24:00:00 is 86_400_000_000)
    timetz                  str "HH:MM:SS.ffffff+HH:MM" (":SS" added to the offset if it has seconds)
    timestamp               int, microseconds since 1970-01-01 (+-infinity: int64 max/min);
                            str (rendered as below) when the instant is beyond the int64
                            range, i.e. after 294247-01-10T04:00:54.775806 (Avro: string branch)
    timestamptz             the same, in UTC
    interval                str, the server's ISO 8601 duration ("P1Y2M-3DT4H5M6.7S", "PT0S")
    uuid                    str
    json jsonb              str, the JSON text as the server prints it
    arrays                  list of element wire values (None for NULL); str, the server's
                            text output, for arrays that a list cannot represent exactly
                            (several dimensions, or lower bounds other than 1)
    enum                    str; a domain: its base type's wire value
    anything else           str, Postgres text output

JSON renderings (`ColumnType.render`) follow DESIGN.md's type table. Dates and
timestamps use ISO 8601 with astronomical year numbering: years 1..9999 as
four digits, others with a sign and at least four digits (1 BC is
``+0000``, 44 BC is ``-0043``, ``+294276-12-31``); infinities are
``"infinity"`` / ``"-infinity"``. Times always have six fractional digits.

Avro types (`ColumnType.avro`) are those of a non-null value. Where a wire
value can also be a str that the main type cannot hold (numeric(p,s) NaN,
arrays, out-of-range timestamps, the placeholder of an unavailable TOAST
value), ``avro`` is a union ``[<the type>, "string"]``; the Avro module
prepends ``"null"`` for nullable columns and flattens the union.

The replication and snapshot connections set the session output settings of
`cdc.replication.OUTPUT_SETTINGS` (UTC, ISO dates, iso_8601 intervals, hex
bytea, extra_float_digits=3); the parsers rely on them and reject text that
does not match with `PARSE_ERRORS`, which `row_parser` turns into `DecodeError`.

Non-built-in types (enums, domains, arrays of them, extension types such as
citext) are resolved by `TypeCatalog`, one catalog query per batch of OIDs,
cached per OID: build it with `TypeCatalog.from_connection` and call
`TypeCatalog.prefetch` with a Relation's column OIDs before `column_type`.
"""

from cdc.pgtypes.catalog import TYPE_QUERY, Lookup, TypeCatalog, TypeInfo, catalog_lookup
from cdc.pgtypes.columns import (
    BUILTIN_ARRAYS,
    BUILTIN_NAMES,
    IDENTITY,
    KINDS,
    PARSE_ERRORS,
    ColumnType,
    Parse,
    Render,
    RowParser,
    column_type,
    numeric_typmod,
    row_parser,
    text_form,
)
from cdc.pgtypes.temporal import (
    DATE_INFINITY,
    DATE_MINUS_INFINITY,
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    INT64_MIN,
    TIMESTAMP_INFINITY,
    TIMESTAMP_MINUS_INFINITY,
    civil_from_days,
    days_from_civil,
    format_year,
)

__all__ = [
    "BUILTIN_ARRAYS",
    "BUILTIN_NAMES",
    "DATE_INFINITY",
    "DATE_MINUS_INFINITY",
    "IDENTITY",
    "INT32_MAX",
    "INT32_MIN",
    "INT64_MAX",
    "INT64_MIN",
    "KINDS",
    "PARSE_ERRORS",
    "TIMESTAMP_INFINITY",
    "TIMESTAMP_MINUS_INFINITY",
    "TYPE_QUERY",
    "ColumnType",
    "Lookup",
    "Parse",
    "Render",
    "RowParser",
    "TypeCatalog",
    "TypeInfo",
    "catalog_lookup",
    "civil_from_days",
    "column_type",
    "days_from_civil",
    "format_year",
    "numeric_typmod",
    "row_parser",
    "text_form",
]
