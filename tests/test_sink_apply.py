"""`cdc.sink.apply` without servers: shapes from the writer schemas, values back to Postgres' text,
and the statements each op becomes (the sink tests run them against real servers)."""

from __future__ import annotations

import base64

import pytest

from cdc.avro import key_schema, value_schema
from cdc.consume import Record
from cdc.events import Table, TableColumn
from cdc.pgtypes import column_type
from cdc.sink.apply import (
    CannotApply,
    Change,
    SourceColumn,
    TargetColumn,
    TargetTable,
    change_from_record,
    column_sql,
    param,
    shape_from_schemas,
    statements,
    unavailable,
)

PLACEHOLDER = "__cdc_unavailable_value"


def table() -> TargetTable:
    columns = {
        "id": TargetColumn("id", "pg_catalog.int8", "other"),
        "body": TargetColumn("body", "pg_catalog.text", "other"),
        "data": TargetColumn("data", "pg_catalog.bytea", "bytea"),
        "tags": TargetColumn("tags", "pg_catalog._text", "array", "other"),
    }
    return TargetTable("public", "t", columns, ("id",))


def change(value: dict[str, object], key: object = None) -> Change:
    record = Record("p.public.t", 0, 7, key, value, None, 1234)
    found = change_from_record(record)
    assert found is not None
    return found


def envelope(op: str, before: object = None, after: object = None, order: int = 1) -> dict[str, object]:
    return {
        "before": before,
        "after": after,
        "op": op,
        "source": {"schema": "public", "table": "t", "commit_lsn": 100, "ts_ms": 5},
        "transaction": {"id": "7:100", "total_order": order, "data_collection_order": order},
    }


def test_a_record_becomes_a_change() -> None:
    found = change(envelope("c", after={"id": 1}), {"id": 1})
    assert (found.op, found.table, found.position, found.transaction_id) == (
        "c",
        "public.t",
        (100, 1),
        "7:100",
    )
    assert change_from_record(Record("t", 0, 1, {"id": 1}, None)) is None  # a tombstone
    foreign = change({"just": "a value"})
    assert foreign.op == "" and foreign.position is None


def test_the_shape_comes_from_the_writer_schemas() -> None:
    columns = [
        TableColumn("id", column_type(20), True),
        TableColumn("price", column_type(1700, (10 << 16 | 2) + 4), False),
        TableColumn("odd name", column_type(1009), False),
    ]
    t = Table(1, "public", "t", ord("d"), columns)
    shape = shape_from_schemas("public.t", key_schema(t, "p.public.t"), value_schema(t, "p.public.t"))
    assert shape.key == ("id",) and shape.exact
    assert [(c.name, c.oid, c.avro) for c in shape.columns] == [
        ("id", 20, "long"),
        ("price", 1700, "decimal"),
        ("odd name", 1009, "array:string"),
    ]


def test_types_mapped_back() -> None:
    builtin = {(1700, (10 << 16 | 2) + 4): "numeric(10,2)"}
    assert column_sql(
        SourceColumn("p", 1700, (10 << 16 | 2) + 4, "numeric", "decimal"), builtin, frozenset()
    ) == ("numeric(10,2)")
    enum = SourceColumn("m", 16400, -1, "mood", "string")
    assert column_sql(enum, builtin, frozenset()) == "text"  # not in the target: its Avro type
    assert column_sql(enum, builtin, frozenset({"mood"})) == '"mood"'
    assert column_sql(SourceColumn("a", 16500, -1, "x", "array:array:long"), {}, frozenset()) == "bigint[][]"


def test_values_back_to_postgres_text() -> None:
    other = TargetColumn("x", "c", "other")
    assert param(True, other) == "true" and param(1.5, other) == "1.5" and param(None, other) is None
    assert param(base64.b64encode(b"\x00\xff").decode(), TargetColumn("b", "c", "bytea")) == b"\x00\xff"
    assert param("-0043-03-15", TargetColumn("d", "c", "date")) == "0044-03-15 BC"
    assert param("+0000-01-01T00:00:00.000000Z", TargetColumn("d", "c", "timestamptz")) == (
        "0001-01-01T00:00:00.000000+00 BC"
    )
    assert param("+10000-01-01", TargetColumn("d", "c", "date")) == "10000-01-01"
    assert param("2026-11-25", TargetColumn("d", "c", "date")) == "2026-11-25"
    texts = TargetColumn("a", "c", "array", "other")
    assert param(['a"b', "c,d", None, "e\\f"], texts) == '{"a\\"b","c,d",NULL,"e\\\\f"}'
    assert (
        param([base64.b64encode(b"\x01").decode()], TargetColumn("a", "c", "array", "bytea")) == '{"\\\\x01"}'
    )
    assert param({"a": 1}, TargetColumn("j", "c", "json")) == '{"a":1}'


def test_toast_placeholders() -> None:
    assert unavailable(PLACEHOLDER, None, PLACEHOLDER)
    assert unavailable(base64.b64encode(PLACEHOLDER.encode()).decode(), table().columns["data"], PLACEHOLDER)
    assert unavailable([PLACEHOLDER], table().columns["tags"], PLACEHOLDER)
    assert not unavailable("text", None, PLACEHOLDER)


def test_each_op_as_sql() -> None:
    t = table()
    [(sql, params)] = statements(change(envelope("c", after={"id": 1, "body": "b"})), t, PLACEHOLDER)
    assert sql == (
        'INSERT INTO "public"."t" ("id", "body") VALUES (%s::pg_catalog.int8, %s::pg_catalog.text) '
        'ON CONFLICT ("id") DO UPDATE SET "body" = EXCLUDED."body"'
    )
    assert params == ("1", "b")
    # an unchanged TOAST value keeps the target's
    [(sql, params)] = statements(change(envelope("u", after={"id": 1, "body": PLACEHOLDER})), t, PLACEHOLDER)
    assert params == ("1",) and "DO NOTHING" in sql
    # a key change moves the row
    moved = change(envelope("u", before={"id": 1, "body": None}, after={"id": 2, "body": PLACEHOLDER}))
    [(sql, params)] = statements(moved, t, PLACEHOLDER)
    assert sql.startswith('WITH moved AS (UPDATE "public"."t" SET "id" = %s::pg_catalog.int8 WHERE "id" = ')
    assert params == ("2", "1", "2")
    [(sql, params)] = statements(change(envelope("d", before={"id": 1}), {"id": 1}), t, PLACEHOLDER)
    assert (sql, params) == ('DELETE FROM "public"."t" WHERE "id" = %s::pg_catalog.int8', ("1",))
    assert statements(change(envelope("t")), t, PLACEHOLDER) == [('TRUNCATE "public"."t"', ())]
    with pytest.raises(CannotApply, match="does not carry the key column 'id'"):
        statements(change(envelope("d", before={"body": "x"})), t, PLACEHOLDER)


def test_keyless_tables_match_the_old_row() -> None:
    t = TargetTable("public", "t", {"a": TargetColumn("a", "pg_catalog.int4", "other")}, ())
    [(sql, params)] = statements(change(envelope("d", before={"a": 5})), t, PLACEHOLDER)
    assert "ctid = (SELECT ctid FROM" in sql and params == ("5",)
    with pytest.raises(CannotApply, match="REPLICA IDENTITY FULL"):
        statements(change(envelope("u", after={"a": 6})), t, PLACEHOLDER)
