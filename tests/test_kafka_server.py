"""The Apache Kafka launcher: a real broker that keeps data and honours transactions.

What Tansu cannot show is shown here: data survives a restart and kill -9,
``read_committed`` consumers skip aborted records, a consumer group forms at
once, and SASL/SCRAM and TLS (hostname-verified) listeners serve both clients.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import confluent_kafka
import confluent_kafka.admin
import kafka
import kafka.errors
import pytest

from cdc.devservers import ClientSecurity, KafkaServer, KafkaUnavailable
from cdc.errors import ServerError
from tests.support import rss_kb

# every case here starts (or fails to start) an Apache Kafka of its own, without tests/fix_servers.py
pytestmark = pytest.mark.servers

CLIENTS = pytest.mark.parametrize("client", ["kafka-python", "confluent"])


def start_server(**options: Any) -> KafkaServer:
    """A started server, or a skip naming what this machine lacks (java, mvn, openssl)."""
    try:
        server = KafkaServer.create(**options)
    except KafkaUnavailable as exc:
        pytest.skip(f"no Apache Kafka on this machine: {exc}")
    error = ""
    try:
        server.start()
    except ServerError as exc:
        error = str(exc)
        server.destroy()
    if error:
        pytest.fail(error, pytrace=False)
    return server


@pytest.fixture(scope="module")
def kafka_server() -> Iterator[KafkaServer]:
    """One broker for the tests that only produce and consume."""
    server = start_server()
    yield server
    server.destroy()


@pytest.fixture
def own_kafka() -> Iterator[KafkaServer]:
    """A broker a test may stop, kill and restart."""
    server = start_server()
    yield server
    server.destroy()


def topic_name(kind: str) -> str:
    return f"{kind}-{secrets.token_hex(4)}"


# -- clients, configured from what the launcher says a listener needs


def kafka_python_options(security: ClientSecurity) -> dict[str, Any]:
    options: dict[str, Any] = {
        "bootstrap_servers": security.bootstrap_servers,
        "security_protocol": security.security_protocol,
    }
    if security.ca_path is not None:
        options |= {"ssl_cafile": str(security.ca_path), "ssl_check_hostname": True}
    if security.sasl_mechanism:
        options |= {
            "sasl_mechanism": security.sasl_mechanism,
            "sasl_plain_username": security.username,
            "sasl_plain_password": security.password,
        }
    return options


def confluent_options(security: ClientSecurity) -> dict[str, Any]:
    options: dict[str, Any] = {
        "bootstrap.servers": security.bootstrap_servers,
        "security.protocol": security.security_protocol,
    }
    if security.ca_path is not None:
        options |= {
            "ssl.ca.location": str(security.ca_path),
            "ssl.endpoint.identification.algorithm": "https",
        }
    if security.sasl_mechanism:
        options |= {
            "sasl.mechanisms": security.sasl_mechanism,
            "sasl.username": security.username,
            "sasl.password": security.password,
        }
    return options


def produce(client: str, security: ClientSecurity, topic: str, values: list[bytes], **extra: Any) -> None:
    """Send ``values`` to partition 0 and wait until the broker acknowledged all of them (acks=all)."""
    if client == "kafka-python":
        producer = kafka.KafkaProducer(acks="all", **kafka_python_options(security), **extra)
        try:
            futures = [producer.send(topic, value, partition=0) for value in values]
            for future in futures:
                future.get(timeout=30)
        finally:
            producer.close(timeout=10)
        return
    errors: list[object] = []
    producer = confluent_kafka.Producer({**confluent_options(security), "acks": "all", **extra})

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(err)

    for value in values:
        producer.produce(topic, value, partition=0, on_delivery=delivered)
    assert producer.flush(30) == 0
    assert not errors


def consume(
    client: str, security: ClientSecurity, topic: str, isolation: str = "read_uncommitted"
) -> list[bytes]:
    """Every value in partition 0 of ``topic``, read from the beginning to the end offset."""
    if client == "kafka-python":
        consumer = kafka.KafkaConsumer(
            enable_auto_commit=False, isolation_level=isolation, **kafka_python_options(security)
        )
        try:
            partition = kafka.TopicPartition(topic, 0)
            consumer.assign([partition])
            consumer.seek_to_beginning(partition)
            end = consumer.end_offsets([partition])[partition]
            values: list[bytes] = []
            deadline = time.monotonic() + 30
            while consumer.position(partition) < end and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=500).values():
                    values += [record.value for record in records]
            return values
        finally:
            consumer.close()
    consumer = confluent_kafka.Consumer(
        {
            **confluent_options(security),
            "group.id": "reader-" + secrets.token_hex(4),
            "enable.auto.commit": False,
            "isolation.level": isolation,
            "enable.partition.eof": True,
        }
    )
    try:
        consumer.assign([confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
        values = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None and error.code() == confluent_kafka.KafkaError._PARTITION_EOF:
                return values
            assert error is None, error
            values.append(message.value() or b"")
        pytest.fail(f"no end of {topic} within 30 s", pytrace=False)
    finally:
        consumer.close()


def numbered(prefix: str, count: int) -> list[bytes]:
    return [f"{prefix}-{i}".encode() for i in range(count)]


# -- the broker


@CLIENTS
def test_produce_and_consume(kafka_server: KafkaServer, client: str) -> None:
    security = kafka_server.client_security()
    topic = topic_name("plain")
    produce(client, security, topic, numbered("v", 200))
    assert consume(client, security, topic) == numbered("v", 200)


def test_the_two_clients_read_each_other(kafka_server: KafkaServer) -> None:
    security = kafka_server.client_security()
    topic = topic_name("mixed")
    produce("kafka-python", security, topic, [b"a"])
    produce("confluent", security, topic, [b"b"])
    assert consume("confluent", security, topic) == consume("kafka-python", security, topic) == [b"a", b"b"]


def test_cluster_ids_never_look_like_an_option() -> None:
    """kafka-storage format reads an id starting with "-" as an option: one start in 64 failed."""
    from cdc.devservers.kafka import _cluster_id

    assert not [cid for cid in (_cluster_id() for _ in range(5000)) if cid.startswith("-")]


def test_stop_and_start_keep_the_data_and_the_address(own_kafka: KafkaServer) -> None:
    security = own_kafka.client_security()
    topic = topic_name("durable")
    produce("kafka-python", security, topic, numbered("before", 100))
    address = own_kafka.bootstrap_servers
    own_kafka.stop()
    own_kafka.start()
    assert own_kafka.bootstrap_servers == address
    produce("confluent", security, topic, numbered("after", 10))
    assert consume("kafka-python", security, topic) == numbered("before", 100) + numbered("after", 10)


def test_kill9_keeps_every_acknowledged_record(own_kafka: KafkaServer) -> None:
    security = own_kafka.client_security()
    topic = topic_name("killed")
    produce("confluent", security, topic, numbered("acked", 1000))
    own_kafka.kill()
    own_kafka.start()  # recovers the unflushed segment from the page cache
    assert consume("confluent", security, topic) == numbered("acked", 1000)


def test_pause_holds_acknowledgements_until_resume(own_kafka: KafkaServer) -> None:
    security = own_kafka.client_security()
    topic = topic_name("paused")
    producer = kafka.KafkaProducer(acks="all", **kafka_python_options(security))
    try:
        producer.send(topic, b"first", partition=0).get(timeout=30)  # metadata known before the pause
        own_kafka.pause()
        try:
            future = producer.send(topic, b"second", partition=0)
            with pytest.raises(kafka.errors.KafkaTimeoutError):
                future.get(timeout=2)
        finally:
            own_kafka.resume()
        future.get(timeout=30)
    finally:
        producer.close(timeout=30)
    assert consume("kafka-python", security, topic) == [b"first", b"second"]


@CLIENTS
def test_read_committed_skips_aborted_records(kafka_server: KafkaServer, client: str) -> None:
    """The key difference from Tansu, whose read_committed consumers see aborted records."""
    security = kafka_server.client_security()
    topic = topic_name("txn")
    tx_id = "tx-" + secrets.token_hex(4)
    if client == "kafka-python":
        producer = kafka.KafkaProducer(transactional_id=tx_id, **kafka_python_options(security))
        try:
            producer.init_transactions()
            for values, commit in ((numbered("aborted", 5), False), (numbered("committed", 5), True)):
                producer.begin_transaction()
                for value in values:
                    producer.send(topic, value, partition=0)
                producer.flush()
                producer.commit_transaction() if commit else producer.abort_transaction()
        finally:
            producer.close(timeout=10)
    else:
        txn = confluent_kafka.Producer({**confluent_options(security), "transactional.id": tx_id})
        txn.init_transactions(30)
        for values, commit in ((numbered("aborted", 5), False), (numbered("committed", 5), True)):
            txn.begin_transaction()
            for value in values:
                txn.produce(topic, value, partition=0)
            txn.flush(30)
            txn.commit_transaction(30) if commit else txn.abort_transaction(30)
    for reader in ("kafka-python", "confluent"):
        assert consume(reader, security, topic, "read_committed") == numbered("committed", 5), reader
        # the aborted records are in the log: only the isolation level hides them
        assert consume(reader, security, topic) == numbered("aborted", 5) + numbered("committed", 5)


@CLIENTS
def test_a_consumer_group_forms_at_once(kafka_server: KafkaServer, client: str) -> None:
    """No initial rebalance delay: the first poll of a new group gets records within seconds
    (Tansu makes a group wait for its whole rebalance timeout)."""
    security = kafka_server.client_security()
    topic = topic_name("group")
    produce(client, security, topic, numbered("g", 10))
    group = "group-" + secrets.token_hex(4)
    started = time.monotonic()
    values: list[bytes] = []
    if client == "kafka-python":
        # kafka-python may join before its metadata knows the new topic and then be assigned
        # nothing until the next refresh (5 minutes by default): refresh every second
        consumer = kafka.KafkaConsumer(
            topic,
            group_id=group,
            auto_offset_reset="earliest",
            metadata_max_age_ms=1000,
            **kafka_python_options(security),
        )
        try:
            while len(values) < 10 and time.monotonic() - started < 30:
                for records in consumer.poll(timeout_ms=200).values():
                    values += [record.value for record in records]
            consumer.commit()
        finally:
            consumer.close()
    else:
        reader = confluent_kafka.Consumer(
            {**confluent_options(security), "group.id": group, "auto.offset.reset": "earliest"}
        )
        try:
            reader.subscribe([topic])
            while len(values) < 10 and time.monotonic() - started < 30:
                message = reader.poll(0.2)
                if message is not None and message.error() is None:
                    values.append(message.value() or b"")
        finally:
            reader.close()
    elapsed = time.monotonic() - started
    assert values == numbered("g", 10)
    assert elapsed < 10, f"the group took {elapsed:.1f}s to form and deliver"


def test_start_and_memory_are_small(own_kafka: KafkaServer, record_property: Callable[..., None]) -> None:
    """A restart, timed; the resident memory once started. Generous bounds: a regression guard."""
    own_kafka.stop()
    started = time.monotonic()
    own_kafka.start()
    seconds = time.monotonic() - started
    rss_mb = rss_kb(own_kafka.pid)[0] // 1024
    record_property("kafka_start_seconds", round(seconds, 2))
    record_property("kafka_rss_mb", rss_mb)
    print(f"kafka {own_kafka.version}: started in {seconds:.1f}s, RSS {rss_mb} MB")
    assert seconds < 30
    assert rss_mb < 512


def test_a_start_failure_names_the_cause_and_the_log() -> None:
    try:
        server = KafkaServer.create(properties={"num.io.threads": "many"})
    except KafkaUnavailable as exc:
        pytest.skip(f"no Apache Kafka on this machine: {exc}")
    try:
        with pytest.raises(ServerError) as failure:
            server.start()
        message = str(failure.value)
        assert "num.io.threads" in message and f"log: {server.log_path}" in message
        assert "\n" not in message
        assert not server.pid
    finally:
        server.destroy()


def test_missing_java_is_unavailable_not_broken(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without java the launcher says so with a KafkaUnavailable, which fixtures turn into a skip."""
    from cdc.devservers import kafka as launcher

    launcher.find_java.cache_clear()
    monkeypatch.setenv("JAVA_HOME", "/nonexistent")
    try:
        with pytest.raises(KafkaUnavailable, match="no java"):
            KafkaServer.create()
    finally:
        monkeypatch.undo()
        launcher.find_java.cache_clear()


# -- SASL/SCRAM and TLS


@pytest.fixture(scope="module")
def secure_kafka() -> Iterator[KafkaServer]:
    server = start_server(scram_users={"cdc": "pw-" + secrets.token_hex(8)}, tls=True)
    yield server
    server.destroy()


@CLIENTS
@pytest.mark.parametrize("listener", ["SASL", "SSL", "SASL_SSL"])
def test_secure_listeners_serve_both_clients(secure_kafka: KafkaServer, client: str, listener: str) -> None:
    security = secure_kafka.client_security(listener)
    if listener.endswith("SSL"):
        assert security.bootstrap_servers.startswith("localhost:") and security.ca_path is not None
    topic = topic_name(listener.lower())
    produce(client, security, topic, numbered("secret", 20))
    assert consume(client, security, topic) == numbered("secret", 20)


def refusal(security: ClientSecurity) -> str:
    """Why the broker refuses a client with these settings, as librdkafka reports it."""
    errors: list[confluent_kafka.KafkaError] = []
    options: dict[str, Any] = {**confluent_options(security), "error_cb": errors.append}
    admin = confluent_kafka.admin.AdminClient(options)
    with pytest.raises(confluent_kafka.KafkaException):
        admin.list_topics(timeout=5)
    admin.poll(1)  # serves error_cb
    del admin  # stops its reconnection attempts
    return errors[0].str() if errors else "(no error reported)"


def test_a_wrong_scram_password_is_refused(secure_kafka: KafkaServer) -> None:
    security = dataclasses.replace(secure_kafka.client_security("SASL"), password="wrong")
    assert "invalid credentials" in refusal(security)


def test_tls_clients_verify_the_broker(secure_kafka: KafkaServer) -> None:
    """Without the test CA the certificate is not trusted: verification is really on."""
    security = dataclasses.replace(secure_kafka.client_security("SSL"), ca_path=None)
    assert "certificate verify failed" in refusal(security)


def test_a_cluster_id_never_reads_as_an_option() -> None:
    """kafka-storage's parser took an id starting with "-" for a flag: a format failed 1 time in 64."""
    from cdc.devservers import kafka as launcher

    ids = [launcher._cluster_id() for _ in range(2000)]
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(i) == 22 for i in ids)
