"""A slot invalidated for real (small max_slot_wal_keep_size, WAL written and checkpoints run while
the connector is stopped): `fail` ends with one line, `recreate` re-reads the tables and they end exact."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cdc import metrics
from cdc.config import Settings
from cdc.devservers import PostgresServer, free_port
from tests.fix_servers import BrokerHandle, TestDb, new_db
from tests.operations import scrape, value
from tests.pipeline import read_topics, rebuild, settings_for, source_rows, wait_caught_up
from tests.support import cdc, error_line, running, wait_until

LOSING = {"max_slot_wal_keep_size": "1MB", "wal_keep_size": "0"}
Servers = Callable[[dict[str, str]], PostgresServer]


def wal_status(db: TestDb, slot: str) -> str | None:
    value: str | None = db.scalar("SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    return value


def lose_the_slot(db: TestDb, slot: str) -> None:
    """Write WAL and checkpoint until the server invalidates the (inactive) slot."""
    with db.connect() as conn:
        for _ in range(30):
            if wal_status(db, slot) == "lost":
                return
            conn.execute("INSERT INTO filler SELECT g, repeat('x', 500) FROM generate_series(1, 2000) g")
            conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
            conn.execute("TRUNCATE filler")
    raise AssertionError(f"slot {slot} was not invalidated after 30 rounds of WAL and checkpoints")


def changes_while_stopped(db: TestDb) -> None:
    with db.connect() as conn:
        conn.execute("INSERT INTO items SELECT g, 'gap' FROM generate_series(1001, 1050) g")
        conn.execute("UPDATE items SET label = 'changed in the gap' WHERE id <= 20")
        conn.execute("DELETE FROM items WHERE id BETWEEN 21 AND 40")


def prepare(
    make_server: Servers, broker: BrokerHandle, prefix: str, state_dir: Path
) -> tuple[TestDb, Settings]:
    db = new_db(make_server(LOSING))
    db.execute("CREATE TABLE items (id int PRIMARY KEY, label text)")
    db.execute("CREATE TABLE filler (id int, pad text)")
    db.execute("INSERT INTO items SELECT g, 'first' FROM generate_series(1, 200) g")
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, tables=["public.items"], snapshot="initial"
    )
    with running(settings) as run:
        db.execute("UPDATE items SET label = 'streamed' WHERE id > 190")
        wait_caught_up(db, run)
    changes_while_stopped(db)
    lose_the_slot(db, settings.slot)
    return db, settings


def test_a_lost_slot_fails_with_one_line(
    make_server: Servers, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    db, settings = prepare(make_server, broker, prefix, state_dir)
    proc = cdc(
        "start", "--bootstrap-servers", broker.bootstrap_servers, "--name", settings.name,
        "--state-dir", str(state_dir), "--topic-prefix", prefix, "--tables", "public.items",
        "--format", "json", dsn=db.dsn,
    )  # fmt: skip
    line = error_line(proc)
    assert f"replication slot '{settings.slot}' is lost" in line
    assert "max_slot_wal_keep_size = 1MB" in line
    assert "--on-slot-lost recreate" in line
    assert db.server.password not in proc.stderr
    # nothing was dropped: the operator decides
    assert wal_status(db, settings.slot) == "lost"


def test_recreate_reads_the_tables_again_and_they_end_exact(
    make_server: Servers, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    db, settings = prepare(make_server, broker, prefix, state_dir)
    settings.on_slot_lost = "recreate"
    settings.metrics_port = free_port()
    with running(settings) as run, metrics.serve(settings, run.connector.status):
        # changes while the tables are read again: a streamed change wins over the older read
        db.execute("UPDATE items SET label = 'after the gap' WHERE id BETWEEN 1 AND 5")
        db.execute("DELETE FROM items WHERE id BETWEEN 41 AND 45")
        db.execute("INSERT INTO items VALUES (2000, 'new')")
        status = run.connector.status
        wait_until(
            lambda: status.slot_recreations == 1 and status.snapshot.get("incremental") == [],
            timeout=60,
            message="the tables to be read again",
        )
        wait_caught_up(db, run)
        samples = scrape(settings.metrics_port)
        assert value(samples, "cdc_slot_recreations_total") == 1
        assert value(samples, "cdc_slot_wal_status", cdc_slot_wal_status="reserved") == 1
    topic = f"{prefix}.public.items"
    records = read_topics(broker.bootstrap_servers, [topic])
    markers = [r for r in records if r.value and r.value["op"] == "t"]
    assert len(markers) == 1 and markers[0].value["source"]["snapshot"] == "incremental"
    assert rebuild(records)[topic] == source_rows(db, "items", ["id"])
    assert wal_status(db, settings.slot) in ("reserved", "extended")
    assert not (state_dir / settings.name / "slot_lost.json").exists()


def test_a_slot_lost_while_streaming_is_replaced(
    make_server: Servers, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    """A long transaction holds the slot's restart_lsn while WAL piles up: the server invalidates the
    slot under the running connector, which notices, replaces it and reads the tables again."""
    db = new_db(make_server(LOSING))
    db.execute("CREATE TABLE items (id int PRIMARY KEY, label text)")
    db.execute("CREATE TABLE filler (id int, pad text)")
    db.execute("INSERT INTO items SELECT g, 'first' FROM generate_series(1, 100) g")
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir,
        tables=["public.items"], snapshot="initial", on_slot_lost="recreate", reconnect_max_seconds=1.0,
    )  # fmt: skip
    with running(settings) as run:
        long = db.connect(autocommit=False)
        long.execute("INSERT INTO items VALUES (500, 'in a long transaction')")
        lose_the_slot(db, settings.slot)
        long.commit()
        long.close()
        db.execute("UPDATE items SET label = 'later' WHERE id <= 10")
        status = run.connector.status
        wait_until(
            lambda: status.slot_recreations == 1 and status.snapshot.get("incremental") == [],
            timeout=90,
            message="the slot to be replaced and the tables read again",
        )
        wait_caught_up(db, run)
        assert status.reconnects["postgres"] + status.reconnects["slot_lost"] >= 1
    topic = f"{prefix}.public.items"
    assert rebuild(read_topics(broker.bootstrap_servers, [topic]))[topic] == source_rows(db, "items", ["id"])
