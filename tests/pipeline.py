"""Test helpers around the real pipeline: settings for a test database, read topics, rebuild tables.

Running the connector itself: `tests.support.connector`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from cdc.config import Settings
from cdc.lsn import parse_lsn
from tests.fix_servers import TestDb
from tests.support.connector import Running
from tests.support.topics import read_raw
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
    bootstrap: str, topics: list[str], idle_ms: int = 1000, isolation: str = "read_uncommitted"
) -> list[Record]:
    """Every record of ``topics`` with its JSON key and value, in partition order (`read_raw`)."""
    return [
        Record(
            r.topic,
            r.partition,
            r.offset,
            None if r.key is None else orjson.loads(r.key),
            None if r.value is None else orjson.loads(r.value),
        )
        for r in read_raw(bootstrap, topics, isolation, idle_ms)
    ]


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
