"""Incremental snapshots while streaming: DBLog watermarks, `cdc snapshot`, tables added later."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient

from cdc import control
from cdc.snapshot.incremental import PgSnapshot
from tests.fix_servers import BrokerHandle, TestDb
from tests.pipeline import read_topics, rebuild, settings_for, source_rows, wait_caught_up
from tests.snapshotting import Writers, version_problems
from tests.support import Running, cdc, error_line, running, wait_until


def incremental_done(run: Running) -> bool:
    if run.errors:
        raise run.errors[0]
    return run.connector.status.snapshot.get("incremental") == []


def test_incremental_snapshot_under_concurrent_updates(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    db = db_latest
    db.execute(
        "CREATE TABLE hot (id int PRIMARY KEY, v int NOT NULL, note text);"
        "INSERT INTO hot SELECT g, 1, md5(g::text) FROM generate_series(1, 12000) g"
    )
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, snapshot="never", tables=["public.hot"],
        snapshot_chunk_rows=1000,
    )  # fmt: skip
    # half of the updates hit the first 1000 keys, over and over
    writers = Writers(db, ["hot"], first_new_id=1_000_000, hot=1000, pause=0.0005)
    with (
        control.InstanceLock(settings.instance_dir, settings.name),
        running(settings) as run,
        writers,
    ):
        wait_until(lambda: writers.ops > 200, timeout=30, message="updates before the snapshot")
        proc = cdc("snapshot", "public.hot", "--name", settings.name, "--state-dir", str(state_dir))
        assert proc.returncode == 0, proc.stderr
        assert f"{settings.name} snapshots public.hot while streaming" in proc.stdout
        wait_until(lambda: incremental_done(run), timeout=120, message="the incremental snapshot")
        before = writers.ops
        wait_until(lambda: writers.ops > before + 200, timeout=30, message="updates after the snapshot")
        writers.finish()
        wait_caught_up(db, run)

    topic = f"{prefix}.public.hot"
    records = read_topics(broker.bootstrap_servers, [topic])
    # a streamed change always wins over the older read: no read goes back in time, none is lost
    assert version_problems(records, strict_snapshot=False) == []
    assert rebuild(records)[topic] == source_rows(db, "hot", ["id"])
    reads = [r.value for r in records if r.value is not None and r.value["op"] == "r"]
    assert len(reads) > 10000 and {v["source"]["snapshot"] for v in reads} == {"incremental"}


def test_streamed_change_wins_over_the_chunk_read(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    """An update committed after the chunk's snapshot but before the high watermark replaces the read."""
    db = db_latest
    db.execute(
        "CREATE TABLE hot (id int PRIMARY KEY, v int NOT NULL, note text);"
        "INSERT INTO hot SELECT g, 1, 'x' FROM generate_series(1, 3000) g"
    )
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, snapshot="never", tables=["public.hot"],
        snapshot_chunk_rows=2000,
    )  # fmt: skip
    with control.InstanceLock(settings.instance_dir, settings.name), running(settings) as run:
        # the chunk's COPY takes its snapshot, then waits for this lock; the update commits in between
        blocker = db.connect(autocommit=False)
        blocker.execute("LOCK TABLE hot IN ACCESS EXCLUSIVE MODE")
        blocker.execute("UPDATE hot SET v = v + 1 WHERE id <= 50")
        assert cdc("snapshot", "public.hot", *args_of(settings)).returncode == 0

        def copy_waits() -> bool:
            return bool(
                db.scalar(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE application_name = %s AND wait_event_type = 'Lock'",
                    (f"cdc-{settings.name}-incremental",),
                )
            )

        wait_until(copy_waits, timeout=30, message="the chunk read to wait for the lock")
        blocker.commit()
        wait_until(lambda: incremental_done(run), timeout=60, message="the incremental snapshot")
        wait_caught_up(db, run)
        dropped = run.connector.status.snapshot["incremental_dropped"]

    topic = f"{prefix}.public.hot"
    records = read_topics(broker.bootstrap_servers, [topic])
    assert dropped == 50  # the reads of the 50 updated rows were older than their update
    assert version_problems(records, strict_snapshot=False) == []
    assert rebuild(records)[topic] == source_rows(db, "hot", ["id"])
    reads = [r for r in records if r.value is not None and r.value["op"] == "r"]
    assert sorted(r.key["id"] for r in reads) == list(range(51, 3001))
    # the watermarks are the connector's own: they never reach the messages topic
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    try:
        assert f"{prefix}.messages" not in admin.list_topics()
    finally:
        admin.close()


def args_of(settings: Any) -> list[str]:
    return ["--name", settings.name, "--state-dir", str(settings.state_dir)]


def test_table_added_to_the_list_is_snapshotted(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = db_latest
    db.execute(
        "CREATE TABLE a (id int PRIMARY KEY, v int NOT NULL, note text);"
        "CREATE TABLE b (id int PRIMARY KEY, v int NOT NULL, note text);"
        "CREATE TABLE c (id int PRIMARY KEY);"
        "INSERT INTO a SELECT g, 1, 'a' FROM generate_series(1, 300) g;"
        "INSERT INTO b SELECT g, 1, 'b' FROM generate_series(1, 2500) g;"
    )
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, snapshot="initial", tables=["public.a"],
        snapshot_chunk_rows=400,
    )  # fmt: skip
    args: list[Any] = ["--name", settings.name, "--state-dir", str(state_dir)]
    with running(settings) as run:
        db.execute("UPDATE a SET v = v + 1 WHERE id = 1")  # the last write is a streamed one
        wait_caught_up(db, run)
    line = error_line(cdc("snapshot", "public.a", *args))
    assert f"no connector named {settings.name!r} is running" in line

    db.execute("UPDATE b SET v = v + 1 WHERE id <= 100")  # not captured yet: never streamed
    settings.tables = ["public.a", "public.b"]
    caplog.set_level(logging.INFO, logger="cdc")
    with control.InstanceLock(settings.instance_dir, settings.name), running(settings) as run:
        wait_until(lambda: incremental_done(run), timeout=60, message="the snapshot of the added table")
        line = error_line(cdc("snapshot", "public.c", *args))
        assert "table public.c is not captured" in line and "add it to --tables" in line
        db.execute("UPDATE b SET v = v + 1 WHERE id <= 5; DELETE FROM b WHERE id = 2500")
        wait_caught_up(db, run)
    assert "table public.b was added to --tables" in caplog.text
    assert "added public.b to publication" in caplog.text

    records = read_topics(broker.bootstrap_servers, [f"{prefix}.public.a", f"{prefix}.public.b"])
    rebuilt = rebuild(records)
    assert rebuilt[f"{prefix}.public.b"] == source_rows(db, "b", ["id"])
    assert rebuilt[f"{prefix}.public.a"] == source_rows(db, "a", ["id"])
    assert version_problems(records, strict_snapshot=False) == []
    b_reads = [r for r in records if r.topic.endswith(".b") and r.value and r.value["op"] == "r"]
    assert len(b_reads) == 2500


def test_snapshot_visibility() -> None:
    """Which streamed transactions a read saw, from ``pg_current_snapshot()``, across xid wraparound."""
    snap = PgSnapshot.parse("100:110:103,107")
    assert [x for x in range(95, 115) if snap.invisible(x)] == [103, 107, 110, 111, 112, 113, 114]
    assert snap.before_xmin(99) and not snap.before_xmin(100)
    # 64-bit xids just past a wraparound of the 32-bit counter
    wrapped = PgSnapshot.parse(f"{2**32 - 5}:{2**32 + 3}:{2**32 + 1}")
    assert not wrapped.invisible(2**32 - 4)  # before the wrap, committed
    assert wrapped.invisible(1)  # 2**32 + 1, in progress
    assert not wrapped.invisible(2)  # 2**32 + 2, committed
    assert wrapped.invisible(3) and wrapped.invisible(4)  # >= xmax
