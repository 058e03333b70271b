"""Python transforms and masks on real servers: filter, route, re-key, split, outbox records, declared
columns, masked columns, and a transform that raises under each --on-transform-error policy."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from cdc.errors import SchemaError, TransformError
from cdc.lsn import parse_lsn
from tests.consuming import consume
from tests.fix_servers import BrokerHandle, TestDb
from tests.pipeline import read_topics, rebuild, settings_for, source_rows, wait_caught_up
from tests.support import running, wait_until
from tests.support.topics import read_raw

T = "tests.shaping_transforms"

ORDERS = """
CREATE TABLE orders (id int PRIMARY KEY, customer_id int NOT NULL, region text NOT NULL, status text,
                     qty int, note text);
INSERT INTO orders SELECT g, g % 7, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END,
                          CASE WHEN g % 5 = 0 THEN 'cancelled' ELSE 'open' END, g, 'n'
  FROM generate_series(1, 500) g;
"""


# -- transforms that filter, route, re-key, split, write records --------------------------------


def test_a_filter_drops_events_and_their_positions_are_still_confirmed(
    db: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    """Cancelled orders never reach Kafka, in the snapshot (worker processes) or the stream; a
    transaction whose every event was dropped is confirmed all the same."""
    db.execute(ORDERS)
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, snapshot="initial", tables=["public.orders"],
        transforms=[f"{T}:drop_cancelled"], snapshot_chunk_rows=100,
    )  # fmt: skip
    with running(settings) as run:
        db.execute(
            "INSERT INTO orders VALUES (1000, 1, 'eu', 'open', 1, 'n'), (1001, 1, 'eu', 'cancelled', 1, 'n')"
        )
        db.execute("UPDATE orders SET status = 'cancelled' WHERE id = 2")
        db.execute("DELETE FROM orders WHERE id = 4")
        # nothing of this transaction passes: its end is confirmed anyway
        end = db.scalar("SELECT pg_current_wal_lsn()::text")
        db.execute("UPDATE orders SET qty = qty + 1 WHERE status = 'cancelled'")
        wait_caught_up(db, run)
        assert run.connector.status.confirmed_lsn > parse_lsn(end)
        filtered = run.connector.status.shaping["filtered"]
    topic = f"{prefix}.public.orders"
    records = read_topics(broker.bootstrap_servers, [topic])
    rows = [r.value["after"] or r.value["before"] for r in records if r.value is not None]
    assert rows and all(row["status"] != "cancelled" for row in rows)
    assert len([r for r in records if r.value is not None and r.value["op"] == "r"]) == 400
    assert filtered >= 102  # the cancelled rows' updates (the stream's own count)
    expected = {
        k: row for k, row in source_rows(db, "orders", ["id"]).items() if row["status"] != "cancelled"
    }
    rebuilt = rebuild(records)[topic]
    # its update to cancelled was dropped: the topic keeps the last state the filter let through
    assert rebuilt.pop(orjson.dumps({"id": 2}))["status"] == "open"
    assert rebuilt == expected


def test_route_by_a_column_value(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    db = db_latest
    # a delete carries the whole old row (its region) only with REPLICA IDENTITY FULL
    db.execute(ORDERS + "ALTER TABLE orders REPLICA IDENTITY FULL")
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, snapshot="initial", tables=["public.orders"],
        transforms=[f"{T}:route_by_region"],
    )  # fmt: skip
    with running(settings) as run:
        db.execute("UPDATE orders SET qty = 0 WHERE id IN (1, 2); DELETE FROM orders WHERE id = 3")
        wait_caught_up(db, run)
    eu, us = f"{prefix}.public.orders.eu", f"{prefix}.public.orders.us"
    raw = read_raw(broker.bootstrap_servers, [eu, us])
    assert {r.header("region") for r in raw if r.topic == eu} == {b"eu"}
    events = {r.topic: [x.json() for x in raw if x.topic == r.topic] for r in raw}
    assert all(v is None or (v["after"] or v["before"])["region"] == "eu" for v in events[eu])
    assert all(v is None or (v["after"] or v["before"])["region"] == "us" for v in events[us])
    assert len([v for v in events[eu] if v and v["op"] == "r"]) == 250
    # the delete's tombstone follows it to its topic
    deleted = [i for i, v in enumerate(events[us]) if v is not None and v["op"] == "d"]
    assert deleted and events[us][deleted[0] + 1] is None


def test_rekey_split_and_outbox_records(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = db_latest
    monkeypatch.setenv("OUTBOX_PREFIX", f"{prefix}.outbox")
    db.execute(
        ORDERS + "CREATE TABLE outbox (id bigint PRIMARY KEY, aggregate_type text, aggregate_id text, "
        "event_type text, payload jsonb)"
    )
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, tables=["public.orders"],
        transforms=[f"{T}:split_audit", f"{T}:rekey_by_customer"],
    )  # fmt: skip
    outbox = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, tables=["public.outbox"], transforms=[f"{T}:outbox"],
        slot="outbox_slot", publication="outbox_pub", name="outbox",
    )  # fmt: skip
    with running(settings) as run, running(outbox) as run_outbox:
        db.execute("UPDATE orders SET qty = 9 WHERE id IN (10, 17)")
        db.execute(
            "INSERT INTO outbox VALUES (1, 'order', '10', 'OrderPaid', '{\"total\": 9}'),"
            " (2, 'customer', 'c3', 'CustomerMoved', '{\"to\": \"eu\"}')"
        )
        wait_caught_up(db, run)
        wait_caught_up(db, run_outbox)
    topic = f"{prefix}.public.orders"
    changes = read_raw(broker.bootstrap_servers, [topic, f"{topic}.audit"])
    assert len([r for r in changes if r.topic == topic]) == 2 == len([r for r in changes if r.topic != topic])
    # keyed by customer: orders 10 and 17 both belong to customer 3
    assert [orjson.loads(r.key or b"") for r in changes] == [{"customer_id": 3}] * 4
    records = read_raw(broker.bootstrap_servers, [f"{prefix}.outbox.order", f"{prefix}.outbox.customer"])
    assert sorted((r.topic.rsplit(".", 1)[1], r.key, orjson.loads(r.value or b"")) for r in records) == [
        ("customer", b"c3", {"to": "eu"}),
        ("order", b"10", {"total": 9}),
    ]
    assert {r.header("type") for r in records} == {b"OrderPaid", b"CustomerMoved"}


# -- a transform that raises ---------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["fail", "skip", "dead-letter"])
def test_a_raising_transform_under_each_policy(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path, policy: str
) -> None:
    db = db_latest
    db.execute(ORDERS)
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, tables=["public.orders"],
        transforms=[f"{T}:explode_on_boom"], on_transform_error=policy,
    )  # fmt: skip
    topic, dead = f"{prefix}.public.orders", f"{prefix}.dead-letter"
    with running(settings) as run:
        db.execute("UPDATE orders SET qty = 1 WHERE id = 1")
        before = db.scalar("SELECT pg_current_wal_lsn()::text")
        db.execute("UPDATE orders SET note = 'boom' WHERE id = 2")
        db.execute("UPDATE orders SET qty = 3 WHERE id = 3")
        if policy == "fail":
            wait_until(lambda: run.errors or not run.thread.is_alive(), timeout=30, message="the failure")
            error = run.errors[0]
            assert isinstance(error, TransformError)
            assert re.search(
                rf"transform {T}:explode_on_boom failed on public\.orders at [0-9A-F/]+:1: "
                r"ValueError: cannot handle boom; fix it, or set --on-transform-error skip or dead-letter",
                str(error),
            ), str(error)
            assert run.connector.status.confirmed_lsn <= parse_lsn(before)
            run.errors.clear()
            return
        wait_caught_up(db, run)
        counts = dict(run.connector.status.shaping)
    assert counts[f"transform_errors:{T}:explode_on_boom"] == 1
    ids = [r.value["after"]["id"] for r in read_topics(broker.bootstrap_servers, [topic]) if r.value]
    assert ids == [1, 3]
    if policy == "skip":
        assert "dead_letters:transform" not in counts
        return
    assert counts["dead_letters:transform"] == 1
    [letter] = read_raw(broker.bootstrap_servers, [dead])
    assert letter.header("table") == b"public.orders"
    assert orjson.loads(letter.header("key")) == {"id": 2}
    assert (
        letter.header("stage") == b"transform"
        and letter.header("transform") == f"{T}:explode_on_boom".encode()
    )
    assert letter.header("error") == b"ValueError: cannot handle boom"
    assert letter.header("topic") == topic.encode() and re.fullmatch(
        rb"[0-9A-F/]+:1", letter.header("position")
    )
    # the value: the event as it would have been written without the transform
    assert letter.json()["after"]["note"] == "boom" and letter.json()["op"] == "u"
    assert orjson.loads(letter.key or b"") == {"id": 2}


def test_a_value_a_transform_cannot_encode(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    """Text put into an integer column does not fit the Avro schema: a record error."""
    db = db_latest
    db.execute(ORDERS)
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, tables=["public.orders"], format="avro",
        transforms=[f"{T}:wrong_type"], on_record_error="dead-letter",
    )  # fmt: skip
    with running(settings) as run:
        db.execute(
            "UPDATE orders SET note = 'bad' WHERE id = 1; UPDATE orders SET note = 'good' WHERE id = 2"
        )
        wait_caught_up(db, run)
        assert run.connector.status.shaping["dead_letters:encode"] == 1
    lines, _ = consume([f"{prefix}.dead-letter", f"{prefix}.public.orders", "--bootstrap-servers",
                        broker.bootstrap_servers, "--from-beginning", "--idle-timeout", "3"])  # fmt: skip
    letters = [x for x in lines if x["topic"].endswith("dead-letter")]
    assert [x["value"]["after"]["note"] for x in letters] == ["bad"]  # the event as it was, in Avro
    assert [x["value"]["after"]["id"] for x in lines if x["topic"].endswith("orders")] == [2]
    [raw] = read_raw(broker.bootstrap_servers, [f"{prefix}.dead-letter"])
    assert raw.header("stage") == b"encode" and b"qty" in raw.header("error")
    # without dead letters: it stops, as before
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, tables=["public.orders"], format="avro",
        transforms=[f"{T}:wrong_type"], name=settings.name,
    )  # fmt: skip
    with running(settings, wait_streaming=False) as run:
        db.execute("UPDATE orders SET note = 'bad' WHERE id = 3")
        wait_until(lambda: run.errors, timeout=30, message="the failure")
        assert isinstance(run.errors[0], SchemaError) and "qty" in str(run.errors[0])
        run.errors.clear()


# -- schemas follow transforms and masks ------------------------------------------------------

PEOPLE = """
CREATE TABLE people (id int PRIMARY KEY, first text, last text, password text, email text, born date);
INSERT INTO people VALUES (1, 'Ada', 'Lovelace', 'pw1', 'ada@example.com', '1815-12-10'),
                          (2, 'Grace', 'Hopper', 'pw2', 'grace@example.com', '1906-12-09');
"""


def test_declared_output_columns_give_the_avro_schema(
    db: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    db.execute(PEOPLE)
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, snapshot="initial", tables=["public.people"],
        format="avro", transforms=[f"{T}:enrich"],
    )  # fmt: skip
    with running(settings) as run:
        db.execute("INSERT INTO people VALUES (3, 'Alan', 'Turing', 'pw3', 'alan@example.com', '1912-06-23')")
        wait_caught_up(db, run)
        serializer: Any = run.connector.serializer
    lines, errors = consume([f"{prefix}.public.people", "--bootstrap-servers", broker.bootstrap_servers,
                             "--from-beginning", "--idle-timeout", "3"])  # fmt: skip
    assert errors == []
    afters = [x["value"]["after"] for x in lines]
    assert [a["full_name"] for a in afters] == ["Ada Lovelace", "Grace Hopper", "Alan Turing"]
    assert [a["name_length"] for a in afters] == [12, 12, 11]
    assert all("password" not in a for a in afters)
    [schema] = [
        r.schema.schema for r in serializer.registrations if r.schema.subject.endswith("people-value")
    ]
    fields = {f["name"]: f["type"] for f in schema["fields"][0]["type"][1]["fields"]}
    assert fields["full_name"] == ["null", "string"] and fields["name_length"] == ["null", "int"]
    assert "password" not in fields


def test_masked_columns_hash_alike_in_snapshot_and_stream(
    db: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path, tmp_path: Path
) -> None:
    """--mask-columns: a keyed hash (equal values stay equal) whatever the column's type, typed as
    a string in the schema; never the value in clear."""
    db.execute(PEOPLE)
    salt = tmp_path / "salt"
    salt.write_text("a secret salt of more than sixteen bytes\n")
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, snapshot="initial", tables=["public.people"],
        format="avro", mask_columns={"public.people": ["email", "born"]}, mask_salt_file=str(salt),
    )  # fmt: skip
    with running(settings) as run:
        db.execute("INSERT INTO people VALUES (3, 'Ada', 'Again', 'pw', 'ada@example.com', '1815-12-10')")
        db.execute("UPDATE people SET first = 'Grace B.' WHERE id = 2")
        wait_caught_up(db, run)
        serializer: Any = run.connector.serializer
    lines, _ = consume([f"{prefix}.public.people", "--bootstrap-servers", broker.bootstrap_servers,
                        "--from-beginning", "--idle-timeout", "3"])  # fmt: skip
    afters = {x["value"]["after"]["id"]: x["value"]["after"] for x in lines if x["value"]["op"] in "rc"}
    assert all(re.fullmatch(r"[0-9a-f]{64}", a["email"]) and re.fullmatch(r"[0-9a-f]{64}", a["born"])
               for a in afters.values())  # fmt: skip
    assert afters[1]["email"] == afters[3]["email"] and afters[1]["born"] == afters[3]["born"]
    assert afters[1]["email"] != afters[2]["email"]
    assert not any(b"example.com" in orjson.dumps(x) for x in lines)
    [schema] = [
        r.schema.schema for r in serializer.registrations if r.schema.subject.endswith("people-value")
    ]
    fields = {f["name"]: f["type"] for f in schema["fields"][0]["type"][1]["fields"]}
    assert fields["born"] == ["null", "string"]  # a date, masked: a string


def test_a_fixed_mask_and_a_masking_transform(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path
) -> None:
    db = db_latest
    db.execute(PEOPLE)
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, snapshot="initial", tables=["public.people"],
        mask_columns={"public.*": ["password"]}, mask_text="[hidden]", transforms=[f"{T}:mask_email"],
    )  # fmt: skip
    with running(settings) as run:
        db.execute("UPDATE people SET password = 'new' WHERE id = 1")
        wait_caught_up(db, run)
    topic = f"{prefix}.public.people"
    rows = [r.value["after"] for r in read_topics(broker.bootstrap_servers, [topic]) if r.value]
    assert {row["password"] for row in rows} == {"[hidden]"}
    assert all(re.fullmatch(r"[0-9a-f]{64}", row["email"]) for row in rows)
