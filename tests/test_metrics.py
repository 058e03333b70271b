"""/metrics while a workload streams, the probes through a Postgres restart, `cdc status` with lag."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from cdc import metrics
from cdc.devservers import PostgresServer, free_port
from cdc.status import Status
from tests.fix_servers import BrokerHandle, TestDb, new_db
from tests.operations import probe, scrape, value
from tests.pipeline import settings_for, wait_caught_up
from tests.support import cdc, running, wait_until


def test_counters_move_and_lag_returns_to_zero(
    db: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    db.execute("CREATE TABLE items (id int PRIMARY KEY, label text)")
    port = free_port()
    settings = settings_for(db, broker.bootstrap_servers, prefix, state_dir, metrics_port=port)
    table = "public.items"
    with running(settings) as run, metrics.serve(settings, run.connector.status):
        assert probe(port, "/healthz")[0] == 200
        assert probe(port, "/readyz") == (200, "ok: streaming\n")
        before = scrape(port)
        assert value(before, "cdc_state", cdc_state="running") == 1
        assert value(before, "cdc_info", name=settings.name, slot=settings.slot, version="") == 1
        lags: list[float] = []
        with db.connect() as conn:
            for batch in range(20):
                with conn.transaction():
                    for i in range(50):
                        conn.execute("INSERT INTO items VALUES (%s, 'x')", (batch * 50 + i,))
                if batch % 5 == 0:
                    lags.append(value(scrape(port), "cdc_replication_lag_bytes", reference="received"))
            conn.execute("UPDATE items SET label = 'y' WHERE id < 100")
            conn.execute("DELETE FROM items WHERE id >= 900")
        wait_caught_up(db, run)
        wait_until(
            lambda: value(scrape(port), "cdc_commit_to_ack_seconds_count") >= 22,
            message="every transaction's latency sample",
        )
        after = scrape(port)
        assert value(after, "cdc_events_total", table=table, op="c") == 1000
        assert value(after, "cdc_events_total", table=table, op="u") == 100
        assert value(after, "cdc_events_total", table=table, op="d") == 100
        assert value(after, "cdc_event_bytes_total", table=table, op="c") > 1000 * 10
        topic = f"{prefix}.public.items"
        assert value(after, "cdc_records_total", topic=topic) == 1000 + 100 + 100 + 100  # + tombstones
        assert value(after, "cdc_transactions_total") >= 22
        assert value(after, "cdc_commit_to_ack_seconds_bucket", le="+Inf") >= 22
        assert value(after, "cdc_commit_to_ack_seconds_sum") > 0
        assert value(after, "cdc_reconnects_total", cause="postgres") == 0
        assert value(after, "cdc_delivery_errors_total") == 0
        assert value(after, "cdc_slot_wal_status", cdc_slot_wal_status="reserved") == 1
        assert ("cdc_producer_queue_records", ()) in after
        assert ("process_resident_memory_bytes", ()) in after
        # once everything is confirmed, the lag comes back to zero
        wait_until(
            lambda: value(scrape(port), "cdc_replication_lag_bytes", reference="server") == 0,
            message="the lag in bytes to return to 0",
        )
        final = scrape(port)
        assert value(final, "cdc_replication_lag_seconds") == 0
        assert value(final, "cdc_replication_lag_bytes", reference="received") == 0
        assert lags  # scraped while the workload ran


def test_readyz_flips_while_postgres_restarts(
    make_server: Callable[[dict[str, str]], PostgresServer],
    broker: BrokerHandle,
    prefix: str,
    state_dir: Path,
) -> None:
    server = make_server({})
    db = new_db(server)
    db.execute("CREATE TABLE items (id int PRIMARY KEY)")
    port = free_port()
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir,
        metrics_port=port, ready_reconnect_seconds=1.0, reconnect_max_seconds=1.0,
    )  # fmt: skip
    with running(settings) as run, metrics.serve(settings, run.connector.status):
        assert probe(port, "/readyz")[0] == 200
        server.stop()
        _, body = wait_until(
            lambda: r if (r := probe(port, "/readyz"))[0] == 503 else None,
            timeout=30,
            message="/readyz to fail",
        )
        assert "reconnecting for" in body
        assert probe(port, "/healthz")[0] == 200  # alive: the loop keeps turning while it waits
        reconnects = value(scrape(port), "cdc_reconnects_total", cause="postgres")
        assert reconnects >= 1
        server.start()
        wait_until(lambda: probe(port, "/readyz")[0] == 200, timeout=60, message="/readyz to pass again")
        db.execute("INSERT INTO items VALUES (1)")
        wait_caught_up(db, run)
        assert value(scrape(port), "cdc_session_restarts_total") >= 1


def test_cli_serves_metrics_and_status_shows_lag(
    db: TestDb, broker: BrokerHandle, prefix: str, tmp_path: Path
) -> None:
    db.execute("CREATE TABLE items (id int PRIMARY KEY, label text)")
    db.execute("INSERT INTO items SELECT g, 'r' FROM generate_series(1, 120) g")
    port = free_port()
    name = "metrics"
    common = ["--name", name, "--state-dir", str(tmp_path)]
    started = cdc(
        "start", "--bootstrap-servers", broker.bootstrap_servers, "--topic-prefix", prefix,
        "--snapshot-chunk-rows", "50", "--metrics-port", str(port), "--status-interval", "0.2",
        "--log-format", "json", "--detach", *common, dsn=db.dsn,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        wait_until(lambda: probe(port, "/readyz")[0] == 200, timeout=60, message="streaming")
        db.execute("INSERT INTO items VALUES (500, 'streamed')")

        def status() -> dict[str, Any]:
            data: dict[str, Any] = orjson.loads(cdc("status", "--json", *common).stdout)
            return data

        def caught_up() -> dict[str, Any] | None:
            s = status()
            streamed = s["events_per_table"].get("public.items") == 121 and s["lag_bytes"] == 0
            return s if streamed and s["slot_wal_status"] else None

        done = wait_until(caught_up, message="the row, and the slot's health")
        assert done["lag_seconds"] == 0
        assert done["slot_wal_status"] == "reserved", done
        assert done["latency_ms"]["samples"] >= 1
        samples = scrape(port)
        assert value(samples, "cdc_snapshot_rows_total", table="public.items") == 120
        assert value(samples, "cdc_snapshot_chunks_done_total", table="public.items") == 3
        assert value(samples, "cdc_events_total", table="public.items", op="c") == 1
        human = cdc("status", *common).stdout
        assert "lag" in human and " s" in human and "slot wal       reserved" in human
        # the detached connector writes its own log, as JSON lines
        lines = (tmp_path / name / "cdc.log").read_text().splitlines()
        entries = [orjson.loads(line) for line in lines]
        assert all({"ts", "level", "logger", "message"} <= set(e) for e in entries)
        assert any(e.get("lsn") and "streaming slot" in e["message"] for e in entries)
    finally:
        stopped = cdc("stop", *common)
        assert stopped.returncode == 0, stopped.stderr


def test_queued_bytes_a_producer_does_not_count_are_estimated() -> None:
    """librdkafka reports its queued bytes only in statistics that grow with every topic, so the
    confluent producer says None and the status takes records x the mean streamed event size."""
    status = Status()
    assert status.queued(5, None) == (5, 0)  # nothing streamed yet: no size to go by
    counts = status.op_counts("public.a")
    counts["c"].events, counts["c"].bytes = 3, 300
    status.op_counts("public.b")["u"].events, status.op_counts("public.b")["u"].bytes = 1, 500
    assert status.queued(10, None) == (10, 10 * 800 // 4)
    assert status.queued(0, None) == (0, 0)
    assert status.queued(10, 1234) == (10, 1234)  # a count the producer keeps is taken as it is
