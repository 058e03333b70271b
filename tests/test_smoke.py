"""The harness works: a real Postgres streams a change, a real broker round-trips a record."""

from __future__ import annotations

import secrets

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from cdc.pgoutput import Begin, Commit, Decoder, Insert, Message, Relation, XLogData, decode_copy_data
from cdc.replication import ReplicationConnection
from tests.fix_servers import BrokerHandle, TestDb


def test_slot_streams_a_change(db: TestDb) -> None:
    db.execute("CREATE TABLE smoke (id int PRIMARY KEY, note text)")
    db.execute("CREATE PUBLICATION smoke_pub FOR TABLE smoke")
    with ReplicationConnection(db.dsn) as repl:
        assert repl.identify_system().dbname == db.name
        repl.create_slot("smoke_slot")
        db.execute("INSERT INTO smoke VALUES (1, 'héllo 🐘')")
        repl.start("smoke_slot", "smoke_pub")
        decoder = Decoder()
        seen: list[Message] = []
        while not seen or not isinstance(seen[-1], Commit):
            frame = repl.read(10)
            assert frame is not None, "no data from the walsender within 10 s"
            copy = decode_copy_data(frame)
            if isinstance(copy, XLogData):
                seen.append(decoder.decode(copy.payload))
    kinds = [type(m) for m in seen]
    assert kinds == [Begin, Relation, Insert, Commit]
    insert = seen[2]
    assert isinstance(insert, Insert)
    assert insert.relation.name == "smoke"
    assert insert.new == [b"1", "héllo 🐘".encode()]


@pytest.mark.tansu_subset
def test_broker_round_trip(broker: BrokerHandle) -> None:
    topic = "smoke-" + secrets.token_hex(4)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    metadata = producer.send(topic, key=b"k", value=b"v").get(timeout=30)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, enable_auto_commit=False)
    partition = TopicPartition(topic, metadata.partition)
    consumer.assign([partition])
    consumer.seek(partition, metadata.offset)
    records = consumer.poll(timeout_ms=10_000)
    consumer.close()
    got = [(r.key, r.value) for batch in records.values() for r in batch]
    assert got == [(b"k", b"v")]
