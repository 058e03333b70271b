"""Test helpers around the real pipeline: settings for a test database, read topics, rebuild tables.

Running the connector itself: `tests.support.connector`.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, TopicPartition

from cdc.config import Settings
from cdc.lsn import parse_lsn
from tests.fix_servers import TestDb
from tests.support.connector import Running
from tests.support.wait import wait_until


def settings_for(db: TestDb, bootstrap: str, prefix: str, state_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "dsn": db.dsn,
        "bootstrap_servers": bootstrap,
        "name": "c" + secrets.token_hex(4),
        "topic_prefix": prefix,
        "state_dir": state_dir,
        "format": "json",
        "snapshot": "never",
        "status_interval": 0.2,
    }
    values.update(overrides)
    return Settings(**values)


def wait_caught_up(db: TestDb, run: Running, timeout: float = 60) -> None:
    """Until the connector has confirmed everything written so far."""
    target = parse_lsn(db.scalar("SELECT pg_current_wal_lsn()::text"))

    def done() -> bool:
        if run.errors:
            raise run.errors[0]
        return run.connector.status.confirmed_lsn >= target

    wait_until(done, timeout=timeout, message="the connector to confirm the current WAL position")


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: Any
    value: Any


def read_topics(
    bootstrap: str, topics: list[str], idle_ms: int = 1500, isolation: str = "read_uncommitted"
) -> list[Record]:
    """Every record of ``topics``, in partition order: up to each partition's end offset as the
    broker gave it when the read began, then until a poll comes back empty (records still arriving).

    A partition whose first record read lies past the broker's beginning offset is read again with a
    new consumer (a consumer that skipped a record would otherwise look like a connector that lost
    one); what the second read finds is what counts, so a record missing from Kafka still fails.
    """
    consumer = _consumer(bootstrap, isolation)
    try:
        partitions = []
        for topic in topics:

            def found(topic: str = topic) -> set[int] | None:
                result: set[int] | None = consumer.partitions_for_topic(topic)
                return result

            ids = wait_until(found, timeout=30, message=f"topic {topic}")
            partitions += [TopicPartition(topic, p) for p in sorted(ids)]
        records, beginning = _read(consumer, partitions, idle_ms)
    finally:
        consumer.close()
    first: dict[TopicPartition, int] = {}
    for r in reversed(records):  # read in offset order within a partition
        first[TopicPartition(r.topic, r.partition)] = r.offset
    late = {tp for tp, offset in first.items() if offset > beginning[tp]}
    if late:
        again = _consumer(bootstrap, isolation)
        try:
            reread, _ = _read(again, sorted(late), idle_ms)
        finally:
            again.close()
        records = [r for r in records if TopicPartition(r.topic, r.partition) not in late] + reread
    records.sort(key=lambda r: (r.topic, r.partition, r.offset))
    return records


def _read(
    consumer: KafkaConsumer, partitions: list[TopicPartition], idle_ms: int, timeout: float = 120
) -> tuple[list[Record], dict[TopicPartition, int]]:
    consumer.assign(partitions)
    beginning: dict[TopicPartition, int] = consumer.beginning_offsets(partitions)
    end: dict[TopicPartition, int] = consumer.end_offsets(partitions)
    consumer.seek_to_beginning()
    records: list[Record] = []
    deadline = time.monotonic() + timeout
    while True:
        batch = consumer.poll(timeout_ms=idle_ms, max_records=10_000)
        for tp, items in batch.items():
            for r in items:
                key = None if r.key is None else orjson.loads(r.key)
                value = None if r.value is None else orjson.loads(r.value)
                records.append(Record(tp.topic, tp.partition, r.offset, key, value))
        if batch:
            continue
        behind = [tp for tp in partitions if consumer.position(tp) < end[tp]]
        if not behind:
            return records, beginning
        if time.monotonic() > deadline:
            tp = behind[0]
            at = consumer.position(tp)
            raise AssertionError(f"reading {tp}: at offset {at} of {end[tp]} after {timeout:g} s")


def _consumer(bootstrap: str, isolation: str) -> KafkaConsumer:
    return KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level=isolation)


def rebuild(records: list[Record], placeholder: str = "__cdc_unavailable_value") -> dict[str, dict[Any, Any]]:
    """Apply change events in topic order: {topic: {key json: row}}, as a downstream replica would."""
    tables: dict[str, dict[Any, Any]] = {}
    for record in records:
        rows = tables.setdefault(record.topic, {})
        value = record.value
        if value is None:
            continue  # tombstone: the delete event before it already removed the row
        op = value["op"]
        if op == "t":
            rows.clear()
            continue
        key = orjson.dumps(record.key, option=orjson.OPT_SORT_KEYS)
        if op in ("c", "r", "u"):
            before_key = None
            if op == "u" and value["before"] is not None and record.key is not None:
                old = {k: value["before"][k] for k in record.key}
                if old != record.key:
                    before_key = orjson.dumps(old, option=orjson.OPT_SORT_KEYS)
            previous = rows.pop(before_key, None) if before_key else rows.get(key)
            after = dict(value["after"])
            for column, item in after.items():
                if item in (placeholder, [placeholder]) and previous is not None:
                    after[column] = previous[column]
            rows[key] = after
        elif op == "d":
            rows.pop(key, None)
    return tables


def source_rows(db: TestDb, table: str, key: list[str]) -> dict[Any, Any]:
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT row_to_json(t)::text FROM {table} t")
        rows = [orjson.loads(r[0]) for r in cur.fetchall()]
    return {orjson.dumps({k: row[k] for k in key}, option=orjson.OPT_SORT_KEYS): row for row in rows}
