"""The verifier catches what it is there to catch: fed hand-made records, no servers.

A clean stream passes; each kind of damage a broken connector could do
(a lost change, a leaked rollback, a reordered key, a duplicate that is not a
repeat, a snapshot read from the wrong time, any duplicate at all at exactly-once)
is reported.
"""

from __future__ import annotations

from typing import Any

import orjson

from tests.chaos.verify import Report, verify
from tests.chaos.workload import Change, Ledger, Txn
from tests.support.topics import RawRecord

ACCOUNTS = "chaos.accounts"
TXLOG = "chaos.txlog"


def ledger() -> Ledger:
    """Three committed transactions (tags 1, 2, 4) and a rolled-back one (tag 3)."""
    book = Ledger()
    book.committed = [
        Txn(1, "small", [Change(TXLOG, 1, "c", 1), Change(ACCOUNTS, 10, "c", 1)], 0x100, 0x200, True),
        Txn(2, "small", [Change(TXLOG, 2, "c", 1), Change(ACCOUNTS, 10, "u", 2)], 0x200, 0x300, True),
        Txn(4, "small", [Change(TXLOG, 4, "c", 1), Change(ACCOUNTS, 10, "d", 2)], 0x400, 0x500, True),
    ]
    book.aborted = {3}
    return book


def event(table: str, op: str, row: dict[str, Any], tag: int, commit_lsn: int, order: int) -> tuple[Any, Any]:
    schema, name = table.split(".")
    key = {"txn": row["txn"]} if name == "txlog" else {"id": row["id"]}
    value = {
        "before": row if op == "d" else None,
        "after": None if op == "d" else row,
        "source": {"schema": schema, "table": name, "txId": 700 + tag, "commit_lsn": commit_lsn,
                   "lsn": commit_lsn - 8 + order, "ts_ms": 1000},
        "op": op,
        "ts_ms": 2000,
        "transaction": {"id": f"{700 + tag}:{commit_lsn}", "total_order": order, "data_collection_order": 1},
    }  # fmt: skip
    return key, value


def stream() -> list[tuple[str, Any, Any]]:
    """(topic, key, value) of the clean stream of `ledger`."""
    return [
        ("p.chaos.txlog", *event(TXLOG, "c", {"txn": 1, "kind": "small"}, 1, 0x180, 1)),
        (
            "p.chaos.accounts",
            *event(ACCOUNTS, "c", {"id": 10, "version": 1, "txn": 1, "body": "a"}, 1, 0x180, 2),
        ),
        ("p.chaos.txlog", *event(TXLOG, "c", {"txn": 2, "kind": "small"}, 2, 0x280, 1)),
        (
            "p.chaos.accounts",
            *event(ACCOUNTS, "u", {"id": 10, "version": 2, "txn": 2, "body": "b"}, 2, 0x280, 2),
        ),
        ("p.chaos.txlog", *event(TXLOG, "c", {"txn": 4, "kind": "small"}, 4, 0x480, 1)),
        (
            "p.chaos.accounts",
            *event(ACCOUNTS, "d", {"id": 10, "version": 2, "txn": 2, "body": "b"}, 4, 0x480, 2),
        ),
        ("p.chaos.accounts", {"id": 10}, None),  # the delete's tombstone
    ]


def check(items: list[tuple[str, Any, Any]], **options: Any) -> Report:
    offsets: dict[str, int] = {}
    records = []
    for topic, key, value in items:
        offset = offsets[topic] = offsets.get(topic, -1) + 1
        records.append(RawRecord(topic, 0, offset, 3000, orjson.dumps(key),
                                 None if value is None else orjson.dumps(value)))  # fmt: skip
    return verify(records, ledger(), **options)


def violations(report: Report) -> str:
    return "\n".join(report.violations)


def test_a_clean_stream_passes() -> None:
    report = check(stream())
    assert report.ok, report.summary()
    assert report.changes_verified == report.changes_expected == 6 and report.duplicates == 0


def test_an_exact_repeat_is_a_duplicate_not_a_violation() -> None:
    items = stream()
    items.insert(4, items[2])  # txlog of tag 2, sent again (at-least-once)
    items.insert(5, (items[3][0], items[3][1], {**items[3][2], "ts_ms": 9999}))  # processing time differs
    report = check(items)
    assert report.ok and report.duplicates == 2, report.summary()


def test_a_lost_change_is_reported() -> None:
    items = stream()
    del items[3]  # the update of id 10
    report = check(items)
    assert not report.ok and "missing" in violations(report)


def test_a_lost_transaction_is_reported_unless_the_broker_lost_it() -> None:
    items = [i for i in stream() if (i[2] or {}).get("transaction", {}).get("id", "").split(":")[0] != "701"]
    assert not check(items).ok
    # before the loss horizon (the broker restarted after the connector confirmed it): excused
    report = check(items, horizon=0x150)
    assert report.ok and report.lost_by_broker == 2, report.summary()


def test_a_rolled_back_change_is_reported() -> None:
    items = stream()
    items.append(("p.chaos.txlog", *event(TXLOG, "c", {"txn": 3, "kind": "rollback"}, 3, 0x380, 1)))
    assert "rolled-back transaction 3" in violations(check(items))


def test_a_different_event_at_a_known_position_is_reported() -> None:
    items = stream()
    topic, key, value = items[3]
    items.insert(4, (topic, key, {**value, "after": {**value["after"], "body": "changed"}}))
    assert "repeated with different content" in violations(check(items))


def test_a_key_out_of_commit_order_is_reported() -> None:
    items = stream()
    items[1], items[3] = items[3], items[1]  # the update of id 10 before its insert
    report = check(items)
    assert "not in commit order" in violations(report)
    # the key's summary says nothing is missing: the at-least-once timeout gap leaves only this
    summary = [v for v in report.violations if v.startswith(f"{ACCOUNTS} id 10:")]
    assert len(summary) == 1 and summary[0].endswith(", the same changes reordered"), summary


def test_a_key_missing_a_change_is_not_called_reordered() -> None:
    items = stream()
    items[1], items[3] = items[3], items[1]
    del items[1]  # and the update lost: not just another order
    report = check(items)
    assert not report.ok and not any(v.endswith("reordered") for v in report.violations), report.summary()


def test_a_stream_read_while_running_needs_only_what_was_confirmed() -> None:
    items = stream()[:5] + stream()[5:6]  # tag 4 half-read: its delete, not yet its txlog record
    items = [items[i] for i in (0, 1, 2, 3, 5)]
    assert not check(items).ok
    report = check(items, confirmed=0x300)  # the connector had confirmed tags 1 and 2 only
    assert report.ok and report.changes_verified == report.changes_expected == 4, report.summary()
    assert not check(stream()[2:], confirmed=0x300).ok  # tag 1 was confirmed: it must be there


def test_a_delete_without_its_tombstone_is_reported() -> None:
    assert "without its tombstone" in violations(check(stream()[:-1]))


def test_a_delete_sent_again_with_its_tombstone_pays_the_missing_one() -> None:
    """kill -9 between a delete and its tombstone: the next session sends both again."""
    items = stream()
    assert check(items[:-1] + items[-2:]).ok
    # a later delete of the same key still owes its own tombstone
    assert "without its tombstone" in violations(check(items + items[-2:-1]))
    # and a key that changes again before the tombstone of its delete lost that tombstone, even if
    # a tombstone comes later
    found = violations(check([items[i] for i in (0, 1, 4, 5, 2, 3, 6)]))
    assert 'delete of {"id":10} without its tombstone before' in found, found


def test_snapshot_reads_must_be_real_states_not_older_than_the_consistent_point() -> None:
    def read(version: int, tag: int) -> tuple[str, Any, Any]:
        row = {"id": 10, "version": version, "txn": tag, "body": "x"}
        source = {"schema": "chaos", "table": "accounts", "snapshot": "true", "commit_lsn": 0x350}
        value = {"before": None, "after": row, "source": source, "op": "r", "ts_ms": 1, "transaction": None}
        return ("p.chaos.accounts", {"id": 10}, value)

    def txlog_read(tag: int) -> tuple[str, Any, Any]:
        source = {"schema": "chaos", "table": "txlog", "snapshot": "true"}
        row = {"txn": tag, "kind": "small"}
        value = {"before": None, "after": row, "source": source, "op": "r", "ts_ms": 1, "transaction": None}
        return ("p.chaos.txlog", {"txn": tag}, value)

    streamed = stream()[4:]  # tag 4 was committed after the consistent point 0x350
    clean = [txlog_read(1), txlog_read(2), read(2, 2), *streamed]
    report = check(clean, snapshot_lsn=0x350)
    assert report.ok and report.snapshot_reads == 3, report.summary()
    stale = [txlog_read(1), txlog_read(2), read(1, 1), *streamed]  # v1 is older than the consistent point
    assert "older than the consistent point" in violations(check(stale, snapshot_lsn=0x350))
    invented = [txlog_read(1), txlog_read(2), read(2, 3), *streamed]  # a state no transaction committed
    assert "never committed" in violations(check(invented, snapshot_lsn=0x350))
    missing = [txlog_read(1), read(2, 2), *streamed]  # txlog row 2 neither read nor streamed
    assert "do not rebuild the tables" in violations(check(missing, snapshot_lsn=0x350))


def test_exactly_once_allows_no_duplicate_at_all() -> None:
    """At-least-once accepts an exact repeat (counted); exactly-once reports it, even byte for byte."""
    items = stream()
    items.insert(4, items[2])  # txlog of tag 2 delivered twice, identical
    assert check(items).ok
    report = check(items, exactly_once=True)
    assert not report.ok and report.duplicates == 1, report.summary()
    assert "delivered again: exactly-once delivers it once" in violations(report)
    assert check(stream(), exactly_once=True).ok  # a clean stream still passes


def test_exactly_once_reads_each_snapshot_row_once() -> None:
    source = {"schema": "chaos", "table": "txlog", "snapshot": "true"}
    reads = [
        ("p.chaos.txlog", {"txn": tag}, {"before": None, "after": {"txn": tag, "kind": "small"},
                                         "source": source, "op": "r", "ts_ms": 1, "transaction": None})
        for tag in (1, 2)
    ]  # fmt: skip
    accounts = {"schema": "chaos", "table": "accounts", "snapshot": "true"}
    row = {"id": 10, "version": 2, "txn": 2, "body": "b"}
    read = ("p.chaos.accounts", {"id": 10}, {"before": None, "after": row, "source": accounts, "op": "r",
                                             "ts_ms": 1, "transaction": None})  # fmt: skip
    clean = [*reads, read, *stream()[4:]]
    assert check(clean, snapshot_lsn=0x350, exactly_once=True).ok
    twice = [*reads, read, read, *stream()[4:]]  # a resumed snapshot read the row again
    assert check(twice, snapshot_lsn=0x350).ok
    assert "read again" in violations(check(twice, snapshot_lsn=0x350, exactly_once=True))
