"""The checkpoint invariant under lost connections: nothing confirmed that Kafka does not hold."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from cdc.devservers import Broker, PostgresServer
from cdc.lsn import parse_lsn
from tests.consuming import consume
from tests.fix_servers import BrokerHandle, TestDb, new_db
from tests.pipeline import read_topics, settings_for, wait_caught_up
from tests.support import FAST_FAILING_PRODUCER, WaitTimeout, running, wait_until


def slot_confirmed(db: TestDb, slot: str) -> int:
    text = db.scalar(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,)
    )
    return parse_lsn(text)


@pytest.mark.parametrize("producer", ["kafka-python", "confluent"])
def test_broker_outage_confirms_nothing_unacknowledged(
    db_latest: TestDb, own_broker: Broker, prefix: str, state_dir: Path, producer: str
) -> None:
    db = db_latest
    db.execute("CREATE TABLE items (id int PRIMARY KEY, batch text)")
    settings = settings_for(
        db, own_broker.bootstrap_servers, prefix, state_dir, producer=producer, format="avro",
        producer_configs=FAST_FAILING_PRODUCER[producer], reconnect_max_seconds=1.0,
    )  # fmt: skip
    topic = f"{prefix}.public.items"
    with running(settings) as run:
        db.execute("INSERT INTO items SELECT g, 'a' FROM generate_series(1, 100) g")
        wait_caught_up(db, run)

        own_broker.stop()
        before_b = parse_lsn(db.scalar("SELECT pg_current_wal_lsn()::text"))
        db.execute("INSERT INTO items SELECT g, 'b' FROM generate_series(101, 200) g")
        wait_until(
            lambda: run.connector.status.state == "reconnecting", timeout=60, message="a failed delivery"
        )
        for _ in range(3):  # a few rounds of the reconnect loop, still without a broker
            assert slot_confirmed(db, settings.slot) <= before_b
            offsets = orjson.loads((settings.instance_dir / "offsets.json").read_bytes())
            assert parse_lsn(offsets["lsn"]) <= before_b
            wait_until(lambda: run.connector.status.sessions >= 2, timeout=30, message="a retry")

        own_broker.start()  # same port, empty: Tansu keeps nothing across restarts
        wait_caught_up(db, run, timeout=90)
        assert slot_confirmed(db, settings.slot) > before_b
    # the restarted broker lost the schema topic too: the new session published the schemas again,
    # so `cdc consume` decodes every record
    args = [topic, "--bootstrap-servers", own_broker.bootstrap_servers, "--topic-prefix", prefix]
    lines, errors = consume([*args, "--from-beginning", "--idle-timeout", "3"])
    assert errors == []
    ids = {line["key"]["id"] for line in lines if line["value"]}
    assert set(range(101, 201)) <= ids, "batch b was confirmed without being in Kafka"


def test_walsender_terminated_reconnects(
    db: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    db.execute("CREATE TABLE items (id int PRIMARY KEY)")
    settings = settings_for(db, broker.bootstrap_servers, prefix, state_dir)
    with running(settings) as run:
        db.execute("INSERT INTO items SELECT generate_series(1, 50)")
        wait_caught_up(db, run)
        for round_ in range(2):
            db.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s",
                (settings.slot,),
            )
            db.execute(
                "INSERT INTO items SELECT generate_series(%s::int, %s::int)",
                (100 * (round_ + 1), 100 * (round_ + 1) + 49),
            )
            wait_caught_up(db, run)
        assert run.connector.status.sessions >= 3
    ids = [r.key["id"] for r in read_topics(broker.bootstrap_servers, [f"{prefix}.public.items"])]
    assert set(ids) == set(range(1, 51)) | set(range(100, 150)) | set(range(200, 250))


def test_postgres_restart_reconnects(
    make_server: Callable[[dict[str, str]], PostgresServer],
    broker: BrokerHandle,
    prefix: str,
    state_dir: Path,
) -> None:
    server = make_server({})
    db = new_db(server)
    db.execute("CREATE TABLE items (id int PRIMARY KEY)")
    settings = settings_for(db, broker.bootstrap_servers, prefix, state_dir, reconnect_max_seconds=1.0)
    with running(settings) as run:
        db.execute("INSERT INTO items SELECT generate_series(1, 50)")
        wait_caught_up(db, run)
        for mode, first in (("fast", 100), ("immediate", 200)):
            server.restart(mode)
            db.execute("INSERT INTO items SELECT generate_series(%s::int, %s::int)", (first, first + 49))
            wait_caught_up(db, run, timeout=90)
    ids = {r.key["id"] for r in read_topics(broker.bootstrap_servers, [f"{prefix}.public.items"])}
    assert ids == set(range(1, 51)) | set(range(100, 150)) | set(range(200, 250))


def test_backend_killed_during_session_start_is_retried(
    db: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    """A connection lost in the checks that open a session (here: the publication lookup, held on a
    lock and then terminated) is a disconnect like any other: retried, never a traceback."""
    db.execute("CREATE TABLE items (id int PRIMARY KEY)")
    settings = settings_for(db, broker.bootstrap_servers, prefix, state_dir, reconnect_max_seconds=1.0)
    application = f"cdc-{settings.name}"
    # both connections open before the lock: a backend that starts while the relcache init file
    # is being rebuilt (after autovacuum touched a catalog) opens every catalog with a syscache,
    # pg_publication too, so a new connection would wait on this lock (seen once: 130 s, timed out)
    with running(settings) as run, db.connect() as locker, db.connect() as admin:
        db.execute("INSERT INTO items SELECT generate_series(1, 50)")
        wait_caught_up(db, run)

        def blocked_pid() -> int | None:
            row = admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
                (application,),
            ).fetchone()
            return None if row is None else int(row[0])

        for _attempt in range(3):
            sessions = run.connector.status.sessions
            # a new backend first: one that starts without the relcache init file (a catalog's vacuum
            # removes it) writes it again, so the connector's next connection does not read the locked
            # pg_publication while it starts (CI: never in pg_stat_activity, its connect timed out)
            db.connect().close()
            with locker.transaction():
                # the next session's publication check waits for this lock ...
                locker.execute("LOCK TABLE pg_catalog.pg_publication IN ACCESS EXCLUSIVE MODE")
                admin.execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s",
                    (settings.slot,),
                )
                try:
                    blocked = wait_until(
                        blocked_pid, timeout=15, message="the session start to wait on the lookup"
                    )
                except WaitTimeout:
                    # the init file went again before the connector's connect, which then waits in the
                    # backend's start (times out, is retried: no error either): unlock, try once more
                    blocked = None
                if blocked is not None:
                    # ... and its connection dies there
                    admin.execute("SELECT pg_terminate_backend(%s)", (blocked,))

                    def another_session(want: int = sessions + 2) -> bool:
                        return run.connector.status.sessions >= want

                    wait_until(another_session, timeout=30, message="another session after the lost start")
                    break
            wait_caught_up(db, run, timeout=60)  # streaming again, past the unlocked start
        else:
            pytest.fail("the session start never waited on the publication lookup in 3 attempts")
        assert not run.errors
        db.execute("INSERT INTO items SELECT generate_series(100, 149)")
        wait_caught_up(db, run, timeout=60)
    ids = {r.key["id"] for r in read_topics(broker.bootstrap_servers, [f"{prefix}.public.items"])}
    assert ids == set(range(1, 51)) | set(range(100, 150))
