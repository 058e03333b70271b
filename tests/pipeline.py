"""Test helpers around the real pipeline: run a connector, read topics, rebuild tables."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, TopicPartition

from cdc.config import Settings
from cdc.connector import Connector
from cdc.lsn import parse_lsn
from tests.fix_servers import TestDb, wait_until

#: Producer settings that make a lost broker a failed session within seconds, so that tests see
#: the reconnect loop rather than two minutes of retries.
FAST_FAILING_PRODUCER = {
    "kafka-python": {
        "delivery_timeout_ms": "4000",
        "request_timeout_ms": "1500",
        "max_block_ms": "3000",
        "bootstrap_timeout_ms": "2000",
        "reconnect_backoff_max_ms": "500",
    },
    "confluent": {
        "message.timeout.ms": "4000",
        "socket.timeout.ms": "1500",
        "reconnect.backoff.max.ms": "500",
    },
}


def cdc(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the `cdc` command to completion (CDC_* of this environment left out, but CDC_TEST_*)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CDC_") or k.startswith("CDC_TEST_")}
    return subprocess.run(
        [sys.executable, "-m", "cdc", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**clean, **(env or {})},
        check=False,
    )


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The failure as users see it: non-zero exit, one `cdc: error:` line, last, no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("cdc: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    return errors[0]


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


@dataclass
class Running:
    connector: Connector
    thread: threading.Thread
    errors: list[BaseException]

    def stop(self, timeout: float = 60) -> None:
        self.connector.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "connector did not stop"
        if self.errors:
            raise self.errors[0]


@contextlib.contextmanager
def running(settings: Settings, wait_streaming: bool = True) -> Iterator[Running]:
    """The connector in a thread of this process; stopped gracefully on exit."""
    connector = Connector(settings)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            connector.run()
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="connector", daemon=True)
    thread.start()
    handle = Running(connector, thread, errors)
    if wait_streaming:
        wait_until(
            lambda: connector.status.state == "running" or errors or not thread.is_alive(),
            timeout=60,
            message="the connector to start streaming",
        )
        if errors:
            raise errors[0]
    try:
        yield handle
    finally:
        if thread.is_alive():
            handle.stop()


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
    """Every record of ``topics``, in partition order, reading until a poll comes back empty."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level=isolation)
    try:
        partitions = []
        for topic in topics:

            def found(topic: str = topic) -> set[int] | None:
                result: set[int] | None = consumer.partitions_for_topic(topic)
                return result

            ids = wait_until(found, timeout=30, message=f"topic {topic}")
            partitions += [TopicPartition(topic, p) for p in sorted(ids)]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        records: list[Record] = []
        while True:
            batch = consumer.poll(timeout_ms=idle_ms, max_records=10_000)
            if not batch:
                break
            for tp, items in batch.items():
                for r in items:
                    records.append(
                        Record(
                            tp.topic,
                            tp.partition,
                            r.offset,
                            None if r.key is None else orjson.loads(r.key),
                            None if r.value is None else orjson.loads(r.value),
                        )
                    )
        records.sort(key=lambda r: (r.topic, r.partition, r.offset))
        return records
    finally:
        consumer.close()


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
                if item == placeholder and previous is not None:
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
