"""cdc.avro without servers: schemas, the byte-exact encoding, the registry, backward compatibility."""

from __future__ import annotations

import io
import json
import logging
import math
import struct
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc import avro
from cdc.change import ChangeEvent
from cdc.consume import RecordDecoder
from cdc.errors import SchemaError
from cdc.events import (
    UNAVAILABLE_PLACEHOLDER,
    JsonSerializer,
    SourceInfo,
    Table,
    TableColumn,
    envelope,
    render_key,
    source_block,
)
from cdc.pgoutput import ReplicaIdentity
from cdc.pgtypes import BUILTIN_NAMES, ColumnType, column_type
from tests.rowtext import COLUMNS, ROW_TEXT

SOURCE = SourceInfo("test", "shop")
NOW_MS = 1_700_000_000_123


def _same(value: Any) -> Any:
    return value


def ctype(oid: int, name: str, avro_type: Any, typmod: int = -1) -> ColumnType:
    """A column type as cdc.pgtypes documents it (its parse and render do not matter here)."""
    return ColumnType(oid, typmod, name, _same, avro_type, _same)


def decimal_type(precision: int, scale: int) -> dict[str, Any]:
    return {"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale}


NUMERIC_10_2 = ctype(1700, "numeric", [decimal_type(10, 2), "string"], ((10 << 16) | 2) + 4)
TYPES = {
    "int4": column_type(23),
    "int8": column_type(20),
    "text": column_type(25),
    "bool": column_type(16),
    "float4": ctype(700, "float4", "float"),
    "float8": ctype(701, "float8", "double"),
    "numeric(10,2)": NUMERIC_10_2,
    "numeric": ctype(1700, "numeric", "string"),
    "bytea": ctype(17, "bytea", "bytes"),
    "date": ctype(1082, "date", {"type": "int", "logicalType": "date"}),
    "time": ctype(1083, "time", {"type": "long", "logicalType": "time-micros"}),
    "timestamp": ctype(1114, "timestamp", {"type": "long", "logicalType": "local-timestamp-micros"}),
    "timestamptz": ctype(1184, "timestamptz", {"type": "long", "logicalType": "timestamp-micros"}),
    "uuid": ctype(2950, "uuid", {"type": "string", "logicalType": "uuid"}),
    "int4[]": ctype(1007, "_int4", [{"type": "array", "items": ["null", "int", "string"]}, "string"]),
    "text[]": ctype(1009, "_text", [{"type": "array", "items": ["null", "string"]}, "string"]),
}


def table(
    columns: list[tuple[str, str]],
    keys: tuple[str, ...] = ("id",),
    identity: int = ReplicaIdentity.DEFAULT,
    relation_id: int = 100,
    name: str = "orders",
) -> Table:
    cols = [TableColumn(n, TYPES[t], n in keys) for n, t in columns]
    return Table(relation_id, "public", name, identity, cols)


def event(
    tbl: Table | None, op: str, before: list[Any] | None, after: list[Any] | None, **kw: Any
) -> ChangeEvent:
    fields: dict[str, Any] = {
        "lsn": 0x16B3748,
        "commit_lsn": 0x16B3800,
        "xid": 777,
        "commit_ts_ms": 1_700_000_000_000,
        "total_order": 1,
        "data_collection_order": 1,
        "transaction_id": "777:23803904",
    }
    fields.update(kw)
    return ChangeEvent(op, tbl, before, after, **fields)


def registered(serializer: avro.AvroSerializer, data: bytes) -> avro.RegisteredSchema:
    entry = serializer.registry.get(data[2:10])
    assert entry is not None
    return entry


def fastavro_body(schema: dict[str, Any], datum: Any) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(schema), datum)
    return buf.getvalue()


def _json(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value, default=str))


# -- fixed pieces, names ----------------------------------------------------------------------


def test_fingerprint_is_the_specifications_crc64() -> None:
    # the values of the Avro specification's test suite, as Java's parsingFingerprint64 gives them
    assert avro.fingerprint('"null"') == (7195948357588979594).to_bytes(8, "little", signed=True)
    assert avro.fingerprint('"int"') == (8247732601305521295).to_bytes(8, "little", signed=True)


@given(st.text(max_size=300))
def test_fingerprint_is_fastavros_for_any_text(text: str) -> None:
    from fastavro.schema import fingerprint as fastavro_fingerprint

    assert avro.fingerprint(text) == bytes.fromhex(fastavro_fingerprint(text, "CRC-64-AVRO"))


def test_fixed_schemas_load_from_the_checkout_and_parse() -> None:
    location = avro.schemas_dir()
    assert Path(str(location)) == Path(__file__).resolve().parent.parent / "schemas"
    for name in avro.FIXED_SCHEMAS:
        assert avro.fixed_schema(name)["type"] == "record"
    for standalone in ("source", "transaction", "schema_record"):
        parse_schema(avro.fixed_schema(standalone))
    assert avro.canonical_form(avro.message_schema()).startswith('{"name":"cdc.MessageEnvelope"')
    with pytest.raises(SchemaError, match="no fixed Avro schema 'nope'"):
        avro.fixed_schema("nope")


def test_names_are_avro_safe_unique_and_keep_the_original() -> None:
    assert [avro.avro_name(n) for n in ("ok_1", "a b", "1st", "ü", "")] == ["ok_1", "a_b", "_1st", "_", "_"]
    cols = [TableColumn(n, TYPES["int4"], False) for n in ("a b", "a_b", "a-b", "1x", "id")]
    tbl = Table(1, "public", "t", ReplicaIdentity.DEFAULT, cols)
    # names that are already valid never change; the others get a suffix when taken
    assert avro.field_names(tbl.columns) == ["a_b_2", "a_b", "a_b_3", "_1x", "id"]
    fields = avro.value_schema(tbl, "p.public.t")["fields"][0]["type"][1]["fields"]
    assert [(f["name"], f.get("pg.name")) for f in fields] == [
        ("a_b_2", "a b"),
        ("a_b", None),
        ("a_b_3", "a-b"),
        ("_1x", "1x"),
        ("id", None),
    ]


def test_namespaces_are_the_topic_in_avro_names() -> None:
    tbl = table([("id", "int4")], name="Order Lines")
    value = avro.value_schema(tbl, "9shop.public.Order Lines")
    assert value["namespace"] == "_9shop.public.Order_Lines"
    assert avro.canonical_form(value).startswith('{"name":"_9shop.public.Order_Lines.Envelope"')


# -- schemas of a table version ----------------------------------------------------------------


def test_key_schema_is_the_replica_identity_non_null() -> None:
    tbl = table([("id", "int4"), ("region", "text"), ("total", "numeric(10,2)")], keys=("id", "region"))
    key = avro.key_schema(tbl, "p.public.orders")
    assert key == {
        "type": "record",
        "name": "Key",
        "namespace": "p.public.orders",
        "fields": [
            {"name": "id", "type": "int", "pg.type": "int4", "pg.oid": 23, "pg.typmod": -1},
            {"name": "region", "type": "string", "pg.type": "text", "pg.oid": 25, "pg.typmod": -1},
        ],
    }
    assert avro.key_schema(table([("id", "int4")], keys=()), "p.public.orders") is None
    nothing = table([("id", "int4")], identity=ReplicaIdentity.NOTHING)
    assert avro.key_schema(nothing, "p.public.orders") is None


def test_value_columns_are_nullable_and_unions_flattened() -> None:
    tbl = table([("id", "int4"), ("total", "numeric(10,2)"), ("tags", "int4[]"), ("at", "timestamptz")])
    schema = avro.value_schema(tbl, "p.public.orders")
    assert [f["name"] for f in schema["fields"]] == [
        "before",
        "after",
        "source",
        "op",
        "ts_ms",
        "ts_us",
        "ts_ns",
        "transaction",
    ]
    assert schema["name"] == "Envelope"
    assert schema["fields"][1]["type"] == ["null", "Value"]
    row = schema["fields"][0]["type"][1]
    assert row["name"] == "Value"
    assert [(f["type"], f["default"]) for f in row["fields"]] == [
        (["null", "int"], None),
        (["null", decimal_type(10, 2), "string"], None),
        (["null", {"type": "array", "items": ["null", "int", "string"]}, "string"], None),
        (["null", {"type": "long", "logicalType": "timestamp-micros"}], None),
    ]
    assert row["fields"][1]["pg.typmod"] == ((10 << 16) | 2) + 4
    parse_schema(schema)  # self-contained: Source and Transaction are inlined


def test_a_column_type_with_a_nested_union_is_a_schema_error() -> None:
    bad = Table(
        1, "public", "t", ReplicaIdentity.DEFAULT, [TableColumn("x", ctype(1, "x", ["int", ["long"]]), False)]
    )
    with pytest.raises(
        SchemaError, match=r"invalid Avro type for a column: \['int', \['long'\]\]; fix cdc.pgtypes"
    ):
        avro.value_schema(bad, "p.public.t")


# -- the encoding: byte for byte what fastavro writes ---------------------------------------------

WIDE = [
    ("id", "int4"),
    ("qty", "int8"),
    ("note", "text"),
    ("ok", "bool"),
    ("f4", "float4"),
    ("f8", "float8"),
    ("total", "numeric(10,2)"),
    ("exact", "numeric"),
    ("blob", "bytea"),
    ("day", "date"),
    ("at_time", "time"),
    ("local", "timestamp"),
    ("at", "timestamptz"),
    ("uid", "uuid"),
    ("tags", "int4[]"),
    ("labels", "text[]"),
]
PLACEHOLDER = st.just(UNAVAILABLE_PLACEHOLDER)
INT4 = st.integers(-(2**31), 2**31 - 1)
INT8 = st.integers(-(2**63), 2**63 - 1)
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "int4": INT4,
    "int8": INT8,
    "text": st.text(),
    "bool": st.booleans(),
    "float4": st.floats(width=32),
    "float8": st.floats(),
    "numeric(10,2)": st.decimals(min_value=-99999999, max_value=99999999, places=2)
    | st.sampled_from([Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")])
    | PLACEHOLDER,
    "numeric": st.sampled_from(["NaN", "0", "-1.5", "123456789012345678901234567890.5"]),
    "bytea": st.binary(),
    "date": INT4,
    "time": st.integers(0, 86_400_000_000),
    "timestamp": INT8,
    "timestamptz": INT8,
    "uuid": st.uuids().map(str),
    "int4[]": st.lists(st.none() | INT4, max_size=5) | PLACEHOLDER | PLACEHOLDER.map(lambda p: [p]),
    "text[]": st.lists(st.none() | st.text(max_size=5), max_size=5) | PLACEHOLDER.map(lambda p: [p]),
}


@st.composite
def rows(draw: st.DrawFn) -> list[Any]:
    row: list[Any] = [draw(INT4)]
    for _, type_name in WIDE[1:]:
        row.append(draw(st.none() | VALUES[type_name]))
    return row


def _special(value: Any) -> Any:
    """What the reference writer gets for the NaN and infinities of numeric(p,s): their text."""
    if isinstance(value, Decimal) and not value.is_finite():
        return "NaN" if value.is_nan() else ("-Infinity" if value.is_signed() else "Infinity")
    return value


def _reference_value(schema: dict[str, Any], names: list[str], ev: ChangeEvent) -> bytes:
    def row(values: list[Any] | None) -> dict[str, Any] | None:
        return None if values is None else {n: _special(v) for n, v in zip(names, values, strict=True)}

    datum = {
        "before": row(ev.before),
        "after": row(ev.after),
        "source": source_block(ev, SOURCE),
        "op": ev.op,
        "ts_ms": NOW_MS,
        "ts_us": NOW_MS * 1000,
        "ts_ns": NOW_MS * 1_000_000,
        "transaction": None
        if ev.transaction_id is None
        else {
            "id": ev.transaction_id,
            "total_order": ev.total_order,
            "data_collection_order": ev.data_collection_order,
        },
    }
    return fastavro_body(schema, datum)


@settings(max_examples=150, deadline=None)
@given(
    before=st.none() | rows(),
    after=rows(),
    op=st.sampled_from(["c", "u", "d", "r"]),
    snapshot=st.sampled_from([None, "true", "last"]),
    transaction=st.booleans(),
    lsn=st.integers(0, 2**63 - 1),
    order=st.integers(1, 2**40),
)
def test_encoding_is_what_fastavro_writes(
    before: list[Any] | None,
    after: list[Any],
    op: str,
    snapshot: str | None,
    transaction: bool,
    lsn: int,
    order: int,
) -> None:
    tbl = table(WIDE)
    serializer = avro.AvroSerializer("shop", SOURCE)
    if op == "d":  # a delete has the old row (or its key) and nothing after
        before, after_row = before or after, None
    else:
        after_row = after
    ev = event(
        tbl,
        op,
        before,
        after_row,
        lsn=lsn,
        snapshot=snapshot,
        total_order=order,
        data_collection_order=order,
        transaction_id="777:23803904" if transaction else None,
    )
    key, value = serializer.encode(ev, now_ms=NOW_MS)
    entry = registered(serializer, value)
    assert value[:10] == avro.MAGIC + entry.fingerprint
    assert value[10:] == _reference_value(entry.schema, avro.field_names(tbl.columns), ev)
    assert key is not None
    key_values = ev.key_values()
    assert key_values is not None
    assert key[10:] == fastavro_body(registered(serializer, key).schema, {"id": key_values[0]})

    # and back: the raw decoding gives the wire values again (NaN and infinities as their text)
    _, raw = RecordDecoder(serializer.registry).decode_raw(value)
    if ev.after is not None:
        decoded = list(raw["after"].values())
        for column, got, value in zip(WIDE, decoded, ev.after, strict=True):
            sent = _special(value)
            if isinstance(sent, float) and math.isnan(sent):
                assert math.isnan(got)
            elif column[1] == "float4" and isinstance(sent, float):
                assert got == struct.unpack("<f", struct.pack("<f", sent))[0]
            elif column[1] == "numeric(10,2)" and isinstance(sent, Decimal):
                assert Decimal(f"{int.from_bytes(got, 'big', signed=True)}e-2") == sent
            else:
                assert got == sent, column


@settings(max_examples=50, deadline=None)
@given(
    batch=st.lists(rows(), min_size=1, max_size=6),
    lsn=st.integers(0, 2**63 - 1),
    snapshot=st.sampled_from(["true", "last"]),
    keys=st.sampled_from([(), ("id",), ("id", "note"), ("at", "qty", "id")]),
)
def test_snapshot_reads_encode_as_one_event_each(
    batch: list[list[Any]], lsn: int, snapshot: str, keys: tuple[str, ...]
) -> None:
    """`encode_reads` (the snapshot's batches, a generated function per table shape) gives the
    records `encode` gives each read's event: keyless, keyed, composite keys in any column."""
    keyed = bool(keys)
    tbl = table(WIDE, keys=keys)
    names = [name for name, _ in WIDE]
    for row in batch:  # a key column is never null
        for name, fill in (("note", "k"), ("qty", 7), ("at", 0)):
            if name in keys and row[names.index(name)] is None:
                row[names.index(name)] = fill
    serializer = avro.AvroSerializer("shop", SOURCE)
    got = serializer.encode_reads(tbl, batch, lsn, 1_700_000_000_000, snapshot, now_ms=NOW_MS)
    events = [
        ChangeEvent("r", tbl, None, row, lsn, lsn, 0, 1_700_000_000_000, snapshot=snapshot) for row in batch
    ]
    assert got == [serializer.encode(ev, now_ms=NOW_MS) for ev in events]
    assert all((key is None) != keyed for key, _ in got)


def test_a_snapshot_read_that_does_not_fit_names_its_column() -> None:
    serializer = avro.AvroSerializer("shop", SOURCE)
    tbl = table([("id", "int4"), ("qty", "int8")])
    with pytest.raises(SchemaError, match=r"^cannot encode column qty \(int8\) of public.orders: str"):
        serializer.encode_reads(tbl, [[1, 2], [2, 3], [3, "12"]], 5, 5, "true")
    with pytest.raises(SchemaError, match=r"^cannot encode the key of public.orders"):
        serializer.encode_reads(tbl, [[1, 2], [None, 3]], 5, 5, "true")


def test_json_snapshot_reads_are_one_event_each() -> None:
    tbl = table([("id", "int4"), ("note", "text")])
    serializer = JsonSerializer("shop", SOURCE)
    got = serializer.encode_reads(tbl, [[1, "a"], [2, None]], 9, 5, "last")
    reads = [ChangeEvent("r", tbl, None, row, 9, 9, 0, 5, snapshot="last") for row in ([1, "a"], [2, None])]
    want = [serializer.encode(ev) for ev in reads]
    clock = ("ts_ms", "ts_us", "ts_ns")  # the processing time differs
    assert [k for k, _ in got] == [k for k, _ in want] == [b'{"id":1}', b'{"id":2}']
    for (_, value), (_, expected) in zip(got, want, strict=True):
        decoded, reference = orjson.loads(value), orjson.loads(expected)
        assert {k: v for k, v in decoded.items() if k not in clock} == {
            k: v for k, v in reference.items() if k not in clock
        }


def test_a_key_alone_is_the_key_of_the_tombstone() -> None:
    tbl = table([("id", "int4"), ("note", "text")])
    serializer = avro.AvroSerializer("shop", SOURCE)
    key, _ = serializer.encode(event(tbl, "d", [5, None], None))
    assert serializer.encode_key(tbl, [5]) == key
    assert serializer.encode_key(table([("id", "int4")], keys=()), [5]) is None


def test_truncates_and_tables_without_a_key_have_no_key() -> None:
    tbl = table([("id", "int4"), ("note", "text")])
    serializer = avro.AvroSerializer("shop", SOURCE)
    key, value = serializer.encode(event(tbl, "t", None, None), now_ms=NOW_MS)
    assert key is None
    decoded = RecordDecoder(serializer.registry).decode(value)
    assert (decoded["op"], decoded["before"], decoded["after"]) == ("t", None, None)
    full = table([("id", "int4"), ("note", "text")], keys=(), relation_id=101, name="log")
    assert serializer.encode(event(full, "c", None, [1, "x"]))[0] is None
    subjects = {entry.subject for entry in serializer.registry}
    assert subjects == {"shop.public.orders-key", "shop.public.orders-value", "shop.public.log-value"}


def test_decoded_records_render_as_the_json_envelope() -> None:
    """With the types cdc.pgtypes has today, consume's rendering equals `envelope`'s."""
    tbl = table([("id", "int4"), ("qty", "int8"), ("note", "text"), ("ok", "bool")])
    serializer = avro.AvroSerializer("shop", SOURCE)
    decoder = RecordDecoder(serializer.registry)
    events = [
        event(tbl, "c", None, [1, 2**40, "héllo", True]),
        event(tbl, "u", [1, None, None, None], [1, -5, None, False], snapshot="true", transaction_id=None),
        event(tbl, "d", [1, 7, "bye", None], None, total_order=9, data_collection_order=3),
    ]
    for ev in events:
        key, value = serializer.encode(ev, now_ms=NOW_MS)
        assert key is not None
        assert decoder.decode(value) == _json(envelope(ev, SOURCE, NOW_MS))
        key_values = ev.key_values()
        assert key_values is not None
        assert decoder.decode(key) == render_key(tbl, key_values)


def test_logical_messages_go_to_the_fixed_message_envelope() -> None:
    serializer = avro.AvroSerializer("shop", SOURCE)
    ev = event(None, "m", None, None, message_prefix="app", message_content=b"\x00hi")
    key, value = serializer.encode(ev, now_ms=NOW_MS)
    assert key is not None
    assert serializer.topic_for(ev) == "shop.messages"
    assert registered(serializer, value).subject == "shop.messages-value"
    assert registered(serializer, key).subject == "shop.messages-key"
    decoder = RecordDecoder(serializer.registry)
    assert decoder.decode(value) == _json(envelope(ev, SOURCE, NOW_MS))
    assert decoder.decode(key) == {"prefix": "app"}  # as --format json keys it
    untransacted = event(None, "m", None, None, message_prefix="p", transaction_id=None, xid=0)
    decoded = RecordDecoder(serializer.registry).decode(serializer.encode(untransacted, now_ms=NOW_MS)[1])
    assert (decoded["transaction"], decoded["message"]) == (None, {"prefix": "p", "content": ""})


def test_a_value_that_does_not_fit_names_its_column() -> None:
    serializer = avro.AvroSerializer("shop", SOURCE)
    tbl = table([("id", "int4"), ("qty", "int8")])
    with pytest.raises(
        SchemaError, match=r"^cannot encode column qty \(int8\) of public.orders: str .*cdc.pgtypes"
    ):
        serializer.encode(event(tbl, "c", None, [1, "12"]))
    with pytest.raises(SchemaError, match=r"^cannot encode a row of public.orders \(version 1\)"):
        serializer.encode(event(tbl, "c", None, [1]))
    with pytest.raises(SchemaError, match="unknown op 'x'"):
        serializer.encode(event(tbl, "x", None, [1, 2]))


# -- the registry, versions, variants -----------------------------------------------------------


def test_schema_records_round_trip_and_are_checked() -> None:
    serializer = avro.AvroSerializer("shop", SOURCE)
    serializer.encode(event(table([("id", "int4")]), "c", None, [1]))
    records = serializer.take_schema_records()
    assert serializer.take_schema_records() == ()
    assert len(records) == 2
    registry = avro.SchemaRegistry()
    for key, value in records:
        entry = registry.load(key, value)
        assert entry is not None
        assert entry == serializer.registry.get(key)
    key, value = records[0]
    with pytest.raises(SchemaError, match="differs from its fingerprint"):
        registry.load(bytes(8), value)
    with pytest.raises(SchemaError, match=r"does not start with the cdc\.SchemaRecord header"):
        registry.load(key, b"\xc3\x01" + bytes(8) + value[10:])
    with pytest.raises(SchemaError, match="malformed schema topic record: the Avro body ends early"):
        registry.load(key, value[:-20])
    assert registry.load(key, None) is None  # a deletion marker of the compacted topic
    assert registry.get(key) is None


def test_versions_continue_after_a_restart(caplog: pytest.LogCaptureFixture) -> None:
    v1 = table([("id", "int4"), ("a", "int4")])
    v2 = table([("id", "int4"), ("a", "int4"), ("b", "text")])
    v3 = table([("id", "int4"), ("a", "text"), ("b", "text")])
    first = avro.AvroSerializer("shop", SOURCE)
    first.encode(event(v1, "c", None, [1, 1]))
    first.encode(event(v2, "c", None, [2, 2, "x"]))
    records = first.take_schema_records()
    assert [(r.schema.subject, r.schema.version) for r in first.registrations] == [
        ("shop.public.orders-value", 1),
        ("shop.public.orders-key", 1),
        ("shop.public.orders-value", 2),
    ]

    restarted = avro.AvroSerializer("shop", SOURCE)
    restarted.load_schema_records(records)
    restarted.encode(event(table([("id", "int4"), ("a", "int4"), ("b", "text")]), "c", None, [3, 3, "y"]))
    assert restarted.take_schema_records() == ()  # v2 is known: nothing to publish
    with caplog.at_level(logging.INFO, logger="cdc.avro"):
        restarted.encode(event(v3, "c", None, [4, "4", "z"]))
    (registration,) = restarted.registrations
    assert (registration.schema.version, registration.previous_version) == (3, 2)
    assert [str(p) for p in registration.problems] == ["a: int cannot be read as string"]
    assert caplog.records[-1].levelno == logging.WARNING
    assert "shop.public.orders-value v3 is not backward compatible with v2" in caplog.records[-1].getMessage()


def test_a_change_of_meaning_only_gets_its_own_fingerprint() -> None:
    """numeric(10,2) -> numeric(10,4): the canonical form is the same, so the second version moves
    its Value record to another namespace rather than overwrite the first on the compacted topic."""
    scaled = ctype(1700, "numeric", [decimal_type(10, 4), "string"], ((10 << 16) | 4) + 4)
    v1 = table([("id", "int4"), ("total", "numeric(10,2)")])
    v2 = Table(
        100, "public", "orders", ReplicaIdentity.DEFAULT, [v1.columns[0], TableColumn("total", scaled, False)]
    )
    serializer = avro.AvroSerializer("shop", SOURCE)
    old = serializer.encode(event(v1, "c", None, [1, Decimal("1.50")]))[1]
    new = serializer.encode(event(v2, "c", None, [2, Decimal("1.5000")]))[1]
    first, second = registered(serializer, old), registered(serializer, new)
    assert first.fingerprint != second.fingerprint
    assert (first.version, second.version) == (1, 2)
    assert second.schema["fields"][0]["type"][1]["namespace"] == "shop.public.orders.variant1"
    assert [str(p) for p in serializer.registrations[-1].problems] == [
        "total: decimal scale changes: bytes decimal(10,2) -> bytes decimal(10,4)"
    ]
    decoder = RecordDecoder(serializer.registry)
    assert decoder.decode_raw(old)[1]["after"]["total"] == (150).to_bytes(2, "big", signed=True)
    assert decoder.decode_raw(new)[1]["after"]["total"] == (15000).to_bytes(2, "big", signed=True)


# -- backward compatibility against the Avro specification (and fastavro's resolution) ----------


def rec(name: str, *fields: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": list(fields), **extra}


def fld(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


ENUM = {"type": "enum", "name": "E", "symbols": ["A", "B"]}
# (writer, reader, a datum of the writer, compatible?)
STRUCTURAL: list[tuple[Any, Any, Any, bool]] = [
    ("int", "long", 5, True),
    ("int", "double", 5, True),
    ("long", "float", 5, True),
    ("float", "double", 1.5, True),
    ("string", "bytes", "x", True),
    ("bytes", "string", b"x", True),
    ("long", "int", 5, False),
    ("double", "float", 1.5, False),
    ("int", "string", 5, False),
    (["null", "int"], ["null", "long"], 5, True),
    (["null", "int", "string"], ["null", "int"], "x", False),
    ("int", ["null", "string"], 5, False),
    ("int", ["null", "int"], 5, True),
    (["null", "int"], "int", None, False),  # the null branch has nowhere to go
    (
        rec("R", fld("a", "int")),
        rec("R", fld("a", "int"), fld("b", ["null", "int"], default=None)),
        {"a": 1},
        True,
    ),
    (rec("R", fld("a", "int")), rec("R", fld("a", "int"), fld("b", "int")), {"a": 1}, False),
    (rec("R", fld("a", "int"), fld("b", "int")), rec("R", fld("a", "int")), {"a": 1, "b": 2}, True),
    (rec("R", fld("a", "int")), rec("S", fld("a", "int")), {"a": 1}, False),
    (rec("R", fld("a", "int")), rec("S", fld("a", "int"), aliases=["R"]), {"a": 1}, True),
    (rec("R", fld("a", "int")), rec("R", fld("b", "int", aliases=["a"])), {"a": 1}, True),
    (ENUM, {**ENUM, "symbols": ["A", "B", "C"]}, "A", True),
    (ENUM, {**ENUM, "symbols": ["A"]}, "B", False),
    ({"type": "fixed", "name": "F", "size": 4}, {"type": "fixed", "name": "F", "size": 8}, b"abcd", False),
    ({"type": "array", "items": "int"}, {"type": "array", "items": "long"}, [1], True),
    ({"type": "map", "values": "long"}, {"type": "map", "values": "int"}, {"k": 1}, False),
]


@pytest.mark.parametrize(("writer", "reader", "datum", "compatible"), STRUCTURAL)
def test_compatibility_follows_schema_resolution(
    writer: Any, reader: Any, datum: Any, compatible: bool
) -> None:
    problems = avro.check_backward(reader, writer)
    assert (not problems) is compatible, problems
    # the verdict agrees with what fastavro's resolving reader does with real data
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(writer), datum)
    try:
        schemaless_reader(io.BytesIO(buf.getvalue()), parse_schema(writer), parse_schema(reader))
        read = True
    except (SchemaResolutionError, ValueError, KeyError, TypeError):
        read = False
    assert read is compatible


def test_enum_default_lets_symbols_go() -> None:
    reader = {**ENUM, "symbols": ["A"], "default": "A"}
    assert avro.check_backward(reader, ENUM) == []


@pytest.mark.parametrize(
    ("writer", "reader", "problem"),
    [
        ({"type": "int", "logicalType": "date"}, "int", "int date would be read as int"),
        (
            "long",
            {"type": "long", "logicalType": "timestamp-micros"},
            "long would be read as long timestamp-micros",
        ),
        (
            {"type": "long", "logicalType": "local-timestamp-micros"},
            {"type": "long", "logicalType": "timestamp-micros"},
            "long local-timestamp-micros would be read as long timestamp-micros",
        ),
        (
            decimal_type(10, 2),
            decimal_type(10, 3),
            "decimal scale changes: bytes decimal(10,2) -> bytes decimal(10,3)",
        ),
        (
            decimal_type(10, 2),
            decimal_type(8, 2),
            "decimal precision shrinks: bytes decimal(10,2) -> bytes decimal(8,2)",
        ),
        (decimal_type(10, 2), decimal_type(12, 2), None),
        ({"type": "string", "logicalType": "uuid"}, "string", None),  # uuid only annotates a string
    ],
)
def test_a_changed_meaning_of_the_same_bytes_is_incompatible(
    writer: Any, reader: Any, problem: str | None
) -> None:
    problems = [str(p) for p in avro.check_backward(reader, writer)]
    assert problems == ([] if problem is None else [f"<root>: {problem}"])


def test_problems_name_the_column() -> None:
    old = avro.value_schema(table([("id", "int4"), ("Weird Name", "int4")]), "p.public.t")
    new = avro.value_schema(table([("id", "int4"), ("Weird Name", "text")]), "p.public.t")
    assert [str(p) for p in avro.check_backward(new, old)] == [
        "before.Weird Name: int cannot be read as string",
        "after.Weird Name: int cannot be read as string",
    ]


def test_every_builtin_type_is_valid_for_the_reference_avro_implementation() -> None:
    """Apache Avro's own parser (as registries use it) is stricter than fastavro's: one branch per
    type in a union, so an array of uuid takes its placeholder in the uuid's string branch."""
    import warnings

    reference = pytest.importorskip("avro.schema")
    errors = pytest.importorskip("avro.errors")
    columns = [TableColumn("id", column_type(23), True)]
    for oid in sorted(BUILTIN_NAMES):
        columns.append(TableColumn(f"c{oid}", column_type(oid), False))
    schema = avro.value_schema(Table(1, "public", "t", ReplicaIdentity.DEFAULT, columns), "p.public.t")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", errors.IgnoredLogicalType)  # local-timestamp-micros: newer than it
        reference.parse(json.dumps(schema))


def test_a_forked_serializer_writes_the_same_records_and_publishes_no_schema_again() -> None:
    """A snapshot worker thread forks its coordinator's serializer: no schema topic read, no schema
    built again, the same bytes; a table the coordinator never saw is still registered."""
    orders = table([("id", "int4"), ("note", "text")])
    serializer = avro.AvroSerializer("shop", SOURCE)
    serializer.prepare(orders)
    assert len(serializer.take_schema_records()) == 2
    fork = serializer.fork()
    row = event(orders, "r", None, [7, "seven"])
    assert fork.encode(row, now_ms=NOW_MS) == serializer.encode(row, now_ms=NOW_MS)
    assert fork.take_schema_records() == ()
    lines = table([("id", "int4"), ("qty", "int8")], relation_id=101, name="lines")
    fork.encode(event(lines, "r", None, [1, 2]), now_ms=NOW_MS)
    subjects = [fork.registry.by_fingerprint[key].subject for key, _ in fork.take_schema_records()]
    assert subjects == ["shop.public.lines-value", "shop.public.lines-key"]
    assert serializer.registry.latest("shop.public.lines-value") is None  # the fork's own registry


def test_tables_of_one_shape_share_their_generated_row_encoder() -> None:
    """A database of many similar tables compiles one row encoder, not one per table."""
    serializer = avro.AvroSerializer("shop", SOURCE)
    first = table([("id", "int4"), ("note", "text")], relation_id=201, name="t1")
    second = table([("id", "int4"), ("note", "text")], relation_id=202, name="t2")
    other = table([("id", "int4"), ("amount", "numeric(10,2)")], relation_id=203, name="t3")
    codecs = [serializer._codec(t) for t in (first, second, other)]
    assert codecs[0].row is codecs[1].row
    assert codecs[0].row is not codecs[2].row
    decoder = RecordDecoder(serializer.registry)
    value = serializer.encode(event(second, "c", None, [3, "x"]))[1]
    assert decoder.decode(value)["after"] == {"id": 3, "note": "x"}


@given(st.lists(ROW_TEXT, max_size=30), st.sampled_from([("id",), ("qty", "id"), ()]))
@settings(max_examples=150, deadline=None)
def test_streamed_text_encodes_as_its_row(
    rows: list[tuple[bytes | None, ...]], keys: tuple[str, ...]
) -> None:
    """`encode_text` (a streamed insert's or update's row encoded from its pgoutput text in one
    generated call) gives what `encode` gives for the row `row_parser` makes of the same text; what
    it cannot encode (an unchanged TOAST value, a binary value, text that does not parse, a numeric
    too wide) fails or comes out exactly as the general way has it."""
    from cdc.errors import DecodeError
    from cdc.pgoutput import UNCHANGED, Binary
    from cdc.pgtypes import row_parser

    if "qty" in keys:  # a key column is never null
        rows = [(*r[:5], b"7" if r[5] is None else r[5]) for r in rows]
    table = Table(7, "public", "lines", 1 if keys else 0,
                  [TableColumn(n, column_type(oid, mod), n in keys) for n, oid, mod in COLUMNS])  # fmt: skip
    parse = row_parser([c.type for c in table.columns])
    serializer = avro.AvroSerializer("shop", SourceInfo("test", "shop"))

    def event(order: int, after: list[Any] | None = None) -> ChangeEvent:
        op = "cu"[order % 2]  # inserts, and updates without an old row
        return ChangeEvent(op, table, None, after, 0x16B3748 + order, 0x16B4000, 7, 5, order, order, "7:1")

    def both(order: int, text: list[Any]) -> tuple[Any, Any]:
        """(encode_text's result, the general way's), each a record or the error it raised."""
        results: list[Any] = []
        for way in ("text", "general"):
            try:
                if way == "text":
                    results.append(serializer.encode_text(event(order), list(text), parse, now_ms=9))
                else:
                    results.append(serializer.encode(event(order, parse(list(text))), now_ms=9))
            except (DecodeError, SchemaError) as exc:
                results.append((type(exc), str(exc)))
        return results[0], results[1]

    for order, row in enumerate(rows):
        got, want = both(order, list(row))
        assert isinstance(want, tuple) and isinstance(want[1], bytes)  # these rows all encode
        assert got == want
    fine: list[Any] = [b"1", b"x", b"1.00", None, b"t", b"7"]
    odd = [(2, b"12345678901.00"), (3, b"yesterday"), (1, UNCHANGED), (2, UNCHANGED), (3, Binary(b"\0")),
           (5, b"seven"), (0, b""), (0, None)]  # fmt: skip
    for index, value in odd:  # 13 digits for numeric(12,2), not a timestamp, ...
        text = list(fine)
        text[index] = value
        got, want = both(len(rows), text)
        assert got == want
        assert isinstance(want[0], type) or value is None  # each fails the general way (but NULL)
