"""Failover slots (PostgreSQL 17+), and offsets.json ahead of the slot on another timeline."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

from cdc.lsn import format_lsn, parse_lsn
from tests.fix_servers import BrokerHandle, TestDb
from tests.pipeline import read_topics, settings_for, wait_caught_up
from tests.support import cdc, error_line, running


def failover_of(db: TestDb, slot: str) -> bool:
    return bool(db.scalar("SELECT failover FROM pg_replication_slots WHERE slot_name = %s", (slot,)))


def test_failover_slot_is_created_on_17_and_refused_before(
    db: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    db.execute("CREATE TABLE items (id int PRIMARY KEY)")
    if db.major < 17:
        proc = cdc(
            "start", "--bootstrap-servers", broker.bootstrap_servers, "--failover-slot",
            "--state-dir", str(state_dir), "--topic-prefix", prefix, dsn=db.dsn,
        )  # fmt: skip
        assert "--failover-slot needs PostgreSQL 17 or newer" in error_line(proc)
        assert db.scalar("SELECT count(*) FROM pg_replication_slots") == 0  # refused before anything
        assert db.scalar("SELECT count(*) FROM pg_publication") == 0
        return
    settings = settings_for(db, broker.bootstrap_servers, prefix, state_dir, failover_slot=True)
    with running(settings) as run:
        db.execute("INSERT INTO items VALUES (1)")
        wait_caught_up(db, run)
    assert failover_of(db, settings.slot)
    # an existing slot made without it becomes one
    plain = settings_for(db, broker.bootstrap_servers, prefix, state_dir)
    with running(plain):
        pass
    assert not failover_of(db, plain.slot)
    plain.failover_slot = True
    with running(plain):
        pass
    assert failover_of(db, plain.slot)


def tamper(offsets: Path, lsn: int, timeline: int) -> None:
    data = orjson.loads(offsets.read_bytes())
    data.update(lsn=format_lsn(lsn), timeline=timeline)
    offsets.write_bytes(orjson.dumps(data))


def test_offsets_ahead_of_the_slot_on_another_timeline(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = db_latest
    db.execute("CREATE TABLE items (id int PRIMARY KEY)")
    settings = settings_for(db, broker.bootstrap_servers, prefix, state_dir)
    with running(settings) as run:
        db.execute("INSERT INTO items VALUES (1)")
        wait_caught_up(db, run)
    offsets = state_dir / settings.name / "offsets.json"
    saved = orjson.loads(offsets.read_bytes())
    assert saved["timeline"] == 1
    # as after a promotion of a standby whose slot lagged: the file is ahead, on another timeline
    ahead = parse_lsn(db.scalar("SELECT pg_current_wal_lsn()::text")) + 64 * 1024 * 1024
    tamper(offsets, ahead, 2)
    refused = cdc(
        "start", "--bootstrap-servers", broker.bootstrap_servers, "--name", settings.name,
        "--state-dir", str(state_dir), "--topic-prefix", prefix, "--on-offset-mismatch", "fail", dsn=db.dsn,
    )  # fmt: skip
    line = error_line(refused)
    assert f"offsets.json is at {format_lsn(ahead)}, ahead of slot" in line and "timeline 2 there" in line
    assert "--on-offset-mismatch trust-slot" in line
    # trust-slot (the default): resumes from the slot, so a change made now is not skipped
    db.execute("INSERT INTO items VALUES (2)")
    with caplog.at_level(logging.WARNING, logger="cdc.slots"), running(settings) as run:
        wait_caught_up(db, run)
    assert any("trusting the slot" in r.getMessage() for r in caplog.records)
    topic = f"{prefix}.public.items"
    keys = [r.key["id"] for r in read_topics(broker.bootstrap_servers, [topic]) if r.value]
    assert keys.count(2) == 1
    assert parse_lsn(orjson.loads(offsets.read_bytes())["lsn"]) < ahead  # the file follows the slot again
