"""Bad input and misuse: one line on stderr, a non-zero exit, nothing confirmed, nothing lost.

`tests/test_cli.py` already covers unknown flags and config keys, bad TOML,
a missing config file, bad values from flags and the environment, a wrong
password (stderr), a role without LOGIN/REPLICATION, a slot of another
plugin, a slot held by a raw walsender, a publication missing a table, a
missing table and a second `cdc start` with the same name. Here: what those
leave out, and the proof that a refused start moves no position.
"""

from __future__ import annotations

import random
import secrets
from pathlib import Path

import orjson
import pytest

from cdc.devservers import Broker
from tests.chaos.harness import offsets_lsn
from tests.chaos.verify import decoder, json_decode, read_all, verify
from tests.chaos.workload import Workload, create_schema, published_tables
from tests.fix_servers import BrokerHandle, TestDb
from tests.support import ConnectorProcess, cdc, error_line, slot_active_pid, slot_confirmed, wait_until


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("producer_configs = [1, 2]", "producer_configs"),
        ('dsn = "nonsense"', "invalid dsn"),  # libpq's message has a line break in it
        ("tables = 5", "tables = 5"),
        ('tables = ["public.a", 7]', "tables"),
        ("state_dir = 7", "state_dir = 7"),
        # a nested table is a dotted name (retention.ms.x); a list is no value
        ('topic_configs = { "retention.ms" = [1, 2] }', "topic_configs"),
        ("topic_partitions = 1.5", "expected an integer"),
        ('format = "xml"', "expected one of avro, json"),
        ("max_buffer_mb = 0", "max_buffer_mb must be at least 1"),
        ('topic_configs = "retention"', "expected key=value pairs"),
        ('name = "../x"', "is not usable"),
        ("status_interval = -1", "between 0 and 60"),
        ('tombstones = "maybe"', "expected true or false"),
        ('snapshot = "sometimes"', "expected one of initial, never, initial-only"),
    ],
)
def test_malformed_config_values(tmp_path: Path, line: str, expected: str) -> None:
    """A wrong type or value in the config file is refused before anything connects."""
    config = tmp_path / "cdc.toml"
    settings = {
        "dsn": 'dsn = "host=127.0.0.1 port=1"',
        "bootstrap_servers": 'bootstrap_servers = "127.0.0.1:9"',
        "state_dir": f"state_dir = '{tmp_path / 'state'}'",
    }
    settings[line.split("=", maxsplit=1)[0].strip()] = line
    config.write_text("\n".join(settings.values()) + "\n")
    message = error_line(cdc("start", "--config", str(config)))
    assert expected in message
    assert "cannot connect" not in message, "the config must be refused before connecting"


def test_unreadable_config_files(tmp_path: Path) -> None:
    (tmp_path / "dir.toml").mkdir()
    assert "cannot read config file" in error_line(cdc("start", "--config", str(tmp_path / "dir.toml")))
    garbage = tmp_path / "garbage.toml"
    garbage.write_bytes(random.Random(8).randbytes(200))
    assert "cannot read config file" in error_line(cdc("start", "--config", str(garbage)))
    a_file = tmp_path / "a_file"
    a_file.touch()
    line = error_line(cdc("start", "--dsn", "host=127.0.0.1 port=1", "--state-dir", str(a_file)))
    assert "cannot use state directory" in line


def test_stop_and_status_of_a_connector_never_started(tmp_path: Path) -> None:
    assert "no connector named 'ghost' is running" in error_line(
        cdc("stop", "--name", "ghost", "--state-dir", str(tmp_path))
    )
    status = cdc("status", "--name", "ghost", "--state-dir", str(tmp_path), "--json")
    assert status.returncode == 3 and orjson.loads(status.stdout)["state"] == "unknown"


def test_refused_starts_confirm_nothing_and_lose_nothing(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, tmp_path: Path
) -> None:
    """After a clean stop, a series of refused starts leaves the slot and the offsets where they were."""
    db = db_latest
    create_schema(db.dsn)
    workload = Workload(db.dsn, seed=8)
    state = tmp_path / "state"
    connector = ConnectorProcess(
        db.dsn, broker.bootstrap_servers, "misuse", prefix, state, published_tables()
    )
    connector.start()
    for _ in range(40):
        workload.step()
    connector.stop()
    for _ in range(40):
        workload.step()  # written while no connector runs: must all arrive later
    slot_before = slot_confirmed(db.dsn, connector.slot)
    offsets_before = offsets_lsn(connector.instance_dir)

    secret = "s3cret-" + secrets.token_hex(4)
    wrong = db.dsn.replace(db.server.password, secret)
    plain = cdc(*connector.args(), env={"CDC_DSN": wrong})
    assert "password authentication failed" in error_line(plain)
    detached = cdc(*connector.args(), "--detach", env={"CDC_DSN": wrong})
    assert "password authentication failed" in error_line(detached)
    debug = cdc("--debug", *connector.args(), env={"CDC_DSN": wrong})
    assert debug.returncode != 0
    log_text = (connector.instance_dir / "cdc.log").read_text()
    state_files = [p.read_text() for p in connector.instance_dir.iterdir() if p.is_file()]
    for proc in (plain, detached, debug):
        assert secret not in proc.stdout + proc.stderr
    for text in (log_text, *state_files):
        assert secret not in text
    db.execute("CREATE PUBLICATION partial FOR TABLE chaos.txlog")
    partial = cdc(*connector.args(), "--publication", "partial", env={"CDC_DSN": db.dsn})
    assert "publication 'partial' does not publish chaos.accounts" in error_line(partial)
    db.execute("SELECT pg_create_logical_replication_slot('decoding', 'test_decoding')")
    other_plugin = cdc(*connector.args(), "--slot", "decoding", env={"CDC_DSN": db.dsn})
    assert "uses plugin 'test_decoding', not pgoutput" in error_line(other_plugin)
    unknown_table = cdc(*connector.args(), "--tables", "chaos.nope", env={"CDC_DSN": db.dsn})
    assert "table chaos.nope does not exist" in error_line(unknown_table)

    assert slot_confirmed(db.dsn, connector.slot) == slot_before
    assert offsets_lsn(connector.instance_dir) == offsets_before
    connector.start()
    target = int(db.scalar("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))
    wait_until(lambda: connector.caught_up(target), 60, "the connector to catch up")
    assert connector.stop().returncode == 0
    decode = decoder(connector.format, broker.bootstrap_servers, prefix)
    report = verify(read_all(broker.bootstrap_servers, prefix), workload.ledger, decode)
    workload.close()
    assert report.ok and report.duplicates == 0, report.summary()
    assert report.changes_verified == report.changes_expected > 0, report.summary()


def test_second_connector_on_an_active_slot_refuses(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, tmp_path: Path
) -> None:
    """Another connector (another name, the same slot) refuses in one line; the first keeps streaming."""
    db = db_latest
    create_schema(db.dsn)
    workload = Workload(db.dsn, seed=9)
    first = ConnectorProcess(
        db.dsn, broker.bootstrap_servers, "first", prefix, tmp_path / "s1", published_tables()
    )
    first.start()
    try:
        for _ in range(20):
            workload.step()
        holder = wait_until(
            lambda: slot_active_pid(db.dsn, first.slot), 30, "the first connector's walsender"
        )
        second = cdc(
            "start", "--name", "second", "--slot", first.slot, "--publication", first.slot,
            "--bootstrap-servers", broker.bootstrap_servers, "--topic-prefix", prefix,
            "--state-dir", str(tmp_path / "s2"), "--format", "json", "--snapshot", "never",
            env={"CDC_DSN": db.dsn},
        )  # fmt: skip
        line = error_line(second)
        assert f"slot '{first.slot}' is active in process {holder}" in line and "another connector" in line
        assert first.alive() and slot_active_pid(db.dsn, first.slot) == holder
        for _ in range(20):
            workload.step()
        target = int(db.scalar("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))
        wait_until(lambda: first.caught_up(target), 60, "the first connector to catch up")
        assert first.stop().returncode == 0
    finally:
        first.cleanup()
        workload.close()
    decode = decoder(first.format, broker.bootstrap_servers, prefix)
    report = verify(read_all(broker.bootstrap_servers, prefix), workload.ledger, decode)
    assert report.ok and report.duplicates == 0, report.summary()
    assert report.changes_verified == report.changes_expected > 0, report.summary()


def test_table_dropped_while_streaming(
    db_latest: TestDb, own_broker: Broker, prefix: str, tmp_path: Path
) -> None:
    """Decided behaviour: the other tables keep streaming, through reconnects too, with a warning;
    the next `cdc start` refuses with the one-line "does not exist" error and confirms nothing."""
    db = db_latest
    db.execute("CREATE TABLE kept (id int PRIMARY KEY); CREATE TABLE doomed (id int PRIMARY KEY)")
    connector = ConnectorProcess(
        db.dsn,
        own_broker.bootstrap_servers,
        "drop",
        prefix,
        tmp_path / "state",
        ["public.kept", "public.doomed"],
        format="json",
    )
    connector.start()
    try:
        db.execute(
            "INSERT INTO kept SELECT generate_series(1, 10); INSERT INTO doomed SELECT generate_series(1, 10)"
        )
        db.execute("DROP TABLE doomed")
        db.execute("INSERT INTO kept SELECT generate_series(11, 20)")
        # a reconnect (the walsender ends, as after a failover or a server restart) must not end the connector
        db.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s",
                   (connector.slot,))  # fmt: skip
        connector.wait_state("running", timeout=60, sessions=2)
        db.execute("INSERT INTO kept SELECT generate_series(21, 30)")
        target = int(db.scalar("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))
        wait_until(lambda: connector.caught_up(target), 60, "the connector to catch up")
        assert connector.stop().returncode == 0
    finally:
        connector.cleanup()
    warnings = [line for line in connector.log_text().splitlines() if "WARNING" in line and "doomed" in line]
    assert warnings and "no longer exists" in warnings[0], connector.last_lines(10)

    confirmed = slot_confirmed(db.dsn, connector.slot)
    refused = cdc(*connector.args(), env={"CDC_DSN": db.dsn})
    assert error_line(refused) == "cdc: error: table public.doomed does not exist: create it or fix --tables"
    assert slot_confirmed(db.dsn, connector.slot) == confirmed

    records = read_all(own_broker.bootstrap_servers, prefix)
    kept = [json_decode(r.topic, r.key, r.value)[0]["id"] for r in records if r.topic.endswith(".kept")]
    doomed = [json_decode(r.topic, r.key, r.value)[0]["id"] for r in records if r.topic.endswith(".doomed")]
    # a reconnect may send again what was not confirmed yet (at-least-once): compare distinct ids
    assert sorted(set(kept)) == list(range(1, 31)) and sorted(set(doomed)) == list(range(1, 11))


@pytest.mark.parametrize("producer", ["kafka-python", "confluent"])
def test_row_too_large_for_kafka_stops_without_confirming(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, tmp_path: Path, producer: str
) -> None:
    """A change Kafka can never take (over the 16 MB limit): an error, not a retry loop; not confirmed."""
    db = db_latest
    db.execute("CREATE TABLE blobs (id int PRIMARY KEY, body text)")
    # the topic takes 40 MB records (Apache Kafka's default is 1 MB): the producer's limit is the one hit
    connector = ConnectorProcess(
        db.dsn, broker.bootstrap_servers, "huge", prefix, tmp_path / "state", ["public.blobs"], format="json",
        producer=producer, extra=["--topic-config", "max.message.bytes=40000000"],
    )  # fmt: skip
    connector.start()
    try:
        db.execute("INSERT INTO blobs VALUES (1, 'small')")
        target = int(db.scalar("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))
        wait_until(lambda: connector.caught_up(target), 60, "the small row to be confirmed")
        # 17.6 MB of incompressible text: more than the producer's 16 MB limit
        db.execute(
            "INSERT INTO blobs SELECT 2, string_agg(md5(g::text), '') FROM generate_series(1, 550000) g"
        )
        code = connector.wait_exit(120)
    finally:
        connector.cleanup()
    last = connector.last_lines(1)
    assert code == 1 and last.startswith("cdc: error:"), connector.last_lines(5)
    assert "too large" in last.lower() or "toolarge" in last.lower(), last
    # the fix the message points at: a larger limit; the refused row was not confirmed, so the next
    # start sends it (keepalives may confirm WAL inside the open transaction, never its commit)
    limit = "max_request_size=40000000" if producer == "kafka-python" else "message.max.bytes=40000000"
    connector.extra += ["--producer-config", limit]
    connector.start()
    try:
        target = int(db.scalar("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))
        wait_until(lambda: connector.caught_up(target), 120, "the large row to be confirmed")
        assert connector.stop().returncode == 0
    finally:
        connector.cleanup()
    records = read_all(broker.bootstrap_servers, prefix)
    ids = [json_decode(r.topic, r.key, r.value)[0]["id"] for r in records]
    assert sorted(set(ids)) == [1, 2]
