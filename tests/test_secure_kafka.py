"""Secured Kafka against the real broker: one client configuration reaches every client.

Apache Kafka (`tests.fix_secure`) with SASL_PLAINTEXT/SCRAM-SHA-512, TLS with a
test CA and a certificate for ``localhost`` only, SASL_SSL, mutual TLS with an
encrypted client key, and OAUTHBEARER with an OIDC token endpoint. Through
each, with each producer, the connector snapshots a table with its worker
processes, streams changes in Avro (the schema-topic reader, the producer, its
admin client all use the settings), and a consumer reads everything back. Wrong credentials, an untrusted or
misnamed certificate and a missing client certificate each end ``cdc start``
and ``cdc consume`` with one line, exit 1, and nothing confirmed.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from cdc import config
from cdc.consume import ChangeConsumer
from cdc.errors import SinkError
from cdc.kafka import ClientConfig, check_connection, client_config
from tests.fix_secure import LISTENERS, SecureKafka
from tests.fix_servers import TestDb
from tests.pipeline import wait_caught_up
from tests.support import cdc, error_line, running

PRODUCERS = pytest.mark.parametrize("producer", ["confluent", "kafka-python"])


def as_flags(pairs: dict[str, str]) -> list[str]:
    """``--kafka-config`` as the command line gives it: one ``key=value`` per flag."""
    return [f"{key}={value}" for key, value in pairs.items()]


def table_with_rows(db: TestDb, rows: int) -> None:
    db.execute("CREATE TABLE public.items (id int PRIMARY KEY, name text)")
    db.execute("INSERT INTO public.items SELECT i, 'item ' || i FROM generate_series(1, %s) i", (rows,))


@PRODUCERS
@pytest.mark.parametrize("listener", LISTENERS)
def test_every_client_uses_the_one_configuration(
    secure_kafka: SecureKafka, db_latest: TestDb, prefix: str, state_dir: Path, listener: str, producer: str
) -> None:
    table_with_rows(db_latest, 20)
    flags: dict[str, Any] = {
        "dsn": db_latest.dsn,
        "bootstrap_servers": secure_kafka.bootstrap(listener),
        "kafka_config": as_flags(secure_kafka.config(listener)),
        "name": "c" + secrets.token_hex(4),
        "topic_prefix": prefix,
        "state_dir": str(state_dir),
        "tables": "public.items",
        "format": "avro",
        "producer": producer,
        "snapshot": "initial",
        "snapshot_workers": "2",  # worker processes make their own producers and readers
        "snapshot_chunk_rows": "5",
        "status_interval": "0.2",
    }
    settings = config.build(flags, environ={})
    with running(settings) as run:
        db_latest.execute("INSERT INTO public.items VALUES (21, 'streamed'), (22, 'streamed too')")
        db_latest.execute("UPDATE public.items SET name = 'changed' WHERE id = 1")
        wait_caught_up(db_latest, run)
    with ChangeConsumer([f"{prefix}.public.items"], client_config(settings), from_beginning=True) as consumer:
        records = list(consumer.records(idle_timeout=3))
    assert all(r.error is None for r in records), [r.error for r in records if r.error]
    ops = [r.value["op"] for r in records]
    assert ops.count("r") == 20 and ops.count("c") == 2 and ops.count("u") == 1
    assert {r.value["after"]["name"] for r in records if r.value["op"] == "c"} == {"streamed", "streamed too"}


# -- refusals: one line, exit 1, nothing confirmed ----------------------------------------------------


def start_refused(secure_kafka: SecureKafka, db: TestDb, state_dir: Path, listener: str, *args: str) -> str:
    """`cdc start` against ``listener`` with extra ``args``: its one error line; no slot was made."""
    db.execute("CREATE TABLE IF NOT EXISTS public.items (id int PRIMARY KEY, name text)")
    proc = cdc(
        "start", "--bootstrap-servers", secure_kafka.bootstrap(listener),
        "--state-dir", str(state_dir), "--name", "refused", "--tables", "public.items", *args,
        dsn=db.dsn,
    )  # fmt: skip
    line = error_line(proc)
    assert proc.returncode == 1
    assert db.execute("SELECT slot_name FROM pg_replication_slots WHERE database = current_database()") == []
    assert not (state_dir / "refused" / "offsets.json").exists()
    for secret in secure_kafka.secrets:
        assert secret not in proc.stdout + proc.stderr
    return line


def with_changes(pairs: dict[str, str], **changes: str | None) -> list[str]:
    """``--kafka-config`` flags of ``pairs`` with keys (dots as __) changed or, when None, removed."""
    result = dict(pairs)
    for name, value in changes.items():
        key = name.replace("__", ".")
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    return [arg for pair in as_flags(result) for arg in ("--kafka-config", pair)]


FORMATS_AND_PRODUCERS = pytest.mark.parametrize(
    ("fmt", "producer"), [("avro", "confluent"), ("json", "confluent"), ("json", "kafka-python")]
)  # Avro reads the schema topic first (kafka-python); JSON makes the producer first


@FORMATS_AND_PRODUCERS
@pytest.mark.parametrize("listener", ["SASL", "SASL_SSL"])
def test_wrong_credentials(
    secure_kafka: SecureKafka, db_latest: TestDb, state_dir: Path, listener: str, fmt: str, producer: str
) -> None:
    flags = with_changes(secure_kafka.config(listener), sasl__password="wrong,pass=word")
    line = start_refused(
        secure_kafka, db_latest, state_dir, listener, *flags, "--format", fmt, "--producer", producer
    )
    assert "refused the login" in line and "as user 'cdc'" in line, line
    assert "invalid credentials" in line and "check sasl.username and sasl.password" in line, line
    assert "wrong,pass=word" not in line


@FORMATS_AND_PRODUCERS
def test_an_untrusted_certificate(
    secure_kafka: SecureKafka, db_latest: TestDb, state_dir: Path, fmt: str, producer: str
) -> None:
    flags = with_changes(secure_kafka.config("SSL"), ssl__ca__location=None)
    line = start_refused(
        secure_kafka, db_latest, state_dir, "SSL", *flags, "--format", fmt, "--producer", producer
    )
    assert "TLS handshake" in line and "certificate verify failed" in line, line
    assert "set ssl.ca.location to the CA that signed the broker's certificate" in line


def test_a_wrong_oauth_client_secret(secure_kafka: SecureKafka, db_latest: TestDb, state_dir: Path) -> None:
    flags = with_changes(secure_kafka.config("OAUTH"), sasl__oauthbearer__client__secret="wrong")
    asked = secure_kafka.tokens.requests
    line = start_refused(secure_kafka, db_latest, state_dir, "OAUTH", *flags)
    assert secure_kafka.tokens.requests > asked  # the token endpoint refused it, not the settings
    assert "refused the login" in line and "invalid_client" in line, line
    assert "check sasl.oauthbearer.client.id, .client.secret" in line


def test_the_broker_name_is_verified(secure_kafka: SecureKafka) -> None:
    """The certificate names ``localhost`` only: the same broker as 127.0.0.1 is refused, unless
    hostname verification is turned off."""
    by_address = secure_kafka.bootstrap("SSL").replace("localhost", "127.0.0.1")
    with pytest.raises(SinkError, match="certificate verify failed"):
        check_connection(ClientConfig(by_address, secure_kafka.config("SSL")))
    unchecked = {**secure_kafka.config("SSL"), "ssl.endpoint.identification.algorithm": "none"}
    check_connection(ClientConfig(by_address, unchecked))


def test_a_missing_client_certificate(secure_kafka: SecureKafka, db_latest: TestDb, state_dir: Path) -> None:
    flags = with_changes(
        secure_kafka.config("MTLS"),
        ssl__certificate__location=None,
        ssl__key__location=None,
        ssl__key__password=None,
    )
    line = start_refused(secure_kafka, db_latest, state_dir, "MTLS", *flags)
    assert "refused the client certificate" in line and "ssl.certificate.location" in line, line


def test_a_wrong_key_password(secure_kafka: SecureKafka, db_latest: TestDb, state_dir: Path) -> None:
    flags = with_changes(secure_kafka.config("MTLS"), ssl__key__password="not-the-key-password")
    line = start_refused(secure_kafka, db_latest, state_dir, "MTLS", *flags, "--format", "json")
    assert "cannot read the client key: check ssl.key.location and ssl.key.password" in line, line
    assert "not-the-key-password" not in line


def test_consume_with_wrong_credentials(secure_kafka: SecureKafka) -> None:
    flags = with_changes(secure_kafka.config("SASL_SSL"), sasl__password="wrong-password")
    proc = cdc("consume", "x.public.items", "--bootstrap-servers", secure_kafka.bootstrap("SASL_SSL"), *flags)
    line = error_line(proc)
    assert proc.returncode == 1
    assert "refused the login" in line and "wrong-password" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("producer", ["confluent", "kafka-python"])
def test_doctor_checks_the_broker_with_the_shared_settings(
    secure_kafka: SecureKafka, db_latest: TestDb, producer: str
) -> None:
    """`cdc doctor` asks the broker as the connector will meet it: logged in, or told why not."""
    base = [
        "doctor", "--json", "--producer", producer, "--bootstrap-servers", secure_kafka.bootstrap("SASL_SSL"),
    ]  # fmt: skip
    good = cdc(*base, *with_changes(secure_kafka.config("SASL_SSL")), dsn=db_latest.dsn)
    checks = {c["check"]: c for c in json.loads(good.stdout)["checks"]}
    assert checks["broker"]["result"] == "pass", checks["broker"]
    assert checks["topic creation"]["result"] == "pass", checks["topic creation"]
    wrong_password = with_changes(secure_kafka.config("SASL_SSL"), sasl__password="wrong-password")
    wrong = cdc(*base, *wrong_password, dsn=db_latest.dsn)
    assert wrong.returncode == 1
    broker = {c["check"]: c for c in json.loads(wrong.stdout)["checks"]}["broker"]
    assert broker["result"] == "fail" and "refused the login" in broker["detail"], broker
    assert "--kafka-config" in broker["fix"]
    assert "wrong-password" not in wrong.stdout + wrong.stderr
