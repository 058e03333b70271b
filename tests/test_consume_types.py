"""Every type of DESIGN.md's table, from a real Postgres through Avro in Kafka to `cdc consume`.

One table with a column per type, streamed once per Postgres version (a
module fixture) by the connector in --format avro and by a --format json twin;
the tests compare what `cdc consume` printed with the JSON records and with
the type table, and decode the raw records with plain fastavro.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader
from fastavro.schema import fingerprint, to_parsing_canonical_form

from cdc.avro import schemas_dir
from cdc.devservers import PostgresServer
from cdc.events import UNAVAILABLE_PLACEHOLDER
from tests.changefeed import Captured, capture
from tests.consuming import consume
from tests.fix_servers import BrokerHandle, new_db
from tests.peers.records import raw_records
from tests.pipeline import read_topics

SAME = object()  # DESIGN.md does not spell the text out: only "as the JSON format renders it" is checked

COLUMNS = {
    "i2": "int2",
    "i4": "int4",
    "i8": "int8",
    "o": "oid",
    "f4": "float4",
    "f8": "float8",
    "n102": "numeric(10,2)",
    "n": "numeric",
    "b": "bool",
    "t": "text",
    "vc": "varchar(10)",
    "bp": "char(3)",
    "nm": "name",
    "ci": "citext",
    "ba": "bytea",
    "d": "date",
    "tm": "time",
    "ttz": "timetz",
    "ts": "timestamp",
    "tstz": "timestamptz",
    "iv": "interval",
    "u": "uuid",
    "j": "json",
    "jb": "jsonb",
    "ai": "int4[]",
    "at": "text[]",
    "an": "numeric(5,2)[]",
    "af": "float8[]",
    "ad": "date[]",
    "e": "mood",
    "dm": "posint",
    "inet_col": "inet",
    "rng": "int4range",
    "pt": "point",
    "mac": "macaddr",
    "money_col": "money",
    "Mixed Case-col": "text",
    "big": "text",
    "big_arr": "int4[]",
}

# column -> (SQL literal, rendering); one dict per row, ids 1, 2, ...
ROWS: list[dict[str, tuple[str, Any]]] = [
    {
        "i2": ("-32768", -32768),
        "i4": ("2147483647", 2147483647),
        "i8": ("-9223372036854775808", -9223372036854775808),
        "o": ("4294967295", 4294967295),
        "f4": ("1.1", 1.1),
        "f8": ("0.1", 0.1),
        "n102": ("12.5", "12.50"),
        "n": ("123456789012345678901234567890.123456789", "123456789012345678901234567890.123456789"),
        "b": ("true", True),
        "t": ("héllo 🐘", "héllo 🐘"),
        "vc": ("abc", "abc"),
        "bp": ("ab", "ab "),
        "nm": ("nm", "nm"),
        "ci": ("CiText", "CiText"),
        "ba": ("\\x00ff10", "AP8Q"),
        "d": ("2024-02-29", "2024-02-29"),
        "tm": ("13:45:30.123456", "13:45:30.123456"),
        "ttz": ("13:45:30.123456+05:30", "13:45:30.123456+05:30"),
        "ts": ("2024-02-29 13:45:30.123456", "2024-02-29T13:45:30.123456"),
        "tstz": ("2024-02-29 13:45:30.123456+05:30", "2024-02-29T08:15:30.123456Z"),
        "iv": ("1 year 2 months 3 days 04:05:06.5", "P1Y2M3DT4H5M6.5S"),
        "u": ("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        "j": ('{"b": 1,  "a": [1, 2]}', '{"b": 1,  "a": [1, 2]}'),
        "jb": ('{"b": 1, "a": [1, 2]}', '{"a": [1, 2], "b": 1}'),
        "ai": ("{1,NULL,3}", [1, None, 3]),
        "at": ('{"a b",NULL,"NULL",""}', ["a b", None, "NULL", ""]),
        "an": ("{1.5,NULL,-2}", ["1.50", None, "-2.00"]),
        "af": ("{NaN,Infinity,1.5}", ["NaN", "Infinity", 1.5]),
        "ad": ("{2024-02-29,NULL}", ["2024-02-29", None]),
        "e": ("happy", "happy"),
        "dm": ("5", 5),
        "inet_col": ("192.168.0.1/24", "192.168.0.1/24"),
        "rng": ("[1,5)", "[1,5)"),
        "pt": ("(1,2)", "(1,2)"),
        "mac": ("08:00:2b:01:02:03", "08:00:2b:01:02:03"),
        "money_col": ("1234567.89", "1234567.89"),  # a plain decimal, whatever lc_monetary says
        "Mixed Case-col": ("x", "x"),
        "big": ("", SAME),  # filled below: values stored out of line (TOAST)
        "big_arr": ("", SAME),
    },
    {
        "f4": ("NaN", "NaN"),
        "f8": ("Infinity", "Infinity"),
        "n102": ("NaN", "NaN"),
        "n": ("NaN", "NaN"),
        "d": ("infinity", "infinity"),
        "ts": ("infinity", SAME),
        "tstz": ("-infinity", SAME),
        "b": ("false", False),
        "i4": ("0", 0),
        "ba": ("\\x", ""),
        "t": ("", ""),
        "at": ("{}", []),
        "ad": ("{infinity,-infinity}", ["infinity", "-infinity"]),
    },
    {
        "f4": ("-Infinity", "-Infinity"),
        "f8": ("-1.5e-300", -1.5e-300),
        "n": ("-Infinity", "-Infinity"),
        "n102": ("-0.01", "-0.01"),
        "money_col": ("-92233720368547758.08", "-92233720368547758.08"),
        "d": ("-infinity", "-infinity"),
    },
    {
        "d": ("0044-03-15 BC", SAME),
        "ts": ("10000-01-01 00:00:00", SAME),
        "tstz": ("0001-01-01 00:00:00+00 BC", SAME),
        "tm": ("24:00:00", SAME),
        "iv": ("-1 day -00:00:01", SAME),
    },
    {},  # every column NULL
]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _statements() -> list[str]:
    statements = []
    for i, row in enumerate(ROWS, start=1):
        names = ["id", *(_quote(c) for c in row if c not in ("big", "big_arr"))]
        literals = [
            str(i),
            *(f"{_literal(v)}::{COLUMNS[c]}" for c, (v, _) in row.items() if c not in ("big", "big_arr")),
        ]
        if "big" in row:
            names += ["big", "big_arr"]
            literals += [
                "(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 300) g)",
                "(SELECT array_agg(g) FROM generate_series(1, 1000) g)",
            ]
        statements.append(f"INSERT INTO alltypes ({', '.join(names)}) VALUES ({', '.join(literals)})")
    # the big values are not sent again: the update carries the TOAST placeholder
    statements.append("UPDATE alltypes SET i4 = 1 WHERE id = 1")
    return statements


@dataclass
class TypesRun:
    captured: Captured
    topic: str
    schema_topic: str
    lines: list[dict[str, Any]]
    errors: list[str]
    bootstrap_servers: str


@pytest.fixture(scope="module")
def types_run(
    pg_server: PostgresServer, broker: BrokerHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TypesRun]:
    """The all-types table streamed once per Postgres version (Avro and JSON), read by `cdc consume`."""
    db = new_db(pg_server)
    prefix = "t" + secrets.token_hex(4)
    try:
        columns = ", ".join(f"{_quote(name)} {sql_type}" for name, sql_type in COLUMNS.items())
        db.execute("CREATE EXTENSION citext")
        db.execute("CREATE TYPE mood AS ENUM ('sad', 'happy')")
        db.execute("CREATE DOMAIN posint AS int CHECK (VALUE > 0)")
        db.execute(f"CREATE TABLE alltypes (id int PRIMARY KEY, {columns})")
        db.execute("ALTER TABLE alltypes ALTER COLUMN big SET STORAGE EXTERNAL")
        db.execute("ALTER TABLE alltypes ALTER COLUMN big_arr SET STORAGE EXTERNAL")
        state_dir = tmp_path_factory.mktemp("state")
        captured = capture(
            db,
            broker.bootstrap_servers,
            prefix,
            ["public.alltypes"],
            _statements(),
            state_dir,
            json_twin=True,
        )
        topic = f"{prefix}.public.alltypes"
        bootstrap = ["--bootstrap-servers", broker.bootstrap_servers]
        count = str(len(ROWS) + 1)  # the inserts and the update
        options = [
            "--topic-prefix",
            prefix,
            "--from-beginning",
            "--max-messages",
            count,
            "--idle-timeout",
            "10",
        ]
        lines, errors = consume([topic, *bootstrap, *options])
        yield TypesRun(captured, topic, f"{prefix}.schemas", lines, errors, broker.bootstrap_servers)
    finally:
        db.drop()


def _comparable(value: dict[str, Any]) -> dict[str, Any]:
    """An envelope without what differs between two connectors: processing time, connector name."""
    return {
        **{k: v for k, v in value.items() if k not in ("ts_ms", "ts_us", "ts_ns")},
        "source": {k: v for k, v in value["source"].items() if k != "name"},
    }


def test_consume_prints_what_the_json_format_prints(types_run: TypesRun) -> None:
    """Decoded from Avro, every record equals the --format json record of the same change."""
    assert types_run.errors == []
    assert [line["offset"] for line in types_run.lines] == list(range(len(ROWS) + 1))
    json_prefix = types_run.captured.json_prefix
    json_records = read_topics(types_run.bootstrap_servers, [f"{json_prefix}.public.alltypes"], idle_ms=500)
    assert len(json_records) == len(types_run.lines)
    for line, record in zip(types_run.lines, json_records, strict=True):
        assert line["key"] == record.key
        assert _comparable(line["value"]) == _comparable(record.value)


def _after(types_run: TypesRun, row_id: int, op: str = "c") -> dict[str, Any]:
    rows = [
        line["value"]["after"]
        for line in types_run.lines
        if line["value"]["op"] == op and line["value"]["after"]["id"] == row_id
    ]
    assert len(rows) == 1
    after: dict[str, Any] = rows[0]
    return after


def test_every_type_renders_as_specified(types_run: TypesRun) -> None:
    """The renderings DESIGN.md's type table spells out (needs the full cdc.pgtypes)."""
    mismatches = []
    for row_id, row in enumerate(ROWS, start=1):
        after = _after(types_run, row_id)
        assert set(after) == {"id", *COLUMNS}
        for column, sql_type in COLUMNS.items():
            expected = row[column][1] if column in row else None
            if expected is not SAME and after[column] != expected:
                mismatches.append(f"row {row_id} {column} ({sql_type}): {after[column]!r} != {expected!r}")
    assert not mismatches, "\n".join(mismatches)


def test_unchanged_toast_values_carry_the_placeholder(types_run: TypesRun) -> None:
    inserted, updated = _after(types_run, 1), _after(types_run, 1, op="u")
    assert len(inserted["big"]) == 9600
    assert inserted["big_arr"] == list(range(1, 1001))
    assert updated["big"] == UNAVAILABLE_PLACEHOLDER
    assert updated["big_arr"] == [UNAVAILABLE_PLACEHOLDER]  # typed like its column
    assert updated["i4"] == 1
    assert {k: v for k, v in updated.items() if k not in ("big", "big_arr", "i4")} == {
        k: v for k, v in inserted.items() if k not in ("big", "big_arr", "i4")
    }


def _plain_fastavro_first_row(types_run: TypesRun) -> tuple[dict[str, Any], dict[str, Any]]:
    """(key, value) of the first record, decoded by fastavro with only what the schema topic holds.

    Row 1 has no infinite dates or timestamps: fastavro's logical types turn
    them into Python dates, which cannot hold int32/int64 max (decode raw, as
    cdc.consume does, to read those).
    """
    schema_record = json.loads(schemas_dir().joinpath("schema_record.avsc").read_text())
    record_schema = parse_schema(schema_record)
    writers: dict[bytes, Any] = {}
    for key, value in raw_records(types_run.bootstrap_servers, types_run.schema_topic):
        assert key is not None
        assert value is not None
        assert value[:2] == b"\xc3\x01"
        entry = schemaless_reader(io.BytesIO(value[10:]), record_schema)
        assert isinstance(entry, dict)
        writer = json.loads(entry["schema"])
        # the key is the CRC-64-AVRO fingerprint of the schema's canonical form, as the spec computes it
        canonical = to_parsing_canonical_form(parse_schema(writer))
        assert canonical == entry["canonical"]
        assert key == entry["fingerprint"] == bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
        writers[key] = parse_schema(writer)
    key, value = raw_records(types_run.bootstrap_servers, types_run.topic)[0]
    assert key is not None
    assert value is not None
    decoded: list[dict[str, Any]] = []
    for data in (key, value):
        assert data[:2] == b"\xc3\x01"
        body = io.BytesIO(data[10:])
        record = schemaless_reader(body, writers[data[2:10]])
        assert isinstance(record, dict)
        assert body.read() == b""
        decoded.append(record)
    return decoded[0], decoded[1]


def test_plain_fastavro_decodes_a_record_with_the_schema_topic_alone(types_run: TypesRun) -> None:
    key, value = _plain_fastavro_first_row(types_run)
    assert key == {"id": 1}
    assert value["op"] == "c"
    assert value["before"] is None
    after = value["after"]
    assert (after["id"], after["i4"], after["t"], after["Mixed_Case_col"]) == (1, 2147483647, "héllo 🐘", "x")
    assert value["source"]["table"] == "alltypes"


def test_plain_fastavro_sees_standard_logical_types(types_run: TypesRun) -> None:
    """Dates, times, timestamps, decimals and uuids are Avro's logical types (needs the full cdc.pgtypes)."""
    after = _plain_fastavro_first_row(types_run)[1]["after"]
    assert after["n102"] == Decimal("12.50")
    assert after["d"] == dt.date(2024, 2, 29)
    assert after["tm"] == dt.time(13, 45, 30, 123456)
    assert after["ts"] == dt.datetime(2024, 2, 29, 13, 45, 30, 123456)
    assert after["tstz"] == dt.datetime(2024, 2, 29, 8, 15, 30, 123456, tzinfo=dt.UTC)
    assert after["u"] == uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    assert after["ba"] == b"\x00\xff\x10"
    assert after["ai"] == [1, None, 3]
