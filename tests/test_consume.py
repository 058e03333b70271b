"""`cdc consume` and `cdc.consume` against a real broker: bad records, consumer groups, errors."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError
from typer.testing import CliRunner

from cdc import avro, cli
from cdc.change import ChangeEvent
from cdc.consume import ChangeConsumer
from cdc.errors import SinkError
from cdc.events import JsonSerializer, SourceInfo, Table, TableColumn, table_topic
from cdc.pgoutput import ReplicaIdentity
from cdc.pgtypes import column_type
from tests.consuming import consume
from tests.fix_servers import BrokerHandle


def _items() -> Table:
    columns = [
        TableColumn("id", column_type(23), True),
        TableColumn("name", column_type(25), False),
    ]
    return Table(7, "public", "items", ReplicaIdentity.DEFAULT, columns)


def _insert(table: Table, row_id: int, name: str) -> ChangeEvent:
    return ChangeEvent(
        "c",
        table,
        None,
        [row_id, name],
        lsn=1000 + row_id,
        commit_lsn=2000,
        xid=42,
        commit_ts_ms=1_700_000_000_000,
        total_order=row_id,
        data_collection_order=row_id,
        transaction_id="42:2000",
    )


def ensure_topic(admin: KafkaAdminClient, topic: str) -> None:
    """One partition: brokers that create topics on first use (Tansu) give them several."""
    with contextlib.suppress(TopicAlreadyExistsError):
        admin.create_topics([NewTopic(topic, 1, 1)])


def _produce(bootstrap_servers: str, records: list[tuple[str, bytes | None, bytes | None]]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        for topic in {topic for topic, _, _ in records}:
            ensure_topic(admin, topic)
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
    try:
        for topic, key, value in records:
            producer.send(topic, key=key, value=value).get(timeout=30)
    finally:
        producer.close()


def test_bad_records_are_reported_one_by_one(broker: BrokerHandle, prefix: str) -> None:
    serializer = avro.AvroSerializer(prefix, SourceInfo("test", "db"))
    table = _items()
    key, value = serializer.encode(_insert(table, 1, "one"))
    assert key is not None
    topic = table_topic(prefix, table)
    unknown = avro.MAGIC + bytes(8) + value[avro.HEADER_SIZE :]
    records: list[tuple[str, bytes | None, bytes | None]] = [
        (serializer.schema_topic, k, v) for k, v in serializer.take_schema_records()
    ]
    records += [
        (topic, key, value),  # 0: fine
        (topic, key, unknown),  # 1: a fingerprint the schema topic does not have
        (topic, key, value[:-3]),  # 2: the body cut short
        (topic, key, b"hello, world"),  # 3: not Avro at all
        (topic, key, value + b"\x00\x01"),  # 4: bytes after the record
        (topic, b"junk", value),  # 5: a bad key
        (topic, key, None),  # 6: a tombstone, fine
        (topic, key, serializer.encode(_insert(table, 2, "two"))[1]),  # 7: fine
    ]
    _produce(broker.bootstrap_servers, records)

    bootstrap = ["--bootstrap-servers", broker.bootstrap_servers]
    lines, errors = consume(
        [topic, *bootstrap, "--from-beginning", "--max-messages", "8", "--idle-timeout", "10"]
    )
    assert [(line["offset"], line["key"]) for line in lines] == [
        (0, {"id": 1}),
        (6, {"id": 1}),
        (7, {"id": 1}),
    ]
    assert lines[0]["value"]["after"] == {"id": 1, "name": "one"}
    assert lines[1]["value"] is None
    assert lines[2]["value"]["after"] == {"id": 2, "name": "two"}
    where = f"cdc: {topic}[0]@"
    not_avro = "is this topic written by cdc with --format avro?"
    assert errors == [
        f"{where}1: cannot decode the value: unknown schema fingerprint 0000000000000000: "
        f"it is not in the schema topic ({prefix}.schemas)",
        f"{where}2: cannot decode the value: the Avro body ends early: the record is truncated",
        f"{where}3: cannot decode the value: not Avro single-object encoding (starts 68656c6c, "
        "expected c301): " + not_avro,
        f"{where}4: cannot decode the value: the Avro body has 2 bytes left over after the record: "
        "it does not match its schema",
        f"{where}5: cannot decode the key: not Avro single-object encoding (starts 6a756e6b, expected c301): "
        + not_avro,
    ]


def test_json_format_records_print_as_they_are(broker: BrokerHandle, prefix: str) -> None:
    """A topic written with --format json needs no schema: consume prints its records unchanged."""
    table = _items()
    serializer = JsonSerializer(prefix, SourceInfo("test", "db"))
    key, value = serializer.encode(_insert(table, 1, "one"))
    topic = table_topic(prefix, table)
    _produce(broker.bootstrap_servers, [(topic, key, value), (topic, key, b"{not json")])
    bootstrap = ["--bootstrap-servers", broker.bootstrap_servers]
    lines, errors = consume(
        [topic, *bootstrap, "--from-beginning", "--max-messages", "2", "--idle-timeout", "10"]
    )
    assert [(line["key"], line["value"]) for line in lines] == [
        (orjson.loads(key or b""), orjson.loads(value))
    ]
    assert errors == [
        f"cdc: {topic}[0]@1: cannot decode the value: not Avro single-object encoding (starts 7b6e6f74, "
        "expected c301): is this topic written by cdc with --format avro?"
    ]


def test_library_reads_new_schemas_as_they_come(broker: BrokerHandle, prefix: str) -> None:
    """A schema registered after the consumer started is fetched when a record needs it."""
    serializer = avro.AvroSerializer(prefix, SourceInfo("test", "db"))
    table = _items()
    topic = table_topic(prefix, table)
    key, value = serializer.encode(_insert(table, 1, "one"))
    _produce(
        broker.bootstrap_servers,
        [(serializer.schema_topic, k, v) for k, v in serializer.take_schema_records()],
    )
    _produce(broker.bootstrap_servers, [(topic, key, value)])
    with ChangeConsumer([topic], broker.bootstrap_servers, from_beginning=True) as consumer:
        assert consumer.schema_topics == [f"{prefix}.schemas"]  # guessed from the topic name
        first = list(consumer.records(max_messages=1, idle_timeout=10))
        # a new table version: its schema lands in the schema topic after the consumer read it
        wider = Table(
            7,
            "public",
            "items",
            ReplicaIdentity.DEFAULT,
            [*table.columns, TableColumn("n", column_type(20), False)],
        )
        event = _insert(wider, 2, "two")
        event.after = [2, "two", 2**40]
        key, value = serializer.encode(event)
        schema_records = serializer.take_schema_records()
        assert len(schema_records) == 1  # the value schema; the key did not change
        _produce(broker.bootstrap_servers, [(serializer.schema_topic, k, v) for k, v in schema_records])
        _produce(broker.bootstrap_servers, [(topic, key, value)])
        second = list(consumer.records(max_messages=1, idle_timeout=10))
    assert [r.error for r in first + second] == [None, None]
    assert first[0].value["after"] == {"id": 1, "name": "one"}
    assert second[0].value["after"] == {"id": 2, "name": "two", "n": 2**40}
    assert (
        second[0]
        .to_json()
        .startswith(f'{{"topic":"{topic}","partition":0,"offset":1,"key":{{"id":2}}'.encode())
    )


def test_the_schema_topic_itself_is_readable(broker: BrokerHandle, prefix: str) -> None:
    serializer = avro.AvroSerializer(prefix, SourceInfo("test", "db"))
    serializer.encode(_insert(_items(), 1, "one"))
    _produce(
        broker.bootstrap_servers,
        [(serializer.schema_topic, k, v) for k, v in serializer.take_schema_records()],
    )
    bootstrap = ["--bootstrap-servers", broker.bootstrap_servers]
    lines, errors = consume([serializer.schema_topic, *bootstrap, "--from-beginning", "--idle-timeout", "1"])
    assert errors == []
    entries = {entry.subject: entry for entry in serializer.registry}
    assert [(line["key"], line["value"]["subject"], line["value"]["version"]) for line in lines] == [
        (entries[subject].fingerprint.hex(), subject, 1)
        for subject in (f"{prefix}.public.items-value", f"{prefix}.public.items-key")
    ]
    assert lines[0]["value"]["canonical"] == entries[f"{prefix}.public.items-value"].canonical


@pytest.mark.tansu_subset
def test_consumer_group_commits_what_it_read(broker: BrokerHandle, prefix: str) -> None:
    serializer = avro.AvroSerializer(prefix, SourceInfo("test", "db"))
    table = _items()
    topic = table_topic(prefix, table)
    events = [serializer.encode(_insert(table, i, f"n{i}")) for i in (1, 2, 3)]
    _produce(
        broker.bootstrap_servers,
        [(serializer.schema_topic, k, v) for k, v in serializer.take_schema_records()],
    )
    _produce(broker.bootstrap_servers, [(topic, k, v) for k, v in events])
    # Tansu completes a group join only after a timeout (rebalance, session): keep them short there.
    # Apache Kafka forms the group at once, with the defaults (it refuses a session under 6 s)
    config: dict[str, Any] = {}
    if broker.kind == "tansu":
        config = {"max_poll_interval_ms": 300, "session_timeout_ms": 1000, "heartbeat_interval_ms": 100}
    group = f"{prefix}-group"
    with ChangeConsumer(
        [topic], broker.bootstrap_servers, from_beginning=True, group=group, consumer_config=config
    ) as c:
        first = [r.value["after"]["id"] for r in c.records(max_messages=2, idle_timeout=20)]
    with ChangeConsumer(
        [topic], broker.bootstrap_servers, from_beginning=True, group=group, consumer_config=config
    ) as c:
        rest = [r.value["after"]["id"] for r in c.records(max_messages=1, idle_timeout=20)]
    assert (first, rest) == ([1, 2], [3])


def test_a_missing_topic_is_one_line_on_stderr(
    broker: BrokerHandle, prefix: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        sys, "argv", ["cdc", "consume", f"{prefix}.nope", "--bootstrap-servers", broker.bootstrap_servers]
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err == (
        f"cdc: error: topic {prefix}.nope does not exist on {broker.bootstrap_servers}: check the name "
        "(cdc writes <prefix>.<schema>.<table>, <prefix>.messages, <prefix>.schemas)\n"
    )


def test_an_unreachable_broker_is_one_line_at_once() -> None:
    """No 30 s of kafka-python retries: a refused connection is reported right away."""
    started = time.monotonic()
    result = CliRunner().invoke(cli.app, ["consume", "t.public.x", "--bootstrap-servers", "127.0.0.1:1"])
    assert isinstance(result.exception, SinkError)
    assert str(result.exception) == (
        "cannot reach the broker at 127.0.0.1:1 (127.0.0.1:1: Connection refused): "
        "check --bootstrap-servers and that Kafka runs"
    )
    assert time.monotonic() - started < 5
