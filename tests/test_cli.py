"""The `cdc` command as users run it: real subprocesses, real servers, one-line errors."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from cdc.devservers import Broker, PostgresServer
from cdc.lsn import parse_lsn
from cdc.replication import ReplicationConnection
from tests.fix_servers import BrokerHandle, TestDb
from tests.support import ConnectorProcess, cdc, current_wal, error_line, slot_confirmed, wait_until


def start_args(broker: BrokerHandle, prefix: str, state: Path, name: str) -> list[str]:
    """`cdc start` of a test connector; its DSN goes in the environment (`cdc(..., dsn=)`), not here."""
    return [
        "start", "--bootstrap-servers", broker.bootstrap_servers, "--name", name,
        "--topic-prefix", prefix, "--state-dir", str(state), "--format", "json", "--snapshot", "never",
        "--status-interval", "0.2",
    ]  # fmt: skip


def status(state: Path, name: str, exit_code: int = 0) -> dict[str, Any]:
    """`cdc status --json`, whose exit code is 0 running, 1 failed or killed, 3 stopped."""
    proc = cdc("status", "--name", name, "--state-dir", str(state), "--json")
    assert proc.returncode == exit_code, proc.stdout + proc.stderr
    result: dict[str, Any] = orjson.loads(proc.stdout)
    return result


def confirmed_past(info: dict[str, Any], lsn: int) -> dict[str, Any] | None:
    """``info`` if its confirmed position is at or past ``lsn``."""
    return info if parse_lsn(info.get("confirmed_lsn") or "0/0") >= lsn else None


@pytest.mark.tansu_subset
def test_detached_start_status_stop(db: TestDb, broker: BrokerHandle, prefix: str, tmp_path: Path) -> None:
    db.execute("CREATE TABLE items (id int PRIMARY KEY, label text)")
    name = "n" + secrets.token_hex(3)
    started = cdc(*start_args(broker, prefix, tmp_path, name), "--detach", dsn=db.dsn)
    assert started.returncode == 0, started.stderr
    try:
        info = status(tmp_path, name)
        assert info["state"] == "running" and isinstance(info["pid"], int)
        assert info["slot"] == f"cdc_{name}"

        # a second connector with the same name refuses, in one line
        second = cdc(*start_args(broker, prefix, tmp_path, name), dsn=db.dsn)
        assert "already running" in error_line(second)

        db.execute("INSERT INTO items SELECT g, 'x' FROM generate_series(1, 25) g")
        written = current_wal(db.dsn)
        # idle, the connector confirms the server's WAL end from keepalives: no lag left
        running = wait_until(
            lambda: confirmed_past(status(tmp_path, name), written), timeout=30, message="25 events confirmed"
        )
        assert running["events_per_table"] == {"public.items": 25}
        assert running["lag_bytes"] == 0
    finally:
        stopped = cdc("stop", "--name", name, "--state-dir", str(tmp_path), "--timeout", "60")
    assert stopped.returncode == 0, stopped.stderr
    final = status(tmp_path, name, exit_code=3)
    assert final["state"] == "stopped" and final["pid"] is None and final["last_error"] == ""
    confirmed = db.scalar(
        "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
        (final["confirmed_lsn"], f"cdc_{name}"),
    )
    assert confirmed is True
    human = cdc("status", "--name", name, "--state-dir", str(tmp_path))
    assert f"{name}: stopped" in human.stdout and "public.items" in human.stdout
    assert human.returncode == 3
    # nothing left to stop
    assert "is running" in error_line(cdc("stop", "--name", name, "--state-dir", str(tmp_path)))
    log = (tmp_path / name / "cdc.log").read_text()
    assert db.server.password not in log


def test_lag_is_the_wal_not_yet_confirmed(
    db_latest: TestDb, own_broker: Broker, prefix: str, tmp_path: Path
) -> None:
    """`lag_bytes` is the server's WAL end, as the connector last heard it, minus the confirmed position:
    positive while a transaction waits for the broker, bounded by the server's own positions; the
    records waiting show in `producer_queue`."""
    db = db_latest
    db.execute("CREATE TABLE items (id int PRIMARY KEY, label text)")
    connector = ConnectorProcess(
        db.dsn,
        own_broker.bootstrap_servers,
        "lag",
        prefix,
        tmp_path / "state",
        ["public.items"],
        format="json",
    )
    connector.start()
    try:
        db.execute("INSERT INTO items SELECT g, 'x' FROM generate_series(1, 10) g")  # the topic exists
        written = current_wal(db.dsn)
        wait_until(lambda: connector.caught_up(written), 30, "the first rows to be confirmed")
        own_broker.pause()  # SIGSTOP: nothing more is acknowledged, so nothing more is confirmed
        try:
            with db.connect(autocommit=False) as conn:
                conn.execute("INSERT INTO items SELECT g, 'y' FROM generate_series(11, 20) g")
                row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
                assert row is not None
                inside = parse_lsn(row[0])  # before the commit record: the connector hears of more
                conn.commit()
            held = wait_until(
                lambda: (
                    (info := status(connector.state_dir, connector.name))["events_total"] >= 20
                    and info["lag_bytes"] > 0
                    and info
                ),
                timeout=30,
                message="the unacknowledged transaction to show as lag",
            )
            server_end = current_wal(db.dsn)
            slot = slot_confirmed(db.dsn, connector.slot)
        finally:
            own_broker.resume()
        confirmed = parse_lsn(held["confirmed_lsn"])
        assert confirmed == slot, "status and slot disagree on the confirmed position"
        assert inside - confirmed <= held["lag_bytes"] <= server_end - confirmed, held
        assert held["producer_queue"]["records"] >= 10 and held["producer_queue"]["bytes"] > 0, held
        # acknowledged and idle again: nothing left
        caught = wait_until(
            lambda: confirmed_past(status(connector.state_dir, connector.name), server_end),
            timeout=60,
            message="the held transaction to be confirmed",
        )
        assert caught["lag_bytes"] == 0
        assert caught["producer_queue"] == {"records": 0, "bytes": 0}, caught
        assert connector.stop().returncode == 0
    finally:
        connector.cleanup()


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    assert "No such option" in error_line(cdc("start", "--no-such-flag"))
    assert "--status-interval" in error_line(cdc("start", "--status-interval", "soon"))
    bad_key = tmp_path / "bad_key.toml"
    bad_key.write_text('dsn = "host=x"\ncolour = "blue"\n')
    assert "unknown key 'colour'" in error_line(cdc("start", "--config", str(bad_key)))
    bad_type = tmp_path / "bad_type.toml"
    bad_type.write_text('dsn = "host=x"\nstatus_interval = "often"\n')
    assert "status_interval" in error_line(cdc("start", "--config", str(bad_type)))
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("dsn = \n")
    assert "not valid TOML" in error_line(cdc("start", "--config", str(bad_toml)))
    assert "does not exist" in error_line(cdc("start", "--config", str(tmp_path / "missing.toml")))
    assert "--dsn" in error_line(cdc("start", "--state-dir", str(tmp_path)))
    env_error = error_line(cdc("start", env={"CDC_DSN": "host=x", "CDC_TOPIC_PARTITIONS": "many"}))
    assert "CDC_TOPIC_PARTITIONS" in env_error


def test_wrong_password_never_printed(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, tmp_path: Path
) -> None:
    secret = "s3cret-" + secrets.token_hex(4)
    args = start_args(broker, prefix, tmp_path, "pw")
    wrong = db_latest.dsn.replace(db_latest.server.password, secret)
    proc = cdc(*args, "--debug", dsn=wrong)
    assert proc.returncode != 0
    assert secret not in proc.stdout + proc.stderr
    line = error_line(cdc(*args, dsn=wrong))
    assert "password authentication failed" in line and secret not in line


def test_preconditions_on_a_database(db: TestDb, broker: BrokerHandle, prefix: str, tmp_path: Path) -> None:
    db.execute("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)")
    base = start_args(broker, prefix, tmp_path, "pre")

    assert "table public.nope does not exist" in error_line(cdc(*base, "--tables", "public.nope", dsn=db.dsn))

    db.execute("CREATE PUBLICATION only_a FOR TABLE a")
    line = error_line(cdc(*base, "--tables", "a,b", "--publication", "only_a", dsn=db.dsn))
    assert "does not publish public.b" in line and "ALTER PUBLICATION" in line

    db.execute("CREATE ROLE plain LOGIN PASSWORD 'plainpw'")
    plain = db.dsn.replace("user=postgres", "user=plain").replace(db.server.password, "plainpw")
    assert "lacks REPLICATION" in error_line(cdc(*base, dsn=plain))
    db.execute("ALTER ROLE plain NOLOGIN REPLICATION")
    assert "lacks LOGIN" in error_line(cdc(*base, dsn=plain))

    db.execute("SELECT pg_create_logical_replication_slot('other_plugin', 'test_decoding')")
    assert "not pgoutput" in error_line(cdc(*base, "--slot", "other_plugin", dsn=db.dsn))

    with ReplicationConnection(db.dsn) as holder:
        holder.create_slot("busy")
        holder.start("busy", "only_a")
        line = error_line(cdc(*base, "--slot", "busy", "--publication", "only_a", dsn=db.dsn))
    assert "active in process" in line and "another connector" in line


@pytest.fixture(scope="module")
def replica_server(make_server: Any) -> PostgresServer:
    server: PostgresServer = make_server({"wal_level": "replica"})
    return server


@pytest.fixture(scope="module")
def one_slot_server(make_server: Any) -> PostgresServer:
    server: PostgresServer = make_server({"max_replication_slots": "1", "max_wal_senders": "5"})
    return server


def test_wal_level_must_be_logical(
    replica_server: PostgresServer, broker: BrokerHandle, tmp_path: Path
) -> None:
    proc = cdc("start", "--bootstrap-servers", broker.bootstrap_servers, "--state-dir", str(tmp_path),
               "--snapshot", "never", dsn=replica_server.dsn())  # fmt: skip
    line = error_line(proc)
    assert "wal_level is 'replica'" in line and "ALTER SYSTEM SET wal_level = logical" in line


def test_slots_exhausted(one_slot_server: PostgresServer, broker: BrokerHandle, tmp_path: Path) -> None:
    with psycopg.connect(one_slot_server.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('taken', 'pgoutput')")
    proc = cdc("start", "--bootstrap-servers", broker.bootstrap_servers, "--state-dir", str(tmp_path),
               "--snapshot", "never", dsn=one_slot_server.dsn())  # fmt: skip
    assert "max_replication_slots (1) exhausted" in error_line(proc)


@pytest.mark.parametrize(
    "producer", [["--producer", "kafka-python", "--producer-config", "bootstrap_timeout_ms=2000"],
                 ["--producer", "confluent"]], ids=["kafka-python", "confluent"]
)  # fmt: skip
def test_broker_unreachable_at_start(
    db_latest: TestDb, prefix: str, tmp_path: Path, producer: list[str]
) -> None:
    args = start_args(BrokerHandle("127.0.0.1:9"), prefix, tmp_path, "nobroker")
    line = error_line(cdc(*args, *producer, dsn=db_latest.dsn, timeout=120))
    assert "cannot reach the broker at 127.0.0.1:9" in line and "--bootstrap-servers" in line
