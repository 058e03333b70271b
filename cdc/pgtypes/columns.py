"""`ColumnType` per type OID: the converters table, `column_type` and `row_parser` (see `cdc.pgtypes`)."""

from __future__ import annotations

import base64
import binascii
import logging
import math
import re
import struct
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from cdc.errors import DecodeError
from cdc.pgoutput import UNCHANGED, Binary, ColumnValue
from cdc.pgtypes.temporal import (
    _date,
    _render_date,
    _render_time,
    _render_timestamp,
    _render_timestamptz,
    _time_us,
    _timestamp,
    _timestamptz,
    _timetz,
)

if TYPE_CHECKING:
    from cdc.pgtypes.catalog import TypeCatalog

log = logging.getLogger(__name__)

Parse = Callable[[bytes], Any]
Render = Callable[[Any], Any]

# Converter families (`ColumnType.kind`).
KINDS: Final = frozenset(
    {
        "bool", "int", "float4", "float8", "numeric", "decimal", "text", "bytes", "date", "time",
        "timetz", "timestamp", "timestamptz", "interval", "uuid", "json", "enum", "array", "string",
        "money",
    }
)  # fmt: skip

# Kinds whose values can be TOASTed and whose Avro type takes the placeholder string.
_PLACEHOLDER_KINDS: Final = frozenset({"numeric", "decimal", "text", "json", "string"})
# Kinds whose wire values are never str: in an array, the placeholder passes their renderer by.
_NOT_STR_KINDS: Final = frozenset({"bool", "int", "float4", "float8", "bytes", "date", "time"})


@dataclass(slots=True, frozen=True)
class ColumnType:
    """How one column's values are converted, encoded and rendered.

    ``parse`` takes the server's text output (bytes) and returns the wire
    value; on text that is not that output it raises only `PARSE_ERRORS`
    (ValueError, TypeError, ArithmeticError). ``render`` takes a wire value
    and returns its JSON rendering. ``kind`` names the converter family
    (see `KINDS`); ``element`` is the
    element's ColumnType for arrays; ``delimiter`` separates array elements in
    the text output of this type (``;`` for box, ``,`` otherwise).
    """

    oid: int
    typmod: int
    name: str
    parse: Parse
    avro: Any  # the Avro type of a non-null value (a JSON-able schema fragment)
    render: Render
    kind: str = "string"
    element: ColumnType | None = field(default=None, repr=False)
    delimiter: bytes = b","
    labels: tuple[str, ...] = ()  # an enum's labels, in their order

    def unavailable(self, placeholder: str) -> Any:
        """The wire value standing for an unchanged TOAST value the server did not send.

        Typed like the column: the placeholder string itself for string-like
        types (and those whose Avro type has a string branch), its UTF-8
        bytes for bytea, a one-element array holding the string for arrays
        (their Avro items have a string branch). Values of the other types
        are never TOASTed, so the server cannot omit them: asking raises
        `DecodeError`.
        """
        if self.kind in _PLACEHOLDER_KINDS:
            return placeholder
        if self.kind == "bytes":
            return placeholder.encode()
        if self.kind == "array":
            return [placeholder]
        raise DecodeError(
            f"TupleData: the server omitted an unchanged TOAST value of type {self.name}, "
            "which is never TOASTed"
        )


# -- parsers: server text output -> wire value -------------------------------------------


_text: Final[Parse] = bytes.decode  # UTF-8, strict


def _bool(value: bytes) -> bool:
    if value == b"t":
        return True
    if value == b"f":
        return False
    raise ValueError("bool output is t or f")


_float: Final[Parse] = float  # takes bytes; reads "NaN", "Infinity", "-Infinity", "-0"


def _bytea(value: bytes) -> bytes:
    if value[:2] != b"\\x":
        raise ValueError("bytea not in hex format: set bytea_output=hex")
    return binascii.unhexlify(value[2:])


def _decimal(value: bytes) -> Decimal | str:
    text = value.decode()
    number = Decimal(text)
    return number if number.is_finite() else text


def _interval(value: bytes) -> str:
    if value[:1] != b"P":
        raise ValueError("interval not in ISO 8601 format: set IntervalStyle=iso_8601")
    return value.decode()


_MONEY: Final = re.compile(rb"(-?)\$([0-9]{1,3}(?:,[0-9]{3})*)(\.[0-9]+)?")


def _money(value: bytes) -> str:
    """``-$1,234.56`` (money in the C locale, ``lc_monetary=C``) -> ``"-1234.56"``.

    The text output of money depends on ``lc_monetary``; the session settings set C,
    whose output is this one, so the value never depends on the server's locale.
    """
    match = _MONEY.fullmatch(value)
    if match is None:
        raise ValueError("money not in the C locale's format: set lc_monetary=C")
    sign, whole, fraction = match.groups()
    return (sign + whole.replace(b",", b"") + (fraction or b"")).decode()


def _array_parser(element: Parse, delimiter: bytes) -> Parse:
    """A parser for the text output of a 1-D array of ``element`` values."""
    delim = delimiter[0]
    quoted = re.compile(rb'"((?:[^"\\]|\\.)*)"', re.DOTALL)
    unescape = re.compile(rb"\\(.)", re.DOTALL)

    def parse(value: bytes) -> list[Any] | str:
        if value[:1] != b"{" or value[-1:] != b"}":
            if value[:1] == b"[":  # lower bounds other than 1: keep the exact text
                return value.decode()
            raise ValueError("array text output does not start with '{'")
        body = value[1:-1]
        if not body:
            return []
        if body[0] == 0x7B:  # several dimensions: keep the exact text
            return value.decode()
        if 0x22 not in body:  # no quoted element: split
            parts = body.split(delimiter)
            if b"" in parts:  # the server quotes empty strings
                raise ValueError("empty unquoted array element")
            return [None if e == b"NULL" else element(e) for e in parts]
        out: list[Any] = []
        pos, end = 0, len(body)
        while True:
            if body[pos] == 0x22:
                match = quoted.match(body, pos)
                if match is None:
                    raise ValueError("unterminated quoted array element")
                out.append(element(unescape.sub(rb"\1", match.group(1))))
                pos = match.end()
            else:
                stop = body.find(delimiter, pos)
                stop = end if stop < 0 else stop
                token = body[pos:stop]
                if not token:
                    raise ValueError("empty unquoted array element")
                out.append(None if token == b"NULL" else element(token))
                pos = stop
            if pos == end:
                return out
            if body[pos] != delim:
                raise ValueError("junk after a quoted array element")
            pos += 1
            if pos == end:
                raise ValueError("array ends with a delimiter")

    return parse


# -- renderers: wire value -> JSON rendering ---------------------------------------------


def _same(value: Any) -> Any:
    return value


#: the render of types whose wire value is already their JSON (callers may skip calling it)
IDENTITY: Final[Render] = _same


def _render_float8(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


_F32 = struct.Struct("<f")


def _render_float4(value: float) -> float | str:
    """The shortest decimal that reads back as the same float32 (1.1, not 1.100000023841858)."""
    if not math.isfinite(value):
        return _render_float8(value)
    try:
        single = _F32.unpack(_F32.pack(value))[0]
    except OverflowError:  # beyond float32 ("1e100"): no real float4 sends it; shown as parsed
        return _render_float8(value)
    for digits in range(6, 10):
        shortest = float(f"{single:.{digits}g}")
        if _F32.unpack(_F32.pack(shortest))[0] == single:
            return shortest
    return float(single)  # pragma: no cover - 9 digits always round-trip a float32


def _render_decimal(value: Decimal | str) -> str:
    if isinstance(value, Decimal):
        return format(value, "f")  # never exponent notation
    return value


def _render_bytes(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _render_uuid(value: str | uuid.UUID) -> str:
    return str(value)


def _array_renderer(element: Render, kind: str = "string") -> Render:
    """Render each element; an element placeholder (str) of a non-str kind passes as it is."""
    if kind in _NOT_STR_KINDS:
        inner = element

        def element(value: Any) -> Any:
            return value if value.__class__ is str else inner(value)

    def render(value: list[Any] | str) -> list[Any] | str:
        if isinstance(value, str):
            return value
        return [None if v is None else element(v) for v in value]

    return render


# -- the registry ------------------------------------------------------------------------

_TS_MICROS: Final = {"type": "long", "logicalType": "timestamp-micros"}
_LOCAL_TS_MICROS: Final = {"type": "long", "logicalType": "local-timestamp-micros"}

# oid -> (kind, parse, avro, render): the types of DESIGN.md's table.
_CONVERTERS: Final[dict[int, tuple[str, Parse, Any, Render]]] = {
    16: ("bool", _bool, "boolean", _same),
    20: ("int", int, "long", _same),
    21: ("int", int, "int", _same),
    23: ("int", int, "int", _same),
    26: ("int", int, "long", _same),
    700: ("float4", _float, "float", _render_float4),
    701: ("float8", _float, "double", _render_float8),
    1700: ("numeric", _text, "string", _same),  # with a typmod: see _numeric_type
    25: ("text", _text, "string", _same),
    1043: ("text", _text, "string", _same),
    1042: ("text", _text, "string", _same),
    19: ("text", _text, "string", _same),
    17: ("bytes", _bytea, "bytes", _render_bytes),
    1082: ("date", _date, {"type": "int", "logicalType": "date"}, _render_date),
    1083: ("time", _time_us, {"type": "long", "logicalType": "time-micros"}, _render_time),
    1266: ("timetz", _timetz, "string", _same),
    1114: ("timestamp", _timestamp, [_LOCAL_TS_MICROS, "string"], _render_timestamp),
    1184: ("timestamptz", _timestamptz, [_TS_MICROS, "string"], _render_timestamptz),
    1186: ("interval", _interval, "string", _same),
    790: ("money", _money, "string", _same),
    2950: ("uuid", _text, {"type": "string", "logicalType": "uuid"}, _render_uuid),
    114: ("json", _text, "string", _same),
    3802: ("json", _text, "string", _same),
}

# Every type of pg_catalog below FirstGenbkiObjectId (10000), the same in
# PostgreSQL 15 to 18 (tests/test_pgtypes.py checks each server): names for
# messages, and the array types with their element type.
BUILTIN_NAMES: Final[dict[int, str]] = {
    16: "bool", 17: "bytea", 18: "char", 19: "name", 20: "int8", 21: "int2", 22: "int2vector",
    23: "int4", 24: "regproc", 25: "text", 26: "oid", 27: "tid", 28: "xid", 29: "cid",
    30: "oidvector", 32: "pg_ddl_command", 114: "json", 142: "xml", 194: "pg_node_tree",
    269: "table_am_handler", 325: "index_am_handler", 600: "point", 601: "lseg", 602: "path",
    603: "box", 604: "polygon", 628: "line", 650: "cidr", 700: "float4", 701: "float8",
    705: "unknown", 718: "circle", 774: "macaddr8", 790: "money", 829: "macaddr", 869: "inet",
    1033: "aclitem", 1042: "bpchar", 1043: "varchar", 1082: "date", 1083: "time",
    1114: "timestamp", 1184: "timestamptz", 1186: "interval", 1266: "timetz", 1560: "bit",
    1562: "varbit", 1700: "numeric", 1790: "refcursor", 2202: "regprocedure", 2203: "regoper",
    2204: "regoperator", 2205: "regclass", 2206: "regtype", 2249: "record", 2275: "cstring",
    2276: "any", 2277: "anyarray", 2278: "void", 2279: "trigger", 2280: "language_handler",
    2281: "internal", 2283: "anyelement", 2287: "_record", 2776: "anynonarray", 2950: "uuid",
    2970: "txid_snapshot", 3115: "fdw_handler", 3220: "pg_lsn", 3310: "tsm_handler",
    3361: "pg_ndistinct", 3402: "pg_dependencies", 3500: "anyenum", 3614: "tsvector",
    3615: "tsquery", 3642: "gtsvector", 3734: "regconfig", 3769: "regdictionary", 3802: "jsonb",
    3831: "anyrange", 3838: "event_trigger", 3904: "int4range", 3906: "numrange",
    3908: "tsrange", 3910: "tstzrange", 3912: "daterange", 3926: "int8range", 4072: "jsonpath",
    4089: "regnamespace", 4096: "regrole", 4191: "regcollation", 4451: "int4multirange",
    4532: "nummultirange", 4533: "tsmultirange", 4534: "tstzmultirange",
    4535: "datemultirange", 4536: "int8multirange", 4537: "anymultirange",
    4538: "anycompatiblemultirange", 4600: "pg_brin_bloom_summary",
    4601: "pg_brin_minmax_multi_summary", 5017: "pg_mcv_list", 5038: "pg_snapshot",
    5069: "xid8", 5077: "anycompatible", 5078: "anycompatiblearray",
    5079: "anycompatiblenonarray", 5080: "anycompatiblerange",
}  # fmt: skip
# array type oid -> element type oid (int2vector and oidvector are not arrays
# in text: they print as space-separated lists, so they stay strings)
BUILTIN_ARRAYS: Final[dict[int, int]] = {
    143: 142, 199: 114, 210: 71, 270: 75, 271: 5069, 272: 81, 273: 83, 629: 628, 651: 650,
    719: 718, 775: 774, 791: 790, 1000: 16, 1001: 17, 1002: 18, 1003: 19, 1005: 21, 1006: 22,
    1007: 23, 1008: 24, 1009: 25, 1010: 27, 1011: 28, 1012: 29, 1013: 30, 1014: 1042,
    1015: 1043, 1016: 20, 1017: 600, 1018: 601, 1019: 602, 1020: 603, 1021: 700, 1022: 701,
    1027: 604, 1028: 26, 1034: 1033, 1040: 829, 1041: 869, 1115: 1114, 1182: 1082, 1183: 1083,
    1185: 1184, 1187: 1186, 1231: 1700, 1263: 2275, 1270: 1266, 1561: 1560, 1563: 1562,
    2201: 1790, 2207: 2202, 2208: 2203, 2209: 2204, 2210: 2205, 2211: 2206, 2949: 2970,
    2951: 2950, 3221: 3220, 3643: 3614, 3644: 3642, 3645: 3615, 3735: 3734, 3770: 3769,
    3807: 3802, 3905: 3904, 3907: 3906, 3909: 3908, 3911: 3910, 3913: 3912, 3927: 3926,
    4073: 4072, 4090: 4089, 4097: 4096, 4192: 4191, 5039: 5038, 6150: 4451, 6151: 4532,
    6152: 4533, 6153: 4534, 6155: 4535, 6157: 4536,
}  # fmt: skip
# composite row types of system catalogs that have built-in array types
_BUILTIN_ROW_TYPES: Final = {71: "pg_type", 75: "pg_attribute", 81: "pg_proc", 83: "pg_class"}

_BOX: Final = 603
_NUMERIC: Final = 1700
_MAX_DEPTH: Final = 16  # domains of arrays of domains ...: far beyond real schemas

_WARNED: set[int] = set()


def _warn_once(oid: int) -> None:
    if oid not in _WARNED:
        _WARNED.add(oid)
        log.warning("unknown type oid %s: its values are streamed as their text output", oid)


def numeric_typmod(typmod: int) -> tuple[int, int] | None:
    """(precision, scale) of a numeric type modifier, None without one (scale may be < 0)."""
    if typmod < 4:
        return None
    bits = typmod - 4
    return (bits >> 16) & 0xFFFF, ((bits & 0x7FF) ^ 1024) - 1024


def _numeric_type(oid: int, typmod: int, name: str) -> ColumnType:
    precision_scale = numeric_typmod(typmod)
    if precision_scale is None:
        return ColumnType(oid, typmod, name, _text, "string", _same, "numeric")
    precision, scale = precision_scale
    # Avro wants 0 <= scale <= precision; Postgres 15+ allows scale < 0 (rounding
    # left of the point) and scale > precision (only leading zeros): both fit
    # losslessly in a wider decimal.
    if scale < 0:
        precision, scale = precision - scale, 0
    elif scale > precision:
        precision = scale
    avro = [{"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale}, "string"]
    return ColumnType(oid, typmod, name, _decimal, avro, _render_decimal, "decimal")


def _flatten(avro: Any) -> list[Any]:
    return list(avro) if isinstance(avro, list) else [avro]


def _array_type(oid: int, typmod: int, name: str, element: ColumnType) -> ColumnType:
    # the items take a string too: the placeholder of an unchanged TOAST value is [placeholder]; a union
    # has one string branch at most, so uuid items are plain strings (Avro readers would turn the
    # placeholder in a uuid branch into a UUID, and fail)
    items = [
        "null",
        *(
            "string" if isinstance(b, dict) and b.get("type") == "string" else b
            for b in _flatten(element.avro)
        ),
    ]
    if "string" not in items:
        items.append("string")
    avro = [{"type": "array", "items": items}, "string"]
    return ColumnType(
        oid,
        typmod,
        name,
        _array_parser(element.parse, element.delimiter),
        avro,
        _array_renderer(element.render, element.kind),
        "array",
        element,
    )


def _string_type(
    oid: int, typmod: int, name: str, kind: str = "string", delimiter: bytes = b","
) -> ColumnType:
    return ColumnType(oid, typmod, name, _text, "string", _same, kind, None, delimiter)


_BUILTIN_CACHE: dict[tuple[int, int], ColumnType] = {}


def column_type(oid: int, typmod: int = -1, catalog: TypeCatalog | None = None) -> ColumnType:
    """The converters for a column of type ``oid`` (and ``typmod``).

    Built-in types need nothing else; enums, domains, arrays of them and
    extension types are resolved through ``catalog``. A type neither knows
    is streamed as its text output, with one warning per OID.
    """
    cached = _BUILTIN_CACHE.get((oid, typmod))
    if cached is not None:
        return cached
    built = _builtin_type(oid, typmod)
    if built is not None:
        if len(_BUILTIN_CACHE) < 10_000:
            _BUILTIN_CACHE[(oid, typmod)] = built
        return built
    if catalog is not None:
        return catalog.column_type(oid, typmod)
    _warn_once(oid)
    return _string_type(oid, typmod, f"oid {oid}")


def _builtin_type(oid: int, typmod: int) -> ColumnType | None:
    if oid == _NUMERIC:
        return _numeric_type(oid, typmod, "numeric")
    converter = _CONVERTERS.get(oid)
    if converter is not None:
        kind, parse, avro, render = converter
        return ColumnType(oid, typmod, BUILTIN_NAMES[oid], parse, avro, render, kind)
    element_oid = BUILTIN_ARRAYS.get(oid)
    if element_oid is not None:
        element = _builtin_type(element_oid, typmod)
        if element is None:  # arrays of system catalog row types
            element = _string_type(element_oid, typmod, _BUILTIN_ROW_TYPES.get(element_oid, "record"))
        return _array_type(oid, typmod, element.name + "[]", element)
    name = BUILTIN_NAMES.get(oid)
    if name is not None:
        return _string_type(oid, typmod, name, delimiter=b";" if oid == _BOX else b",")
    return None


#: `text_form`'s answers: the value is the text decoded as UTF-8; the value is the Decimal of a
#: numeric(p,s) text, which Postgres prints with exactly s fraction digits
TEXT_FORM: Final = "text"
DECIMAL_FORM: Final = "decimal"


def text_form(column: ColumnType) -> str | None:
    """How ``column``'s text output maps to its wire value, when an encoder may skip ``parse``
    (`cdc.avro.encoding._lines_encoder`): `TEXT_FORM`, `DECIMAL_FORM` or None (parse it)."""
    if column.parse is _text:
        return TEXT_FORM
    if column.parse is _decimal:
        return DECIMAL_FORM
    return None


# -- rows ------------------------------------------------------------------------------------

RowParser = Callable[[Sequence[ColumnValue]], list[Any]]


def _not_text(value: ColumnValue) -> Any:
    if value is None or value is UNCHANGED:
        return value
    if isinstance(value, Binary):
        raise DecodeError(
            "TupleData: a column value arrived in binary format; start replication without the binary option"
        )
    raise DecodeError(f"TupleData: not a column value: {type(value).__name__}")


#: What a ``parse`` function raises for text that is not its type's output (and nothing else).
PARSE_ERRORS: Final = (ValueError, TypeError, ArithmeticError)


def row_parser(types: Sequence[ColumnType]) -> RowParser:
    """A function turning one decoded tuple into wire values (built once per table version).

    None stays None and `UNCHANGED` stays UNCHANGED (the caller fills it from
    the old row or with `ColumnType.unavailable`). Text that does not parse as
    its column's type raises `DecodeError` naming the column, never the value.
    """
    parsers = tuple(t.parse for t in types)
    count = len(parsers)

    def parse(values: Sequence[ColumnValue]) -> list[Any]:
        if len(values) != count:
            raise DecodeError(f"TupleData of {len(values)} columns, the relation has {count}")
        try:
            return [
                p(v) if v.__class__ is bytes else _not_text(v) for p, v in zip(parsers, values, strict=False)
            ]
        except PARSE_ERRORS as exc:
            raise _row_error(types, values) from exc

    return parse


def _row_error(types: Sequence[ColumnType], values: Sequence[ColumnValue]) -> DecodeError:
    for index, (column, value) in enumerate(zip(types, values, strict=True)):
        if value.__class__ is bytes:
            try:
                column.parse(value)
            except PARSE_ERRORS as exc:
                return DecodeError(
                    f"TupleData column {index} ({column.name}): {len(value)} bytes that are not "
                    f"its text output ({type(exc).__name__}); are the session settings of "
                    "OUTPUT_SETTINGS applied?",
                )
    return DecodeError("TupleData: a column value does not parse")
