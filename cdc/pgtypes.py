"""Postgres types: text-format value -> wire value -> Avro type and JSON rendering.

A registry of small pure functions looked up by type OID, as psycopg does.
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

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
import math
import re
import struct
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from cdc.errors import DecodeError, SourceError, SourceUnavailable
from cdc.pgoutput import UNCHANGED, Binary, ColumnValue

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

Parse = Callable[[bytes], Any]
Render = Callable[[Any], Any]

INT32_MAX: Final = 2**31 - 1
INT32_MIN: Final = -(2**31)
INT64_MAX: Final = 2**63 - 1
INT64_MIN: Final = -(2**63)
#: Wire values of infinite dates and timestamps: the ends of the Avro int / long.
DATE_INFINITY: Final = INT32_MAX
DATE_MINUS_INFINITY: Final = INT32_MIN
TIMESTAMP_INFINITY: Final = INT64_MAX
TIMESTAMP_MINUS_INFINITY: Final = INT64_MIN

_DAY_US: Final = 86_400_000_000
_UNIX_ORDINAL: Final = 719_163  # date(1970, 1, 1).toordinal()

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


# -- calendar arithmetic (proleptic Gregorian, astronomical years: 0 = 1 BC) -----------


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a valid date of any year (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day count since 1970-01-01; inverse of `days_from_civil`."""
    days += 719_468
    era = days // 146_097
    doe = days - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


_MONTH_DAYS: Final = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days(year: int, month: int, day: int) -> int:
    """Validated `days_from_civil`; the C date type does the common years."""
    if 1 <= year <= 9999:
        return dt.date(year, month, day).toordinal() - _UNIX_ORDINAL
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if not 1 <= month <= 12 or not 1 <= day <= _MONTH_DAYS[month] + (month == 2 and leap):
        raise ValueError(f"no such date: {year}-{month}-{day}")
    return days_from_civil(year, month, day)


def format_year(year: int) -> str:
    """ISO 8601 year: four digits for 1..9999, else signed (astronomical numbering)."""
    if 1 <= year <= 9999:
        return f"{year:04d}"
    return f"+{year:04d}" if year >= 0 else f"-{-year:04d}"


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


def _date(value: bytes) -> int:
    if len(value) == 10 and value[4] == 0x2D:  # YYYY-MM-DD, the common case
        return _days(int(value[:4]), int(value[5:7]), int(value[8:10]))
    if value == b"infinity":
        return DATE_INFINITY
    if value == b"-infinity":
        return DATE_MINUS_INFINITY
    return _days(*_ymd(value))


def _ymd(value: bytes) -> tuple[int, int, int]:
    """``Y+-MM-DD`` with an optional `` BC`` suffix -> astronomical (year, month, day)."""
    bc = value.endswith(b" BC")
    if bc:
        value = value[:-3]
    year, month, day = value.split(b"-")
    if not (year.isdigit() and len(month) == 2 and len(day) == 2 and len(year) >= 4):
        raise ValueError("date not in ISO format: set DateStyle=ISO")
    y = int(year)
    return (1 - y if bc else y), int(month), int(day)


def _time_us(value: bytes) -> int:
    """``HH:MM:SS[.ffffff]`` -> microseconds since midnight (24:00:00 allowed)."""
    if len(value) < 8 or value[2] != 0x3A or value[5] != 0x3A:
        raise ValueError("time not in HH:MM:SS format")
    us = (int(value[:2]) * 3600 + int(value[3:5]) * 60 + int(value[6:8])) * 1_000_000
    if len(value) > 8:
        if value[8] != 0x2E or len(value) > 15:
            raise ValueError("bad fraction of a second")
        us += int(value[9:].ljust(6, b"0"))
    if not 0 <= us <= _DAY_US:
        raise ValueError("time out of range")
    return us


def _offset_seconds(value: bytes) -> int:
    """``+HH[:MM[:SS]]`` -> seconds east of UTC."""
    parts = value[1:].split(b":")
    if len(parts) > 3 or not all(len(p) == 2 for p in parts):
        raise ValueError("bad UTC offset")
    seconds = int(parts[0]) * 3600 + (int(parts[1]) * 60 if len(parts) > 1 else 0)
    seconds += int(parts[2]) if len(parts) > 2 else 0
    if value[0] == 0x2D:
        return -seconds
    if value[0] != 0x2B:
        raise ValueError("bad UTC offset")
    return seconds


def _format_offset(seconds: int) -> str:
    sign = "-" if seconds < 0 else "+"
    hours, rest = divmod(abs(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{sign}{hours:02d}:{minutes:02d}:{secs:02d}" if secs else f"{sign}{hours:02d}:{minutes:02d}"


def _timetz(value: bytes) -> str:
    sign = max(value.rfind(b"+"), value.rfind(b"-"))
    if sign < 8:
        raise ValueError("timetz without a UTC offset")
    return _format_time(_time_us(value[:sign])) + _format_offset(_offset_seconds(value[sign:]))


_DAYS_CACHE: dict[bytes, int] = {}


def _timestamp(value: bytes) -> int | str:
    # fast path: "YYYY-MM-DD HH:MM:SS[.ffffff]" of a date seen before
    days = _DAYS_CACHE.get(value[:10])
    size = len(value)
    if (
        days is not None
        and (size == 19 or 21 <= size <= 26)
        and value[10] == 0x20
        and value[13] == value[16] == 0x3A
    ):
        us = (
            days * 86_400 + int(value[11:13]) * 3600 + int(value[14:16]) * 60 + int(value[17:19])
        ) * 1_000_000
        if size == 19:
            return us
        if value[19] == 0x2E and value[20:].isdigit():
            return us + int(value[20:].ljust(6, b"0"))
    return _timestamp_us(value, False)


def _timestamptz(value: bytes) -> int | str:
    # fast path: "YYYY-MM-DD HH:MM:SS[.ffffff]+00" (UTC) of a date seen before
    days = _DAYS_CACHE.get(value[:10])
    size = len(value)
    if (
        days is not None
        and size >= 22
        and value[-3:] == b"+00"
        and value[10] == 0x20
        and value[13] == value[16] == 0x3A
    ):
        us = (
            days * 86_400 + int(value[11:13]) * 3600 + int(value[14:16]) * 60 + int(value[17:19])
        ) * 1_000_000
        if size == 22:
            return us
        if 24 <= size <= 29 and value[19] == 0x2E and value[20:-3].isdigit():
            return us + int(value[20:-3].ljust(6, b"0"))
    return _timestamp_us(value, True)


def _timestamp_us(value: bytes, tz: bool) -> int | str:
    """``YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM]][ BC]`` -> microseconds since 1970.

    The day count of the date part is cached: a stream repeats dates.
    """
    head = value[:10]
    days = _DAYS_CACHE.get(head)
    if days is not None and len(value) > 19 and value[10] == 0x20 and value[-1] != 0x43:  # not " BC"
        rest = value[11:]
    else:
        if value == b"infinity":
            return TIMESTAMP_INFINITY
        if value == b"-infinity":
            return TIMESTAMP_MINUS_INFINITY
        space = value.find(b" ")
        if space < 10:
            raise ValueError("timestamp not in ISO format: set DateStyle=ISO")
        rest = value[space + 1 :]
        bc = rest.endswith(b" BC")
        if bc:
            rest = rest[:-3]
            days = _days(*_ymd(value[:space] + b" BC"))
        else:
            days = _days(*_ymd(value[:space]))
            if space == 10:
                if len(_DAYS_CACHE) > 4096:
                    _DAYS_CACHE.clear()
                _DAYS_CACHE[head] = days
    if tz:
        sign = max(rest.rfind(b"+"), rest.rfind(b"-"))
        if sign < 8:
            raise ValueError("timestamptz without a UTC offset")
        us = days * _DAY_US + _time_us(rest[:sign]) - _offset_seconds(rest[sign:]) * 1_000_000
    else:
        us = days * _DAY_US + _time_us(rest)
    if INT64_MIN < us < INT64_MAX:
        return us
    # beyond Avro's long: the string branch carries the instant exactly
    return _format_timestamp(us) + ("Z" if tz else "")


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


def _format_date(days: int) -> str:
    year, month, day = civil_from_days(days)
    return f"{format_year(year)}-{month:02d}-{day:02d}"


def _render_date(value: int | dt.date) -> str:
    if isinstance(value, dt.date):
        return _format_date(value.toordinal() - _UNIX_ORDINAL)
    if value >= DATE_INFINITY:
        return "infinity"
    if value <= DATE_MINUS_INFINITY:
        return "-infinity"
    return _format_date(value)


def _format_time(us: int) -> str:
    seconds, fraction = divmod(us, 1_000_000)
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{fraction:06d}"


def _render_time(value: int | dt.time) -> str:
    if isinstance(value, dt.time):
        return value.isoformat("microseconds")
    return _format_time(value)


def _format_timestamp(us: int) -> str:
    days, rest = divmod(us, _DAY_US)
    return f"{_format_date(days)}T{_format_time(rest)}"


_UNIX_EPOCH: Final = dt.datetime(1970, 1, 1)


def _render_timestamp(value: int | str | dt.datetime) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dt.datetime):
        return _format_timestamp((value.replace(tzinfo=None) - _UNIX_EPOCH) // dt.timedelta(microseconds=1))
    if value >= TIMESTAMP_INFINITY:
        return "infinity"
    if value <= TIMESTAMP_MINUS_INFINITY:
        return "-infinity"
    return _format_timestamp(value)


def _render_timestamptz(value: int | str | dt.datetime) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC)
        return _render_timestamp(value) + "Z"
    if value >= TIMESTAMP_INFINITY:
        return "infinity"
    if value <= TIMESTAMP_MINUS_INFINITY:
        return "-infinity"
    return _format_timestamp(value) + "Z"


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


# -- non-built-in types ------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class TypeInfo:
    """One pg_type row, as far as the converters need it."""

    oid: int
    namespace: str
    name: str
    typtype: str  # b base, c composite, d domain, e enum, p pseudo, r range, m multirange
    category: str  # typcategory: A for arrays
    base_oid: int  # domains: the type they constrain
    typmod: int  # domains: their type modifier (-1 if none)
    element_oid: int  # arrays: the element type
    delimiter: str
    labels: tuple[str, ...] = ()  # enums: the labels in their order

    @property
    def qualified_name(self) -> str:
        return self.name if self.namespace in ("pg_catalog", "public") else f"{self.namespace}.{self.name}"


#: One query for a list of OIDs and, recursively, the base types of domains and
#: the element types of arrays they lead to.
TYPE_QUERY: Final = """
WITH RECURSIVE wanted(oid, depth) AS (
    SELECT unnest(%s::oid[]), 0
  UNION
    SELECT next.oid, w.depth + 1
      FROM wanted w
      JOIN pg_type t ON t.oid = w.oid
     CROSS JOIN LATERAL (VALUES (t.typbasetype), (CASE WHEN t.typcategory = 'A' THEN t.typelem END)) next(oid)
     WHERE next.oid IS NOT NULL AND next.oid <> 0 AND w.depth < 16
)
SELECT DISTINCT t.oid::int8, n.nspname, t.typname, t.typtype::text, t.typcategory::text,
       t.typbasetype::int8, t.typtypmod, t.typelem::int8, t.typdelim::text,
       ARRAY(SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder)
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE t.oid IN (SELECT oid FROM wanted)
"""

Lookup = Callable[[list[int]], Iterable[Sequence[Any]]]


def catalog_lookup(conn: psycopg.Connection[Any]) -> Lookup:
    """A `TypeCatalog` lookup running `TYPE_QUERY` on a normal psycopg connection."""
    import psycopg  # noqa: PLC0415 - keeps the converters importable without a driver

    def lookup(oids: list[int]) -> list[tuple[Any, ...]]:
        try:
            return conn.execute(TYPE_QUERY, (oids,)).fetchall()
        except psycopg.OperationalError as exc:
            raise SourceUnavailable(f"reading pg_type failed: {str(exc).strip()}") from exc
        except psycopg.Error as exc:
            raise SourceError(
                f"reading pg_type failed: {str(exc).strip()}; the role needs to read pg_catalog"
            ) from exc

    return lookup


class TypeCatalog:
    """Non-built-in types (enums, domains, extension types), resolved once per OID.

    ``lookup`` runs `TYPE_QUERY` for a list of OIDs (on a normal connection);
    it is None in pure contexts, where every unknown type falls back to its
    text output. The catalog is read when a type is first needed, so a type
    dropped in the meantime falls back to text (with a warning).
    """

    def __init__(self, lookup: Lookup | None = None) -> None:
        self.lookup = lookup
        self.types: dict[int, TypeInfo] = {}
        self.missing: set[int] = set()
        self._column_types: dict[tuple[int, int], ColumnType] = {}

    @classmethod
    def from_connection(cls, conn: psycopg.Connection[Any]) -> TypeCatalog:
        return cls(catalog_lookup(conn))

    def prefetch(self, oids: Iterable[int]) -> None:
        """Resolve every non-built-in OID of ``oids`` with one query (a relation's columns)."""
        wanted = sorted(
            {
                o
                for o in oids
                if o not in self.types and o not in self.missing and _builtin_type(o, -1) is None
            }
        )
        if not wanted or self.lookup is None:
            return
        for row in self.lookup(wanted):
            info = TypeInfo(
                int(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4]),
                int(row[5]), int(row[6]), int(row[7]), str(row[8]),
                tuple(row[9] or ()) if len(row) > 9 else (),
            )  # fmt: skip
            self.types[info.oid] = info
        self.missing.update(o for o in wanted if o not in self.types)

    def forget(self, oid: int) -> None:
        """Drop what is known of ``oid`` (a Type message says it may have changed)."""
        self.types.pop(oid, None)
        self.missing.discard(oid)
        for key in [k for k in self._column_types if k[0] == oid]:
            del self._column_types[key]

    def info(self, oid: int) -> TypeInfo | None:
        if oid not in self.types and oid not in self.missing:
            self.prefetch([oid])
        return self.types.get(oid)

    def column_type(self, oid: int, typmod: int = -1) -> ColumnType:
        """`column_type` for a non-built-in ``oid``, cached per (oid, typmod)."""
        key = (oid, typmod)
        cached = self._column_types.get(key)
        if cached is None:
            cached = self._resolve(oid, typmod, 0)
            self._column_types[key] = cached
        return cached

    def _resolve(self, oid: int, typmod: int, depth: int) -> ColumnType:
        builtin = _builtin_type(oid, typmod)
        if builtin is not None:
            return builtin
        info = self.info(oid) if depth < _MAX_DEPTH else None
        if info is None:
            _warn_once(oid)
            return _string_type(oid, typmod, f"oid {oid}")
        name = info.qualified_name
        if info.typtype == "d":
            # a domain's own typmod (numeric(10,2) domain) applies when the column has none
            base = self._resolve(info.base_oid, typmod if typmod != -1 else info.typmod, depth + 1)
            return ColumnType(
                oid, typmod, name, base.parse, base.avro, base.render, base.kind, base.element,
                base.delimiter, base.labels,
            )  # fmt: skip
        if info.typtype == "e":
            return ColumnType(oid, typmod, name, _text, "string", _same, "enum", labels=info.labels)
        if info.category == "A" and info.element_oid:
            element = self._resolve(info.element_oid, typmod, depth + 1)
            return _array_type(oid, typmod, element.name + "[]", element)
        if info.name == "citext":
            return _string_type(oid, typmod, name, "text")
        # ranges, composites, extension base types (hstore, ltree, vector, ...): their text
        return _string_type(oid, typmod, name, delimiter=info.delimiter.encode())


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
