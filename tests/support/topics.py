"""Reading back what a test's topics hold: every record, as bytes, with one rule for when it is all.

One reader for the tests (JSON records, the interop tests' raw bytes): reading until a poll
comes back empty alone lost records under load (a first fetch slower than the idle wait, a
consumer that began past a record), which looked like a connector that lost them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from kafka import KafkaConsumer, TopicPartition

from tests.support.wait import wait_until


@dataclass(frozen=True, slots=True)
class RawRecord:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()

    def json(self) -> Any:
        """The value as JSON (None for a tombstone)."""
        return None if self.value is None else orjson.loads(self.value)

    def header(self, name: str) -> bytes:
        """The value of the last header called ``name`` (KeyError if none is)."""
        return dict(self.headers)[name]


def read_raw(
    bootstrap: str,
    topics: list[str],
    isolation: str = "read_uncommitted",
    poll_ms: int = 1000,
    timeout: float = 120,
) -> list[RawRecord]:
    """Every record of ``topics`` (waiting up to 30 s for each to exist), sorted by topic, partition
    and offset: each partition up to the end offset the broker gave when reading began, then until a
    poll comes back empty (records still arriving).

    A partition whose offsets read are not one run from the broker's beginning offset to its end
    (the first read past the beginning, a hole, nothing read of a partition that holds records) is
    read again with a new consumer: a consumer that skipped records would otherwise look like a
    connector that lost them. What the second read finds is what counts, so a record missing from
    Kafka still fails. (A transaction's commit marker also leaves a hole: such partitions are read
    twice, and the second read gives the same records.)
    ``isolation="read_committed"`` reads what Kafka committed, as exactly-once consumers do.
    """
    consumer = new_consumer(bootstrap, isolation)
    try:
        partitions = []
        for topic in topics:

            def found(topic: str = topic) -> set[int] | None:
                result: set[int] | None = consumer.partitions_for_topic(topic)
                return result

            ids = wait_until(found, timeout=30, message=f"topic {topic}")
            partitions += [TopicPartition(topic, p) for p in sorted(ids)]
        records, beginning, end = _read(consumer, partitions, poll_ms, timeout)
    finally:
        consumer.close()
    offsets: dict[TopicPartition, list[int]] = {tp: [] for tp in partitions}
    for r in records:  # read in offset order within a partition
        offsets[TopicPartition(r.topic, r.partition)].append(r.offset)
    holed = {tp for tp, read in offsets.items() if not _whole(read, beginning[tp], end[tp])}
    if holed:
        again = new_consumer(bootstrap, isolation)
        try:
            reread, _, _ = _read(again, sorted(holed), poll_ms, timeout)
        finally:
            again.close()
        records = [r for r in records if TopicPartition(r.topic, r.partition) not in holed] + reread
    records.sort(key=lambda r: (r.topic, r.partition, r.offset))
    return records


def _whole(offsets: list[int], beginning: int, end: int) -> bool:
    """``offsets`` (as read) run from ``beginning`` without a hole to at least ``end`` - 1 (Tansu's
    end can be short of the true end; a read past it is whole too)."""
    if not offsets:
        return end <= beginning
    return offsets[0] == beginning and offsets[-1] >= end - 1 and offsets[-1] - offsets[0] == len(offsets) - 1


def _read(
    consumer: KafkaConsumer, partitions: list[TopicPartition], poll_ms: int, timeout: float
) -> tuple[list[RawRecord], dict[TopicPartition, int], dict[TopicPartition, int]]:
    """The records of ``partitions`` and the broker's beginning and end offsets when reading began."""
    consumer.assign(partitions)
    beginning: dict[TopicPartition, int] = consumer.beginning_offsets(partitions)
    end: dict[TopicPartition, int] = consumer.end_offsets(partitions)
    consumer.seek_to_beginning()
    records: list[RawRecord] = []
    deadline = time.monotonic() + timeout
    while True:
        batch = consumer.poll(timeout_ms=poll_ms, max_records=10_000)
        for tp, items in batch.items():
            topic, partition = tp.topic, tp.partition
            records += (
                RawRecord(topic, partition, r.offset, r.timestamp, r.key, r.value, tuple(r.headers or ()))
                for r in items
            )
        if batch:
            continue
        # Tansu's end offset can be the last batch's base offset + 1, short of the true end; a
        # fetch returns whole batches, so a position past it means the last batch was read
        behind = [tp for tp in partitions if consumer.position(tp) < end[tp]]
        if not behind:
            return records, beginning, end
        if time.monotonic() > deadline:
            tp = behind[0]
            at = consumer.position(tp)
            raise TimeoutError(f"reading {tp}: at offset {at} of {end[tp]} after {timeout:g} s")


def existing(bootstrap: str, topics: list[str]) -> list[str]:
    """Those of ``topics`` the broker has now (a test that checks a topic was never made)."""
    consumer = new_consumer(bootstrap, "read_uncommitted")
    try:
        have = consumer.topics()
    finally:
        consumer.close()
    return [t for t in topics if t in have]


def records_in(bootstrap: str, topic: str) -> int:
    """How many records the partitions of ``topic`` hold, uncommitted ones included (0 before it
    exists): a test that must act while a transaction is half written waits on it."""
    consumer = new_consumer(bootstrap, "read_uncommitted")
    try:
        ids = consumer.partitions_for_topic(topic)
        if not ids:
            return 0
        partitions = [TopicPartition(topic, p) for p in ids]
        end: dict[TopicPartition, int] = consumer.end_offsets(partitions)
    finally:
        consumer.close()
    return sum(end.values())


def new_consumer(bootstrap: str, isolation: str) -> KafkaConsumer:
    """A consumer without a group that fetches in large batches (a test reads whole topics)."""
    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level=isolation,
        fetch_max_bytes=16 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_wait_ms=100,
    )
