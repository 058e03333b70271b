"""`cdc.debezium` without servers: the values Debezium 3.6 writes, and Avro bytes as fastavro writes them.

The values are those Debezium itself produced for the same Postgres text in
tests/peers/test_debezium_compat.py (which compares everything against the
running connector when Java is there); these checks run everywhere.
"""

from __future__ import annotations

import io
import json
from decimal import Decimal
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from cdc.change import ChangeEvent
from cdc.debezium import DebeziumAvroSerializer, DebeziumJsonSerializer, Options
from cdc.debezium.envelope import table_shape
from cdc.debezium.types import column_field, json_converter
from cdc.events import SourceInfo, Table, TableColumn
from cdc.pgoutput import ReplicaIdentity
from cdc.pgtypes import column_type, numeric_typmod

SOURCE = SourceInfo("shop", "shopdb")
BIG = "XODppWAV/sWq36MorjmBFQ=="  # 123456789012345678901234567890123456789 unscaled
POINT_WKB = "AQEAAAAAAAAAAADwPwAAAAAAAABA"  # little-endian WKB of POINT(1 2)


def _typmod(precision: int, scale: int) -> int:
    typmod = ((precision << 16) | scale) + 4
    assert numeric_typmod(typmod) == (precision, scale)
    return typmod


def json_of(oid: int, text: bytes, options: Options | None = None, typmod: int = -1) -> Any:
    """The JsonConverter's JSON of a column value, from the server's text."""
    ctype = column_type(oid, typmod)
    field = column_field(ctype, options or Options())
    value = ctype.parse(text)
    connected = value if field.to_connect is None else field.to_connect(value)
    render = json_converter(field.schema)
    return connected if render is None or connected is None else render(connected)


@pytest.mark.parametrize(
    ("oid", "typmod", "text", "options", "expected"),
    [
        (1700, _typmod(10, 2), b"12.50", Options(), "BOI="),
        (1700, _typmod(10, 2), b"-0.01", Options(), "/w=="),
        (1700, _typmod(10, 2), b"NaN", Options(), None),
        (1700, _typmod(10, 2), b"12.50", Options(decimal="string"), "12.50"),
        (1700, -1, b"123456789012345678901234567890.123456789", Options(), {"scale": 9, "value": BIG}),
        (1700, -1, b"0.000001", Options(), {"scale": 6, "value": "AQ=="}),
        (1700, -1, b"-Infinity", Options(decimal="string"), "NEGATIVE_INFINITY"),
        (1700, -1, b"NaN", Options(decimal="string"), "NAN"),
        (790, -1, b"$1,234,567.89", Options(), "B1vNFQ=="),
        (790, -1, b"-$92,233,720,368,547,758.08", Options(), "gAAAAAAAAAA="),
        (1082, -1, b"2024-02-29", Options(), 19782),
        (1082, -1, b"0044-03-15 BC", Options(), -735160),
        (1082, -1, b"0044-03-15 BC", Options(time="isostring"), "-0043-03-15Z"),
        (1082, -1, b"infinity", Options(), 2**31 - 1),  # Debezium: -2147472692 (docs/types.md)
        (1083, -1, b"13:45:30.123456", Options(), 49530123456),
        (1083, 3, b"13:45:30.123", Options(), 49530123),
        (1083, 3, b"13:45:30.123", Options(time="adaptive_time_microseconds"), 49530123000),
        (1083, -1, b"24:00:00", Options(), 86400000000),
        (1266, -1, b"13:45:30.123456+05:30", Options(), "08:15:30.123456Z"),
        (1114, -1, b"2024-02-29 13:45:30.123456", Options(), 1709214330123456),
        (1114, 3, b"2024-02-29 13:45:30.123", Options(), 1709214330123),
        (1114, -1, b"infinity", Options(), 9223372036825200000),
        (1114, -1, b"-infinity", Options(time="connect"), -9223372036832400),
        (1114, -1, b"10000-01-01 00:00:00", Options(time="isostring"), "+10000-01-01T00:00:00Z"),
        (1184, -1, b"2024-02-29 08:15:30.123456+00", Options(), "2024-02-29T08:15:30.123456Z"),
        (1184, -1, b"0001-01-01 00:00:00+00 BC", Options(), "0000-01-01T00:00:00.000000Z"),
        (1184, -1, b"-infinity", Options(), "-infinity"),
        (1186, -1, b"P1Y2M3DT4H5M6.5S", Options(), 37091106500000),
        (1186, -1, b"P-1Y-2M3D", Options(), -36558000000000),
        (1186, -1, b"P-1DT-1S", Options(interval="string"), "P0Y0M-1DT0H0M-1S"),
        (1186, -1, b"PT0S", Options(interval="string"), "P0Y0M0DT0H0M0S"),
        (1560, 10, b"1010101010", Options(), "qgI="),
        (1560, 1, b"0", Options(), False),
        (1562, -1, b"101", Options(), "BQ=="),
        (17, -1, b"\\x00ff10", Options(binary="hex"), "00ff10"),
        (17, -1, b"\\x00ff10", Options(binary="base64-url-safe"), "AP8Q"),
        (600, -1, b"(1,2)", Options(), {"x": 1.0, "y": 2.0, "wkb": POINT_WKB, "srid": None}),
        (700, -1, b"NaN", Options(), "NaN"),
        (1007, -1, b"{{1,2},{3,4}}", Options(), [1, 2, 3, 4]),  # Debezium: [null, null]
        (1007, -1, b"[0:1]={7,8}", Options(), [7, 8]),
        (1182, -1, b"{2024-02-29,NULL}", Options(time="isostring"), ["2024-02-29Z", None]),
    ],
)  # fmt: skip
def test_values_are_the_ones_debezium_writes(
    oid: int, typmod: int, text: bytes, options: Options, expected: Any
) -> None:
    assert json_of(oid, text, options, typmod) == expected


def test_placeholders_are_typed_as_debezium_types_them() -> None:
    placeholder = "__debezium_unavailable_value"
    options = Options()
    for oid, expected in [
        (25, placeholder),
        (1009, [placeholder]),  # text[]
        (1007, list(placeholder.encode())),  # int4[]: its bytes as numbers
        (2951, ["b68a35a7-17ad-35b3-af2a-ae46edb4545a"]),  # uuid[]: the name-based UUID of it
    ]:
        ctype = column_type(oid)
        field = column_field(ctype, options)
        wire = ctype.unavailable(placeholder)
        assert (wire if field.to_connect is None else field.to_connect(wire)) == expected


class MemoryRegistry:
    """A `SchemaIds` in memory: ids from 1, every schema compatible."""

    where = "memory"

    def __init__(self) -> None:
        self.schemas: dict[int, str] = {}

    def register(self, subject: str, schema: str) -> tuple[int, int]:
        found = next((i for i, s in self.schemas.items() if s == schema), None)
        if found is None:
            found = len(self.schemas) + 1
            self.schemas[found] = schema
        return found, 1

    def latest(self, subject: str) -> tuple[int, int, str] | None:
        return None

    def is_compatible(self, subject: str, schema: str) -> bool:
        return True

    def compatibility(self, subject: str | None = None) -> str:
        return "BACKWARD"

    def schema(self, schema_id: int) -> str:
        return self.schemas[schema_id]

    def close(self) -> None:
        pass


def _table() -> Table:
    columns = [
        ("id", column_type(23), True),
        ("amount", column_type(1700, _typmod(12, 2)), False),
        ("exact", column_type(1700), False),
        ("at", column_type(1184), False),
        ("spot", column_type(600), False),
        ("tags", column_type(1009), False),
    ]
    return Table(7, "public", "orders", ReplicaIdentity.DEFAULT, [TableColumn(*c) for c in columns])


def test_avro_bodies_are_what_fastavro_writes_for_the_registered_schemas() -> None:
    """The hand-assembled envelope, the struct columns and the decimals read back with the schema
    the serializer registered, to the JSON serializer's values."""
    table = _table()
    registry = MemoryRegistry()
    serializer = DebeziumAvroSerializer("shop", SOURCE, Options(), registry, transaction_metadata=True)
    row = [1, Decimal("12.50"), "-0.000100", 1_709_194_530_123_456, "(1.5,-2)", ["a", None]]
    event = ChangeEvent(
        "u", table, row, row, 100, 200, 7, 1_700_000_000_000, 1, 1, "7:200", "false", None, None,
        1_700_000_000_000_123, 150,
    )  # fmt: skip
    key, value = serializer.encode(event, now_ms=1_700_000_000_500)
    assert key is not None and key[:1] == value[:1] == b"\x00"
    schema = parse_schema(json.loads(registry.schema(int.from_bytes(value[1:5], "big"))))
    decoded = schemaless_reader(io.BytesIO(value[5:]), schema, None)
    assert isinstance(decoded, dict)
    assert decoded["after"]["amount"] == Decimal("12.50")
    assert decoded["after"]["exact"] == {"scale": 4, "value": b"\xff"}  # -0.0001, trailing zeros gone
    assert decoded["after"]["spot"]["x"] == 1.5
    assert decoded["source"]["sequence"] == '["150","100"]'
    assert decoded["transaction"] == {"id": "7:200", "total_order": 1, "data_collection_order": 1}
    assert (decoded["ts_ms"], decoded["ts_us"]) == (1_700_000_000_500, 1_700_000_000_500_000)
    # the same bytes as fastavro writes for the decoded record
    again = io.BytesIO()
    schemaless_writer(again, schema, decoded)
    assert again.getvalue() == value[5:]
    plain = json.loads(DebeziumJsonSerializer("shop", SOURCE, Options(), schemas=False).encode(event)[1])
    assert plain["after"]["exact"] == {"scale": 4, "value": "/w=="}
    assert plain["after"]["at"] == "2024-02-29T08:15:30.123456Z"
    shape = table_shape("shop", table, Options())
    assert shape.value_schema["name"] == "shop.public.orders.Envelope"
