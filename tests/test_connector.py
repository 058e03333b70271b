"""The streaming connector end to end: real Postgres, real broker, topics rebuilt into tables."""

from __future__ import annotations

import random
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient

from tests.fix_servers import BrokerHandle, TestDb
from tests.pipeline import read_topics, rebuild, settings_for, source_rows, wait_caught_up
from tests.support import running, wait_until

SCHEMA = """
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, notes text);
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int, status text, qty int);
ALTER TABLE orders REPLICA IDENTITY FULL;
"""


def big_text() -> str:
    """Incompressible text above the TOAST threshold, so Postgres stores it out of line."""
    return secrets.token_hex(2000)


def workload(db: TestDb) -> None:
    with db.connect() as conn:
        conn.execute("INSERT INTO customers VALUES (1, 'ada', %s), (2, 'grace', 'short'), (3, 'linus', NULL)",
                     (big_text(),))  # fmt: skip
        conn.execute("INSERT INTO orders VALUES (10, 1, 'new', 1), (11, 2, 'new', 2), (12, 3, 'new', 3)")
        # an update that leaves the TOASTed notes alone (identity DEFAULT: placeholder)
        conn.execute("UPDATE customers SET name = 'ada lovelace' WHERE id = 1")
        # a primary key change
        conn.execute("UPDATE customers SET id = 20 WHERE id = 2")
        conn.execute("UPDATE orders SET status = 'paid', qty = qty + 1 WHERE id = 10")
        conn.execute("DELETE FROM orders WHERE id = 11")
        # rolled back: never visible
        with conn.transaction(force_rollback=True):
            conn.execute("INSERT INTO customers VALUES (99, 'rolled back', NULL)")
        # a savepoint rolled back inside a committed transaction
        with conn.transaction():
            conn.execute("INSERT INTO customers VALUES (4, 'kept', NULL)")
            try:
                with conn.transaction():
                    conn.execute("INSERT INTO customers VALUES (98, 'savepoint rolled back', NULL)")
                    raise RuntimeError("roll back the savepoint")
            except RuntimeError:
                pass
            conn.execute("UPDATE customers SET notes = 'after savepoint' WHERE id = 4")
    # two interleaved concurrent transactions
    a, b = db.connect(autocommit=False), db.connect(autocommit=False)
    a.execute("INSERT INTO orders VALUES (30, 1, 'a', 1)")
    b.execute("INSERT INTO orders VALUES (31, 3, 'b', 1)")
    a.execute("UPDATE orders SET qty = 5 WHERE id = 30")
    b.execute("UPDATE orders SET qty = 6 WHERE id = 31")
    b.commit()
    a.commit()
    with db.connect() as conn:
        conn.execute("INSERT INTO orders SELECT g, 1, 'bulk', g FROM generate_series(100, 399) g")
        conn.execute("DELETE FROM orders WHERE id BETWEEN 100 AND 149")
        conn.execute("UPDATE orders SET status = 'shipped' WHERE id BETWEEN 150 AND 199")


PRODUCERS = pytest.mark.parametrize("producer", ["kafka-python", "confluent"])


@pytest.mark.tansu_subset
@PRODUCERS
def test_stream_rebuilds_tables(
    db: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path, producer: str
) -> None:
    db.execute(SCHEMA)
    settings = settings_for(db, broker.bootstrap_servers, prefix, state_dir, producer=producer)
    with running(settings) as run:
        workload(db)
        wait_caught_up(db, run)
    customers_topic, orders_topic = f"{prefix}.public.customers", f"{prefix}.public.orders"
    records = read_topics(broker.bootstrap_servers, [customers_topic, orders_topic])
    values = [r.value for r in records if r.value is not None]
    text = str(values)
    assert "rolled back" not in text, "rolled-back work reached Kafka"
    assert "savepoint rolled back" not in text

    # the update that did not touch the TOASTed column says so with the placeholder
    ada = [v for v in values if v["after"] and v["after"].get("name") == "ada lovelace"]
    assert ada and ada[0]["after"]["notes"] == settings.unavailable_placeholder
    assert ada[0]["before"] is None  # identity DEFAULT and the key did not change: no old tuple

    # the primary key change: one update keyed by the new key, old key in before, tombstone for the old
    moved = [r for r in records if r.value and r.value["op"] == "u" and r.key == {"id": 20}]
    assert moved and moved[0].value["before"]["id"] == 2 and moved[0].value["after"]["id"] == 20
    assert any(r.key == {"id": 2} and r.value is None for r in records)

    # REPLICA IDENTITY FULL: whole before images
    paid = [v for v in values if v["op"] == "u" and v["after"].get("status") == "paid"]
    assert paid[0]["before"] == {"id": 10, "customer_id": 1, "status": "new", "qty": 1}

    # deletes carry the old row and are followed by a tombstone on the same key
    deletes = [r for r in records if r.value and r.value["op"] == "d"]
    assert len(deletes) == 51
    for d in deletes:
        following = [
            r for r in records if r.topic == d.topic and r.partition == d.partition and r.offset > d.offset
        ]
        assert following[0].key == d.key and following[0].value is None

    # per key, positions increase in topic order (commit order)
    last: dict[Any, tuple[int, int]] = {}
    for r in records:
        if r.value is None:
            continue
        key = (r.topic, str(r.key))
        position = (int(r.value["source"]["commit_lsn"]), r.value["transaction"]["total_order"])
        assert position > last.get(key, (0, 0)), f"out of order for {key}"
        last[key] = position

    # rebuilding the topics gives the source tables back
    rebuilt = rebuild(records, settings.unavailable_placeholder)
    assert rebuilt[orders_topic] == source_rows(db, "orders", ["id"])
    assert rebuilt[customers_topic] == source_rows(db, "customers", ["id"])


def test_truncate_and_envelope(db: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path) -> None:
    db.execute(SCHEMA)
    settings = settings_for(db, broker.bootstrap_servers, prefix, state_dir, tables=["public.orders"])
    with running(settings) as run:
        db.execute("INSERT INTO orders VALUES (1, 1, 'x', 1)")
        db.execute("INSERT INTO customers VALUES (1, 'not published', NULL)")
        db.execute("TRUNCATE orders")
        db.execute("SELECT pg_logical_emit_message(true, 'outbox', 'hello')")
        wait_caught_up(db, run)
    records = read_topics(broker.bootstrap_servers, [f"{prefix}.public.orders", f"{prefix}.messages"])
    records.sort(key=lambda r: int(r.value["source"]["lsn"]))
    ops = [(r.topic.rsplit(".", 1)[-1], r.value["op"]) for r in records]
    assert ops == [("orders", "c"), ("orders", "t"), ("messages", "m")]
    insert = records[0].value
    assert insert["source"]["connector"] == "cdc"
    assert insert["source"]["db"] == db.name
    assert (insert["source"]["schema"], insert["source"]["table"]) == ("public", "orders")
    assert insert["source"]["snapshot"] == "false"
    assert insert["source"]["ts_us"] // 1000 == insert["source"]["ts_ms"]
    assert insert["ts_ns"] // 1_000_000 == insert["ts_ms"]
    assert insert["transaction"]["total_order"] == 1
    assert insert["transaction"]["id"] == f"{insert['source']['txId']}:{insert['source']['commit_lsn']}"
    assert records[1].key is None and records[1].value["after"] is None
    message = records[2].value
    assert message["message"] == {"prefix": "outbox", "content": "aGVsbG8="}
    assert records[2].key == {"prefix": "outbox"}


def test_skip_ops_leaves_truncates_and_updates_out(
    db: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    """--skip-ops t,u: no truncate and no update events (and a skipped delete has no tombstone)."""
    db.execute(SCHEMA)
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, tables=["public.customers"], skip_ops=["t", "u", "d"]
    )
    with running(settings) as run:
        db.execute("INSERT INTO customers VALUES (1, 'a', NULL), (2, 'b', NULL)")
        db.execute("UPDATE customers SET name = 'c' WHERE id = 1")
        db.execute("UPDATE customers SET id = 3 WHERE id = 2")  # a key change is an update too
        db.execute("DELETE FROM customers WHERE id = 1")
        db.execute("TRUNCATE customers")
        db.execute("INSERT INTO customers VALUES (5, 'e', NULL)")
        wait_caught_up(db, run)
    records = read_topics(broker.bootstrap_servers, [f"{prefix}.public.customers"])
    assert [(r.key, r.value["op"]) for r in records] == [({"id": 1}, "c"), ({"id": 2}, "c"), ({"id": 5}, "c")]
    assert [r.value["transaction"]["total_order"] for r in records] == [1, 2, 1]


@pytest.mark.tansu_subset
@PRODUCERS
def test_restart_repeats_nothing(
    db: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path, producer: str
) -> None:
    db.execute(SCHEMA)
    settings = settings_for(db, broker.bootstrap_servers, prefix, state_dir, producer=producer)
    for batch in range(3):
        with running(settings) as run:
            with db.connect() as conn:
                for i in range(20):
                    conn.execute("INSERT INTO orders VALUES (%s, 1, 'x', %s)", (batch * 100 + i, batch))
            wait_caught_up(db, run)
        db.execute("INSERT INTO orders VALUES (%s, 2, 'while stopped', 0)", (batch * 100 + 50,))
    with running(settings) as run:
        wait_caught_up(db, run)
    records = read_topics(broker.bootstrap_servers, [f"{prefix}.public.orders"])
    keys = [r.key["id"] for r in records]
    assert len(keys) == len(set(keys)) == 63, "a graceful restart repeated or lost events"
    slot = db.scalar("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                     (settings.slot,))  # fmt: skip
    assert slot is not None


def test_stop_finishes_the_open_transaction(
    db: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    db.execute(SCHEMA)
    settings = settings_for(db, broker.bootstrap_servers, prefix, state_dir)
    with running(settings) as run:
        stopper = threading.Timer(0.3, run.connector.stop.set)
        stopper.start()
        db.execute("INSERT INTO orders SELECT g, 1, 'big', g FROM generate_series(1, 20000) g")
        stopper.join()
    with running(settings) as run:
        wait_caught_up(db, run)
    records = read_topics(broker.bootstrap_servers, [f"{prefix}.public.orders"])
    assert len(records) == 20000 and len({r.key["id"] for r in records}) == 20000


def test_bad_password_is_one_line(db: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path) -> None:
    settings = settings_for(db, broker.bootstrap_servers, prefix, state_dir)
    settings.dsn = db.dsn.replace(f"password={db.server.password}", "password=wrong-secret-123")
    try:
        with running(settings):
            pass
    except Exception as exc:
        message = str(exc)
    else:
        raise AssertionError("a wrong password must stop the connector")
    assert "password authentication failed" in message
    assert "wrong-secret-123" not in message and "\n" not in message


@PRODUCERS
def test_an_acknowledgement_counts_when_it_comes_not_at_the_next_tick(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path, producer: str
) -> None:
    """Between transactions the loop waits for WAL; an acknowledgement that came meanwhile was taken
    at the next status tick, so commit-to-ack (and the last-ack time, which `make bench` times) was
    late by up to --status-interval. Each of three single-row transactions, at random moments
    between 5 s ticks, must be acknowledged well within a second of its commit (the newest Postgres:
    the loop is the same on each)."""
    db = db_latest
    db.execute("CREATE TABLE beats (id int PRIMARY KEY)")
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, producer=producer, status_interval=5
    )
    with running(settings) as run:
        with db.connect() as conn:
            for i in range(3):
                time.sleep(random.uniform(0.3, 2.0))
                conn.execute("INSERT INTO beats VALUES (%s)", (i,))
        wait_caught_up(db, run, timeout=60)
        samples = list(run.connector.status.latencies)
    assert len(samples) == 3, samples
    assert max(samples) < 1000, f"commit-to-ack (ms) {samples}: acknowledgements waited for a tick"


def test_idle_publication_does_not_pin_wal(
    db: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    db.execute(SCHEMA + "CREATE TABLE noise (id serial PRIMARY KEY, payload text);")
    settings = settings_for(db, broker.bootstrap_servers, prefix, state_dir, tables=["public.orders"])
    with running(settings) as run:
        with db.connect() as conn:
            for _ in range(30):
                conn.execute(
                    "INSERT INTO noise (payload) SELECT repeat('x', 1000) FROM generate_series(1, 500)"
                )
            written = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
            # a checkpoint logs the running-transactions record that lets the slot move restart_lsn
            conn.execute("CHECKPOINT")
        wait_caught_up(db, run)

        def retained() -> int:
            with db.connect() as conn:
                conn.execute("CHECKPOINT")
                row = conn.execute(
                    "SELECT pg_current_wal_lsn() - restart_lsn FROM pg_replication_slots"
                    " WHERE slot_name = %s",
                    (settings.slot,),
                ).fetchone()
            return int(row[0]) if row else -1

        # about 16 MB of noise was written; the slot must not hold it back
        wait_until(lambda: 0 <= retained() < 2 * 1024 * 1024, timeout=30, message="the slot to release WAL")
        assert written is not None


def test_schema_change_and_topic_settings(
    db: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    db.execute("CREATE TABLE items (id int PRIMARY KEY, label text)")
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir,
        topic_partitions=3, topic_configs={"retention.ms": "3600000"}, messages=False,
    )  # fmt: skip
    with running(settings) as run:
        db.execute("INSERT INTO items SELECT g, 'v1' FROM generate_series(1, 30) g")
        db.execute("ALTER TABLE items ADD COLUMN price int DEFAULT 7")
        db.execute("UPDATE items SET label = 'v2' WHERE id <= 30")
        db.execute("ALTER TABLE items DROP COLUMN label")
        db.execute("INSERT INTO items VALUES (31, 8)")
        db.execute("SELECT pg_logical_emit_message(true, 'ignored', 'x')")
        wait_caught_up(db, run)
    topic = f"{prefix}.public.items"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    try:
        described = admin.describe_topics([topic])
    finally:
        admin.close()
    assert len(described[0]["partitions"]) == 3
    records = read_topics(broker.bootstrap_servers, [topic])
    assert {r.partition for r in records} != {0}, "keys should spread over the partitions"
    partition_of: dict[int, int] = {}
    for r in records:  # every change of one row stays in one partition
        assert partition_of.setdefault(r.key["id"], r.partition) == r.partition
    shapes = {tuple(r.value["after"]) for r in records if r.value}
    assert shapes == {("id", "label"), ("id", "label", "price"), ("id", "price")}
    updated = [r.value["after"] for r in records if r.value and r.value["op"] == "u"]
    assert len(updated) == 30 and all(a["price"] == 7 and a["label"] == "v2" for a in updated)
    assert records and all(not r.topic.endswith(".messages") for r in records)
