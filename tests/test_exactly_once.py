"""``--delivery exactly-once`` on Apache Kafka: every committed change once for a read_committed
consumer, across kill -9 and restarts, and a second instance fences the first.

Only Apache Kafka can show it: Tansu lets read_committed consumers see aborted records.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from cdc.devservers import KafkaServer, KafkaUnavailable
from cdc.errors import ServerError
from cdc.events import offsets_topic
from tests.fix_servers import TestDb
from tests.pipeline import Record, read_topics, rebuild, settings_for, source_rows, wait_caught_up
from tests.support import cdc, running, wait_until
from tests.support.topics import records_in


@pytest.fixture(scope="module")
def kafka() -> Iterator[KafkaServer]:
    try:
        server = KafkaServer.create()
    except KafkaUnavailable as exc:
        pytest.skip(f"no Apache Kafka on this machine: {exc}")
    try:
        server.start()
    except ServerError as exc:
        server.destroy()
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.destroy()


def positions(records: list[Record]) -> Counter[tuple[str, Any]]:
    """How often each change's position appears (reads by key: they share their position)."""
    seen: Counter[tuple[str, Any]] = Counter()
    for record in records:
        value = record.value
        if value is None:
            continue
        if value["op"] == "r":
            seen[(record.topic, orjson.dumps(record.key, option=orjson.OPT_SORT_KEYS))] += 1
        else:
            source = value["source"]
            seen[(record.topic, (source["commit_lsn"], value["transaction"]["total_order"]))] += 1
    return seen


@pytest.mark.parametrize("producer", ["confluent", "kafka-python"])
def test_streams_and_snapshots_each_change_once(
    db_latest: TestDb, kafka: KafkaServer, prefix: str, state_dir: Path, producer: str
) -> None:
    db = db_latest
    db.execute(
        "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL);"
        "INSERT INTO items SELECT g, 0 FROM generate_series(1, 3000) g"
    )
    settings = settings_for(
        db, kafka.bootstrap_servers, prefix, state_dir, delivery="exactly-once", snapshot="initial",
        tables=["public.items"], snapshot_chunk_rows=700, producer=producer, transaction_metadata=True,
        heartbeat_interval=0.5,
    )  # fmt: skip
    with running(settings) as run:
        for n in range(20):
            db.execute("UPDATE items SET v = v + 1 WHERE id %% 20 = %s", (n,))
        db.execute("INSERT INTO items SELECT g, 0 FROM generate_series(3001, 3500) g")
        db.execute("DELETE FROM items WHERE id > 3400")
        db.execute("SELECT pg_logical_emit_message(true, 'app', 'in a transaction')")
        db.execute("SELECT pg_logical_emit_message(false, 'app', 'on its own')")
        wait_caught_up(db, run)
    topic = f"{prefix}.public.items"
    records = read_topics(kafka.bootstrap_servers, [topic], isolation="read_committed")
    assert rebuild(records)[topic] == source_rows(db, "items", ["id"])
    assert max(positions(records).values()) == 1  # nothing twice
    reads = [r for r in records if r.value is not None and r.value["op"] == "r"]
    assert len(reads) == 3000 and [r.value["source"]["snapshot"] for r in reads].count("last") == 1
    assert reads[-1].value["source"]["snapshot"] == "last"
    # side topics ride in the same Kafka transactions: each once too
    side = read_topics(
        kafka.bootstrap_servers, [f"{prefix}.messages", f"{prefix}.transaction"], isolation="read_committed"
    )
    messages = [r.value["message"]["content"] for r in side if r.topic.endswith(".messages")]
    assert sorted(base64.b64decode(m).decode() for m in messages) == ["in a transaction", "on its own"]
    markers = [(r.value["id"], r.value["status"]) for r in side if r.topic.endswith(".transaction")]
    assert len(markers) == len(set(markers)) > 0
    # the position the transactions reached is committed beside them
    from cdc.kafka import read_latest

    latest = read_latest(kafka.bootstrap_servers, offsets_topic(prefix))
    position = orjson.loads(latest[f"{settings.name}:{settings.slot}".encode()])
    assert position["lsn"] and position["slot"] == settings.slot


def _connector_args(kafka: KafkaServer, prefix: str, state: Path, name: str, *extra: str) -> list[str]:
    return [
        "start", "--bootstrap-servers", kafka.bootstrap_servers, "--name", name, "--topic-prefix", prefix,
        "--state-dir", str(state), "--format", "json", "--delivery", "exactly-once", "--status-interval",
        "0.2", "--tables", "public.items", "--transaction-linger-ms", "50", *extra,
    ]  # fmt: skip


def _status(state: Path, name: str) -> dict[str, Any]:
    proc = cdc("status", "--name", name, "--state-dir", str(state), "--json")
    result: dict[str, Any] = orjson.loads(proc.stdout)
    return result


def test_kill_9_repeats_nothing(db_latest: TestDb, kafka: KafkaServer, prefix: str, tmp_path: Path) -> None:
    """kill -9 while it streams (a large transaction among small ones): after the restart, a
    read_committed consumer sees every change exactly once; read_uncommitted shows the aborted part."""
    db = db_latest
    db.execute("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL)")
    name = "x" + secrets.token_hex(3)
    env = {"CDC_DSN": db.dsn}
    args = _connector_args(kafka, prefix, tmp_path, name, "--snapshot", "never")
    topic = f"{prefix}.public.items"
    for round_ in range(3):
        assert cdc(*args, "--detach", env=env).returncode == 0
        base = round_ * 100_000
        before = records_in(kafka.bootstrap_servers, topic)
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            for n in range(30):
                conn.execute("INSERT INTO items VALUES (%s, 0)", (base + n,))
            # a large one, still being produced when the process dies: the kill waits for a part
            # of it in Kafka (a fixed sleep missed it on a loaded machine), later in later rounds
            conn.execute("INSERT INTO items SELECT %s + g, 1 FROM generate_series(100, 40100) g", (base,))
        inside = before + 30 + 1000 * (round_ + 1)

        def partly_written(inside: int = inside) -> bool:
            return records_in(kafka.bootstrap_servers, topic) > inside

        wait_until(
            partly_written,
            timeout=60,
            message="a part of the large transaction in Kafka",
        )
        pid = _status(tmp_path, name)["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: _status(tmp_path, name)["pid"] is None, timeout=30, message="the process to die")
    assert cdc(*args, "--detach", env=env).returncode == 0
    target = db.scalar("SELECT pg_current_wal_lsn()::text")
    wait_until(
        lambda: db.scalar(
            "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
            (target, f"cdc_{name}"),
        ),
        timeout=180,
        message="the connector to confirm everything",
    )
    assert cdc("stop", "--name", name, "--state-dir", str(tmp_path)).returncode == 0
    committed = read_topics(kafka.bootstrap_servers, [topic], isolation="read_committed")
    counts = positions(committed)
    assert max(counts.values()) == 1, [k for k, v in counts.items() if v > 1][:5]
    assert rebuild(committed)[topic] == source_rows(db, "items", ["id"])
    everything = read_topics(kafka.bootstrap_servers, [topic], isolation="read_uncommitted")
    assert len(everything) > len(committed), "no kill landed inside a transaction: the check could not fail"


def test_a_second_instance_fences_the_first(
    db_latest: TestDb, kafka: KafkaServer, prefix: str, tmp_path: Path
) -> None:
    """The first instance hangs (SIGSTOP) in the middle of a large transaction and loses its
    walsender; a second one with the same name, elsewhere (another state directory), takes over
    and fences it. The first wakes up with rows still buffered: Kafka refuses them and it ends on
    one line, and nothing of its open transaction is ever visible."""
    db = db_latest
    db.execute("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL)")
    name = "z" + secrets.token_hex(3)
    env = {"CDC_DSN": db.dsn}
    first, second = tmp_path / "a", tmp_path / "b"
    args = _connector_args(kafka, prefix, first, name, "--snapshot", "never", "--producer", "confluent")
    assert cdc(*args, "--detach", env=env).returncode == 0
    pid = _status(first, name)["pid"]
    db.execute("INSERT INTO items SELECT g, 0 FROM generate_series(1, 150000) g")
    wait_until(lambda: _status(first, name)["events_total"] >= 10_000, timeout=60, message="the first rows")
    os.kill(pid, signal.SIGSTOP)
    try:

        def slot_free() -> bool:
            # a walsender blocked on a full socket may take a moment to notice: ask again each time
            db.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s",
                (f"cdc_{name}",),
            )
            return not db.scalar(
                "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (f"cdc_{name}",)
            )

        wait_until(slot_free, timeout=60, interval=0.5, message="the slot to be free")
        args = _connector_args(kafka, prefix, second, name, "--snapshot", "never", "--producer", "confluent")
        assert cdc(*args, "--detach", env=env).returncode == 0  # its producer fences the first's
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: _status(first, name)["pid"] is None, timeout=60, message="the fenced one to end")
    info = _status(first, name)
    # it ends either on Kafka refusing it (fenced) or, when its dead stream is noticed first, on the
    # slot the second one holds: never by fencing the second (the slot is checked before Kafka)
    assert info["state"] == "failed", info
    assert "fenced" in info["last_error"] or "is active in process" in info["last_error"], info
    db.execute("INSERT INTO items SELECT g, 2 FROM generate_series(150001, 150100) g")
    target = db.scalar("SELECT pg_current_wal_lsn()::text")
    wait_until(
        lambda: db.scalar(
            "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
            (target, f"cdc_{name}"),
        ),
        timeout=120,
        message="the second to confirm",
    )
    assert cdc("stop", "--name", name, "--state-dir", str(second)).returncode == 0
    topic = f"{prefix}.public.items"
    committed = read_topics(kafka.bootstrap_servers, [topic], isolation="read_committed")
    assert max(positions(committed).values()) == 1
    assert rebuild(committed)[topic] == source_rows(db, "items", ["id"])


@pytest.mark.parametrize("producer", ["confluent", "kafka-python"])
def test_a_fenced_producer_commits_nothing(kafka: KafkaServer, prefix: str, producer: str) -> None:
    """Two transactional producers with one id (two connectors with one name): the newer one fences
    the older, whose open transaction is aborted and whose commit is refused in one line."""
    from cdc.checkpoint import InFlight
    from cdc.errors import SinkError
    from cdc.kafka import make_producer

    topic = f"{prefix}.fenced"
    older = make_producer(producer, kafka.bootstrap_servers, "older", 8, transactional_id=f"{prefix}-id")
    try:
        older.ensure_topic(topic)
        older.begin_transaction()
        for n in range(50):
            older.send(topic, str(n).encode(), b'{"from": "older"}', InFlight(0))
        older.flush(10)
        newer = make_producer(producer, kafka.bootstrap_servers, "newer", 8, transactional_id=f"{prefix}-id")
        try:
            newer.begin_transaction()
            newer.send(topic, b'"n"', b'{"from": "newer"}', InFlight(0))
            newer.commit_transaction(30)
        finally:
            newer.close()
        began = time.monotonic()
        with pytest.raises(SinkError, match="fenced") as refused:
            older.send(topic, b'"late"', b'{"from": "older"}', InFlight(0))
            older.commit_transaction(60)
        assert not refused.value.retriable
        # as soon as the fence is known, not at the commit's timeout (kafka-python never sends the end)
        assert time.monotonic() - began < 30
    finally:
        older.close()
    values = [r.value for r in read_topics(kafka.bootstrap_servers, [topic], isolation="read_committed")]
    assert values == [{"from": "newer"}]


def test_kill_9_inside_the_snapshot_reads_each_row_once(
    db_latest: TestDb, kafka: KafkaServer, prefix: str, tmp_path: Path
) -> None:
    """A chunk's rows and its done record are one Kafka transaction: a snapshot killed half-way
    resumes from the chunks Kafka committed, and no row is read twice."""
    db = db_latest
    db.execute(
        "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL);"
        "INSERT INTO items SELECT g, 0 FROM generate_series(1, 100000) g"
    )
    name = "s" + secrets.token_hex(3)
    env = {"CDC_DSN": db.dsn}
    args = _connector_args(
        kafka,
        prefix,
        tmp_path,
        name,
        "--snapshot",
        "initial",
        "--snapshot-chunk-rows",
        "2000",
        "--snapshot-workers",
        "1",
    )
    assert cdc(*args, "--detach", env=env).returncode == 0

    def rows_read() -> int:
        tables = _status(tmp_path, name).get("snapshot", {}).get("tables", {})
        return sum(t["rows"] for t in tables.values())

    wait_until(lambda: rows_read() >= 4000, timeout=60, message="a part of the snapshot")
    os.kill(_status(tmp_path, name)["pid"], signal.SIGKILL)
    wait_until(lambda: _status(tmp_path, name)["pid"] is None, timeout=30, message="the process to die")
    assert cdc(*args, "--detach", env=env).returncode == 0
    wait_until(lambda: _status(tmp_path, name)["state"] == "running", timeout=120, message="streaming")
    db.execute("UPDATE items SET v = 1 WHERE id <= 10")
    target = db.scalar("SELECT pg_current_wal_lsn()::text")
    wait_until(
        lambda: db.scalar(
            "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
            (target, f"cdc_{name}"),
        ),
        timeout=60,
        message="the update to be confirmed",
    )
    assert cdc("stop", "--name", name, "--state-dir", str(tmp_path)).returncode == 0
    topic = f"{prefix}.public.items"
    committed = read_topics(kafka.bootstrap_servers, [topic], isolation="read_committed")
    reads = [r for r in committed if r.value is not None and r.value["op"] == "r"]
    assert sorted(r.key["id"] for r in reads) == list(range(1, 100001))  # each row once
    assert [r.value["source"]["snapshot"] for r in reads].count("last") == 1
    assert rebuild(committed)[topic] == source_rows(db, "items", ["id"])
