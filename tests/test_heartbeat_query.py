"""--heartbeat-query keeps a quiet database's slot moving while only another database writes WAL."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from cdc.devservers import PostgresServer
from tests.fix_servers import BrokerHandle, new_db
from tests.pipeline import read_topics, settings_for
from tests.support import cdc, error_line, running, wait_until

MB = 1024 * 1024


def test_the_slot_retains_bounded_wal_when_another_database_writes(
    make_server: Callable[[dict[str, str]], PostgresServer],
    broker: BrokerHandle,
    prefix: str,
    state_dir: Path,
) -> None:
    server = make_server({})
    quiet, busy = new_db(server), new_db(server)
    quiet.execute("CREATE TABLE heartbeat (id int PRIMARY KEY, at timestamptz)")
    quiet.execute("INSERT INTO heartbeat VALUES (1, now())")
    busy.execute("CREATE TABLE load (id bigint, pad text)")
    settings = settings_for(
        quiet, broker.bootstrap_servers, prefix, state_dir, tables=["public.heartbeat"],
        heartbeat_query="UPDATE heartbeat SET at = now() WHERE id = 1", heartbeat_interval=0.5,
    )  # fmt: skip

    def retained() -> int:
        return int(
            quiet.scalar(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) FROM pg_replication_slots "
                "WHERE slot_name = %s",
                (settings.slot,),
            )
        )

    written = 0
    samples = []
    with running(settings) as run:
        start = busy.scalar("SELECT pg_current_wal_lsn()::text")
        with busy.connect() as conn:
            for round_ in range(12):
                conn.execute(
                    "INSERT INTO load SELECT g, repeat(md5(g::text), 20) FROM generate_series(1, 4000) g"
                )
                conn.execute("TRUNCATE load")
                if round_ % 4 == 3:
                    conn.execute("CHECKPOINT")  # also logs the running transactions the slot moves on
                time.sleep(0.3)
                samples.append(retained())
            written = int(busy.scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (start,)))
            conn.execute("CHECKPOINT")
        wait_until(lambda: retained() < 4 * MB, timeout=60, message="the slot to let go of the WAL")
        status = run.connector.status
        assert status.last_heartbeat_at and status.heartbeat_query_errors == 0
    assert written > 30 * MB
    assert max(samples) < written / 2, (samples, written)  # bounded: never the whole backlog
    beats = [r for r in read_topics(broker.bootstrap_servers, [f"{prefix}.public.heartbeat"]) if r.value]
    assert len(beats) >= 5 and all(r.value["op"] == "u" for r in beats)


def test_a_heartbeat_query_the_server_refuses_stops_the_start(
    make_server: Callable[[dict[str, str]], PostgresServer], broker: BrokerHandle, state_dir: Path
) -> None:
    db = new_db(make_server({}))
    proc = cdc(
        "start", "--bootstrap-servers", broker.bootstrap_servers,
        "--state-dir", str(state_dir), "--heartbeat-query", "UPDATE no_such_table SET x = 1", dsn=db.dsn,
    )  # fmt: skip
    line = error_line(proc)
    assert "--heartbeat-query failed" in line and "no_such_table" in line
    assert db.scalar("SELECT count(*) FROM pg_replication_slots") == 0
