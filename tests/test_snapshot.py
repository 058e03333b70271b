"""The initial snapshot: consistent with the stream, parallel, chunked, resumable after kill -9."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql

from cdc.lsn import parse_lsn
from cdc.snapshot import tables, workers
from tests.fix_servers import BrokerHandle, TestDb
from tests.pipeline import Record, read_topics, rebuild, settings_for, source_rows, wait_caught_up
from tests.rowtext import COLUMNS, ROW_TEXT
from tests.snapshotting import Writers, version_problems
from tests.support import ConnectorProcess, running, wait_until

SCHEMA = """
CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, note text, label text);
CREATE TABLE pairs (region text, n int, v int NOT NULL, payload text, PRIMARY KEY (region, n));
CREATE TABLE logs (id bigint PRIMARY KEY, v int NOT NULL, note text);
ALTER TABLE logs REPLICA IDENTITY FULL;
CREATE TABLE bare (a int, b text);
INSERT INTO items SELECT g, 1, md5(g::text), CASE g % 5
    WHEN 0 THEN E'tab\\there' WHEN 1 THEN E'line\\nbreak' WHEN 2 THEN E'back\\\\slash \\\\N'
    WHEN 3 THEN NULL ELSE 'übergrößenträger ✓' END
  FROM generate_series(1, 6000) g;
INSERT INTO pairs SELECT 'r' || (g % 7), g, 1, repeat('p', g % 50) FROM generate_series(1, 3000) g;
INSERT INTO logs SELECT g, 1, 'log ' || g FROM generate_series(1, 2000) g;
INSERT INTO bare SELECT g, CASE WHEN g % 3 = 0 THEN NULL ELSE '\\N' END FROM generate_series(1, 300) g;
ANALYZE;
"""


def snapshot_state(settings: Any) -> dict[str, Any]:
    try:
        state: dict[str, Any] = orjson.loads((settings.instance_dir / "snapshot.json").read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}
    return state


def reads_in_done_chunks(plan: dict[str, Any], reads: list[Record]) -> list[Record]:
    """The reads whose (integer) key ``id`` falls in a chunk the plan records as done."""
    bounds = [int(b[0]) for b in plan["bounds"]]
    ranges = [(bounds[i - 1] if i else 0, bounds[i] if i < len(bounds) else 2**62) for i in plan["done"]]
    return [r for r in reads if any(lo < r.key["id"] <= hi for lo, hi in ranges)]


@pytest.mark.tansu_subset
def test_initial_snapshot_with_concurrent_writers(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = db_latest
    db.execute(SCHEMA)
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, snapshot="initial",
        snapshot_chunk_rows=700, snapshot_workers=2,
    )  # fmt: skip
    caplog.set_level(logging.INFO, logger="cdc")
    with Writers(db, ["items", "logs"], first_new_id=100_000) as writers, running(settings) as run:
        before = writers.ops
        wait_until(lambda: writers.ops > before + 200, timeout=30, message="writes after the snapshot")
        writers.finish()
        wait_caught_up(db, run)
    assert writers.ops > 200

    names = ["items", "pairs", "logs", "bare"]
    topics = [f"{prefix}.public.{n}" for n in names]
    records = read_topics(broker.bootstrap_servers, topics)
    reads = [r for r in records if r.value is not None and r.value["op"] == "r"]

    # every existing row was read once, and the snapshot came before any streamed change
    assert len([r for r in reads if r.topic.endswith(".pairs")]) == 3000
    assert len([r for r in reads if r.topic.endswith(".bare")]) == 300
    assert version_problems(records) == []
    # exactly one read is the snapshot's last; it carries the consistent point like the others
    marks = [r.value["source"]["snapshot"] for r in reads]
    assert marks.count("last") == 1 and marks.count("true") == len(reads) - 1
    consistent = snapshot_state(settings)["consistent_lsn"]
    assert {r.value["source"]["lsn"] for r in reads} == {parse_lsn(consistent)}
    streamed = [r for r in records if r.value is not None and r.value["op"] != "r"]
    assert streamed and all(r.value["source"]["snapshot"] == "false" for r in streamed)
    assert min(int(r.value["source"]["commit_lsn"]) for r in streamed) > parse_lsn(consistent)

    rebuilt = rebuild(records)
    for name, key in (("items", ["id"]), ("pairs", ["region", "n"]), ("logs", ["id"])):
        assert rebuilt[f"{prefix}.public.{name}"] == source_rows(db, name, key), name
    # the keyless table: the same rows, as a multiset
    bare = sorted(orjson.dumps(r.value["after"]).decode() for r in reads if r.topic.endswith(".bare"))
    expected = sorted(orjson.dumps(row).decode() for row in source_rows(db, "bare", ["a", "b"]).values())
    assert bare == expected
    # escapes of COPY's text format came back as the values
    texts = {v["after"]["label"] for v in (r.value for r in reads if r.topic.endswith(".items"))}
    assert {"tab\there", "line\nbreak", "back\\slash \\N", None, "übergrößenträger ✓"} <= texts

    state = snapshot_state(settings)
    assert state["phase"] == "complete"
    plans = state["plans"]
    assert len(plans["public.items"]["done"]) == len(plans["public.items"]["bounds"]) + 1 > 5
    assert plans["public.pairs"]["rows"] == 3000
    assert "initial snapshot complete" in caplog.text


def test_kill_during_snapshot_resumes_from_the_last_chunk(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = db_latest
    db.execute(
        "CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL, note text);"
        "INSERT INTO big SELECT g, 1, repeat(md5(g::text), 4) FROM generate_series(1, 80000) g;"
        "ANALYZE big"
    )
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, snapshot="initial", tables=["public.big"],
        snapshot_chunk_rows=400, snapshot_workers=1,
    )  # fmt: skip
    connector = ConnectorProcess(
        db.dsn, broker.bootstrap_servers, settings.name, prefix, state_dir, tables=["public.big"],
        format="json", producer="kafka-python", snapshot="initial",
        extra=["--snapshot-chunk-rows", "400", "--snapshot-workers", "1"],
    )  # fmt: skip
    with Writers(db, ["big"], first_new_id=1_000_000, threads=1) as writers:
        connector.start(wait=False)

        def chunks_done() -> int:
            plans = snapshot_state(settings).get("plans", {})
            return len(plans["public.big"]["done"]) if "public.big" in plans else 0

        try:
            wait_until(lambda: chunks_done() >= 5 or not connector.alive(), timeout=60, interval=0.005)
        finally:
            connector.kill9()
        state = snapshot_state(settings)
        done, chunks = (
            len(state["plans"]["public.big"]["done"]),
            len(state["plans"]["public.big"]["bounds"]) + 1,
        )
        assert state["phase"] == "running" and 5 <= done < chunks, (
            f"{done} of {chunks} chunks done at the kill"
        )
        # the workers died with the connector (they would hold the slot's snapshot readers open)
        wait_until(
            lambda: (
                not db.scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
                    (f"cdc-{settings.name}-snapshot%",),
                )
            ),
            timeout=30,
            message="the snapshot workers to die with the connector",
        )

        caplog.set_level(logging.INFO, logger="cdc")
        with running(settings) as run:
            before = writers.ops
            wait_until(lambda: writers.ops > before + 100, timeout=30, message="writes after the snapshot")
            writers.finish()
            wait_caught_up(db, run)
    first_pending = min(set(range(chunks)) - set(state["plans"]["public.big"]["done"]))
    assert f"snapshot of public.big resumes from chunk {first_pending + 1} of {chunks}" in caplog.text

    topic = f"{prefix}.public.big"
    records = read_topics(broker.bootstrap_servers, [topic])
    assert rebuild(records)[topic] == source_rows(db, "big", ["id"])
    # the chunks done before the kill were not read again
    reads = [r for r in records if r.value is not None and r.value["op"] == "r"]
    in_done = reads_in_done_chunks(state["plans"]["public.big"], reads)
    assert len(in_done) >= 5 * 400
    assert len({r.key["id"] for r in in_done}) == len(in_done), "a done chunk was read again"
    # every row outside the done chunks was read after the resume, less a margin for the writers'
    # deletes (a fixed 70,000 failed when the kill came after 34 chunks: only 66,400 rows were left)
    assert len(reads) - len(in_done) > 80_000 - len(in_done) - 8_000
    assert [r.value["source"]["snapshot"] for r in reads].count("last") == 1
    assert snapshot_state(settings)["phase"] == "complete"


def test_graceful_stop_during_snapshot_keeps_what_kafka_holds(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = db_latest
    db.execute(
        "CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL);"
        "INSERT INTO big SELECT g, 1 FROM generate_series(1, 60000) g; ANALYZE big;"
        "CREATE TABLE gone (id int PRIMARY KEY); CREATE TABLE extra (id int PRIMARY KEY, v int NOT NULL);"
        "INSERT INTO extra SELECT g, 1 FROM generate_series(1, 700) g"
    )
    # the first run is slow on purpose (one worker, the pure-Python producer): seconds to stop it in
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, snapshot="initial", snapshot_chunk_rows=300,
        snapshot_workers=1, producer="kafka-python", tables=["public.big", "public.gone"],
    )  # fmt: skip

    def chunks_done() -> int:
        plans = snapshot_state(settings).get("plans", {})
        return len(plans["public.big"]["done"]) if "public.big" in plans else 0

    with running(settings, wait_streaming=False) as run:
        wait_until(lambda: chunks_done() >= 3 or not run.thread.is_alive(), timeout=60, interval=0.005)
        run.connector.stop.set()
        run.thread.join(30)
        assert not run.thread.is_alive() and not run.errors, run.errors
    state = snapshot_state(settings)["plans"]["public.big"]
    assert 3 <= len(state["done"]) < len(state["bounds"]) + 1

    db.execute("UPDATE big SET v = v + 1 WHERE id % 100 = 0")
    caplog.set_level(logging.INFO, logger="cdc")
    # the table list changed while the snapshot was unfinished
    settings.producer, settings.snapshot_workers = "auto", 2
    settings.tables = ["public.big", "public.extra"]
    with running(settings) as run:
        # the last write is a streamed one, so the position to wait for is a commit it sees
        db.execute("UPDATE big SET v = v + 1 WHERE id % 1000 = 1")
        wait_caught_up(db, run)
    assert "snapshot of public.big resumes from chunk" in caplog.text
    assert "table public.gone is no longer captured: dropped from the snapshot" in caplog.text
    assert "table public.extra joins the unfinished snapshot" in caplog.text
    topic = f"{prefix}.public.big"
    records = read_topics(broker.bootstrap_servers, [topic, f"{prefix}.public.extra"])
    assert rebuild(records)[topic] == source_rows(db, "big", ["id"])
    assert rebuild(records)[f"{prefix}.public.extra"] == source_rows(db, "extra", ["id"])
    reads = [r for r in records if r.value is not None and r.value["op"] == "r"]
    assert [r.value["source"]["snapshot"] for r in reads].count("last") == 1  # over both tables
    in_done = reads_in_done_chunks(state, [r for r in reads if r.topic == topic])
    assert len(in_done) >= 3 * 300
    assert len({r.key["id"] for r in in_done}) == len(in_done), "a done chunk was read again"


def test_a_table_rewritten_or_replaced_under_the_snapshot_is_noticed(db_latest: TestDb) -> None:
    """TRUNCATE is not MVCC-safe: a snapshot older than it would read the table as empty. The check
    the workers run before each chunk sees it, and sees a table dropped and created again."""
    from cdc.pg import connect

    db = db_latest
    db.execute(
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2);"
        "CREATE TABLE p (id int PRIMARY KEY) PARTITION BY RANGE (id);"
        "CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (100); INSERT INTO p VALUES (1)"
    )
    with connect(db.dsn) as catalog:  # as the coordinator: autocommit, no lock kept
        spec = tables.describe_table(catalog, "public.t", "none")
        parted = tables.describe_table(catalog, "public.p", "none")
    with connect(db.dsn) as exporter, connect(db.dsn) as reader:
        exporter.autocommit = reader.autocommit = False
        exporter.isolation_level = reader.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        row = exporter.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None

        def check(which: tables.TableSpec) -> str | None:
            reader.execute(f"SET TRANSACTION SNAPSHOT '{row[0]}'")
            try:
                return workers.table_changed(reader, which)
            finally:
                reader.rollback()

        assert check(spec) is None and check(parted) is None  # nothing happened yet
        # looked up by oid: a scan of pg_class per chunk made a snapshot quadratic in its tables
        params = {"name": "public.t", "oid": spec.relation_id}
        plan = "\n".join(r[0] for r in reader.execute(sql.SQL("EXPLAIN ") + workers._CHANGED, params))
        reader.rollback()
        assert "Seq Scan on pg_class" not in plan, plan
        db.execute("TRUNCATE p1")
        assert check(parted) == workers.REWRITTEN  # a partition's rewrite counts
        db.execute("TRUNCATE t")
        assert check(spec) == workers.REWRITTEN
        db.execute("DROP TABLE t; CREATE TABLE t (id int PRIMARY KEY)")
        assert check(spec) == workers.DROPPED
        db.execute("DROP TABLE t")
        assert check(spec) == workers.DROPPED


def test_initial_only_then_stream(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    db = db_latest
    # one chunk of 2,049 rows: a worker writes them in batches of 1,024 (`workers._BATCH`), the last
    # batch ending exactly at the row it holds back for the coordinator
    rows = 2 * workers._BATCH + 1
    db.execute(
        "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);"
        f"INSERT INTO t SELECT g, 1 FROM generate_series(1, {rows}) g"
    )
    settings = settings_for(db, broker.bootstrap_servers, prefix, state_dir, snapshot="initial-only")
    with running(settings, wait_streaming=False) as run:
        run.thread.join(60)
        assert not run.thread.is_alive() and not run.errors, run.errors
    slot = db.scalar(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (settings.slot,)
    )
    assert slot == snapshot_state(settings)["consistent_lsn"]  # nothing confirmed past the snapshot
    assert snapshot_state(settings)["plans"]["public.t"]["rows"] == rows

    db.execute(f"UPDATE t SET v = v + 1 WHERE id <= 10; DELETE FROM t WHERE id = {rows}")
    settings.snapshot = "initial"  # the slot exists and the snapshot is complete: just stream
    with running(settings) as run:
        db.execute("UPDATE t SET v = v + 1 WHERE id = 20")  # the last write is a streamed one
        wait_caught_up(db, run)
    topic = f"{prefix}.public.t"
    records = read_topics(broker.bootstrap_servers, [topic])
    reads = [r for r in records if r.value is not None and r.value["op"] == "r"]
    assert sorted(r.key["id"] for r in reads) == list(range(1, rows + 1))
    assert [r.value["source"]["snapshot"] for r in reads].count("last") == 1
    assert version_problems(records) == []
    assert rebuild(records)[topic] == source_rows(db, "t", ["id"])

    settings.snapshot = "initial-only"  # already complete: nothing to do, exit
    with running(settings, wait_streaming=False) as run:
        run.thread.join(60)
        assert not run.thread.is_alive() and not run.errors


def test_avro_snapshot_reads_decode_like_streamed_rows(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    """Types parsed from COPY equal those parsed from pgoutput; one schema version across the boundary."""
    from tests.consuming import consume

    db = db_latest
    db.execute(
        """
        CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
        CREATE TABLE typed (
            id int PRIMARY KEY, amount numeric(12, 2), at timestamptz, day date, tags int[], m mood,
            u uuid, doc jsonb, raw bytea, note text, f float8
        );
        CREATE TABLE source_rows AS SELECT g AS n,
            (g * 1.25)::numeric(12, 2) AS amount,
            timestamptz '2026-03-29 01:30:00+02' + g * interval '1 h' AS at,
            date '2024-02-28' + g AS day, ARRAY[g, NULL, -g] AS tags,
            (ARRAY['sad', 'ok', 'happy'])[1 + g % 3]::mood AS m,
            md5(g::text)::uuid AS u, jsonb_build_object('g', g, 'tab', E'a\tb') AS doc,
            decode(md5(g::text), 'hex') AS raw, E'line\n\\N\t' || g AS note, g / 3.0::float8 AS f
          FROM generate_series(1, 300) g;
        INSERT INTO typed SELECT n, amount, at, day, tags, m, u, doc, raw, note, f FROM source_rows;
        """
    )
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, snapshot="initial", format="avro",
        tables=["public.typed"], snapshot_chunk_rows=100,
    )  # fmt: skip
    with running(settings) as run:
        copies = "INSERT INTO typed SELECT n + 1000, amount, at, day, tags, m, u, doc, raw, note, f"
        db.execute(copies + " FROM source_rows")
        wait_caught_up(db, run)
    topic = f"{prefix}.public.typed"
    bootstrap = ["--bootstrap-servers", broker.bootstrap_servers, "--from-beginning", "--idle-timeout", "1"]
    lines, errors = consume([topic, *bootstrap])
    assert errors == []
    reads = {v["after"]["id"]: v["after"] for v in (line["value"] for line in lines) if v["op"] == "r"}
    streamed = {
        v["after"]["id"] - 1000: v["after"] for v in (line["value"] for line in lines) if v["op"] == "c"
    }
    assert len(reads) == len(streamed) == 300
    for n in range(1, 301):
        assert {**reads[n], "id": 0} == {**streamed[n], "id": 0}, n
    schemas, errors = consume([f"{prefix}.schemas", *bootstrap])
    assert errors == []
    versions = {(s["value"]["subject"], s["value"]["version"]) for s in schemas}
    assert versions == {(f"{topic}-value", 1), (f"{topic}-key", 1)}


def test_catalog_table_has_the_streamed_shape(db: TestDb) -> None:
    """`Table.same_shape` between the catalog's table and the Relation message, on every version."""
    from cdc.events import table_from_relation
    from cdc.pg import connect
    from cdc.pgoutput import Decoder, Relation
    from cdc.replication import ReplicationConnection, primary_key

    db.execute(
        """
        CREATE TABLE plain (id int PRIMARY KEY, name varchar(20), price numeric(10, 2), at timestamptz);
        CREATE TABLE pair (a text, b int, c int[], PRIMARY KEY (b, a));
        CREATE TABLE full_ (id bigint PRIMARY KEY, x text); ALTER TABLE full_ REPLICA IDENTITY FULL;
        CREATE TABLE byindex (id int NOT NULL, code text NOT NULL, x int);
        CREATE UNIQUE INDEX byindex_code ON byindex (code, id);
        ALTER TABLE byindex REPLICA IDENTITY USING INDEX byindex_code;
        CREATE TABLE gen (id int PRIMARY KEY, x int, twice int GENERATED ALWAYS AS (x * 2) STORED, gone int);
        ALTER TABLE gen DROP COLUMN gone;
        CREATE TABLE keyless (x int, y text);
        CREATE TABLE listed (id int PRIMARY KEY, shown text, hidden text);
        CREATE TABLE parted (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
        CREATE TABLE parted_eu PARTITION OF parted FOR VALUES IN ('eu');
        CREATE PUBLICATION shapes
          FOR TABLE plain, pair, full_, byindex, gen, keyless, listed (id, shown), parted
          WITH (publish_via_partition_root = true);
        """
    )
    names = ["plain", "pair", "full_", "byindex", "gen", "keyless", "listed", "parted"]
    with ReplicationConnection(db.dsn) as repl, connect(db.dsn) as conn:
        repl.create_slot("shapes")
        db.execute(
            "INSERT INTO plain VALUES (1, 'a', 1.5, now()); INSERT INTO pair VALUES ('a', 1, '{1}');"
            "INSERT INTO full_ VALUES (1, 'x'); INSERT INTO byindex VALUES (1, 'c', 1);"
            "INSERT INTO gen (id, x) VALUES (1, 2); INSERT INTO keyless VALUES (1, 'y');"
            "INSERT INTO listed VALUES (1, 's', 'h'); INSERT INTO parted VALUES (1, 'eu');"
        )
        repl.start("shapes", "shapes")
        decoder = Decoder()
        relations: dict[str, Relation] = {}

        def more() -> bool:
            frame = repl.read(1.0)
            if frame is not None and frame[0] == 0x77:
                message = decoder.decode(frame[25:])
                if isinstance(message, Relation):
                    relations[message.name] = message
            return len(relations) == len(names)

        wait_until(more, timeout=30, interval=0, message="a Relation message per table")
        for name in names:
            relation = relations[name]
            pk = primary_key(conn, relation.relation_id) if chr(relation.replica_identity) in "fn" else None
            streamed = table_from_relation(relation, primary_key=pk)
            spec = tables.describe_table(conn, f"public.{name}", "shapes")
            from_catalog = tables.table_from_spec(spec)
            assert from_catalog.relation_id == streamed.relation_id, name
            assert from_catalog.same_shape(streamed), (name, spec)
            assert from_catalog.key_indexes == streamed.key_indexes, name
        listed = tables.describe_table(conn, "public.listed", "shapes")
        assert [c.name for c in listed.columns] == ["id", "shown"]
        assert [c.name for c in tables.describe_table(conn, "public.gen", "shapes").columns] == ["id", "x"]


def test_copy_text_format() -> None:
    """COPY's escapes undone: the bytes are the type's text output, as pgoutput sends it."""
    assert tables.copy_fields(b"1\tplain\t\\N") == [b"1", b"plain", None]
    assert tables.copy_fields(b"a\\tb\tc\\nd\t\\\\N\t\\\\\t\\r\\b\\f\\v") == [
        b"a\tb", b"c\nd", b"\\N", b"\\", b"\r\b\f\v",
    ]  # fmt: skip
    assert tables.copy_fields(b"") == [b""]


_ESCAPES = {b"\\": b"\\\\", b"\t": b"\\t", b"\n": b"\\n", b"\r": b"\\r"}


def _copy_text(value: bytes | None) -> bytes:
    """A text output as COPY TO writes it."""
    if value is None:
        return b"\\N"
    for raw, escaped in _ESCAPES.items():
        value = value.replace(raw, escaped)
    return value


@given(st.lists(ROW_TEXT, max_size=40), st.sampled_from([("id",), ("qty", "id"), ()]))
@settings(max_examples=150, deadline=None)
def test_copy_lines_encode_as_their_rows(rows: list[tuple[bytes | None, ...]], keys: tuple[str, ...]) -> None:
    """`encode_lines` (read and encoded in one generated loop) gives the records `encode_reads`
    gives the rows `row_reader` reads from the same COPY lines; only lines with an escape or a NULL
    go through the reader; a line that does not read fails as the reader fails."""
    from cdc import avro
    from cdc.errors import DecodeError, SchemaError
    from cdc.events import SourceInfo, Table, TableColumn
    from cdc.pgtypes import column_type

    if "qty" in keys:  # a key column is never null
        rows = [(*r[:5], b"7" if r[5] is None else r[5]) for r in rows]
    table = Table(7, "public", "lines", 1 if keys else 0,
                  [TableColumn(n, column_type(oid, mod), n in keys) for n, oid, mod in COLUMNS])  # fmt: skip
    lines = [b"\t".join(_copy_text(v) for v in row) for row in rows]
    read = tables.row_reader(table)
    slow: list[bytes] = []

    def counted(line: bytes) -> list[Any]:
        slow.append(line)
        return read(line)

    serializer = avro.AvroSerializer("shop", SourceInfo("test", "shop"))
    got = serializer.encode_lines(table, lines, counted, 0x16B3748, 5, "true", now_ms=9)
    assert slow == [line for line in lines if b"\\" in line]
    want = serializer.encode_reads(table, [read(line) for line in lines], 0x16B3748, 5, "true", now_ms=9)
    assert got == want
    for bad in (b"x", b"1\t2"):  # not a bigint; too few columns
        with pytest.raises(DecodeError) as expected:
            read(bad)
        with pytest.raises(DecodeError) as raised:
            serializer.encode_lines(table, [*lines, bad], read, 0x16B3748, 5, "true")
        assert str(raised.value) == str(expected.value)
    too_wide = b"1\tx\t12345678901.00\t\\N\tt\t7"  # reads, but has 13 digits for numeric(12,2)
    with pytest.raises(SchemaError) as expected_schema:
        serializer.encode_reads(table, [read(too_wide)], 0x16B3748, 5, "true")
    with pytest.raises(SchemaError) as raised_schema:
        serializer.encode_lines(
            table, [*lines, too_wide.replace(b"\\N", b"infinity")], read, 0x16B3748, 5, "true"
        )
    assert str(raised_schema.value) == str(expected_schema.value)


def test_snapshot_producers_linger_for_throughput() -> None:
    """A worker's producer waits 20 ms to fill batches unless the user chose a linger, in any spelling."""
    from cdc.config import Settings
    from cdc.kafka.clientconfig import kafka_python_producer_settings

    chosen = workers.snapshot_settings(Settings(producer_configs={"acks": "all"}))
    assert chosen.producer_configs == {"linger.ms": "20", "acks": "all"}
    assert kafka_python_producer_settings(chosen.producer_configs)["linger_ms"] == 20
    for name in ("linger.ms", "queue.buffering.max.ms", "linger_ms"):
        own = Settings(producer_configs={name: "7"})
        assert workers.snapshot_settings(own).producer_configs == {name: "7"}
    assert Settings().producer_configs == {}  # the stream's own producer keeps its 2 ms


def test_copy_rows_end_and_errors_wherever_they_fall(
    db_latest: TestDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`copy_rows` takes buffered rows from libpq itself: every row comes once, whether the COPY's
    end is met there or in psycopg's wait, an error half-way is the server's, and the connection
    is ready for the next command either way."""
    from cdc.errors import SourceError
    from cdc.pg import connect

    def copy(query: str) -> sql.Composed:
        return sql.Composed([sql.SQL(f"COPY ({query}) TO STDOUT")])

    ends: list[object] = []
    end_copy = tables._end_copy

    def counted(conn: psycopg.Connection[Any]) -> None:
        ends.append(conn)
        end_copy(conn)

    monkeypatch.setattr(tables, "_end_copy", counted)
    with connect(db_latest.dsn) as conn:
        for size in (0, 1, 2, 1000, 100_000):
            query = f"SELECT i, 'x' || i FROM generate_series(1, {size}) i"
            rows = list(tables.copy_rows(conn, copy(query)))
            assert rows == [b"%d\tx%d" % (i, i) for i in range(1, size + 1)]
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert 0 < len(ends) < 5  # the end met among buffered rows, and (no rows) in psycopg's read
        for fail_at in (1, 2, 5000, 60_000):
            seen: list[bytes] = []
            with pytest.raises(SourceError, match="division by zero"):
                failing = f"SELECT 1 / ({fail_at} - i) FROM generate_series(1, 100000) i"
                seen.extend(tables.copy_rows(conn, copy(failing)))
            assert len(seen) <= fail_at - 1  # nothing past the failing row, none twice
            assert seen == [b"%d" % (1 // (fail_at - i)) for i in range(1, len(seen) + 1)]
            assert conn.execute("SELECT 2").fetchone() == (2,)
