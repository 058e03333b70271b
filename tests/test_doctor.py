"""`cdc doctor` on a misconfigured server lists each problem with its fix; on a good one it passes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import psycopg
from kafka.admin import KafkaAdminClient, NewTopic

from cdc.devservers import PostgresServer, free_port
from tests.fix_servers import BrokerHandle, TestDb, new_db
from tests.support import cdc


def doctor(*args: str, dsn: str) -> tuple[int, dict[str, Any], str]:
    as_json = cdc("doctor", "--json", *args, dsn=dsn)
    human = cdc("doctor", *args, dsn=dsn)
    assert as_json.returncode == human.returncode, human.stderr
    return as_json.returncode, orjson.loads(as_json.stdout), human.stdout


def results(report: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {c["check"]: (c["result"], c["detail"], c["fix"]) for c in report["checks"]}


def test_a_misconfigured_server_lists_every_problem(
    make_server: Callable[[dict[str, str]], PostgresServer],
) -> None:
    server = make_server({"wal_level": "replica", "max_replication_slots": "2", "max_wal_senders": "4"})
    db = new_db(server)
    with db.connect() as conn:
        conn.execute("CREATE ROLE app LOGIN PASSWORD 'app-secret'")
        conn.execute("GRANT CREATE ON SCHEMA public TO app")
        for name in ("a", "b"):
            conn.execute("SELECT pg_create_physical_replication_slot(%s)", (f"standby_{name}",))
        if db.major >= 18:
            conn.execute("ALTER SYSTEM SET idle_replication_slot_timeout = '1h'")
            conn.execute("SELECT pg_reload_conf()")
    app_dsn = server.dsn(db.name, user="app").replace(server.password, "app-secret")
    with psycopg.connect(app_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE nokey (id int, label text)")
        conn.execute("INSERT INTO nokey VALUES (1, 'a')")
        conn.execute("UPDATE nokey SET label = 'b'")
        conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text, size int)")
        conn.execute("CREATE TABLE prices (id int PRIMARY KEY, amount numeric, fixed numeric(10, 2))")
    broker = f"127.0.0.1:{free_port()}"  # nothing listens there
    tables = "public.nokey,public.docs,public.prices,public.missing"
    code, report, human = doctor("--tables", tables, "--bootstrap-servers", broker, dsn=app_dsn)
    assert code == 1 and report["ok"] is False
    found = results(report)
    assert found["wal_level"][0] == "fail" and "wal_level = logical" in found["wal_level"][2]
    assert found["max_replication_slots"][0] == "fail"
    assert found["role"][0] == "fail" and "ALTER ROLE app REPLICATION" in found["role"][2]
    assert found["table public.missing"][:2] == ("fail", "does not exist")
    assert found["replica identity public.nokey"][0] == "warn"
    assert "UPDATE/DELETE" in found["replica identity public.nokey"][1]
    assert found["toast public.docs"][0] == "warn" and "body" in found["toast public.docs"][1]
    assert "REPLICA IDENTITY FULL" in found["toast public.docs"][2]
    assert found["numeric public.prices"][0] == "warn" and "amount" in found["numeric public.prices"][1]
    assert "fixed" not in found["numeric public.prices"][1]
    assert found["max_slot_wal_keep_size"][0] == "warn"
    if db.major >= 18:
        assert found["idle_replication_slot_timeout"][0] == "warn"
    assert found["broker"][0] == "fail"
    for check in ("wal_level", "max_replication_slots", "role", "toast public.docs", "broker"):
        assert check in human
    assert "failed: not ready" in human.replace("\n", " ")
    assert "app-secret" not in human + orjson.dumps(report).decode()


def test_a_good_setup_passes_and_checks_the_broker(db: TestDb, broker: BrokerHandle, prefix: str) -> None:
    db.execute("CREATE TABLE orders (id int PRIMARY KEY, qty int)")
    schemas = f"{prefix}.schemas"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(schemas, 1, 1, topic_configs={"cleanup.policy": "delete"})])
    finally:
        admin.close()
    code, report, _ = doctor(
        "--tables", "public.orders", "--bootstrap-servers", broker.bootstrap_servers,
        "--topic-prefix", prefix, dsn=db.dsn,
    )  # fmt: skip
    found = results(report)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    try:
        assert not [t for t in admin.list_topics() if "doctor" in t]  # validate_only: nothing created
    finally:
        admin.close()
    assert found["wal_level"][0] == "pass"
    assert found["role"][0] == "pass"
    assert found["publication cdc_cdc"][0] == "pass"
    assert found["broker"][0] == "pass"
    assert found["topic creation"][0] == "pass"
    # a schema topic with the wrong cleanup.policy is a failure (or, where the broker cannot say, a warning)
    assert found[f"topic {schemas}"][0] in ("fail", "warn")
    if found[f"topic {schemas}"][0] == "fail":
        assert code == 1 and "cleanup.policy=compact" in found[f"topic {schemas}"][2]
    # the same questions through kafka-python's admin client
    _, report_kp, _ = doctor(
        "--tables", "public.orders", "--bootstrap-servers", broker.bootstrap_servers,
        "--topic-prefix", prefix, "--producer", "kafka-python", dsn=db.dsn,
    )  # fmt: skip
    found_kp = results(report_kp)
    assert (found_kp["broker"][0], found_kp["topic creation"][0]) == ("pass", "pass"), found_kp
    assert found_kp[f"topic {schemas}"][0] == found[f"topic {schemas}"][0], found_kp
    without_kafka = cdc("doctor", "--json", "--tables", "public.orders", dsn=db.dsn)
    assert without_kafka.returncode == 0, without_kafka.stdout + without_kafka.stderr
    assert results(orjson.loads(without_kafka.stdout))["kafka"][0] == "pass"
