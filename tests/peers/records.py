"""Reading the records the interop tests compare: raw bytes, and Python values as JSON renders them."""

from __future__ import annotations

import base64
import datetime as dt
import math
import struct
import uuid
from decimal import Decimal
from typing import Any

from tests.support.topics import read_raw

_F32 = struct.Struct("<f")


def raw_records(
    bootstrap_servers: str, topic: str, idle_ms: int = 1000, isolation: str = "read_uncommitted"
) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) of ``topic``, as bytes, in offset order (`read_raw`)."""
    return [(r.key, r.value) for r in read_raw(bootstrap_servers, [topic], isolation, idle_ms)]


def _shortest_float32(value: float) -> float:
    """A float32 widened to a double, back to its shortest decimal (as cdc renders float4)."""
    single = _F32.unpack(_F32.pack(value))[0]
    if single != value:
        return value  # a double: leave it
    for digits in range(6, 10):
        short = float(f"{single:.{digits}g}")
        if _F32.unpack(_F32.pack(short))[0] == single:
            return short
    return value


def as_json(value: Any) -> Any:
    """Python values of an Avro reader with logical types (AvroDeserializer) as cdc's JSON renders them."""
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_json(v) for v in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
        return value.isoformat(timespec="microseconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dt.time):
        return value.isoformat(timespec="microseconds")
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return _shortest_float32(value)
    return value


def strip_logical(schema: Any) -> Any:
    """``schema`` without its logical types: how a plain Avro reader reads out-of-range values."""
    if isinstance(schema, dict):
        return {k: strip_logical(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [strip_logical(v) for v in schema]
    return schema
