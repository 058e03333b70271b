"""Transaction boundaries on <prefix>.transaction and heartbeats on <prefix>.heartbeat."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.consuming import consume
from tests.fix_servers import BrokerHandle, TestDb
from tests.pipeline import settings_for, wait_caught_up
from tests.support import running, wait_until


def read(broker: BrokerHandle, prefix: str, topics: list[str], most: int = 0) -> list[dict[str, Any]]:
    args = [*topics, "--bootstrap-servers", broker.bootstrap_servers, "--topic-prefix", prefix]
    limit = ["--max-messages", str(most)] if most else []
    lines, errors = consume([*args, *limit, "--from-beginning", "--idle-timeout", "2"])
    assert errors == []
    return lines


@pytest.mark.parametrize("fmt", ["avro", "json"])
def test_transaction_boundaries_and_heartbeats(
    db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path, fmt: str
) -> None:
    db = db_latest
    db.execute(
        "CREATE TABLE orders (id int PRIMARY KEY, status text);"
        "CREATE TABLE lines (id int PRIMARY KEY, qty int); CREATE TABLE unpublished (id int)"
    )
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, format=fmt, tables=["public.orders", "public.lines"],
        transaction_metadata=True, heartbeat_interval=0.3,
    )  # fmt: skip
    with running(settings) as run:
        with db.connect() as conn:
            with conn.transaction():
                conn.execute("INSERT INTO orders VALUES (1, 'new')")
                conn.execute("INSERT INTO lines VALUES (1, 2), (2, 3)")
                conn.execute("SELECT pg_logical_emit_message(true, 'outbox', 'order 1 placed')")
            conn.execute("UPDATE orders SET status = 'paid' WHERE id = 1")
            conn.execute("UPDATE orders SET status = 'none' WHERE false")  # no change: no boundaries
            conn.execute("INSERT INTO unpublished VALUES (1)")  # not captured: no boundaries
        wait_caught_up(db, run)
        wait_until(lambda: run.connector.status.events_total >= 5, timeout=30, message="five events")
        # heartbeats keep coming while nothing changes
        wait_until(
            lambda: len(read(broker, prefix, [f"{prefix}.heartbeat"], most=3)) == 3,
            timeout=30,
            message="three heartbeats",
        )
    boundaries = read(broker, prefix, [f"{prefix}.transaction"])
    data = read(broker, prefix, [f"{prefix}.public.orders", f"{prefix}.public.lines", f"{prefix}.messages"])
    by_txn = Counter(line["value"]["transaction"]["id"] for line in data)
    assert len(by_txn) == 2 and sorted(by_txn.values()) == [1, 4]

    assert [b["value"]["status"] for b in boundaries] == ["BEGIN", "END", "BEGIN", "END"]
    for begin, end in (boundaries[0:2], boundaries[2:4]):
        txn_id = begin["value"]["id"]
        assert begin["key"] == end["key"] == {"id": txn_id} and end["value"]["id"] == txn_id
        assert begin["value"]["event_count"] is None and begin["value"]["data_collections"] is None
        assert end["value"]["event_count"] == by_txn[txn_id]
        assert begin["partition"] == end["partition"] and begin["offset"] < end["offset"]
    first_end = boundaries[1]["value"]
    collections = {c["data_collection"]: c["event_count"] for c in first_end["data_collections"]}
    assert collections == {"public.orders": 1, "public.lines": 2, "messages": 1}
    heartbeats = [line["value"] for line in read(broker, prefix, [f"{prefix}.heartbeat"])]
    assert all(h["name"] == settings.name for h in heartbeats)
    assert [h["ts_ms"] for h in heartbeats] == sorted(h["ts_ms"] for h in heartbeats)
    assert heartbeats[-1]["lsn"] >= heartbeats[0]["lsn"] > 0
