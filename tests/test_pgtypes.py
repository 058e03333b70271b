"""cdc.pgtypes: fixed awkward values on every server version, the catalog, and the pure parts.

The hypothesis round trips live in test_pgtypes_roundtrip.py (newest server);
here every version streams the same hand-picked values, whose wire values and
renderings are written out literally.
"""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.errors import DecodeError, SourceUnavailable
from cdc.pgoutput import UNCHANGED, Binary, Insert, Relation
from cdc.pgtypes import (
    BUILTIN_ARRAYS,
    BUILTIN_NAMES,
    DATE_INFINITY,
    DATE_MINUS_INFINITY,
    INT64_MAX,
    TIMESTAMP_INFINITY,
    TIMESTAMP_MINUS_INFINITY,
    ColumnType,
    TypeCatalog,
    civil_from_days,
    column_type,
    days_from_civil,
    format_year,
    numeric_typmod,
    row_parser,
)
from tests.fix_servers import TestDb
from tests.pgstream import SlotReader
from tests.typecheck import avro_round_trip, renders_as_json, same

# -- every version: the built-in table and fixed values ----------------------------------


def test_builtin_types_match_the_server(db: TestDb) -> None:
    rows = db.execute(
        "SELECT oid::int8, typname, typcategory, typelem::int8, typdelim FROM pg_type "
        "WHERE oid < 10000 AND typtype <> 'c' ORDER BY oid"
    )
    arrays = {o: e for o, n, cat, e, _ in rows if cat == "A" and n not in ("int2vector", "oidvector")}
    assert arrays == BUILTIN_ARRAYS
    assert {
        o: n for o, n, cat, _, _ in rows if cat != "A" or n in ("int2vector", "oidvector")
    } == BUILTIN_NAMES
    assert {o for o, *_, delim in rows if delim != ","} == {603, 1020}  # box and box[]
    box_array = column_type(1020)
    assert box_array.delimiter == b"," and box_array.element is not None
    assert box_array.element.delimiter == b";"


# (SQL type, literal, wire value, JSON rendering); None literal = NULL
FIXED: list[tuple[str, str | None, Any, Any]] = [
    ("int2", "-32768", -32768, -32768),
    ("int8", "9223372036854775807", 2**63 - 1, 2**63 - 1),
    ("oid", "4294967295", 4294967295, 4294967295),
    ("float4", "-0", -0.0, -0.0),
    ("float4", "3.4028235e38", 3.4028235e38, 3.4028235e38),
    ("float4", "1.1", 1.1, 1.1),
    ("float8", "NaN", float("nan"), "NaN"),
    ("float8", "-Infinity", float("-inf"), "-Infinity"),
    ("float8", "5e-324", 5e-324, 5e-324),
    ("numeric", "-0.000100", "-0.000100", "-0.000100"),
    ("numeric", "Infinity", "Infinity", "Infinity"),
    ("numeric", "1e20", "100000000000000000000", "100000000000000000000"),
    ("numeric(10,2)", "NaN", "NaN", "NaN"),
    ("numeric(10,2)", "-12345678.9", Decimal("-12345678.90"), "-12345678.90"),
    ("numeric(4,6)", "0.001234", Decimal("0.001234"), "0.001234"),
    ("numeric(3,-3)", "123456", Decimal("123000"), "123000"),
    ("bool", "f", False, False),
    ("text", 'a "b" \\ {c}, NULL 🐘', 'a "b" \\ {c}, NULL 🐘', 'a "b" \\ {c}, NULL 🐘'),
    ("text", "", "", ""),
    ("bpchar(4)", "ab", "ab  ", "ab  "),
    ("bytea", "\\x00ff", b"\x00\xff", "AP8="),
    ("date", "infinity", DATE_INFINITY, "infinity"),
    ("date", "-infinity", DATE_MINUS_INFINITY, "-infinity"),
    ("date", "0044-03-15 BC", -735_160, "-0043-03-15"),
    ("date", "0001-01-01 BC", -719_528, "+0000-01-01"),
    ("date", "5874897-12-31", 2_145_042_905, "+5874897-12-31"),
    ("date", "2024-02-29", 19_782, "2024-02-29"),
    ("time", "24:00:00", 86_400_000_000, "24:00:00.000000"),
    ("time", "00:00:00.000001", 1, "00:00:00.000001"),
    ("timetz", "23:59:59.5-03:30", "23:59:59.500000-03:30", "23:59:59.500000-03:30"),
    ("timetz", "12:00+05:30:15", "12:00:00.000000+05:30:15", "12:00:00.000000+05:30:15"),
    ("timestamp", "infinity", TIMESTAMP_INFINITY, "infinity"),
    ("timestamp", "-infinity", TIMESTAMP_MINUS_INFINITY, "-infinity"),
    ("timestamp", "4713-01-01 00:00:00 BC", -210_863_520_000_000_000, "-4712-01-01T00:00:00.000000"),
    ("timestamp", "0001-01-01 00:00:00", -62_135_596_800_000_000, "0001-01-01T00:00:00.000000"),
    ("timestamp", "294247-01-10 04:00:54.775806", INT64_MAX - 1, "+294247-01-10T04:00:54.775806"),
    (
        "timestamp",
        "294247-01-10 04:00:54.775807",
        "+294247-01-10T04:00:54.775807",
        "+294247-01-10T04:00:54.775807",
    ),
    (
        "timestamp",
        "294276-12-31 23:59:59.999999",
        "+294276-12-31T23:59:59.999999",
        "+294276-12-31T23:59:59.999999",
    ),
    ("timestamptz", "2024-03-10 02:30:00-03:30", 1_710_050_400_000_000, "2024-03-10T06:00:00.000000Z"),
    ("timestamptz", "0044-03-15 12:00:00+01 BC", -63_517_784_400_000_000, "-0043-03-15T11:00:00.000000Z"),
    (
        "timestamptz",
        "294276-12-31 23:59:59.999999+00",
        "+294276-12-31T23:59:59.999999Z",
        "+294276-12-31T23:59:59.999999Z",
    ),
    ("interval", "1 year 2 mons -3 days 04:05:06.789", "P1Y2M-3DT4H5M6.789S", "P1Y2M-3DT4H5M6.789S"),
    ("interval", "-0.5 seconds", "PT-0.5S", "PT-0.5S"),
    ("interval", "0", "PT0S", "PT0S"),
    (
        "uuid",
        "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    ),
    ("jsonb", '{"b": [1, 2.50], "a": "\\u00e9"}', '{"a": "é", "b": [1, 2.50]}', '{"a": "é", "b": [1, 2.50]}'),
    ("json", '{"b":1,  "b":2}', '{"b":1,  "b":2}', '{"b":1,  "b":2}'),
    ("int4[]", "{1,NULL,-3}", [1, None, -3], [1, None, -3]),
    ("int4[]", "{}", [], []),
    ("int4[]", "{{1,2},{3,NULL}}", "{{1,2},{3,NULL}}", "{{1,2},{3,NULL}}"),
    ("int4[]", "[0:1]={7,8}", "[0:1]={7,8}", "[0:1]={7,8}"),
    (
        "text[]",
        '{"a,b","",NULL,"NULL","q\\"uote","back\\\\slash","{}"," x "}',
        ["a,b", "", None, "NULL", 'q"uote', "back\\slash", "{}", " x "],
        ["a,b", "", None, "NULL", 'q"uote', "back\\slash", "{}", " x "],
    ),
    ("numeric(5,1)[]", "{1.5,NaN,NULL}", [Decimal("1.5"), "NaN", None], ["1.5", "NaN", None]),
    ("float8[]", "{NaN,-0,Infinity}", [float("nan"), -0.0, float("inf")], ["NaN", -0.0, "Infinity"]),
    ("bytea[]", '{"\\\\x01",NULL}', [b"\x01", None], ["AQ==", None]),
    ("date[]", "{infinity,2000-01-01}", [DATE_INFINITY, 10_957], ["infinity", "2000-01-01"]),
    (
        "timestamptz[]",
        '{"1970-01-01 00:00:00+00",infinity}',
        [0, TIMESTAMP_INFINITY],
        ["1970-01-01T00:00:00.000000Z", "infinity"],
    ),
    ("box[]", "{(1,1),(0,0);(3,3),(2,2)}", ["(1,1),(0,0)", "(3,3),(2,2)"], ["(1,1),(0,0)", "(3,3),(2,2)"]),
    ("inet", "192.168.0.1/24", "192.168.0.1/24", "192.168.0.1/24"),
    ("int4range", "[1,5)", "[1,5)", "[1,5)"),
    ("bit(4)", "1010", "1010", "1010"),
    ("point", "(1.5,-2)", "(1.5,-2)", "(1.5,-2)"),
    ("pg_lsn", "16/B374D848", "16/B374D848", "16/B374D848"),
    ("int2vector", "1 2", "1 2", "1 2"),
    ("text", None, None, None),
]


def test_fixed_values_on_every_version(db: TestDb) -> None:
    conn = db.connect()
    columns = ", ".join(f"c{i} {sql_type}" for i, (sql_type, *_) in enumerate(FIXED))
    conn.execute(f"CREATE TABLE fixed (id int PRIMARY KEY, {columns})")
    conn.execute("CREATE PUBLICATION pub FOR TABLE fixed")
    with SlotReader(db.dsn, "pub", messages=False) as reader:
        reader.start()
        placeholders = ", ".join(f"%s::{sql_type}" for sql_type, *_ in FIXED)
        conn.execute(f"INSERT INTO fixed VALUES (1, {placeholders})", [literal for _, literal, *_ in FIXED])
        got = reader.read_transactions(1)
    relation = next(c.message for c in got if isinstance(c.message, Relation))
    insert = next(c.message for c in got if isinstance(c.message, Insert))
    types = [column_type(c.type_oid, c.type_modifier) for c in relation.columns]
    row = row_parser(types)(insert.new)
    for (sql_type, literal, wire, rendering), column, value in zip(FIXED, types[1:], row[1:], strict=True):
        assert same(value, wire), (sql_type, literal, value)
        if value is None:
            continue
        assert same(renders_as_json(column, value), rendering), (sql_type, literal)
        avro_round_trip(column, value)


# -- the catalog ------------------------------------------------------------------------------


def test_catalog_resolves_user_types_with_one_query(
    db_latest: TestDb, caplog: pytest.LogCaptureFixture
) -> None:
    conn = db_latest.connect()
    conn.execute("CREATE EXTENSION citext")
    conn.execute("CREATE TYPE mood AS ENUM ('sad', 'ok')")
    conn.execute("CREATE DOMAIN price AS numeric(10, 2)")
    conn.execute("CREATE DOMAIN positive_price AS price CHECK (VALUE > 0)")
    conn.execute("CREATE DOMAIN ints AS int4[]")
    conn.execute("CREATE TYPE pair AS (a int, b text)")
    conn.execute("CREATE SCHEMA other")
    conn.execute("CREATE TYPE other.mood AS ENUM ('x')")
    names = [
        "mood", "price", "positive_price", "ints", "pair", "citext", "other.mood",
        "mood[]", "price[]", "positive_price[]", "citext[]",
    ]  # fmt: skip
    oids = {n: int(db_latest.scalar("SELECT %s::regtype::oid::int8", (n,))) for n in names}
    calls: list[list[int]] = []
    lookup = TypeCatalog.from_connection(conn).lookup
    assert lookup is not None

    def counting(wanted: list[int]) -> Any:
        calls.append(wanted)
        return lookup(wanted)

    catalog = TypeCatalog(counting)
    catalog.prefetch([*oids.values(), 23, 25])
    assert len(calls) == 1 and 23 not in calls[0]  # built-ins are never looked up
    kinds = {n: catalog.column_type(oid) for n, oid in oids.items()}
    assert len(calls) == 1, "everything came with the first query"

    assert (kinds["mood"].kind, kinds["mood"].name, kinds["mood"].avro) == ("enum", "mood", "string")
    assert kinds["other.mood"].name == "other.mood"
    price = kinds["price"]
    assert price.kind == "decimal" and price.name == "price" and price.oid == oids["price"]
    assert price.avro[0] == {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}
    assert price.parse(b"12.50") == Decimal("12.50")
    assert kinds["positive_price"].avro == price.avro  # the typmod comes through a domain of a domain
    assert kinds["ints"].kind == "array" and kinds["ints"].parse(b"{1,NULL}") == [1, None]
    assert kinds["pair"].kind == "string" and kinds["pair"].parse(b'(1,"a b")') == '(1,"a b")'
    assert kinds["citext"].kind == "text" and kinds["citext"].unavailable("__x") == "__x"
    mood_array = kinds["mood[]"]
    assert mood_array.kind == "array" and mood_array.name == "mood[]"
    assert mood_array.parse(b'{sad,NULL,"NULL"}') == ["sad", None, "NULL"]
    price_array = kinds["price[]"]
    assert price_array.avro == [
        {"type": "array", "items": ["null", price.avro[0], "string"]},
        "string",
    ]
    assert kinds["positive_price[]"].parse(b"{1.50,NaN}") == [Decimal("1.50"), "NaN"]
    assert kinds["citext[]"].render(["A", None]) == ["A", None]

    # a column typmod wins over the domain's; built-ins ignore the catalog
    assert catalog.column_type(oids["price"], (5 << 16 | 1) + 4).avro[0]["precision"] == 5
    assert column_type(23, -1, catalog).kind == "int"
    assert len(calls) == 1
    # an OID the server does not know: text output, one warning
    caplog.set_level(logging.WARNING, logger="cdc.pgtypes")
    unknown = catalog.column_type(4_000_000_000)
    assert unknown.kind == "string" and unknown.parse(b"x") == "x"
    catalog.column_type(4_000_000_000, 3)
    assert len(calls) == 2
    assert [r.getMessage() for r in caplog.records].count(
        "unknown type oid 4000000000: its values are streamed as their text output"
    ) == 1
    catalog.forget(oids["mood"])
    assert catalog.column_type(oids["mood"]).kind == "enum" and len(calls) == 3

    conn.close()
    with pytest.raises(SourceUnavailable, match="reading pg_type failed"):
        TypeCatalog.from_connection(conn).prefetch([oids["mood"]])


def test_unknown_oid_without_catalog_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="cdc.pgtypes")
    first = column_type(3_999_999_999, -1)
    column_type(3_999_999_999, 5)
    assert first.kind == "string" and first.avro == "string" and first.parse(b"\xc3\xa9") == "é"
    assert len([r for r in caplog.records if "3999999999" in r.getMessage()]) == 1


# -- pure parts ---------------------------------------------------------------------------------


@given(st.integers(-3_000_000, 3_000_000))
def test_calendar_matches_python_and_inverts(days: int) -> None:
    year, month, day = civil_from_days(days)
    assert days_from_civil(year, month, day) == days
    if 1 <= year <= 9999:
        assert dt.date(year, month, day) == dt.date(1970, 1, 1) + dt.timedelta(days=days)


def test_calendar_far_years() -> None:
    # the Gregorian calendar repeats every 400 years (146097 days)
    for year in (-4712, -1, 0, 10_000, 294_276, 5_874_897):
        shift = (year - 2000) // 400
        base = dt.date(2000 + (year - 2000) % 400, 3, 1).toordinal() - 719_163
        assert days_from_civil(year, 3, 1) == base + shift * 146_097
    assert [format_year(y) for y in (1, 2024, 9999, 0, -43, 10_000)] == [
        "0001", "2024", "9999", "+0000", "-0043", "+10000",
    ]  # fmt: skip


def test_numeric_typmods() -> None:
    assert numeric_typmod(-1) is None
    assert numeric_typmod((10 << 16 | 2) + 4) == (10, 2)
    assert numeric_typmod((5 << 16 | (-2 & 0x7FF)) + 4) == (5, -2)
    assert column_type(1700).avro == "string" and column_type(1700).kind == "numeric"
    decimal_of = {
        (10, 2): (10, 2), (5, -2): (7, 0), (3, 5): (5, 5), (1000, 1000): (1000, 1000),
    }  # fmt: skip
    for (p, s), (ap, as_) in decimal_of.items():
        avro = column_type(1700, (p << 16 | (s & 0x7FF)) + 4).avro
        assert avro == [{"type": "bytes", "logicalType": "decimal", "precision": ap, "scale": as_}, "string"]


PARSED: list[tuple[int, int, bytes, Any]] = [
    (16, -1, b"t", True),
    (1700, (6 << 16 | 2) + 4, b"-0.50", Decimal("-0.50")),
    (1700, -1, b"-Infinity", "-Infinity"),
    (1082, -1, b"0001-01-01", -719_162),
    (1082, -1, b"10000-01-01", 2_932_897),
    (1083, -1, b"23:59:59.999999", 86_399_999_999),
    (1083, -1, b"12:00:00.5", 43_200_500_000),
    (1266, -1, b"00:00:00+00", "00:00:00.000000+00:00"),
    (1266, -1, b"24:00:00-15:59:59", "24:00:00.000000-15:59:59"),
    (1114, -1, b"1969-12-31 23:59:59.999999", -1),
    (1114, -1, b"2000-01-01 00:00:00 BC", -125_249_500_800_000_000),
    (1184, -1, b"1970-01-01 05:30:00+05:30", 0),
    (1184, -1, b"1970-01-01 00:00:00.25-00:00:30", 30_250_000),
    (1184, -1, b"10000-01-01 00:00:00+00", 253_402_300_800_000_000),
    (1009, -1, b'{"\\\\",","}', ["\\", ","]),
    (1009, -1, b"{NULL}", [None]),
    (1009, -1, b'{"NULL"}', ["NULL"]),
    (1009, -1, b'{"a\\"b",c}', ['a"b', "c"]),
    (1007, -1, b"{{1},{2}}", "{{1},{2}}"),
    (1020, -1, b"{(1,1),(0,0)}", ["(1,1),(0,0)"]),
    (1186, -1, b"P1D", "P1D"),
]


@pytest.mark.parametrize(("oid", "typmod", "text", "wire"), PARSED)
def test_parse(oid: int, typmod: int, text: bytes, wire: Any) -> None:
    assert same(column_type(oid, typmod).parse(text), wire)


NOT_OUTPUT: list[tuple[int, bytes]] = [
    (16, b"true"),
    (17, b"\\001"),  # escape format: bytea_output must be hex
    (1082, b"01/02/2024"),  # DateStyle must be ISO
    (1082, b"2024-02-30"),
    (1082, b"10000-13-01"),
    (1083, b"25:00:00"),
    (1083, b"12:00"),
    (1114, b"2024-01-01T00:00:00"),
    (1184, b"2024-01-01 00:00:00"),  # no offset: TimeZone is not applied
    (1186, b"1 day"),  # IntervalStyle must be iso_8601
    (1266, b"12:00:00"),
    (1007, b"1,2"),
    (1009, b'{"unterminated}'),
    (1009, b'{"a"b}'),
    (1009, b"{a,}"),
    (1009, b"{,a}"),
    (1009, b'{"a",}'),
    (1009, b'{"a",,b}'),
    (1009, b'{"a"'),
    (25, b"\xff"),
]


@pytest.mark.parametrize(("oid", "text"), NOT_OUTPUT)
def test_text_that_is_not_server_output_is_a_decode_error(oid: int, text: bytes) -> None:
    column = column_type(oid)
    with pytest.raises(DecodeError) as err:
        row_parser([column_type(23), column])([b"1", text])
    # the message names the column and the size, never the value
    assert f"column 1 ({column.name}): {len(text)} bytes" in str(err.value)


def test_row_parser_passes_null_and_unchanged_and_rejects_binary() -> None:
    types = [column_type(23), column_type(25), column_type(17)]
    parse = row_parser(types)
    assert parse([b"1", None, UNCHANGED]) == [1, None, UNCHANGED]
    with pytest.raises(DecodeError, match="binary format"):
        parse([Binary(b"\x00\x00\x00\x01"), None, None])
    with pytest.raises(DecodeError, match="TupleData of 2 columns, the relation has 3"):
        parse([b"1", None])


def test_unavailable_placeholder_per_kind() -> None:
    placeholder = "__cdc_unavailable_value"
    assert column_type(25).unavailable(placeholder) == placeholder
    assert column_type(3802).unavailable(placeholder) == placeholder
    assert column_type(17).unavailable(placeholder) == placeholder.encode()
    # typed like the column: an array holding it (the array's items have a string branch)
    assert column_type(1007).unavailable(placeholder) == [placeholder]
    assert column_type(1007).render([placeholder]) == [placeholder]
    assert column_type(1182).render([placeholder, 0]) == [placeholder, "1970-01-01"]  # date[]
    assert column_type(1001).render([placeholder]) == [placeholder]  # bytea[]
    numeric = column_type(1700, (10 << 16 | 2) + 4)
    assert numeric.unavailable(placeholder) == placeholder and numeric.render(placeholder) == placeholder
    assert column_type(1007).render("{{1,2},{3,4}}") == "{{1,2},{3,4}}"  # the string branch: several dims
    with pytest.raises(DecodeError, match="never TOASTed"):
        column_type(23).unavailable(placeholder)
    arrays = (column_type(1007), column_type(1009), column_type(1182), column_type(1001), column_type(1231))
    for column in (column_type(25), column_type(17), numeric, column_type(1700), *arrays):
        avro_round_trip(column, column.unavailable(placeholder))


def test_money_is_a_plain_decimal_whatever_the_locale() -> None:
    """With lc_monetary=C (the session settings) money prints as -$1,234.56: read as "-1234.56"."""
    money = column_type(790)
    assert money.avro == "string" and money.kind == "money"
    assert money.parse(b"$1,234,567.89") == "1234567.89"
    assert money.parse(b"-$0.01") == "-0.01"
    assert money.parse(b"-$92,233,720,368,547,758.08") == "-92233720368547758.08"
    assert money.parse(b"$0.00") == "0.00"
    for other_locale in (b"1.234,56 \xe2\x82\xac", b"($1.00)", b"1234.56", b"$1234.56"):
        with pytest.raises(ValueError, match="lc_monetary=C"):
            money.parse(other_locale)


def test_renderers_accept_python_temporals() -> None:
    assert column_type(1082).render(dt.date(2024, 2, 29)) == "2024-02-29"
    assert column_type(1083).render(dt.time(1, 2, 3)) == "01:02:03.000000"
    assert column_type(1114).render(dt.datetime(1, 1, 1)) == "0001-01-01T00:00:00.000000"
    aware = dt.datetime(2024, 1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert column_type(1184).render(aware) == "2024-01-01T00:00:00.000000Z"


def test_column_type_is_frozen_and_cached() -> None:
    column = column_type(1231, (10 << 16 | 2) + 4)
    assert column is column_type(1231, (10 << 16 | 2) + 4)
    assert isinstance(column, ColumnType) and column.element is not None and column.element.kind == "decimal"
    with pytest.raises(AttributeError):
        column.name = "x"  # type: ignore[misc]


def test_catalog_cannot_resolve_without_a_connection() -> None:
    catalog = TypeCatalog()
    assert catalog.info(4_000_000_001) is None
    assert catalog.column_type(4_000_000_001).kind == "string"


def _printed(moment: dt.datetime) -> bytes:
    """A timestamp as Postgres prints it (ISO, trailing zeros of the fraction dropped)."""
    text = moment.isoformat(sep=" ")
    return (text.rstrip("0") if "." in text else text).encode()


@given(
    moment=st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59)),
    spoil=st.none() | st.tuples(st.integers(0, 25), st.binary(min_size=1, max_size=1)),
)
def test_digit_by_digit_timestamps_read_as_the_general_parser(
    moment: dt.datetime, spoil: tuple[int, bytes] | None
) -> None:
    """`_plain_us` (the compiled build's timestamp path) gives what `_timestamp_us` gives, and None for
    any text it does not read (a changed byte: the general parser then decides)."""
    from cdc.pgtypes.temporal import _plain_us, _timestamp_us, _timestamptz

    text = _printed(moment)
    if spoil is not None and spoil[0] < len(text):
        at, byte = spoil
        text = text[:at] + byte + text[at + 1 :]
    try:
        expected: int | str | None = _timestamp_us(text, False)
    except ValueError:
        expected = None
    got = _plain_us(text, len(text))
    assert got is None or got == expected, text
    if spoil is None:
        assert got == expected  # what Postgres prints is always read digit by digit
        assert _timestamptz(text + b"+00") == got
