"""Poison records on Apache Kafka with its default size limit (max.message.bytes = 1 MB): a row
larger than a topic takes goes to PREFIX.dead-letter (cut to fit, with its full size) and the stream
goes on (--on-record-error dead-letter), or stops the connector as before (fail)."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdc.devservers import KafkaServer, KafkaUnavailable
from cdc.errors import ServerError, SinkError
from cdc.kafka import ConfluentProducer
from cdc.lsn import parse_lsn
from tests.fix_servers import TestDb
from tests.pipeline import read_topics, settings_for, wait_caught_up
from tests.support import running, wait_until
from tests.support.topics import read_raw

BIG = 2_000_000  # bytes of a value: above Kafka's default 1 MB, far below Postgres' 1 GB


@pytest.fixture(scope="module")
def kafka() -> Iterator[KafkaServer]:
    """Apache Kafka with its defaults (the size limit among them), for this module."""
    if os.environ.get("CDC_TEST_BOOTSTRAP_SERVERS"):
        pytest.skip("starts its own Apache Kafka; CDC_TEST_BOOTSTRAP_SERVERS points at another broker")
    try:
        server = KafkaServer.create()
        server.start()
    except KafkaUnavailable as exc:
        pytest.skip(str(exc))
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.destroy()


TABLE = """
CREATE TABLE blobs (id int PRIMARY KEY, body bytea, note text);
INSERT INTO blobs VALUES (1, 'small', 'before');
"""


def big_row(db: TestDb, row_id: int) -> None:
    """A row whose value is ``BIG`` random bytes (incompressible: Kafka sees them all)."""
    db.execute("INSERT INTO blobs VALUES (%s, %s, 'big')", (row_id, secrets.token_bytes(BIG)))


@pytest.mark.parametrize("producer", ["confluent", "kafka-python"])
def test_a_record_too_large_goes_to_the_dead_letter_topic(
    db_latest: TestDb, kafka: KafkaServer, state_dir: Path, producer: str
) -> None:
    db = db_latest
    db.execute(TABLE)
    prefix = "t" + secrets.token_hex(4)
    settings = settings_for(
        db, kafka.bootstrap_servers, prefix, state_dir, snapshot="initial", tables=["public.blobs"],
        producer=producer, on_record_error="dead-letter",
    )  # fmt: skip
    with running(settings) as run:
        big_row(db, 2)
        db.execute(
            "INSERT INTO blobs VALUES (3, 'small', 'after'); UPDATE blobs SET note = 'later' WHERE id = 1"
        )
        wait_caught_up(db, run)  # the big row's transaction is confirmed: its dead letter is in kafka
        counts = dict(run.connector.status.shaping)
    assert counts == {"dead_letters:kafka": 1}
    topic = f"{prefix}.public.blobs"
    records = read_topics(kafka.bootstrap_servers, [topic])
    assert [(r.value["op"], r.value["after"]["id"]) for r in records if r.value] == [
        ("r", 1), ("c", 3), ("u", 1),
    ]  # fmt: skip
    [letter] = read_raw(kafka.bootstrap_servers, [f"{prefix}.dead-letter"])
    headers = dict(letter.headers)
    assert headers["table"] == b"public.blobs" and headers["key"] == b'{"id":2}'
    assert headers["stage"] == b"kafka" and headers["topic"] == topic.encode()
    assert re.fullmatch(rb"[0-9A-F/]+:1", headers["position"])
    size = int(headers["size"])
    assert size > BIG  # the JSON envelope of 2 MB of bytea (base64)
    assert b"max.message.bytes" in headers["error"] and headers["truncated"] == b"true"
    assert letter.value is not None and 900_000 < len(letter.value) < 1_048_588
    assert letter.value.startswith(b'{"before":null,"after":{"id":2,')


def test_a_record_the_broker_refuses_after_all_goes_to_the_dead_letter_topic(
    db_latest: TestDb, kafka: KafkaServer, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A topic whose limit was lowered after cdc read it: librdkafka's refusal of the record is handed
    back, the record becomes a dead letter with the same token, the others go on. A record refused
    only because its batch was (its neighbour was too large) stops the connector rather than go
    to the dead letters."""
    db = db_latest
    db.execute(TABLE)
    prefix = "t" + secrets.token_hex(4)
    topic = f"{prefix}.public.blobs"
    real = ConfluentProducer.max_message_bytes
    asked: list[str] = []
    stale = {"always": False}

    def read_before_it_was_lowered(self: ConfluentProducer, name: str) -> int | None:
        asked.append(name)
        if name == topic and (asked.count(name) == 1 or stale["always"]):
            return 1_048_588
        return real(self, name)

    monkeypatch.setattr(ConfluentProducer, "max_message_bytes", read_before_it_was_lowered)
    settings = settings_for(
        db, kafka.bootstrap_servers, prefix, state_dir, tables=["public.blobs"], producer="confluent",
        on_record_error="dead-letter", topic_configs={"max.message.bytes": "300000"},
    )  # fmt: skip
    with running(settings) as run:
        db.execute("INSERT INTO blobs VALUES (2, %s, 'big')", (secrets.token_bytes(400_000),))
        wait_caught_up(db, run)
        db.execute("INSERT INTO blobs VALUES (3, 'small', 'after')")
        wait_caught_up(db, run)
        assert dict(run.connector.status.shaping) == {"dead_letters:kafka": 1}
    assert [r.value["after"]["id"] for r in read_topics(kafka.bootstrap_servers, [topic]) if r.value] == [3]
    [letter] = read_raw(kafka.bootstrap_servers, [f"{prefix}.dead-letter"])
    assert letter.header("topic") == topic.encode() and b"MSG_SIZE_TOO_LARGE" in letter.header("error")
    assert letter.value is not None and len(letter.value) < 300_000 < int(letter.header("size"))
    # a broker that enforces a lower limit than it says: a record refused with its batch, though not
    # too large itself, is not moved aside: the connector stops
    stale["always"] = True
    with running(settings) as run:
        db.execute(
            "INSERT INTO blobs VALUES (4, %s, 'big'), (5, 'small', 'neighbour')",
            (secrets.token_bytes(400_000),),
        )
        wait_until(lambda: run.errors, timeout=30, message="the failure")
        assert "is below what the producer puts in one batch" in str(run.errors[0])
        run.errors.clear()


def test_without_dead_letters_a_record_too_large_stops_the_connector(
    db_latest: TestDb, kafka: KafkaServer, state_dir: Path
) -> None:
    """--on-record-error fail (the default): one error, nothing confirmed past the row."""
    db = db_latest
    db.execute(TABLE)
    prefix = "t" + secrets.token_hex(4)
    settings = settings_for(
        db, kafka.bootstrap_servers, prefix, state_dir, tables=["public.blobs"], producer="confluent"
    )
    with running(settings) as run:
        before = parse_lsn(db.scalar("SELECT pg_current_wal_lsn()::text"))
        big_row(db, 2)
        wait_until(lambda: run.errors or not run.thread.is_alive(), timeout=60, message="the failure")
        error = run.errors[0]
        assert isinstance(error, SinkError) and not error.retriable
        assert "MSG_SIZE_TOO_LARGE" in str(error)
        assert run.connector.status.confirmed_lsn <= before
        run.errors.clear()
