"""The outbox event router on real servers: an outbox table and outbox messages routed as Debezium's
EventRouter does (topics, keys, headers, order per aggregate; updates and deletes ignored)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson

from tests.fix_servers import BrokerHandle, TestDb
from tests.pipeline import settings_for, wait_caught_up
from tests.support import running
from tests.support.topics import RawRecord, existing, read_raw

INSERT = "INSERT INTO outbox (aggregatetype, aggregateid, type, payload)"
OUTBOX = """
CREATE TABLE outbox (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), aggregatetype text NOT NULL,
                     aggregateid text NOT NULL, type text NOT NULL, payload jsonb,
                     "timestamp" timestamptz NOT NULL DEFAULT now(), tenant text);
CREATE TABLE orders (id int PRIMARY KEY, status text);
"""


def read_existing(bootstrap: str, topics: list[str]) -> list[RawRecord]:
    """Every record of those of ``topics`` that exist."""
    return read_raw(bootstrap, existing(bootstrap, topics))


def test_outbox_rows_become_events(db: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path) -> None:
    """Each inserted row: one record on PREFIX.outbox.<aggregatetype>, keyed by its aggregate, the payload
    as value, id, type, timestamp and a mapped column as headers; an aggregate's events in one partition,
    in commit order; a row deleted in its own transaction still sent; updates and deletes ignored."""
    db.execute(OUTBOX)
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, tables=["public.outbox", "public.orders"],
        outbox_table="public.outbox", outbox_headers={"tenant": "tenant"}, topic_partitions=3,
    )  # fmt: skip
    with running(settings) as run:
        db.execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload, tenant)"
            " SELECT 'order', 'o' || (g % 5), 'Step', jsonb_build_object('seq', g), 'acme'"
            " FROM generate_series(1, 40) g"
        )
        for seq in range(41, 51):  # one transaction each
            db.execute(
                INSERT + " VALUES ('order', %s, 'Step', %s)",
                (f"o{seq % 5}", orjson.dumps({"seq": seq}).decode()),
            )
        # the common pattern: insert and delete in one transaction, the table stays empty
        db.execute(
            INSERT
            + " VALUES ('customer', 'c1', 'Moved', '{\"to\": \"eu\"}');"
            + INSERT
            + " VALUES ('customer', 'c2', 'Gone', NULL);"
            "DELETE FROM outbox WHERE aggregatetype = 'customer'"
        )
        db.execute("UPDATE outbox SET type = 'Changed' WHERE aggregateid = 'o1'; DELETE FROM outbox")
        db.execute("INSERT INTO orders VALUES (1, 'open')")
        wait_caught_up(db, run)
    orders, customers = f"{prefix}.outbox.order", f"{prefix}.outbox.customer"
    records = read_existing(broker.bootstrap_servers, [orders, customers, f"{prefix}.public.outbox"])
    assert {r.topic for r in records} == {orders, customers}  # nothing on the table's own topic
    steps = [r for r in records if r.topic == orders]
    missing = sorted(set(range(1, 51)) - {r.json()["seq"] for r in steps})
    where = sorted((r.partition, r.offset) for r in steps)
    assert len(steps) == 50, f"seq {missing} not in Kafka; read (partition, offset) {where}"
    assert {r.header("type") for r in steps} == {b"Step"}
    assert len({r.header("id") for r in steps}) == 50
    assert all(re.fullmatch(rb"[0-9a-f-]{36}", r.header("id")) for r in steps)
    assert all(re.fullmatch(rb"\d{4}-\d\d-\d\dT[\d:.]+Z", r.header("timestamp")) for r in steps)
    assert [dict(r.headers).get("tenant") for r in steps].count(b"acme") == 40
    for key in (b"o0", b"o1", b"o2", b"o3", b"o4"):
        mine = [r for r in steps if r.key == key]
        assert len({r.partition for r in mine}) == 1, "an aggregate's events share a partition"
        seqs = [r.json()["seq"] for r in mine]
        assert seqs == sorted(seqs) and len(seqs) == 10
        assert all(s % 5 == int(key[1:]) for s in seqs)
    moved = sorted(((r.key, r.header("type"), r.json()) for r in records if r.topic == customers), key=str)
    assert moved == [(b"c1", b"Moved", {"to": "eu"}), (b"c2", b"Gone", None)]  # NULL payload: tombstone
    assert run.connector.status.shaping["filtered"] >= 50 + 2  # the deletes and the update


def test_outbox_messages_become_events(
    db: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    """pg_logical_emit_message(true, 'outbox', JSON): the same routing without a table (topic pattern
    and a field renamed); other messages go to PREFIX.messages; a body that is not JSON is a dead
    letter under --on-transform-error dead-letter; a rolled back message is never sent."""
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, outbox_messages=True,
        outbox_topic="{prefix}.events.{aggregatetype}", outbox_fields={"aggregateid": "order_id"},
        on_transform_error="dead-letter",
    )  # fmt: skip

    def emit(prefix_: str, body: Any) -> str:
        text = body if isinstance(body, str) else orjson.dumps(body).decode()
        return f"SELECT pg_logical_emit_message(true, '{prefix_}', '{text}');"

    with running(settings) as run:
        for n in range(1, 4):
            body = {"aggregatetype": "order", "order_id": "7", "type": "Placed", "payload": {"n": n}}
            db.execute("BEGIN;" + emit("outbox", body) + "COMMIT")
        db.execute(
            emit(
                "outbox",
                {"id": "e-1", "aggregatetype": "order", "order_id": "8", "type": "Paid", "payload": 1},
            )
            + emit("other", {"a": 1})
            + emit("outbox", "not json")
        )
        db.execute(
            "BEGIN;"
            + emit("outbox", {"aggregatetype": "order", "order_id": "9", "type": "X", "payload": {}})
            + "ROLLBACK"
        )
        wait_caught_up(db, run)
    events, messages, dead = f"{prefix}.events.order", f"{prefix}.messages", f"{prefix}.dead-letter"
    records = read_existing(broker.bootstrap_servers, [events, messages, dead])
    routed = [(r.key, r.header("type"), r.json()) for r in records if r.topic == events]
    assert routed == [
        (b"7", b"Placed", {"n": 1}), (b"7", b"Placed", {"n": 2}), (b"7", b"Placed", {"n": 3}),
        (b"8", b"Paid", 1),
    ]  # fmt: skip
    ids = [r.header("id") for r in records if r.topic == events]
    assert ids[3] == b"e-1" and len(set(ids)) == 4  # without an id, the message's position stands in
    others = [r.json() for r in records if r.topic == messages]
    assert [m["message"]["prefix"] for m in others] == ["other"]
    letters = [dict(r.headers) for r in records if r.topic == dead]
    assert len(letters) == 1 and letters[0]["stage"] == b"transform" and letters[0]["transform"] == b"outbox"
