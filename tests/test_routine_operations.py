"""What a running database does routinely must not stop the connector, or must say in one line
what to do: a long transaction holding back a new slot, every walsender taken."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest

from cdc.devservers import PostgresServer
from cdc.replication import ReplicationConnection
from tests.fix_servers import BrokerHandle, TestDb, new_db
from tests.pipeline import read_topics, rebuild, settings_for, source_rows, wait_caught_up
from tests.support import cdc, error_line, running, wait_until


def test_a_long_transaction_holding_the_new_slot_back_is_named(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """CREATE_REPLICATION_SLOT waits for every transaction running when it began: the connector says
    which one (pid, age, query) instead of hanging silently, then starts once it ends."""
    db = db_latest
    db.execute("CREATE TABLE items (id int PRIMARY KEY)")
    settings = settings_for(db, broker.bootstrap_servers, prefix, state_dir, tables=["public.items"])
    with db.connect(autocommit=False) as long_one:
        long_one.execute("INSERT INTO items VALUES (1)")  # holds an xid: the slot must wait for it
        pid = long_one.info.backend_pid
        with caplog.at_level(logging.INFO, logger="cdc"), running(settings, wait_streaming=False) as run:
            wait_until(
                lambda: any(f"pid {pid}" in r.getMessage() for r in caplog.records) or run.errors,
                timeout=30,
                message="a log line naming the transaction the slot waits for",
            )
            assert run.connector.status.state != "running"
            long_one.commit()
            wait_until(
                lambda: run.connector.status.state == "running" or run.errors, timeout=30, message="streaming"
            )
            assert not run.errors
            db.execute("INSERT INTO items VALUES (2)")
            wait_caught_up(db, run)
    line = next(r.getMessage() for r in caplog.records if f"pid {pid}" in r.getMessage())
    assert "INSERT INTO items" in line and "pg_terminate_backend" in line
    ids = {r.key["id"] for r in read_topics(broker.bootstrap_servers, [f"{prefix}.public.items"])}
    assert ids == {2}  # the row committed before the consistent point belongs to the (skipped) snapshot


def test_every_walsender_taken_is_one_line_then_works(
    make_server: Callable[[dict[str, str]], PostgresServer], broker: BrokerHandle, prefix: str, tmp_path: Path
) -> None:
    server = make_server({"max_wal_senders": "2"})
    db = new_db(server)
    db.execute("CREATE TABLE items (id int PRIMARY KEY)")
    name = "w" + secrets.token_hex(3)
    args = [
        "start", "--bootstrap-servers", broker.bootstrap_servers, "--name", name, "--topic-prefix", prefix,
        "--state-dir", str(tmp_path), "--format", "json", "--snapshot", "never", "--tables", "public.items",
    ]  # fmt: skip
    taken = [ReplicationConnection(db.dsn, "hog") for _ in range(2)]
    try:
        line = error_line(cdc(*args, env={"CDC_DSN": db.dsn}))
        assert "max_wal_senders" in line and "stop another replication client" in line, line
        slots = db.scalar("SELECT count(*) FROM pg_replication_slots")
        publications = db.scalar("SELECT count(*) FROM pg_publication")
        assert (slots, publications) == (0, 0)  # refused before anything was made
    finally:
        for conn in taken:
            conn.close()
    started = cdc(*args, "--detach", env={"CDC_DSN": db.dsn})
    assert started.returncode == 0, started.stderr
    assert cdc("stop", "--name", name, "--state-dir", str(tmp_path)).returncode == 0


@pytest.mark.parametrize("how", ["dropped and created again", "dropped from the publication by hand"])
def test_a_listed_table_that_leaves_the_publication_comes_back_exact(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path, how: str
) -> None:
    """A table of --tables dropped and created again (a migration) is no longer in the publication
    cdc made; one dropped from it by hand neither. The connector puts it back, a truncate event
    clears what the topic held, and the table is read again: the topic rebuilds it exactly."""
    db = db_latest
    db.execute("CREATE TABLE items (id int PRIMARY KEY, label text); CREATE TABLE other (id int PRIMARY KEY)")
    db.execute("INSERT INTO items SELECT g, 'old' FROM generate_series(1, 50) g")
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, tables=["public.items", "public.other"],
        snapshot="initial", table_check_interval=0.5,
    )  # fmt: skip
    with running(settings) as run:
        db.execute("UPDATE items SET label = 'streamed' WHERE id <= 5")
        wait_caught_up(db, run)
        if how == "dropped and created again":
            db.execute(
                "DROP TABLE items; CREATE TABLE items (id int PRIMARY KEY, label text);"
                "INSERT INTO items SELECT g, 'new' FROM generate_series(40, 80) g"
            )
        else:
            db.execute(f"ALTER PUBLICATION {settings.publication} DROP TABLE items")
            db.execute("DELETE FROM items WHERE id > 45; UPDATE items SET label = 'unseen' WHERE id <= 3")
        status = run.connector.status
        wait_until(
            lambda: any(t.get("table") == "public.items" for t in status.snapshot.get("incremental", [])),
            timeout=30,
            message="the table to be read again",
        )
        wait_until(lambda: status.snapshot.get("incremental") == [], timeout=60, message="the read to end")
        db.execute("INSERT INTO items VALUES (1000, 'after')")
        wait_caught_up(db, run)
    published = db.scalar(
        "SELECT count(*) FROM pg_publication_tables WHERE pubname = %s AND tablename = 'items'",
        (settings.publication,),
    )
    assert published == 1
    topic = f"{prefix}.public.items"
    records = read_topics(broker.bootstrap_servers, [topic])
    assert rebuild(records)[topic] == source_rows(db, "public.items", ["id"])
    assert [r.value["op"] for r in records if r.value and r.value["op"] == "t"] == ["t"]


def test_a_start_waits_for_a_slot_a_stopping_walsender_still_holds(db_latest: TestDb) -> None:
    """A walsender lets go of its slot only when it exits, a moment after its client closed: a
    start right after a stop waits for that (`await_release`) instead of refusing the slot as
    another connector's; a slot still held when the wait ends comes back held, for
    `validate_slot` to refuse. (CI saw the refusal once, in a restart loop of test_connector.)"""
    import threading

    from cdc.pg import connect
    from cdc.replication import await_release, find_slot

    name = "leaving_" + secrets.token_hex(3)
    db_latest.execute(f"CREATE PUBLICATION {name}")
    holder = ReplicationConnection(db_latest.dsn, "leaving")
    try:
        holder.create_slot(name)
        holder.start(name, name)
        with connect(db_latest.dsn) as conn:
            slot = find_slot(conn, name)
            assert slot is not None and slot.active
            held = await_release(conn, slot, timeout=0.3)
            assert held is not None and held.active and held.active_pid == slot.active_pid
            closing = threading.Timer(0.5, holder.close)
            closing.start()
            released = await_release(conn, slot, timeout=30)
            closing.join()
            assert released is not None and not released.active and released.name == name
    finally:
        holder.close()
        db_latest.execute(f"SELECT pg_drop_replication_slot('{name}')")
        db_latest.execute(f"DROP PUBLICATION {name}")
