"""Shared checks for type tests: wire-value equality and the Avro round trip of a wire value."""

from __future__ import annotations

import io
import math
from decimal import Decimal
from typing import Any

import fastavro
import orjson

from cdc.avro.encoding import column_encoder
from cdc.pgtypes import ColumnType


def same(a: Any, b: Any) -> bool:
    """Wire-value equality that also tells NaN, -0.0 and Decimal scales apart."""
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, Decimal) and isinstance(b, Decimal):
        return a.as_tuple() == b.as_tuple()
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


def _strip_logical(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_strip_logical(s) for s in schema]
    if isinstance(schema, dict):
        stripped = {
            k: _strip_logical(v) for k, v in schema.items() if k not in ("logicalType", "precision", "scale")
        }
        return stripped["type"] if set(stripped) == {"type"} else stripped
    return schema


def _flatten(avro: Any) -> list[Any]:
    return list(avro) if isinstance(avro, list) else [avro]


def _physical(value: Any, column: ColumnType) -> Any:
    """What plain Avro (no logical types) holds for a wire value of ``column``."""
    if value is None:
        return None
    if column.kind == "decimal" and isinstance(value, Decimal):
        scale = next(t["scale"] for t in _flatten(column.avro) if isinstance(t, dict))
        sign, digits, exponent = value.as_tuple()
        assert isinstance(exponent, int) and exponent + scale >= 0
        unscaled = int("".join(map(str, digits)) or "0") * 10 ** (exponent + scale)
        return -unscaled if sign else unscaled
    if column.kind == "float4" and isinstance(value, float):
        return fastavro_float32(value)
    if column.kind == "array" and isinstance(value, list):
        assert column.element is not None
        return [_physical(v, column.element) for v in value]
    return value


def fastavro_float32(value: float) -> float:
    import struct

    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def avro_round_trip(column: ColumnType, value: Any) -> None:
    """Encode ``value`` as cdc does under the column's (nullable) Avro type; read it back raw with
    plain fastavro. (tests/test_avro.py checks that cdc's bytes are fastavro's where fastavro can
    write the value; it cannot write a TOAST placeholder among the items of a date array.)"""
    field_type = ["null", *_flatten(column.avro)]
    out = io.BytesIO(column_encoder(field_type)(value))
    plain = fastavro.parse_schema(
        {"type": "record", "name": "row", "fields": [{"name": "v", "type": _strip_logical(field_type)}]}
    )
    out.seek(0)
    back = fastavro.schemaless_reader(out, plain, None)
    assert isinstance(back, dict)
    got, expected = _unscaled(back["v"], column), _physical(value, column)
    assert same(got, expected), (column.name, value, back["v"])


def _unscaled(back: Any, column: ColumnType) -> Any:
    """Avro decimal bytes as their unscaled int (arrays element-wise)."""
    if column.kind == "decimal" and isinstance(back, bytes):
        return int.from_bytes(back, "big", signed=True)
    if column.kind == "array" and isinstance(back, list):
        assert column.element is not None
        return [_unscaled(v, column.element) for v in back]
    return back


def renders_as_json(column: ColumnType, value: Any) -> Any:
    """``column.render(value)``, checked to be JSON (orjson encodes it)."""
    rendered = column.render(value)
    orjson.dumps(rendered)
    return rendered
