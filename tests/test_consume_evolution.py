"""Schema evolution end to end: a table altered mid-stream, every version decoded from one topic."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import pytest
from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form
from typer.testing import CliRunner

from cdc.cli import app
from tests.changefeed import capture
from tests.consuming import consume, consume_subprocess, values
from tests.fix_servers import BrokerHandle, TestDb

STATEMENTS = [
    "INSERT INTO evo VALUES (1, 10, 'one')",
    "ALTER TABLE evo ADD COLUMN c int4",
    "INSERT INTO evo VALUES (2, 20, 'two', 2)",
    "ALTER TABLE evo ALTER COLUMN a TYPE int8",
    "INSERT INTO evo VALUES (3, 30, 'three', 3)",
    "ALTER TABLE evo ALTER COLUMN c TYPE text",
    "INSERT INTO evo VALUES (4, 40, 'four', 'four')",
    "ALTER TABLE evo DROP COLUMN b",
    "INSERT INTO evo VALUES (5, 50, 'five')",
    'ALTER TABLE evo RENAME COLUMN a TO "A-a"',
    "INSERT INTO evo VALUES (6, 60, 'six')",
    "UPDATE evo SET c = 'x' WHERE id = 1",
    "DELETE FROM evo WHERE id = 2",
    "SELECT pg_logical_emit_message(true, 'app', 'héllo')",
    "TRUNCATE evo",
]


def test_alter_table_mid_stream(
    db_latest: TestDb,
    broker: BrokerHandle,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    state_dir: Path,
) -> None:
    db_latest.execute("CREATE TABLE evo (id int PRIMARY KEY, a int4, b text)")
    with caplog.at_level(logging.INFO, logger="cdc.avro"):
        captured = capture(db_latest, broker.bootstrap_servers, prefix, ["public.evo"], STATEMENTS, state_dir)
    topic = f"{prefix}.public.evo"

    # one schema version per table shape, each checked against the one before
    value_versions = [r for r in captured.serializer.registrations if r.schema.subject == f"{topic}-value"]
    assert [r.schema.version for r in value_versions] == [1, 2, 3, 4, 5, 6]
    verdicts = [(r.schema.version, [str(p) for p in r.problems]) for r in value_versions[1:]]
    assert verdicts == [
        (2, []),  # ADD COLUMN c int4: nullable with default null
        (3, []),  # a int4 -> int8: int promotes to long
        (4, ["c: int cannot be read as string"]),  # c int4 -> text: no promotion
        (5, []),  # DROP COLUMN b: the reader ignores it
        (6, []),  # RENAME a: a new nullable field
    ]
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name.startswith("cdc.avro")
    ]
    assert len(warnings) == 1
    assert f"{topic}-value v4 is not backward compatible with v3" in warnings[0]
    assert "column c: int cannot be read as string" in warnings[0]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(f"{topic}-value v2 registered" in m and "backward compatible with v1" in m for m in infos)

    # a real subprocess reads records of all six versions from the one topic
    bootstrap = ["--bootstrap-servers", broker.bootstrap_servers]
    lines, errors = consume_subprocess(
        [
            topic,
            f"{prefix}.messages",
            *bootstrap,
            "--from-beginning",
            "--max-messages",
            "11",
            "--idle-timeout",
            "10",
        ]
    )
    assert errors == []
    rows = [(v["op"], v["before"], v["after"]) if v else None for v in values(lines, topic)]
    assert rows == [
        ("c", None, {"id": 1, "a": 10, "b": "one"}),
        ("c", None, {"id": 2, "a": 20, "b": "two", "c": 2}),
        ("c", None, {"id": 3, "a": 30, "b": "three", "c": 3}),
        ("c", None, {"id": 4, "a": 40, "b": "four", "c": "four"}),
        ("c", None, {"id": 5, "a": 50, "c": "five"}),
        ("c", None, {"id": 6, "A-a": 60, "c": "six"}),
        ("u", None, {"id": 1, "A-a": 10, "c": "x"}),
        ("d", {"id": 2, "A-a": None, "c": None}, None),
        None,  # the tombstone
        ("t", None, None),
    ]
    keys = [line["key"] for line in lines if line["topic"] == topic]
    assert keys == [{"id": i} for i in (1, 2, 3, 4, 5, 6, 1, 2, 2)] + [None]
    assert [line["key"] for line in lines if line["topic"] == f"{prefix}.messages"] == [{"prefix": "app"}]
    (message,) = values(lines, f"{prefix}.messages")
    assert message["message"] == {"prefix": "app", "content": base64.b64encode("héllo".encode()).decode()}
    assert message["op"] == "m"
    assert message["source"]["table"] is None

    # the same through CliRunner, starting from the end: nothing old, so nothing within the idle timeout
    lines, errors = consume([topic, *bootstrap, "--idle-timeout", "0.5"])
    assert (lines, errors) == ([], [])

    # cdc schemas export: one file per subject and version, each the schema whose fingerprint it carries
    out = tmp_path / "schemas"
    result = CliRunner().invoke(
        app, ["schemas", "export", "--out", str(out), "--topic-prefix", prefix, *bootstrap]
    )
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [f"{topic}-key.v1.avsc", f"{prefix}.messages-key.v1.avsc", f"{prefix}.messages-value.v1.avsc"]
        + [f"{topic}-value.v{v}.avsc" for v in range(1, 7)]
    )
    by_version = {r.schema.version: r.schema for r in value_versions}
    for version, registered in by_version.items():
        exported = json.loads((out / f"{topic}-value.v{version}.avsc").read_text())
        canonical = to_parsing_canonical_form(parse_schema(exported))
        assert bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")) == registered.fingerprint
