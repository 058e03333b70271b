"""Property tests: generated values go through a real slot and come out exact.

For each type, hypothesis generates batches of values; one transaction inserts
a batch with psycopg; the walsender's pgoutput stream (session settings of
`cdc.replication.OUTPUT_SETTINGS`) is decoded with `cdc.pgoutput` and parsed
with `cdc.pgtypes`; the result must equal what psycopg reads back from the
table, converted to the wire representation (`expected`), or, where Python
cannot hold the value (years beyond 9999, BC, 24:00, infinities), what the
server computes from it (``extract(epoch ...)``, ``to_char``). Every decoded
value is also encoded with fastavro under its column's Avro type, and
rendered to JSON.

These run on the newest server only (the text output of types is the same in
every supported version; `test_pgtypes_versions` covers fixed values on all).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cdc.pgoutput import Insert, Relation
from cdc.pgtypes import (
    DATE_INFINITY,
    DATE_MINUS_INFINITY,
    INT64_MAX,
    TIMESTAMP_INFINITY,
    TIMESTAMP_MINUS_INFINITY,
    ColumnType,
    TypeCatalog,
    column_type,
    row_parser,
)
from tests.fix_servers import TestDb, new_db
from tests.pgstream import SlotReader
from tests.typecheck import avro_round_trip, renders_as_json, same

EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
)
UTC = dt.UTC
UNIX = dt.datetime(1970, 1, 1)
ISO_FORMAT = """'YYYY-MM-DD"T"HH24:MI:SS.US BC'"""  # to_char: ISO 8601 with an era
UNIX_UTC = dt.datetime(1970, 1, 1, tzinfo=UTC)


# -- the shared slot ---------------------------------------------------------------


@dataclass
class Stream:
    """One database with one slot (FOR ALL TABLES) shared by this module's tests."""

    db: TestDb
    conn: psycopg.Connection[Any]
    reader: SlotReader
    catalog: TypeCatalog
    tables: dict[int, list[ColumnType]] = field(default_factory=dict)

    def table(self, sql_type: str, setup: str = "") -> str:
        name = "t_" + secrets.token_hex(4)
        if setup:
            self.conn.execute(setup)
        self.conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v {sql_type})")
        return name

    def round_trip(
        self, table: str, sql_type: str, literals: list[str | None]
    ) -> list[tuple[Any, ColumnType]]:
        """Insert the literals (cast to ``sql_type``) in one transaction; return the decoded values."""
        with self.conn.transaction():  # one transaction: a failed insert streams nothing
            self.conn.execute(f"TRUNCATE {table}")
            self.conn.execute(
                f"INSERT INTO {table} SELECT n, x::{sql_type} "
                "FROM unnest(%s::text[]) WITH ORDINALITY AS u(x, n)",
                (literals,),
            )
        got = self.reader.read_transactions(1)
        decoded: list[tuple[Any, ColumnType]] = []
        for captured in got:
            message = captured.message
            if isinstance(message, Relation):
                types = [column_type(c.type_oid, c.type_modifier, self.catalog) for c in message.columns]
                self.tables[message.relation_id] = types
            elif isinstance(message, Insert):
                types = self.tables[message.relation.relation_id]
                row = row_parser(types)(message.new)
                decoded.append((row[1], types[1]))
        assert len(decoded) == len(literals)
        return decoded

    def read_back(self, table: str, expressions: str) -> list[tuple[Any, ...]]:
        """What psycopg reads from the table (in id order): the reference."""
        return self.conn.execute(f"SELECT {expressions} FROM {table} ORDER BY id").fetchall()


@pytest.fixture(scope="module")
def stream(pg_latest: Any) -> Iterator[Stream]:
    test_db = new_db(pg_latest)
    conn = psycopg.connect(test_db.dsn, autocommit=True)
    conn.execute("CREATE PUBLICATION everything FOR ALL TABLES")
    catalog_conn = psycopg.connect(test_db.dsn, autocommit=True)
    try:
        with SlotReader(test_db.dsn, "everything", messages=False) as reader:
            reader.start()
            yield Stream(test_db, conn, reader, TypeCatalog.from_connection(catalog_conn))
    finally:
        conn.close()
        catalog_conn.close()
        test_db.drop()


# -- per-type cases ----------------------------------------------------------------


@dataclass
class Case:
    """A type under test: values, their SQL literal, and the reference read by psycopg."""

    sql_type: str
    values: st.SearchStrategy[Any]
    literal: Callable[[Any], str] = str
    reference: str = "v"  # expressions psycopg reads back, per row
    expected: Callable[..., Any] = lambda v: v  # reference columns -> wire value
    rendered: Callable[..., Any] | None = None  # reference columns -> JSON rendering
    setup: str = ""
    examples: list[list[Any]] = field(default_factory=list)


def _float_literal(x: float) -> str:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return repr(x)


def _float_render(x: float) -> Any:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x


def _decimal_text(d: Decimal) -> str:
    return format(d, "f")


def _numeric_values(precision: int, scale: int) -> st.SearchStrategy[Decimal]:
    digits = precision
    return st.integers(-(10**digits) + 1, 10**digits - 1).map(lambda n: Decimal(f"{n}E{-scale}"))


_year_ranges = st.one_of(st.integers(1, 9999), st.integers(-4712, 0), st.integers(10_000, 294_275))


def _ymd_literal(y: int, m: int, d: int) -> str:
    return f"{y:04d}-{m:02d}-{d:02d}" if y > 0 else f"{1 - y:04d}-{m:02d}-{d:02d} BC"


def _bc_split(literal: str) -> tuple[str, str]:
    return (literal[:-3], " BC") if literal.endswith(" BC") else (literal, "")


dates = st.one_of(
    st.builds(
        _ymd_literal,
        st.one_of(_year_ranges, st.integers(294_276, 5_874_897)),
        st.integers(1, 12),
        st.integers(1, 28),
    ),
    st.sampled_from(
        [
            "infinity",
            "-infinity",
            "2024-02-29",
            "2000-12-31",
            "5874897-12-31",
            "4713-01-01 BC",
            "0001-12-31 BC",
        ]
    ),
)
times = st.builds(
    lambda h, m, s, us: f"{h:02d}:{m:02d}:{s:02d}.{us:06d}",
    st.integers(0, 23), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999_999),
) | st.just("24:00:00")  # fmt: skip
offsets = st.builds(
    lambda sign, h, m, s: f"{sign}{h:02d}:{m:02d}:{s:02d}",
    st.sampled_from("+-"), st.integers(0, 15), st.integers(0, 59), st.sampled_from([0, 0, 0, 30, 59]),
)  # fmt: skip


def _timestamp_literal(ymd: str, time: str) -> str:
    day, bc = _bc_split(ymd)
    return f"{day} {time}{bc}"


timestamps = st.one_of(
    st.builds(
        _timestamp_literal,
        st.builds(_ymd_literal, _year_ranges, st.integers(1, 12), st.integers(1, 28)),
        times.filter(lambda t: not t.startswith("24")),
    ),
    st.sampled_from(
        [
            "infinity", "-infinity", "0001-01-01 00:00:00", "4713-01-01 00:00:00 BC",
            "294276-12-31 23:59:59.999999", "294247-01-10 04:00:54.775806", "294247-01-10 04:00:54.775807",
            "1970-01-01 00:00:00", "1969-12-31 23:59:59.999999", "2024-02-29 12:00:00.5",
        ]
    ),
)  # fmt: skip


def _timestamptz_literal(ts: str, offset: str) -> str:
    if ts.endswith("infinity"):
        return ts
    if ts.startswith(("294276", "4713")):
        offset = "+00"  # another offset would leave the range
    day, bc = _bc_split(ts)
    return f"{day}{offset}{bc}"


def _epoch_us(epoch: Decimal | None) -> int | None:
    """``extract(epoch ...)`` (exact numeric seconds) -> wire microseconds."""
    if epoch is None:
        return None
    if epoch.is_infinite():
        return TIMESTAMP_INFINITY if epoch > 0 else TIMESTAMP_MINUS_INFINITY
    return int(epoch * 1_000_000)


def _iso_year(text: str) -> str:
    """to_char's ``YYYY... AD`` or ``... BC`` -> the ISO 8601 rendering (astronomical year)."""
    day, bc = _bc_split(text.removesuffix(" AD"))
    year, rest = day.split("-", 1)
    number = 1 - int(year) if bc else int(year)
    if 1 <= number <= 9999:
        return f"{number:04d}-{rest}"
    return (f"+{number:04d}" if number >= 0 else f"-{-number:04d}") + f"-{rest}"


def _micros_from_text(text: str) -> int:
    """``YYYY-MM-DDTHH:MI:SS.US AD|BC`` -> microseconds since 1970, with Python's calendar.

    Years outside 1..9999 are moved by whole 400-year cycles (146097 days),
    which the Gregorian calendar repeats exactly.
    """
    day, bc = _bc_split(text.removesuffix(" AD"))
    date_part, time_part = day.split("T")
    year_text, month, mday = date_part.split("-")
    year = 1 - int(year_text) if bc else int(year_text)
    cycles, year_in_cycle = divmod(year - 2000, 400)
    days = dt.date(2000 + year_in_cycle, int(month), int(mday)).toordinal() - 719_163 + cycles * 146_097
    hms, frac = time_part.split(".")
    h, m, s = map(int, hms.split(":"))
    return (days * 86_400 + h * 3600 + m * 60 + s) * 1_000_000 + int(frac)


def _ts_expected(epoch: Decimal | None, native: dt.datetime | None, text: str | None, tz: bool) -> Any:
    if text is None:  # infinite
        return _epoch_us(epoch)
    us = _micros_from_text(text)
    if native is not None:  # psycopg could load it: the same instant
        base = UNIX_UTC if tz else UNIX
        assert (native - base) // dt.timedelta(microseconds=1) == us
    if abs(us) < 9 * 10**18:  # extract(epoch) is exact (the server rounds beyond int64)
        assert _epoch_us(epoch) == us
    if us >= INT64_MAX:
        return _iso_year(text) + ("Z" if tz else "")  # beyond Avro's long: the string branch
    return us


def _ts_rendered(epoch: Decimal | None, native: Any, text: str | None, tz: bool) -> str | None:
    if epoch is None:
        return None
    if epoch.is_infinite():
        return "infinity" if epoch > 0 else "-infinity"
    assert text is not None
    return _iso_year(text) + ("Z" if tz else "")


def _date_expected(days: int | None, native: dt.date | None, text: str | None) -> int | None:
    if native is not None:
        assert (native - dt.date(1970, 1, 1)).days == days
    return days


def _date_rendered(days: int | None, native: Any, text: str | None) -> str | None:
    if days in (DATE_INFINITY, DATE_MINUS_INFINITY):
        return "infinity" if days == DATE_INFINITY else "-infinity"
    return None if text is None else _iso_year(text)


def _time_us(epoch: Decimal | None, native: dt.time | None) -> int | None:
    if epoch is None:
        return None
    us = int(epoch * 1_000_000)
    if native is not None:
        assert (
            us == ((native.hour * 60 + native.minute) * 60 + native.second) * 1_000_000 + native.microsecond
        )
    return us


def _offset_text(seconds: int) -> str:
    sign = "-" if seconds < 0 else "+"
    h, rest = divmod(abs(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{sign}{h:02d}:{m:02d}" + (f":{s:02d}" if s else "")


def _timetz_expected(hour: Decimal, minute: Decimal, second: Decimal, zone: Decimal) -> str:
    whole = int(second)
    micro = int((second - whole) * 1_000_000)
    return f"{int(hour):02d}:{int(minute):02d}:{whole:02d}.{micro:06d}{_offset_text(int(zone))}"


def _interval_iso(months: int, days: int, micros: int) -> str:
    """PostgreSQL's ISO 8601 interval output (EncodeInterval, INTSTYLE_ISO_8601), in Python."""

    def trunc_divmod(a: int, b: int) -> tuple[int, int]:
        q = abs(a) // b * (1 if a >= 0 else -1)
        return q, a - q * b

    years, mons = trunc_divmod(months, 12)
    hours, rest = trunc_divmod(micros, 3_600_000_000)
    mins, rest = trunc_divmod(rest, 60_000_000)
    secs, frac = trunc_divmod(rest, 1_000_000)
    if not (years or mons or days or hours or mins or secs or frac):
        return "PT0S"
    out = "P" + "".join(f"{v}{u}" for v, u in ((years, "Y"), (mons, "M"), (days, "D")) if v)
    if hours or mins or secs or frac:
        out += "T" + "".join(f"{v}{u}" for v, u in ((hours, "H"), (mins, "M")) if v)
    if secs or frac:
        seconds = f"{abs(secs)}" + (f".{abs(frac):06d}".rstrip("0") if frac else "")
        out += ("-" if secs < 0 or frac < 0 else "") + seconds + "S"
    return out


awkward_text = st.sampled_from(
    [
        "",
        " ",
        "NULL",
        "null",
        "a,b",
        "{x}",
        '"',
        "\\",
        'back\\slash "quoted"',
        "tab\there",
        "🐘",
        "é",
        "\u2028",
        "x" * 99,
    ]
)
any_text = (
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40) | awkward_text
)


def _array_literal(items: list[Any], element: Callable[[Any], str]) -> str:
    def quote(x: Any) -> str:
        if x is None:
            return "NULL"
        text = element(x)
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return "{" + ",".join(quote(x) for x in items) + "}"


def _pg_array_of(values: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(st.none() | values, max_size=6)


def _json_values() -> st.SearchStrategy[Any]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(-(10**20), 10**20)
        | st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=10)
    )
    keys = st.text('ab"\\é🐘', max_size=5)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
        max_leaves=12,
    )


CASES: dict[str, Case] = {
    "int2": Case("int2", st.integers(-(2**15), 2**15 - 1)),
    "int4": Case("int4", st.integers(-(2**31), 2**31 - 1)),
    "int8": Case("int8", st.integers(-(2**63), 2**63 - 1)),
    "oid": Case("oid", st.integers(0, 2**32 - 1)),
    "float8": Case(
        "float8",
        st.floats(allow_nan=True, allow_infinity=True),
        _float_literal,
        rendered=_float_render,
        examples=[
            [-0.0, 0.0, 5e-324, 1.7976931348623157e308, -2.2250738585072014e-308, float("nan"), float("-inf")]
        ],
    ),
    "float4": Case(
        "float4",
        st.floats(width=32, allow_nan=True, allow_infinity=True),
        _float_literal,
        examples=[[-0.0, 1.401298464324817e-45, 3.4028234663852886e38, 1.100000023841858, float("inf")]],
    ),
    "numeric": Case(
        "numeric",
        st.builds(
            lambda n, e: Decimal(f"{n}E{e}"), st.integers(-(10**1000), 10**1000), st.integers(-1000, 1000)
        )
        | st.sampled_from(
            [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity"), Decimal("-0"), Decimal("0.000")]
        ),
        expected=_decimal_text,
        rendered=_decimal_text,
        examples=[[Decimal("9" * 1000), Decimal("-0." + "1" * 1000), Decimal("1E-16383")]],
    ),
    "numeric(12,4)": Case(
        "numeric(12,4)",
        _numeric_values(12, 4) | st.just(Decimal("NaN")),
        expected=lambda d: "NaN" if d.is_nan() else d,
        rendered=lambda d: format(d, "f"),
    ),
    "numeric(1000,500)": Case(
        "numeric(1000,500)", _numeric_values(1000, 500), rendered=lambda d: format(d, "f")
    ),
    "numeric(5,-2)": Case("numeric(5,-2)", _numeric_values(5, -2), rendered=lambda d: format(d, "f")),
    "numeric(3,5)": Case("numeric(3,5)", _numeric_values(3, 5), rendered=lambda d: format(d, "f")),
    "bool": Case("bool", st.booleans()),
    "text": Case("text", any_text),
    "varchar(12)": Case("varchar(12)", any_text.map(lambda s: s[:12])),
    "bpchar(6)": Case("bpchar(6)", any_text.map(lambda s: s[:6])),  # psycopg reads the padding too
    "name": Case("name", any_text.map(lambda s: s[:15])),
    "citext": Case("citext", any_text, setup="CREATE EXTENSION IF NOT EXISTS citext"),
    "bytea": Case(
        "bytea",
        st.binary(max_size=64),
        lambda b: "\\x" + b.hex(),
        rendered=lambda b: __import__("base64").b64encode(b).decode(),
    ),
    "date": Case(
        "date",
        dates,
        reference=(
            "CASE WHEN isfinite(v) THEN v - date '1970-01-01' "
            "WHEN v > 'epoch' THEN 2147483647 ELSE -2147483648 END, "
            "CASE WHEN v BETWEEN '0001-01-01' AND '9999-12-31' THEN v END, "
            "CASE WHEN isfinite(v) THEN v::text END"
        ),
        expected=_date_expected,
        rendered=_date_rendered,
    ),
    "time": Case(
        "time",
        times,
        reference="extract(epoch FROM v), CASE WHEN v < '24:00' THEN v END",
        expected=_time_us,
        rendered=lambda epoch, native: None if epoch is None else _time_text(_time_us(epoch, None)),
    ),
    "timetz": Case(
        "timetz",
        st.builds(lambda t, o: t + o, times, offsets),
        reference="extract(hour FROM v), extract(minute FROM v), extract(second FROM v), "
        "extract(timezone FROM v)",
        expected=_timetz_expected,
    ),
    "timestamp": Case(
        "timestamp",
        timestamps,
        reference=(
            "extract(epoch FROM v), CASE WHEN v BETWEEN '0001-01-01' AND '9999-12-31' THEN v END, "
            f"CASE WHEN isfinite(v) THEN to_char(v, {ISO_FORMAT}) END, false"
        ),
        expected=_ts_expected,
        rendered=_ts_rendered,
    ),
    "timestamptz": Case(
        "timestamptz",
        st.builds(_timestamptz_literal, timestamps, offsets.filter(lambda o: o.endswith(":00"))),
        reference=(
            "extract(epoch FROM v), CASE WHEN v BETWEEN '0001-01-02' AND '9999-12-30' THEN v END, "
            f"CASE WHEN isfinite(v) THEN to_char(v AT TIME ZONE 'UTC', {ISO_FORMAT}) END, true"
        ),
        expected=_ts_expected,
        rendered=_ts_rendered,
    ),
    "interval": Case(
        "interval",
        st.tuples(st.integers(-(10**6), 10**6), st.integers(-(10**6), 10**6), st.integers(-(10**15), 10**15)),
        lambda t: f"{t[0]} mons {t[1]} days {t[2]} microseconds",
        reference="v::text",  # only to count rows: the expectation comes from the generated parts
    ),
    "uuid": Case("uuid", st.uuids(), expected=str),
    "json": Case("json", _json_values(), lambda v: json.dumps(v, ensure_ascii=False), reference="v::text"),
    "jsonb": Case(
        "jsonb", _json_values(), lambda v: json.dumps(v, ensure_ascii=False), reference="v::text, v"
    ),
    "int4[]": Case(
        "int4[]",
        _pg_array_of(st.integers(-(2**31), 2**31 - 1)),
        lambda xs: _array_literal(xs, str),
    ),
    "text[]": Case(
        "text[]",
        _pg_array_of(any_text),
        lambda xs: _array_literal(xs, str),
        examples=[[["a,b", None, "NULL", "", '"q"', "\\", "{}"]]],
    ),
    "numeric(10,2)[]": Case(
        "numeric(10,2)[]",
        _pg_array_of(_numeric_values(10, 2) | st.just(Decimal("NaN"))),
        lambda xs: _array_literal(xs, str),
        expected=lambda xs: [None if x is None else ("NaN" if x.is_nan() else x) for x in xs],
    ),
    "float8[]": Case("float8[]", _pg_array_of(st.floats()), lambda xs: _array_literal(xs, _float_literal)),
    "bytea[]": Case(
        "bytea[]",
        _pg_array_of(st.binary(max_size=8)),
        lambda xs: _array_literal(xs, lambda b: "\\x" + b.hex()),
    ),
    "bool[]": Case("bool[]", _pg_array_of(st.booleans()), lambda xs: _array_literal(xs, str)),
    "date[]": Case(
        "date[]",
        _pg_array_of(dates),
        lambda xs: _array_literal(xs, str),
        reference=(
            "(SELECT array_agg(CASE WHEN x IS NULL THEN NULL WHEN isfinite(x) THEN x - date '1970-01-01' "
            "WHEN x > 'epoch' THEN 2147483647 ELSE -2147483648 END ORDER BY o) "
            "FROM unnest(v) WITH ORDINALITY u(x, o))"
        ),
        expected=lambda xs: xs if xs is not None else [],
    ),
    "timestamptz[]": Case(
        "timestamptz[]",
        _pg_array_of(
            st.builds(_timestamptz_literal, timestamps, offsets.filter(lambda o: o.endswith(":00")))
        ),
        lambda xs: _array_literal(xs, str),
        reference=(
            "(SELECT array_agg(extract(epoch FROM x) ORDER BY o) FROM unnest(v) WITH ORDINALITY u(x, o)), "
            f"(SELECT array_agg(CASE WHEN isfinite(x) THEN to_char(x AT TIME ZONE 'UTC', {ISO_FORMAT}) END "
            "ORDER BY o) FROM unnest(v) WITH ORDINALITY u(x, o))"
        ),
    ),
    "int4[][]": Case(
        "int4[]",  # several dimensions: the string branch, the server's text output
        st.integers(1, 3).flatmap(
            lambda n: st.lists(
                st.lists(st.none() | st.integers(-99, 99), min_size=n, max_size=n), min_size=1, max_size=3
            )
        ),
        lambda rows: (
            "{"
            + ",".join("{" + ",".join("NULL" if x is None else str(x) for x in r) + "}" for r in rows)
            + "}"
        ),
        reference="v::text",
    ),
    "int4[] lower bound": Case(
        "int4[]",
        st.lists(st.integers(-9, 9), min_size=1, max_size=4),
        lambda xs: f"[0:{len(xs) - 1}]=" + "{" + ",".join(map(str, xs)) + "}",
        reference="v::text",
    ),
    "enum": Case(
        "mood",
        st.sampled_from(["sad", "ok", "happy", "ça va", "a,b"]),
        setup="CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'ça va', 'a,b')",
    ),
    "enum[]": Case(
        "mood2[]",
        _pg_array_of(st.sampled_from(["x", "NULL", "y z", '"'])),
        lambda xs: _array_literal(xs, str),
        reference="v::text[]",
        setup="""CREATE TYPE mood2 AS ENUM ('x', 'NULL', 'y z', '"')""",
    ),
    "domain numeric(8,3)": Case(
        "money3",
        _numeric_values(8, 3),
        setup="CREATE DOMAIN money3 AS numeric(8,3) CHECK (VALUE > -100000)",
        rendered=lambda d: format(d, "f"),
    ),
    "domain text": Case("label", any_text, setup="CREATE DOMAIN label AS text"),
    "domain int4[]": Case(
        "ints",
        _pg_array_of(st.integers(-100, 100)),
        lambda xs: _array_literal(xs, str),
        setup="CREATE DOMAIN ints AS int4[]",
    ),
    "inet": Case("inet", st.ip_addresses().map(str), reference="host(v)"),
    "money": Case(
        "money", st.integers(-(10**9), 10**9).map(lambda c: f"{c / 100:.2f}"), reference="v::numeric::text"
    ),
    "int4range": Case(
        "int4range",
        st.tuples(st.integers(-100, 100), st.integers(0, 50)).map(lambda t: f"[{t[0]},{t[0] + t[1]})"),
        reference="v::text",
    ),
    "box[]": Case(
        "box[]",
        st.lists(st.tuples(*[st.integers(-9, 9)] * 4), max_size=3).map(
            lambda bs: "{" + ";".join(f"({a},{b}),({c},{d})" for a, b, c, d in bs) + "}"
        ),
        reference="v::text[]",
    ),
    "hstore": Case(
        "hstore",
        st.dictionaries(st.text("abc", min_size=1, max_size=3), st.text('xyz"\\', max_size=3)).map(
            lambda d: ",".join(
                f'"{k}"=>"{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                for k, v in d.items()
            )
        ),
        reference="v::text",
        setup="CREATE EXTENSION IF NOT EXISTS hstore",
    ),
}


def _time_text(us: int | None) -> str | None:
    if us is None:
        return None
    seconds, micro = divmod(us, 1_000_000)
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{micro:06d}"


def _expected_of(name: str, case: Case, value: Any, row: tuple[Any, ...]) -> Any:
    """The wire value psycopg's reading of ``row`` stands for."""
    if name == "interval":
        return _interval_iso(*value)
    if name == "json":
        assert row[0] == json.dumps(value, ensure_ascii=False)  # json keeps its text
        return row[0]
    if name == "jsonb":
        assert json.loads(row[0]) == row[1] == value
        return row[0]
    if name == "timestamptz[]":
        epochs, texts = row
        if epochs is None:  # array_agg of no rows
            return []
        return [
            None if e is None and t is None else _ts_expected(e, None, t, True)
            for e, t in zip(epochs, texts, strict=True)
        ]
    if name in {"int4[][]", "int4[] lower bound", "inet", "money", "int4range", "hstore", "box[]"}:
        return row[0]  # the server's text output, as psycopg reads it
    return case.expected(*row)


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip(stream: Stream, name: str) -> None:
    case = CASES[name]
    table = stream.table(case.sql_type, case.setup)

    @EXAMPLES
    @given(st.lists(st.none() | case.values, min_size=1, max_size=12))
    def check(batch: list[Any]) -> None:
        literals = [None if v is None else case.literal(v) for v in batch]
        decoded = stream.round_trip(table, case.sql_type, literals)
        rows = stream.read_back(table, case.reference)
        for value, (wire, column), row in zip(batch, decoded, rows, strict=True):
            if value is None:
                assert wire is None
                continue
            expected = _expected_of(name, case, value, row)
            assert same(wire, expected), (name, literals, wire, expected)
            avro_round_trip(column, wire)
            rendered = renders_as_json(column, wire)
            if case.rendered is not None:
                assert rendered == case.rendered(*row), (name, wire)

    for batch in case.examples:
        check = example(batch)(check)
    check()
