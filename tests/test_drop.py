"""`cdc drop` leaves no slot, publication or state; it refuses while another process holds the slot."""

from __future__ import annotations

from pathlib import Path

from cdc import replication
from tests.fix_servers import BrokerHandle, TestDb
from tests.operations import slot_row
from tests.support import cdc, error_line, wait_until


def start_args(broker: BrokerHandle, prefix: str, state_dir: Path, name: str) -> list[str]:
    """The connector's arguments; its DSN goes through the environment (`cdc(..., dsn=)`)."""
    return [
        "--bootstrap-servers", broker.bootstrap_servers, "--topic-prefix", prefix,
        "--name", name, "--state-dir", str(state_dir), "--format", "json",
    ]  # fmt: skip


def test_drop_stops_the_connector_and_leaves_nothing(
    db: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    db.execute("CREATE TABLE items (id int PRIMARY KEY)")
    args = start_args(broker, prefix, state_dir, "dropme")
    started = cdc("start", *args, "--tables", "public.items", "--detach", dsn=db.dsn)
    assert started.returncode == 0, started.stderr
    assert (state_dir / "dropme").is_dir() and slot_row(db, "cdc_dropme") is not None
    # without a terminal, it asks for --yes and touches nothing
    assert "--yes" in error_line(cdc("drop", *args, dsn=db.dsn))
    assert slot_row(db, "cdc_dropme") is not None
    dropped = cdc("drop", *args, "--yes", dsn=db.dsn)
    assert dropped.returncode == 0, dropped.stderr
    assert "stopped connector dropme" in dropped.stdout
    assert "dropped replication slot cdc_dropme" in dropped.stdout
    assert "dropped publication cdc_dropme" in dropped.stdout
    assert slot_row(db, "cdc_dropme") is None
    assert db.scalar("SELECT count(*) FROM pg_publication WHERE pubname = 'cdc_dropme'") == 0
    assert not (state_dir / "dropme").exists()
    assert db.server.password not in dropped.stdout + dropped.stderr
    # nothing left: a second drop says so and succeeds
    again = cdc("drop", *args, "--yes", dsn=db.dsn)
    assert again.returncode == 0 and "no replication slot cdc_dropme" in again.stdout


def test_drop_keeps_a_publication_it_did_not_create_or_was_told_to_keep(
    db: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    db.execute("CREATE TABLE items (id int PRIMARY KEY)")
    db.execute("CREATE PUBLICATION theirs FOR TABLE items")
    args = start_args(broker, prefix, state_dir, "keep")
    assert cdc("start", *args, "--publication", "theirs", "--detach", dsn=db.dsn).returncode == 0
    dropped = cdc("drop", *args, "--publication", "theirs", "--yes", dsn=db.dsn)
    assert "kept publication theirs: cdc did not create it" in dropped.stdout, dropped.stdout + dropped.stderr
    assert db.scalar("SELECT count(*) FROM pg_publication WHERE pubname = 'theirs'") == 1
    assert cdc("start", *args, "--detach", dsn=db.dsn).returncode == 0
    kept = cdc("drop", *args, "--yes", "--keep-publication", dsn=db.dsn)
    assert "kept publication cdc_keep (--keep-publication)" in kept.stdout, kept.stdout + kept.stderr
    assert db.scalar("SELECT count(*) FROM pg_publication WHERE pubname = 'cdc_keep'") == 1
    assert slot_row(db, "cdc_keep") is None


def test_drop_refuses_while_another_process_reads_the_slot(
    db: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    db.execute("CREATE TABLE items (id int PRIMARY KEY)")
    db.execute("CREATE PUBLICATION cdc_busy FOR TABLE items")
    db.execute("SELECT pg_create_logical_replication_slot('cdc_busy', 'pgoutput')")
    with replication.ReplicationConnection(db.dsn) as reader:
        reader.start("cdc_busy", "cdc_busy")
        wait_until(lambda: (row := slot_row(db, "cdc_busy")) and row["active"], message="the reader")
        refused = cdc("drop", *start_args(broker, prefix, state_dir, "busy"), "--yes", dsn=db.dsn)
        line = error_line(refused)
        assert "slot 'cdc_busy' is in use by process" in line and "stop that reader first" in line
        assert slot_row(db, "cdc_busy") is not None
        assert db.scalar("SELECT count(*) FROM pg_publication WHERE pubname = 'cdc_busy'") == 1
