"""The producers against a real broker: acknowledgements reach their tokens, the buffer stays bounded."""

from __future__ import annotations

import functools
import re
import secrets
import threading
import time
from pathlib import Path

import pytest

from cdc.checkpoint import InFlight
from cdc.devservers import Broker, KafkaUnavailable
from cdc.errors import DeliveryFailed, SinkError
from cdc.kafka import Producer, make_producer
from cdc.kafka.producer import TopicSettings, _Deliveries
from tests.chaos.harness import LinkUnavailable, create_shaped
from tests.fix_servers import BrokerHandle
from tests.pipeline import read_topics
from tests.support import wait_until
from tests.support.brokers import KAFKA, BrokerProcess
from tests.support.topics import read_raw

PRODUCERS = pytest.mark.parametrize("kind", ["kafka-python", "confluent"])


def drain(producer: Producer, *tokens: InFlight, timeout: float) -> int:
    """Poll until no token has a record pending; the number of acknowledgements these polls applied.

    A failed delivery is raised by `Producer.poll` (a `SinkError`), so a drain that returns saw none.
    """
    applied = 0

    def done() -> bool:
        nonlocal applied
        applied += producer.poll()
        return all(token.pending == 0 for token in tokens)

    wait_until(done, timeout, "every record to be acknowledged")
    return applied


def delivery_failure(producer: Producer) -> SinkError | None:
    """The failed delivery `Producer.poll` raises, if one came; None while none has."""
    try:
        producer.poll()
    except SinkError as exc:
        return exc
    return None


def keys_in(bootstrap: str, topic: str) -> list[bytes]:
    """The key of every record of ``topic``, in offset order (each has one)."""
    keys = [record.key for record in read_raw(bootstrap, [topic])]
    assert None not in keys, f"a record of {topic} without a key"
    return [key for key in keys if key is not None]


def test_only_the_first_failure_is_kept() -> None:
    """After a fatal error every queued record fails: one kept exception each grew the process by 75 MB."""
    deliveries, built = _Deliveries(), list[int]()

    def failure(i: int) -> SinkError:
        built.append(i)
        return SinkError(f"failure {i}", retriable=False)

    for i in range(1000):
        deliveries.fail(None, functools.partial(failure, i))
    assert built == [0] and len(deliveries.failures) == 1  # later ones are not even built
    with pytest.raises(DeliveryFailed, match="failure 0") as raised:
        deliveries.apply()
    assert not raised.value.retriable


@pytest.mark.tansu_subset
@PRODUCERS
def test_acks_reach_their_tokens(broker: BrokerHandle, kind: str) -> None:
    producer = make_producer(kind, broker.bootstrap_servers, "test", max_buffer_mb=8)
    topic = "acks-" + secrets.token_hex(4)
    try:
        producer.ensure_topic(topic)
        producer.ensure_topic(topic)  # the second call is a no-op
        first, second = InFlight(1), InFlight(2)
        for i in range(500):
            producer.send(topic, str(i).encode(), b"v" * 100, first if i < 300 else second)
        assert first.pending + second.pending == 500  # counted at send time, applied by poll()
        assert producer.flush(30)
        assert drain(producer, first, second, timeout=30) == 500  # one acknowledgement per record
    finally:
        producer.close()


@PRODUCERS
def test_a_batch_larger_than_the_queue_arrives_whole(broker: BrokerHandle, kind: str) -> None:
    """`send_many` (a snapshot's batch) into a queue of 50 records: librdkafka takes part of the batch
    and refuses the rest; those wait for room. Every record arrives once, each acknowledged."""
    small = {"queue.buffering.max.messages": "50"} if kind == "confluent" else {}
    producer = make_producer(kind, broker.bootstrap_servers, "test", max_buffer_mb=8, overrides=small)
    topic = "batch-" + secrets.token_hex(4)
    try:
        producer.ensure_topic(topic)
        token = InFlight(1)
        records: list[tuple[bytes | None, bytes]] = [(b"%d" % i, b"v" * 100) for i in range(1000)]
        producer.send_many(topic, records[:600], token)
        producer.send_many(topic, records[600:], token)
        assert token.pending == 1000
        assert producer.flush(30)
        assert drain(producer, token, timeout=30) == 1000
        assert sorted(keys_in(broker.bootstrap_servers, topic)) == sorted(k for k, _ in records if k)
    finally:
        producer.close()


@pytest.mark.tansu_subset
@PRODUCERS
def test_many_topics_are_made_in_one_call_and_existing_ones_are_skipped(
    broker: BrokerHandle, kind: str
) -> None:
    """An initial snapshot of thousands of tables asks for its topics at once (one CreateTopics call
    each grew slower as the broker held more); a restart finds some made and makes the rest."""
    from confluent_kafka.admin import AdminClient

    prefix = "many-" + secrets.token_hex(4)
    topics = [f"{prefix}.t{i}" for i in range(30)]

    def listed(wanted: list[str]) -> bool:  # a new topic reaches the metadata a moment later (KRaft)
        return set(wanted) <= set(admin.list_topics(timeout=10).topics)

    first = make_producer(kind, broker.bootstrap_servers, "test", max_buffer_mb=8)
    again = make_producer(kind, broker.bootstrap_servers, "test", max_buffer_mb=8)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})  # librdkafka: no Python socket
    try:
        first.ensure_topics(topics[:10])
        wait_until(lambda: listed(topics[:10]), 10, "the first 10 topics")
        again.ensure_topics(topics)  # a new process: 10 exist, 20 are new
        wait_until(lambda: listed(topics), 10, "all 30 topics")
        for i, topic in enumerate(topics):
            again.send(topic, b"k", b"v", InFlight(i))
        assert again.flush(30)
        again.poll()  # raises on a failed delivery
    finally:
        first.close()
        again.close()


@PRODUCERS
def test_records_sent_as_their_topic_is_made_all_arrive(broker: BrokerHandle, kind: str) -> None:
    """Apache Kafka names a new partition's leader a moment before that leader can append: a first
    batch sent then was refused while the next one was taken, and librdkafka counted the refused one
    delivered (4 of 50 outbox records lost in CI). So `ensure_topic` returns once each new partition's
    leader answers ListOffsets (a first ask of another client succeeds), and records sent right away,
    several batches in flight as a transaction's rows come, all arrive."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

    prefix = "fresh-" + secrets.token_hex(4)
    topics = [f"{prefix}.t{n}" for n in range(10)]
    admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
    producer = make_producer(
        kind, broker.bootstrap_servers, "test", max_buffer_mb=8, topics=TopicSettings(partitions=3)
    )
    latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
    try:
        tokens = [InFlight(n) for n in range(len(topics))]
        for topic, token in zip(topics, tokens, strict=True):
            producer.ensure_topic(topic)
            asked = {TopicPartition(topic, index): latest for index in range(3)}
            for partition, answer in admin.list_offsets(asked, request_timeout=10).items():
                assert answer.result().offset == 0, partition  # raises while the leader is not ready
            for i in range(30):
                producer.send(topic, b"k%d" % (i % 5), b"%d" % i, token)
                if i % 5 == 4:  # a batch on its way before the next is made
                    producer.poll()
                    time.sleep(0.003)
        assert producer.flush(30)
        drain(producer, *tokens, timeout=30)
        by_topic: dict[str, list[int]] = {topic: [] for topic in topics}
        for record in read_raw(broker.bootstrap_servers, topics):
            by_topic[record.topic].append(int(record.value or b"-1"))
        assert {topic: sorted(values) for topic, values in by_topic.items()} == {
            topic: list(range(30)) for topic in topics
        }
    finally:
        producer.close()


def test_the_limit_of_a_topic_made_a_moment_ago_is_read_not_guessed(broker: BrokerHandle) -> None:
    """A broker may not know a topic made a moment ago (UNKNOWN_TOPIC_OR_PART, 1 in 40 on a loaded
    machine): the producer asks again rather than fall back to Kafka's default limit, which let a
    too-large dead letter through and then stopped the connector."""
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    topic = "limit-" + secrets.token_hex(4)
    producer = make_producer("confluent", broker.bootstrap_servers, "test", max_buffer_mb=8)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})

    def create_later() -> None:
        time.sleep(1.0)
        admin.create_topics([NewTopic(topic, 1, 1, config={"max.message.bytes": "300000"})])[topic].result(30)

    creator = threading.Thread(target=create_later)
    creator.start()
    try:
        assert producer.max_message_bytes(topic) == 300_000
    finally:
        creator.join()
        producer.close()


@pytest.mark.tansu_subset
def test_a_side_topic_is_read_to_its_end_past_one_poll(broker: BrokerHandle) -> None:
    """More records in one batch than a poll hands out (500): every one is read (Tansu's short end
    offset once stopped the read after the first poll, and a restart re-registered the rest)."""
    from cdc.kafka.consumer import read_schema_records

    producer = make_producer("confluent", broker.bootstrap_servers, "test", max_buffer_mb=8)
    topic = "side-" + secrets.token_hex(4)
    try:
        producer.ensure_topic(topic, compact=True)
        token = InFlight(1)
        for i in range(1_200):
            producer.send(topic, str(i).encode(), b"v" * 50, token)
        assert producer.flush(30)
    finally:
        producer.close()
    keys = [key for key, _ in read_schema_records(broker.bootstrap_servers, topic)]
    assert keys == [str(i).encode() for i in range(1_200)]


@PRODUCERS
def test_buffer_is_bounded_while_the_broker_stalls(own_broker: Broker, kind: str) -> None:
    overrides = {"queue.buffering.max.kbytes": "1024"} if kind == "confluent" else {}
    producer = make_producer(kind, own_broker.bootstrap_servers, "test", max_buffer_mb=1, overrides=overrides)
    topic = "bounded-" + secrets.token_hex(4)
    token = InFlight(1)
    sent = [0]
    try:
        producer.ensure_topic(topic)
        own_broker.pause()  # SIGSTOP: connections stay open, nothing is acknowledged

        def produce() -> None:
            for i in range(20_000):  # 20 MB, twenty times the buffer
                producer.send(topic, str(i).encode(), b"x" * 1000, token)
                sent[0] += 1

        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        thread.join(5)
        assert thread.is_alive(), "send() never blocked: the buffer is not bounded"
        assert sent[0] < 5_000, f"{sent[0]} records queued into a 1 MB buffer"
        own_broker.resume()
        thread.join(120)
        assert not thread.is_alive() and sent[0] == 20_000
        assert producer.flush(60)
        drain(producer, token, timeout=60)  # send() applied some acknowledgements itself, to make room
    finally:
        own_broker.resume()
        producer.close()
    assert sorted(set(keys_in(own_broker.bootstrap_servers, topic))) == sorted(
        str(i).encode() for i in range(20_000)
    )


@PRODUCERS
def test_a_record_not_acknowledged_in_time_names_its_setting(own_broker: BrokerProcess, kind: str) -> None:
    """librdkafka's "Message timed out" (kafka-python's "Expiring 1 record(s)") alone did not say which
    setting bounds the wait, nor that a slow broker (10,000 new topics on 2 cores) rather than the
    record is the cause."""
    setting = {"confluent": "message.timeout.ms", "kafka-python": "delivery.timeout.ms"}[kind]
    timeouts = {setting: "1000", "request.timeout.ms": "500"}  # kafka-python: delivery >= linger + request
    producer = make_producer(kind, own_broker.bootstrap_servers, "test", 8, overrides=timeouts)
    topic = "slow-" + secrets.token_hex(4)
    try:
        producer.ensure_topic(topic)
        producer.send(topic, b"k", b"first", InFlight(1))  # kafka-python needs the topic's metadata
        assert producer.flush(30)
        own_broker.pause()  # SIGSTOP: nothing is acknowledged
        producer.send(topic, b"k", b"v", InFlight(2))
        error = wait_until(lambda: delivery_failure(producer), 30, "the record to time out")
    finally:
        own_broker.resume()
        producer.close()
    assert re.search(r"Message timed out|Expiring 1 record", str(error)), error
    assert f"--producer-config {setting}=" in str(error)
    assert error.retriable


@PRODUCERS
def test_a_transaction_ends_within_its_timeout_while_the_broker_is_down(
    own_broker: BrokerProcess, kind: str
) -> None:
    """A commit (or abort) the broker cannot take returns within its timeout, as a retriable error,
    rather than waiting for the broker (kafka-python's own calls wait forever)."""
    topic, transactional_id = "txn-" + secrets.token_hex(4), "txn-" + secrets.token_hex(4)
    for call in ("commit_transaction", "abort_transaction"):
        # each round a new producer, as each session of the connector makes one
        producer = make_producer(
            kind, own_broker.bootstrap_servers, "txn", max_buffer_mb=8, transactional_id=transactional_id
        )
        try:
            producer.ensure_topic(topic)
            producer.begin_transaction()
            producer.send(topic, b"k", b"v", InFlight(1))
            assert producer.flush(30)
            own_broker.stop()
            began = time.monotonic()
            with pytest.raises(SinkError) as failed:
                getattr(producer, call)(3)
            assert failed.value.retriable, failed.value
            assert time.monotonic() - began < 15, f"{call} took {time.monotonic() - began:.0f} s"
        finally:
            if not own_broker.pid:
                own_broker.start()
            producer.close()


@pytest.mark.servers  # its own broker, behind a link it cuts
@PRODUCERS
def test_a_transaction_with_a_failed_record_never_commits(tmp_path: Path, kind: str) -> None:
    """A record that failed for good (no answer until its delivery timeout: the link to the
    broker is cut) spoils its transaction: the commit is refused, and none of the transaction's
    records is ever committed.

    kafka-python 3.0.12 by itself committed the rest of such a transaction: a read_committed
    consumer saw part of it. (The chaos suite caught it after a broker restart: the exactly-once
    position record was among the failed records, so the next start sent the committed part
    again.)
    """
    try:
        server = create_shaped(KAFKA, tmp_path / "kafka")
    except LinkUnavailable as exc:
        pytest.skip(f"no link to cut on this machine: {exc}")
    except KafkaUnavailable as exc:
        pytest.skip(f"no Apache Kafka on this machine: {exc}")
    assert server.link is not None
    timeouts = (
        {"delivery_timeout_ms": "3000", "request_timeout_ms": "1000"}
        if kind == "kafka-python"
        else {"message.timeout.ms": "3000", "socket.timeout.ms": "1000"}
    )
    topic = "spoiled-" + secrets.token_hex(4)
    try:
        server.start()
        producer = make_producer(
            kind, server.bootstrap_servers, "txn", 8, overrides=timeouts, transactional_id="spoiled"
        )
        try:
            producer.ensure_topic(topic)
            producer.begin_transaction()
            producer.send(topic, b'"acknowledged"', b"1", InFlight(1))
            assert producer.flush(30)
            server.link.cut()
            producer.send(topic, b'"timed out"', b"2", InFlight(1))
            wait_until(lambda: delivery_failure(producer), 30, "the second record to time out")
            server.link.mend()
            with pytest.raises(SinkError):
                producer.commit_transaction(30)
        finally:
            server.link.mend()
            producer.close()
        make_producer(kind, server.bootstrap_servers, "txn", 8, transactional_id="spoiled").close()
        records = read_topics(server.bootstrap_servers, [topic], isolation="read_committed")
        assert [r.key for r in records] == [], "a part of the transaction was committed"
    finally:
        server.destroy()
