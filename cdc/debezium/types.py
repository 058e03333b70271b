"""Postgres columns as Debezium's PostgreSQL connector (3.x) writes them.

`column_field` is called once per column of a table version and returns the
column's Kafka Connect schema (as Connect's JsonConverter prints it) and the
function turning a wire value of `cdc.pgtypes` into the Connect value Debezium
would have (None when the wire value already is). Everything is chosen there,
once, by type and `Options` (Debezium's ``decimal.handling.mode``,
``time.precision.mode``, ``binary.handling.mode``, ``interval.handling.mode``
and ``unavailable.value.placeholder``): the per-row path is one call per
column that needs converting. `json_converter` does what the JsonConverter does
with a Connect value (bytes and decimals as base64, NaN as a string);
`cdc.debezium.avro` what the AvroConverter does.

Where Debezium's own output is wrong, the value here is the right one, and
docs/types.md lists each case: infinite dates (Debezium overflows them into
wrong days), multi-dimensional arrays (Debezium sends nulls; here the elements,
flattened), columns of types Debezium leaves out of its events (line, lseg,
box, path, polygon, circle, multiranges, tsquery, pg_lsn, composite types:
here their text), ``name`` columns (always null in Debezium), the placeholder of
a bytea column in base64 modes (null in Debezium).
"""

from __future__ import annotations

import base64
import binascii
import decimal
import functools
import hashlib
import math
import re
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from cdc.pgtypes import (
    DATE_INFINITY,
    DATE_MINUS_INFINITY,
    TIMESTAMP_INFINITY,
    TIMESTAMP_MINUS_INFINITY,
    ColumnType,
    civil_from_days,
    numeric_typmod,
)

Convert = Callable[[Any], Any]

#: pgjdbc's PGStatement.DATE_POSITIVE_INFINITY / DATE_NEGATIVE_INFINITY, which Debezium sends for
#: infinite timestamps (as microseconds in MicroTimestamp, milliseconds / 1000 in Timestamp)
PG_POSITIVE_INFINITY: Final = 9223372036825200000
PG_NEGATIVE_INFINITY: Final = -9223372036832400000
DAYS_PER_MONTH_AVG: Final = 30.4375  # Debezium's MicroDuration
_DAY_US: Final = 86_400_000_000


@dataclass(frozen=True, slots=True)
class Options:
    """Debezium's connector options that shape values, with their defaults."""

    decimal: str = "precise"  # decimal.handling.mode: precise | string | double
    time: str = "adaptive"  # time.precision.mode: adaptive | adaptive_time_microseconds | connect | isostring
    binary: str = "bytes"  # binary.handling.mode: bytes | base64 | base64-url-safe | hex
    interval: str = "numeric"  # interval.handling.mode: numeric | string
    placeholder: str = "__debezium_unavailable_value"  # unavailable.value.placeholder


@dataclass(frozen=True, slots=True)
class ColumnField:
    """One column as Debezium writes it: its Connect schema and the wire value -> Connect value."""

    schema: dict[str, Any]  # Connect schema as the JsonConverter prints it, without "optional" / "field"
    to_connect: Convert | None  # None: the wire value is the Connect value


def connect_schema(
    kind: str,
    name: str | None = None,
    *,
    version: int | None = None,
    doc: str | None = None,
    parameters: dict[str, str] | None = None,
    **nested: Any,
) -> dict[str, Any]:
    """A Connect schema in the JsonConverter's key order (fields/items before the rest)."""
    schema: dict[str, Any] = {"type": kind, **nested}
    if name is not None:
        schema["name"] = name
    if version is not None:
        schema["version"] = version
    if doc is not None:
        schema["doc"] = doc
    if parameters is not None:
        schema["parameters"] = parameters
    return schema


def field_schema(
    schema: dict[str, Any], field: str, *, optional: bool, default: Any = None
) -> dict[str, Any]:
    """``schema`` as a field of a struct, in the JsonConverter's order: type, fields/items/keys/values,
    optional, name, version, doc, parameters, default, field."""
    ordered: dict[str, Any] = {"type": schema["type"]}
    for key in ("fields", "items", "keys", "values"):
        if key in schema:
            ordered[key] = schema[key]
    ordered["optional"] = optional
    for key in ("name", "version", "doc", "parameters"):
        if key in schema:
            ordered[key] = schema[key]
    if default is not None:
        ordered["default"] = default
    ordered["field"] = field
    return ordered


# -- small conversions ----------------------------------------------------------------------------


#: decimal arithmetic without rounding: numeric has up to 131072 + 16383 digits
_EXACT: Final = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)


def unscaled_of(value: Decimal) -> tuple[int, int]:
    """(unscaled integer, scale) of a finite decimal, exactly (no context rounding)."""
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    unscaled = int("".join(map(str, digits)) or "0")
    return (-unscaled if sign else unscaled), -exponent


def unscaled_bytes(unscaled: int) -> bytes:
    """Java's BigInteger.toByteArray: big-endian two's complement, the fewest bytes (0 is one byte)."""
    bits = (unscaled if unscaled >= 0 else ~unscaled).bit_length()
    return unscaled.to_bytes(bits // 8 + 1, "big", signed=True)


def _decimal_of(scale: int) -> Convert:
    quantum = Decimal(1).scaleb(-scale)

    def convert(value: Any) -> Decimal | None:
        if value.__class__ is not Decimal or not value.is_finite():
            return None  # NaN and infinities (and a placeholder) cannot be a Connect Decimal
        if value.as_tuple().exponent == -scale:
            return value  # the server's text of numeric(p,s) has the column's scale already
        return value.quantize(quantum, context=_EXACT)

    return convert


_DEBEZIUM_SPECIAL: Final = {"NaN": "NAN", "Infinity": "POSITIVE_INFINITY", "-Infinity": "NEGATIVE_INFINITY"}


def _decimal_string(scale: int | None) -> Convert:
    """decimal.handling.mode=string: the plain digits; NaN and infinities in Java's enum spelling."""
    quantum = None if scale is None else Decimal(1).scaleb(-scale)

    def convert(value: Any) -> str:
        if value.__class__ is str:
            return _DEBEZIUM_SPECIAL.get(value, value)
        number = value if quantum is None else value.quantize(quantum, context=_EXACT)
        return format(number, "f")

    return convert


def _decimal_double(value: Any) -> float | None:
    try:
        return float(value)  # a Decimal, or the text of numeric (NaN, Infinity, -Infinity included)
    except ValueError:
        return None  # the placeholder


def _variable_scale(value: Any) -> dict[str, Any] | None:
    """numeric without a scale, precise: io.debezium.data.VariableScaleDecimal {scale, value}."""
    try:
        number = Decimal(value)
    except ArithmeticError:
        return None  # the placeholder
    if not number.is_finite():
        return None
    unscaled, scale = unscaled_of(number)
    while scale > 0 and unscaled and unscaled % 10 == 0:  # BigDecimal.stripTrailingZeros
        unscaled //= 10
        scale -= 1
    if scale < 0 or not unscaled:  # a negative scale becomes 0
        unscaled, scale = unscaled * 10 ** max(0, -scale), 0
    return {"scale": scale, "value": unscaled_bytes(unscaled)}


def format_year(year: int) -> str:
    """java.time's ISO year: four digits for 0..9999, ``+`` above, ``-`` and four digits below 0."""
    if 0 <= year <= 9999:
        return f"{year:04d}"
    return f"+{year}" if year > 9999 else f"-{-year:04d}"


@functools.lru_cache(maxsize=4096)  # a stream repeats dates
def iso_date(days: int) -> str:
    year, month, day = civil_from_days(days)
    return f"{format_year(year)}-{month:02d}-{day:02d}"


def _fraction(us: int, width: int | None) -> str:
    """``.ffffff`` of ``us`` microseconds: ``width`` digits, or as many as needed (none for zero)."""
    if width is None:
        if not us:
            return ""
        return "." + f"{us:06d}".rstrip("0")
    if width <= 0:
        return ""
    return "." + f"{us:06d}"[:width].ljust(width, "0")


def iso_time(us: int, width: int | None = None) -> str:
    seconds, fraction = divmod(us % _DAY_US, 1_000_000)
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{_fraction(fraction, width)}"


def iso_timestamp(us: int, width: int | None = None) -> str:
    days, rest = divmod(us, _DAY_US)
    return f"{iso_date(days)}T{iso_time(rest, width)}"


def _date_iso(value: int) -> str:
    if value >= DATE_INFINITY:
        return "infinity"
    if value <= DATE_MINUS_INFINITY:
        return "-infinity"
    return iso_date(value) + "Z"


def _timestamp_micros(value: Any) -> int | None:
    if value.__class__ is str:
        return None  # beyond int64 microseconds: no MicroTimestamp holds it
    if value >= TIMESTAMP_INFINITY:
        return PG_POSITIVE_INFINITY
    if value <= TIMESTAMP_MINUS_INFINITY:
        return PG_NEGATIVE_INFINITY
    return int(value)


def _timestamp_millis(value: Any) -> int | None:
    if value.__class__ is str:
        return None
    if value >= TIMESTAMP_INFINITY:
        return PG_POSITIVE_INFINITY // 1000
    if value <= TIMESTAMP_MINUS_INFINITY:
        return PG_NEGATIVE_INFINITY // 1000
    return int(value) // 1000


def _timestamp_iso(value: Any) -> str | None:
    if value.__class__ is str:
        return value
    if value >= TIMESTAMP_INFINITY:
        return "infinity"
    if value <= TIMESTAMP_MINUS_INFINITY:
        return "-infinity"
    return iso_timestamp(value) + "Z"


def _zoned_timestamp(width: int) -> Convert:
    """timestamptz as io.debezium.time.ZonedTimestamp: UTC, ``width`` fractional digits, ``Z``."""

    def convert(value: Any) -> str:
        if value.__class__ is str:
            return value  # beyond int64 microseconds: the ISO text cdc.pgtypes made
        if value >= TIMESTAMP_INFINITY:
            return "infinity"
        if value <= TIMESTAMP_MINUS_INFINITY:
            return "-infinity"
        return iso_timestamp(value, width) + "Z"

    return convert


_TIMETZ = re.compile(r"(\d\d):(\d\d):(\d\d)(?:\.(\d+))?([+-])(\d\d)(?::(\d\d))?(?::(\d\d))?")


def _zoned_time(value: str) -> str:
    """timetz as io.debezium.time.ZonedTime: the time of day in UTC, ``Z``."""
    match = _TIMETZ.fullmatch(value)
    if match is None:
        return value  # the placeholder
    hours, minutes, seconds, fraction, sign, oh, om, os_ = match.groups()
    us = (int(hours) * 3600 + int(minutes) * 60 + int(seconds)) * 1_000_000
    us += int((fraction or "0").ljust(6, "0")[:6])
    offset = (int(oh) * 3600 + int(om or 0) * 60 + int(os_ or 0)) * 1_000_000
    us -= offset if sign == "+" else -offset
    return iso_time(us % _DAY_US) + "Z"


_INTERVAL = re.compile(
    r"P(?:(-?\d+)Y)?(?:(-?\d+)M)?(?:(-?\d+)W)?(?:(-?\d+)D)?"
    r"(?:T(?:(-?\d+)H)?(?:(-?\d+)M)?(?:(-?\d+(?:\.\d+)?)S)?)?"
)


def _interval_parts(value: str) -> tuple[int, int, int, int, int, str] | None:
    """The ISO 8601 text of cdc.pgtypes as pgjdbc's PGInterval fields; None if it is not one."""
    match = _INTERVAL.fullmatch(value)
    if match is None or value == "P":
        return None
    years, months, weeks, days, hours, minutes, seconds = match.groups()
    return (
        int(years or 0),
        int(months or 0),
        int(days or 0) + 7 * int(weeks or 0),
        int(hours or 0),
        int(minutes or 0),
        seconds or "0",
    )


def _micro_duration(value: str) -> int | None:
    """io.debezium.time.MicroDuration: a month is 30.4375 days, in doubles as Debezium computes it."""
    parts = _interval_parts(value)
    if parts is None:
        return None
    years, months, days, hours, minutes, seconds = parts
    number_of_days = ((years * 12) + months) * DAYS_PER_MONTH_AVG + days
    number_of_seconds = (((number_of_days * 24 + hours) * 60) + minutes) * 60 + float(seconds)
    return int(number_of_seconds * 1e6)


def _interval_string(value: str) -> str:
    """io.debezium.time.Interval: every field spelled out, ``P1Y2M3DT4H5M6.5S``."""
    parts = _interval_parts(value)
    if parts is None:
        return value
    years, months, days, hours, minutes, seconds = parts
    secs = Decimal(seconds).normalize()
    text = format(secs, "f") if secs != 0 else "0"
    return f"P{years}Y{months}M{days}DT{hours}H{minutes}M{text}S"


def _bits(length: int) -> Convert:
    """bit(n) / varbit as io.debezium.data.Bits: the bit string's number, little-endian, fewest bytes."""

    def convert(value: str) -> bytes | str:
        if value.strip("01"):
            return value  # the placeholder
        number = int(value, 2) if value else 0
        return number.to_bytes((number.bit_length() + 7) // 8, "little")

    return convert


def _bit1(value: str) -> bool | str:
    return value if value not in ("0", "1") else value == "1"


_POINT = re.compile(r"\(([^,]+),([^)]+)\)")


def _point(value: str) -> dict[str, Any] | None:
    """point as io.debezium.data.geometry.Point: x, y and the WKB of the point (no SRID)."""
    match = _POINT.fullmatch(value)
    if match is None:
        return None
    x, y = float(match.group(1)), float(match.group(2))
    return {"x": x, "y": y, "wkb": b"\x01\x01\x00\x00\x00" + struct.pack("<dd", x, y), "srid": None}


_HSTORE_ITEM = re.compile(r'\s*"((?:[^"\\]|\\.)*)"\s*=>\s*(NULL|"((?:[^"\\]|\\.)*)")\s*(?:,|$)', re.DOTALL)
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)


def _hstore_json(placeholder: str) -> Convert:
    """hstore (hstore.handling.mode=json) as io.debezium.data.Json: a JSON object of its pairs."""
    import orjson  # noqa: PLC0415

    def convert(value: str) -> str:
        if value == placeholder:
            pairs: dict[str, str | None] = {placeholder: placeholder}
        else:
            pairs = {}
            for match in _HSTORE_ITEM.finditer(value):
                key = _UNESCAPE.sub(r"\1", match.group(1))
                pairs[key] = None if match.group(2) == "NULL" else _UNESCAPE.sub(r"\1", match.group(3))
        return orjson.dumps(pairs).decode()

    return convert


def _binary(mode: str, placeholder: str) -> tuple[dict[str, Any], Convert | None]:
    """bytea per binary.handling.mode; the placeholder of an unchanged TOAST value stays readable."""
    if mode == "bytes":
        return connect_schema("bytes"), None
    marker = placeholder.encode()
    encode: Callable[[bytes], str] = {
        "base64": lambda b: base64.b64encode(b).decode(),
        "base64-url-safe": lambda b: base64.urlsafe_b64encode(b).decode(),
        "hex": lambda b: binascii.hexlify(b).decode(),
    }[mode]

    def convert(value: bytes) -> str:
        return placeholder if value == marker else encode(value)

    return connect_schema("string"), convert


def _time_precision(ctype: ColumnType) -> int:
    return ctype.typmod if 0 <= ctype.typmod <= 6 else 6


# -- the mapping ------------------------------------------------------------------------------------

_INT_TYPES: Final = {21: "int16", 23: "int32", 20: "int64", 26: "int64"}
#: types Debezium gives a name to, text values as they are
_NAMED_STRINGS: Final = {
    "uuid": ("io.debezium.data.Uuid", 1),
    "json": ("io.debezium.data.Json", 1),
    "jsonb": ("io.debezium.data.Json", 1),
    "xml": ("io.debezium.data.Xml", 1),
    "tsvector": ("io.debezium.data.Tsvector", 1),
    "ltree": ("io.debezium.data.Ltree", 1),
}


def column_field(ctype: ColumnType, options: Options) -> ColumnField:
    """The Connect schema and converter of a column of type ``ctype`` (see the module's docstring)."""
    kind, oid, name = ctype.kind, ctype.oid, ctype.name
    if kind == "array":
        return _array_field(ctype, options)
    if kind == "int":
        if ctype.avro == "long":
            return ColumnField(connect_schema("int64"), None)
        return ColumnField(connect_schema(_INT_TYPES.get(oid, "int32")), None)
    if kind == "float4":
        return ColumnField(connect_schema("float"), None)
    if kind == "float8":
        return ColumnField(connect_schema("double"), None)
    if kind == "bool":
        return ColumnField(connect_schema("boolean"), None)
    if kind in ("decimal", "numeric", "money"):
        return _decimal_field(ctype, options)
    if kind == "bytes":
        schema, convert = _binary(options.binary, options.placeholder)
        return ColumnField(schema, convert)
    if kind in ("date", "time", "timestamp", "timestamptz", "timetz", "interval"):
        return _temporal_field(ctype, options)
    if kind == "enum":
        return ColumnField(
            connect_schema(
                "string", "io.debezium.data.Enum", version=1, parameters={"allowed": ",".join(ctype.labels)}
            ),
            None,
        )
    base = name.rpartition(".")[2]
    if kind == "json" and oid == 114:
        base = "json"
    named = _NAMED_STRINGS.get("jsonb" if kind == "json" else ("uuid" if kind == "uuid" else base))
    if named is not None:
        return ColumnField(connect_schema("string", named[0], version=named[1]), None)
    if base == "hstore":
        return ColumnField(
            connect_schema("string", "io.debezium.data.Json", version=1), _hstore_json(options.placeholder)
        )
    if base in ("bit", "varbit"):
        length = ctype.typmod if ctype.typmod > 0 else 2147483647
        if length == 1:
            return ColumnField(connect_schema("boolean"), _bit1)
        return ColumnField(
            connect_schema("bytes", "io.debezium.data.Bits", version=1, parameters={"length": str(length)}),
            _bits(length),
        )
    if base == "point":
        return ColumnField(_POINT_SCHEMA, _point)
    # text, varchar, bpchar, name, "char", citext, inet, cidr, macaddr(8), ranges: strings;
    # and the types Debezium leaves out (line, box, ..., composites): their text
    return ColumnField(connect_schema("string"), None)


_POINT_SCHEMA: Final = connect_schema(
    "struct",
    "io.debezium.data.geometry.Point",
    version=1,
    doc="Geometry (POINT)",
    fields=[
        {"type": "double", "optional": False, "field": "x"},
        {"type": "double", "optional": False, "field": "y"},
        {"type": "bytes", "optional": True, "field": "wkb"},
        {"type": "int32", "optional": True, "field": "srid"},
    ],
)

_VARIABLE_SCALE_SCHEMA: Final = connect_schema(
    "struct",
    "io.debezium.data.VariableScaleDecimal",
    version=1,
    doc="Variable scaled decimal",
    fields=[
        {"type": "int32", "optional": False, "field": "scale"},
        {"type": "bytes", "optional": False, "field": "value"},
    ],
)


def _decimal_field(ctype: ColumnType, options: Options) -> ColumnField:
    mode = options.decimal
    if ctype.kind == "money":
        scale: int | None = 2  # Debezium's money.fraction.digits
        precision = None
        to_decimal: Convert = Decimal
    elif ctype.kind == "decimal":
        found = numeric_typmod(ctype.typmod)
        assert found is not None
        precision, scale = found
        to_decimal = _same
    else:  # numeric without a typmod: str values
        precision = scale = None
        to_decimal = _same
    if mode == "string":
        string = _decimal_string(scale)
        if ctype.kind == "numeric":
            return ColumnField(connect_schema("string"), lambda v: _DEBEZIUM_SPECIAL.get(v, v))
        return ColumnField(connect_schema("string"), lambda v: string(to_decimal(v)))
    if mode == "double":
        return ColumnField(connect_schema("double"), _decimal_double)
    if scale is None:
        return ColumnField(_VARIABLE_SCALE_SCHEMA, _variable_scale)
    parameters = {"scale": str(scale)}
    if precision is not None:
        parameters["connect.decimal.precision"] = str(precision)
    as_decimal = _decimal_of(scale)
    schema = connect_schema(
        "bytes", "org.apache.kafka.connect.data.Decimal", version=1, parameters=parameters
    )
    if ctype.kind == "money":
        return ColumnField(schema, lambda v: as_decimal(Decimal(v)))
    return ColumnField(schema, as_decimal)


def _same(value: Any) -> Any:
    return value


def _temporal_field(ctype: ColumnType, options: Options) -> ColumnField:
    kind, mode = ctype.kind, options.time
    if kind == "timestamptz":
        return ColumnField(
            connect_schema("string", "io.debezium.time.ZonedTimestamp", version=1),
            _zoned_timestamp(_time_precision(ctype)),
        )
    if kind == "timetz":
        return ColumnField(connect_schema("string", "io.debezium.time.ZonedTime", version=1), _zoned_time)
    if kind == "interval":
        if options.interval == "string":
            return ColumnField(
                connect_schema("string", "io.debezium.time.Interval", version=1), _interval_string
            )
        return ColumnField(
            connect_schema("int64", "io.debezium.time.MicroDuration", version=1), _micro_duration
        )
    if mode == "isostring":
        if kind == "date":
            return ColumnField(connect_schema("string", "io.debezium.time.IsoDate", version=1), _date_iso)
        if kind == "time":
            return ColumnField(
                connect_schema("string", "io.debezium.time.IsoTime", version=1), lambda v: iso_time(v) + "Z"
            )
        return ColumnField(
            connect_schema("string", "io.debezium.time.IsoTimestamp", version=1), _timestamp_iso
        )
    if mode == "connect":
        if kind == "date":
            return ColumnField(connect_schema("int32", "org.apache.kafka.connect.data.Date", version=1), None)
        if kind == "time":
            return ColumnField(
                connect_schema("int32", "org.apache.kafka.connect.data.Time", version=1), lambda v: v // 1000
            )
        return ColumnField(
            connect_schema("int64", "org.apache.kafka.connect.data.Timestamp", version=1), _timestamp_millis
        )
    precision = _time_precision(ctype)
    if kind == "date":
        return ColumnField(connect_schema("int32", "io.debezium.time.Date", version=1), None)
    if kind == "time":
        if precision <= 3 and mode == "adaptive":
            return ColumnField(
                connect_schema("int32", "io.debezium.time.Time", version=1), lambda v: v // 1000
            )
        return ColumnField(connect_schema("int64", "io.debezium.time.MicroTime", version=1), None)
    if precision <= 3:
        return ColumnField(
            connect_schema("int64", "io.debezium.time.Timestamp", version=1), _timestamp_millis
        )
    return ColumnField(
        connect_schema("int64", "io.debezium.time.MicroTimestamp", version=1), _timestamp_micros
    )


# -- arrays ----------------------------------------------------------------------------------------


def _array_field(ctype: ColumnType, options: Options) -> ColumnField:
    element = ctype.element
    assert element is not None
    inner = column_field(element, options)
    schema = connect_schema("array", items={**_optional(inner.schema)})
    convert_element = inner.to_connect
    placeholder = _array_placeholder(element, options.placeholder)
    parse_text = _array_text_parser(element)

    def convert(value: Any) -> Any:
        if value.__class__ is str:
            value = parse_text(value)  # several dimensions (flattened), or lower bounds other than 1
        elif len(value) == 1 and value[0].__class__ is str and value[0] == options.placeholder:
            return placeholder
        if convert_element is None:
            return value
        return [None if v is None else convert_element(v) for v in value]

    return ColumnField(schema, convert)


def _optional(schema: dict[str, Any]) -> dict[str, Any]:
    """An array's items: optional, without a field name."""
    item = field_schema(schema, "", optional=True)
    del item["field"]
    return item


def _array_placeholder(element: ColumnType, placeholder: str) -> Any:
    """Debezium's placeholder of an unchanged TOASTed array, by element type."""
    raw = placeholder.encode()
    base = element.name.rpartition(".")[2]
    if element.kind in ("text", "json"):
        return [placeholder]
    if element.kind == "bytes":
        return [raw]
    if base in ("int4", "int8", "date"):
        return list(raw)  # its bytes as numbers, as Debezium does
    if element.kind == "uuid":
        return [str(uuid.UUID(bytes=hashlib.md5(raw).digest(), version=3))]  # noqa: S324 - Java's nameUUIDFromBytes
    return None


_ARRAY_UNESCAPE = re.compile(rb"\\(.)", re.DOTALL)


def _array_text_parser(element: ColumnType) -> Callable[[str], list[Any]]:
    """The text output of any array (bounds, several dimensions) -> its elements in order, flattened."""
    parse = element.parse
    delimiter = re.escape(element.delimiter)
    tokens = re.compile(
        rb'"((?:[^"\\]|\\.)*)"|[{}]|((?:(?!' + delimiter + rb')[^{}"])+)|' + delimiter, re.DOTALL
    )

    def elements(text: str) -> list[Any]:
        data = text.encode()
        if data[:1] == b"[":  # [lo:hi]={...}
            data = data[data.index(b"=") + 1 :]
        out: list[Any] = []
        for match in tokens.finditer(data):
            quoted, bare = match.groups()
            if quoted is not None:
                out.append(parse(_ARRAY_UNESCAPE.sub(rb"\1", quoted)))
            elif bare is not None:
                token = bare.strip()
                out.append(None if token == b"NULL" else parse(token))
        return out

    return elements


# -- what the JsonConverter does with Connect values -----------------------------------------------


def _json_float(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _json_bytes(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _json_decimal(value: Decimal) -> str:
    """A Connect Decimal in JSON (decimal.format=BASE64): base64 of the unscaled two's complement."""
    return base64.b64encode(unscaled_bytes(unscaled_of(value)[0])).decode()


def json_converter(schema: dict[str, Any]) -> Convert | None:
    """Connect value of ``schema`` -> the JsonConverter's JSON value (None: already JSON-able)."""
    kind = schema["type"]
    if schema.get("name") == "org.apache.kafka.connect.data.Decimal":
        return _json_decimal
    if kind == "bytes":
        return _json_bytes
    if kind in ("float", "double"):
        return _json_float
    if kind == "array":
        item = json_converter(schema["items"])
        if item is None:
            return None
        return lambda values: [None if v is None else item(v) for v in values]
    if kind == "struct":
        fields = [(f["field"], json_converter(f)) for f in schema["fields"]]
        if all(c is None for _, c in fields):
            return None

        def struct(value: dict[str, Any]) -> dict[str, Any]:
            out = dict(value)
            for name, convert in fields:
                item = out.get(name)
                if convert is not None and item is not None:
                    out[name] = convert(item)
            return out

        return struct
    if kind == "map":
        inner = json_converter(schema["values"])
        if inner is None:
            return None
        return lambda value: {k: None if v is None else inner(v) for k, v in value.items()}
    return None
