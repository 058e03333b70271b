"""What is captured: table patterns (tables created while streaming included), column lists and row
filters of the publication, the same in the snapshot and the stream. Real Postgres, real broker."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from cdc.config import Settings, TableColumns
from cdc.pgoutput import Insert, Relation, Update
from tests.fix_servers import BrokerHandle, TestDb
from tests.pgstream import SlotReader
from tests.pipeline import read_topics, rebuild, settings_for, source_rows, wait_caught_up
from tests.snapshotting import Writers, version_problems
from tests.support import Running, cdc, error_line, running, wait_until


def incremental_done(run: Running) -> bool:
    if run.errors:
        raise run.errors[0]
    return run.connector.status.snapshot.get("incremental") == []


def values(records: list[Any]) -> list[dict[str, Any]]:
    return [r.value for r in records if r.value is not None]


# -- patterns ---------------------------------------------------------------------------------


def test_a_table_created_while_streaming_that_matches_joins_exactly(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``--tables 'public.order_*'``: a new matching table joins the publication, is read by an
    incremental snapshot while writers change it, then streams: the topics rebuild both tables; a
    table that does not match, or is excluded, is never captured; a dropped one leaves."""
    db = db_latest
    db.execute(
        "CREATE TABLE order_a (id int PRIMARY KEY, v int NOT NULL, note text);"
        "CREATE TABLE order_tmp (id int PRIMARY KEY, v int NOT NULL);"
        "CREATE TABLE customers (id int PRIMARY KEY, v int NOT NULL);"
        "INSERT INTO order_a SELECT g, 1, 'a' FROM generate_series(1, 3000) g;"
        "INSERT INTO order_tmp VALUES (1, 1); INSERT INTO customers VALUES (1, 1)"
    )
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, snapshot="initial", tables=["public.order_*"],
        exclude_tables=["public.order_tmp"], table_check_interval=0.3, snapshot_chunk_rows=700,
    )  # fmt: skip
    caplog.set_level(logging.INFO, logger="cdc")
    with running(settings) as run:
        assert run.connector.status.tables == ["public.order_a"]
        # created and filled while the connector streams, and written to all along
        db.execute(
            "CREATE TABLE order_b (id int PRIMARY KEY, v int NOT NULL, note text);"
            "INSERT INTO order_b SELECT g, 1, 'b' FROM generate_series(1, 4000) g"
        )
        with Writers(db, ["order_a", "order_b"], first_new_id=1_000_000, pause=0.001) as writers:
            wait_until(
                lambda: "public.order_b" in run.connector.status.tables,
                timeout=30,
                message="order_b to join the capture",
            )
            wait_until(lambda: incremental_done(run), timeout=90, message="order_b's incremental snapshot")
            before = writers.ops
            wait_until(lambda: writers.ops > before + 100, timeout=30, message="writes after the snapshot")
        db.execute("INSERT INTO customers VALUES (2, 1); INSERT INTO order_tmp VALUES (2, 1)")
        wait_caught_up(db, run)
        # a dropped table leaves the capture
        db.execute("CREATE TABLE order_c (id int PRIMARY KEY, v int NOT NULL)")
        wait_until(lambda: "public.order_c" in run.connector.status.tables, timeout=30, message="order_c")
        db.execute("DROP TABLE order_c")
        wait_until(
            lambda: run.connector.status.tables == ["public.order_a", "public.order_b"],
            timeout=30,
            message="order_c to leave the capture",
        )
        captured = db.execute(
            "SELECT tablename FROM pg_publication_tables WHERE pubname = %s ORDER BY 1",
            (settings.publication,),
        )
        wait_caught_up(db, run)
    assert [r[0] for r in captured] == ["order_a", "order_b"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("table public.order_b joined the capture" in m for m in messages)
    assert any("table public.order_c left the capture" in m for m in messages)

    topics = [f"{prefix}.public.order_a", f"{prefix}.public.order_b"]
    records = read_topics(broker.bootstrap_servers, topics)
    assert version_problems(records, strict_snapshot=False) == []
    rebuilt = rebuild(records)
    for name, topic in zip(["order_a", "order_b"], topics, strict=True):
        assert rebuilt[topic] == source_rows(db, name, ["id"]), name
    reads_b = [v for v in values(records) if v["op"] == "r" and v["source"]["table"] == "order_b"]
    assert len(reads_b) >= 4000 and {v["source"]["snapshot"] for v in reads_b} == {"incremental"}
    existing = set(_topics(broker))
    assert f"{prefix}.public.customers" not in existing and f"{prefix}.public.order_tmp" not in existing


def _topics(broker: BrokerHandle) -> list[str]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    try:
        return list(admin.list_topics())
    finally:
        admin.close()


def test_a_table_created_while_stopped_is_read_at_the_next_start(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    db = db_latest
    db.execute("CREATE TABLE sales_1 (id int PRIMARY KEY, v int NOT NULL); INSERT INTO sales_1 VALUES (1, 1)")
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, snapshot="initial", tables=["public.sales_*"],
        table_check_interval=0,
    )  # fmt: skip
    with running(settings) as run:
        wait_caught_up(db, run)
    db.execute(
        "CREATE TABLE sales_2 (id int PRIMARY KEY, v int NOT NULL);"
        "INSERT INTO sales_2 SELECT g, 1 FROM generate_series(1, 500) g"
    )
    with running(settings) as run:
        assert run.connector.status.tables == ["public.sales_1", "public.sales_2"]
        wait_until(lambda: incremental_done(run), timeout=60, message="sales_2's incremental snapshot")
        db.execute("UPDATE sales_2 SET v = 2 WHERE id <= 10")
        wait_caught_up(db, run)
    topic = f"{prefix}.public.sales_2"
    assert rebuild(read_topics(broker.bootstrap_servers, [topic]))[topic] == source_rows(
        db, "sales_2", ["id"]
    )


def test_status_lists_the_captured_tables(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    db = db_latest
    db.execute(
        "CREATE SCHEMA shop; CREATE TABLE shop.a (id int PRIMARY KEY);"
        "CREATE TABLE shop.b (id int PRIMARY KEY)"
    )
    settings = settings_for(db, broker.bootstrap_servers, prefix, state_dir, tables=["shop.*"])
    proc = _start_detached(settings)
    try:
        wait_until(lambda: "shop.b" in _status(settings).get("tables", []), timeout=60, message="status")
        status = cdc("status", "--name", settings.name, "--state-dir", str(state_dir))
        assert status.returncode == 0, status.stderr
        assert "tables         2 captured: shop.a, shop.b" in status.stdout
        as_json = orjson.loads(
            cdc("status", "--json", "--name", settings.name, "--state-dir", str(state_dir)).stdout
        )
        assert as_json["tables"] == ["shop.a", "shop.b"]
    finally:
        stopped = cdc("stop", "--name", settings.name, "--state-dir", str(state_dir))
        assert stopped.returncode == 0, stopped.stderr
        assert proc.returncode == 0


def _start_detached(settings: Settings) -> Any:
    proc = cdc(
        "start", "--detach", "--bootstrap-servers", settings.bootstrap_servers,
        "--name", settings.name, "--state-dir", str(settings.state_dir),
        "--topic-prefix", settings.topic_prefix,
        "--tables", ",".join(settings.tables), "--snapshot", "never", "--format", "json",
        dsn=settings.dsn,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc


def _status(settings: Settings) -> dict[str, Any]:
    try:
        status: dict[str, Any] = orjson.loads((settings.instance_dir / "status.json").read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}
    return status


# -- columns ----------------------------------------------------------------------------------

USERS = """
CREATE TABLE users (id int PRIMARY KEY, email text, secret text, note text);
INSERT INTO users SELECT g, 'u' || g || '@example.com', 'SECRET-' || g, 'n' FROM generate_series(1, 300) g;
"""


@pytest.mark.parametrize("rule", ["exclude", "include"])
def test_an_excluded_column_never_leaves_the_server(
    db: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path, rule: str
) -> None:
    """On every server version: neither the snapshot nor the stream has the column, and the
    walsender itself never sends it (the Relation message and the tuples lack it)."""
    db.execute(USERS)
    shape: dict[str, Any] = (
        {"exclude_columns": {"public.users": ["secret"]}}
        if rule == "exclude"
        else {"columns": {"public.users": ["id", "email", "note"]}}
    )
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, snapshot="initial", tables=["public.users"], **shape
    )
    with running(settings) as run:
        db.execute("INSERT INTO users VALUES (1000, 'new@example.com', 'SECRET-NEW', 'n')")
        db.execute("UPDATE users SET secret = 'SECRET-UPDATED', note = 'm' WHERE id <= 5")
        db.execute("DELETE FROM users WHERE id = 6")
        wait_caught_up(db, run)
    topic = f"{prefix}.public.users"
    records = read_topics(broker.bootstrap_servers, [topic])
    rows = [row for v in values(records) for row in (v["before"], v["after"]) if row is not None]
    assert len([v for v in values(records) if v["op"] == "r"]) == 300
    assert rows and all(set(row) <= {"id", "email", "note"} for row in rows)
    assert not any(b"SECRET" in orjson.dumps(v) for v in values(records))
    # the server's own stream, read with the same publication: no secret in any byte
    with SlotReader(db.dsn, settings.publication) as reader:
        db.execute("UPDATE users SET secret = 'SECRET-AGAIN', note = 'o' WHERE id = 7")
        db.execute("INSERT INTO users VALUES (1001, 'n@example.com', 'SECRET-1001', 'n')")
        captured = reader.read_through(Insert)
    relations = [c.message for c in captured if isinstance(c.message, Relation)]
    assert relations and all("secret" not in [col.name for col in r.columns] for r in relations)
    assert any(isinstance(c.message, Update) for c in captured)
    assert all(b"SECRET" not in c.payload for c in captured)


def test_column_rules_that_would_break_updates_are_refused(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    """A column list without the key, a row filter on a column outside the replica identity, or a
    column list on a FULL table would make the application's UPDATEs fail: refused in one line, and
    nothing is created."""
    db = db_latest
    db.execute(
        USERS + "CREATE TABLE logs (id int PRIMARY KEY, body text); ALTER TABLE logs REPLICA IDENTITY FULL"
    )
    base = ["--bootstrap-servers", broker.bootstrap_servers, "--state-dir", str(state_dir),
            "--topic-prefix", prefix, "--name", "refused"]  # fmt: skip
    cases = {
        "columns": (["--tables", "public.users", "--columns", "public.users:email,note"], "leaves out id"),
        "filter": (["--tables", "public.users", "--row-filter", "public.users:note = 'n'"], "reads note"),
        "full": (
            ["--tables", "public.logs", "--exclude-columns", "public.logs:body"],
            "REPLICA IDENTITY FULL",
        ),
        "missing": (
            ["--tables", "public.users", "--columns", "public.users:id,nope"],
            "column nope of public.users",
        ),
        "uncaptured": (["--tables", "public.users", "--row-filter", "public.logs:id > 1"], "not captured"),
    }
    for name, (args, expected) in cases.items():
        line = error_line(cdc("start", *base, *args, dsn=db.dsn))
        assert expected in line, (name, line)
        if name in ("columns", "filter"):
            assert "UPDATEs and DELETEs would fail" in line, line
    assert db.scalar("SELECT count(*) FROM pg_publication") == 0
    assert db.scalar("SELECT count(*) FROM pg_replication_slots") == 0
    db.execute("INSERT INTO users VALUES (5000, 'x', 'y', 'z'); UPDATE users SET note = 'ok' WHERE id = 5000")


def test_changing_column_rules_alters_the_publication(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = db_latest
    db.execute(USERS)
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, tables=["public.users"],
        exclude_columns={"public.users": ["secret"]},
    )  # fmt: skip
    with running(settings) as run:
        wait_caught_up(db, run)
    caplog.set_level(logging.INFO, logger="cdc")
    settings.exclude_columns = TableColumns({"public.users": ["secret", "note"]})
    with running(settings) as run:
        db.execute("UPDATE users SET note = 'changed', email = 'e' WHERE id = 1")
        wait_caught_up(db, run)
    listed = db.scalar(
        "SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_publication_rel pr "
        "JOIN pg_publication p ON p.oid = pr.prpubid JOIN pg_attribute a ON a.attrelid = pr.prrelid "
        "AND a.attnum = ANY(pr.prattrs::int2[]) WHERE p.pubname = %s",
        (settings.publication,),
    )
    assert listed == ["id", "email"]
    assert any("column list or row filter of public.users changed" in r.getMessage() for r in caplog.records)
    topic = f"{prefix}.public.users"
    last = values(read_topics(broker.bootstrap_servers, [topic]))[-1]
    assert last["after"] == {"id": 1, "email": "e"}


# -- rows -------------------------------------------------------------------------------------

ORDERS = """
CREATE TABLE orders (id int PRIMARY KEY, region text NOT NULL, v int NOT NULL, note text);
ALTER TABLE orders REPLICA IDENTITY FULL;
INSERT INTO orders SELECT g, CASE WHEN g % 3 = 0 THEN 'eu' ELSE 'us' END, 1, 'n'
  FROM generate_series(1, 3000) g;
"""


def test_a_row_filter_gives_the_same_rows_in_snapshot_and_stream(
    db: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    """``--row-filter``: the snapshot reads the rows the stream would send; rows moving in and out of
    the filter arrive as inserts and deletes, so the topic rebuilds the filtered table exactly."""
    db.execute(ORDERS)
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, snapshot="initial", tables=["public.orders"],
        row_filters={"public.orders": "WHERE region = 'eu'"}, snapshot_chunk_rows=400,
    )  # fmt: skip
    with running(settings) as run:
        db.execute("UPDATE orders SET region = 'us', v = v + 1 WHERE id IN (3, 6, 9)")  # leave
        db.execute("UPDATE orders SET region = 'eu', v = v + 1 WHERE id IN (1, 2, 4)")  # join
        db.execute("UPDATE orders SET v = v + 1 WHERE id IN (12, 13)")  # one in, one out
        db.execute("INSERT INTO orders VALUES (5000, 'eu', 1, 'n'), (5001, 'us', 1, 'n')")
        db.execute("DELETE FROM orders WHERE id IN (15, 16)")
        wait_caught_up(db, run)
    topic = f"{prefix}.public.orders"
    records = read_topics(broker.bootstrap_servers, [topic])
    reads = [v for v in values(records) if v["op"] == "r"]
    assert len(reads) == 1000 and all(v["after"]["region"] == "eu" for v in reads)
    assert {v["op"] for v in values(records) if v["op"] != "r"} == {"c", "u", "d"}
    expected = {k: row for k, row in source_rows(db, "orders", ["id"]).items() if row["region"] == "eu"}
    assert rebuild(records)[topic] == expected


def test_the_snapshot_follows_a_hand_made_publications_row_filter_and_columns(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    """A publication someone else made, with a row filter and a column list: the snapshot reads what
    the stream sends (it used to read every row)."""
    db = db_latest
    db.execute(
        ORDERS + "ALTER TABLE orders REPLICA IDENTITY DEFAULT;"
        "CREATE PUBLICATION theirs FOR TABLE orders (id, region, v) WHERE (id % 3 = 0)"
    )
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, snapshot="initial", publication="theirs",
        tables=["public.orders"],
    )  # fmt: skip
    with running(settings) as run:
        db.execute("UPDATE orders SET v = 2 WHERE id = 1; UPDATE orders SET region = 'us' WHERE id = 3")
        wait_caught_up(db, run)
    topic = f"{prefix}.public.orders"
    records = read_topics(broker.bootstrap_servers, [topic])
    reads = [v for v in values(records) if v["op"] == "r"]
    assert len(reads) == 1000 and all(set(v["after"]) == {"id", "region", "v"} for v in reads)
    expected = {
        k: {c: row[c] for c in ("id", "region", "v")}
        for k, row in source_rows(db, "orders", ["id"]).items()
        if row["id"] % 3 == 0
    }
    assert rebuild(records)[topic] == expected
    # and cdc refuses to set rules on it
    line = error_line(
        cdc(
            "start",
            "--bootstrap-servers",
            broker.bootstrap_servers,
            "--publication",
            "theirs",
            "--state-dir",
            str(state_dir),
            "--name",
            "other",
            "--row-filter",
            "public.orders:id > 1",
            "--tables",
            "public.orders",
            dsn=db.dsn,
        )
    )
    assert "was not made by cdc" in line


def test_a_row_filter_on_the_key_of_a_default_identity_table(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    """Filtering on key columns needs no FULL identity; patterns name the rules' tables too."""
    db = db_latest
    db.execute(
        "CREATE TABLE t1 (id int PRIMARY KEY, v int); CREATE TABLE t2 (id int PRIMARY KEY, v int);"
        "INSERT INTO t1 SELECT g, 1 FROM generate_series(1, 100) g;"
        "INSERT INTO t2 SELECT g, 1 FROM generate_series(1, 100) g"
    )
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, snapshot="initial", tables=["public.t*"],
        row_filters={"public.t*": "id % 10 = 0"},
    )  # fmt: skip
    with running(settings) as run:
        db.execute("UPDATE t1 SET v = 2; INSERT INTO t2 VALUES (200, 1), (201, 1)")
        wait_caught_up(db, run)
    for name in ("t1", "t2"):
        topic = f"{prefix}.public.{name}"
        expected = {k: r for k, r in source_rows(db, name, ["id"]).items() if r["id"] % 10 == 0}
        assert rebuild(read_topics(broker.bootstrap_servers, [topic]))[topic] == expected
