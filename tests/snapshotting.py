"""Helpers of the snapshot tests: concurrent writers with per-row versions, and topic checks."""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg

from tests.fix_servers import TestDb
from tests.pipeline import Record


@dataclass
class Writers:
    """Threads that keep inserting, updating (``v = v + 1``) and deleting rows until stopped.

    Every table written has an integer key column ``id`` and a version column
    ``v``: an insert starts at 1, each update adds 1, and keys are never
    reused, so the events of one key must show 1 (or the snapshot's v), then
    v + 1, v + 2, ... with nothing missing and nothing twice.
    """

    db: TestDb
    tables: list[str]
    first_new_id: int
    hot: int = 0  # > 0: half of the updates go to ids 1..hot
    threads: int = 2
    pause: float = 0.002
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)
    ops: int = 0
    _workers: list[threading.Thread] = field(default_factory=list)
    _next_id: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Writers:
        self._next_id = self.first_new_id
        for n in range(self.threads):
            thread = threading.Thread(target=self._run, args=(n,), daemon=True, name=f"writer-{n}")
            self._workers.append(thread)
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def finish(self) -> None:
        self.stop.set()
        for thread in self._workers:
            thread.join(30)
        if self.errors:
            raise self.errors[0]

    def _new_id(self) -> int:
        with self._lock:
            self._next_id += 1
            return self._next_id

    def _run(self, n: int) -> None:
        rng = random.Random(n)
        try:
            with psycopg.connect(self.db.dsn, autocommit=True) as conn:
                while not self.stop.is_set():
                    table = rng.choice(self.tables)
                    self._one(conn, rng, table)
                    self.ops += 1
                    if self.pause:
                        self.stop.wait(self.pause)
        except BaseException as exc:
            self.errors.append(exc)

    def _one(self, conn: psycopg.Connection[Any], rng: random.Random, table: str) -> None:
        roll = rng.random()
        top = max(self._next_id, self.first_new_id)
        target = rng.randint(1, self.hot) if self.hot and roll < 0.5 else rng.randint(1, top)
        if roll < 0.70:
            conn.execute(
                f"UPDATE {table} SET v = v + 1, note = md5(random()::text) WHERE id = %s",
                (target,),
            )
        elif roll < 0.85:
            conn.execute(f"INSERT INTO {table} (id, v, note) VALUES (%s, 1, 'new')", (self._new_id(),))
        elif roll < 0.95:
            with conn.transaction():  # several changes in one transaction
                for _ in range(3):
                    conn.execute(
                        f"UPDATE {table} SET v = v + 1 WHERE id = %s",
                        (rng.randint(1, top),),
                    )
        else:
            conn.execute(f"DELETE FROM {table} WHERE id = %s", (target,))


def by_key(records: list[Record]) -> dict[tuple[str, str], list[Record]]:
    """Events (no tombstones) per (topic, key), in topic order."""
    keyed: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for record in records:
        if record.value is not None:
            keyed[(record.topic, orjson.dumps(record.key, option=orjson.OPT_SORT_KEYS).decode())].append(
                record
            )
    return keyed


def version_problems(records: list[Record], strict_snapshot: bool = True) -> list[str]:
    """Per key, where the ``v`` sequence shows a lost, repeated or stale change.

    After the first event of a key, an update must carry exactly v + 1, a
    delete ends the key, and a snapshot read must not go back in time. With
    ``strict_snapshot`` (initial snapshots), a read also must not follow a
    streamed change: the snapshot precedes the stream.
    """
    problems: list[str] = []
    for (topic, key), events in by_key(records).items():
        if "v" not in (events[0].value["after"] or events[0].value["before"] or {}):
            continue  # not a versioned table
        version: int | None = None
        streamed = deleted = False
        for record in events:
            value = record.value
            op = value["op"]
            where = f"{topic} {key} at offset {record.offset}"
            if deleted:
                problems.append(f"{where}: {op} after the delete")
                break
            if op == "r":
                v = value["after"]["v"]
                if strict_snapshot and streamed:
                    problems.append(f"{where}: snapshot read after a streamed change")
                if version is not None and v < version:
                    problems.append(f"{where}: snapshot read v={v} after v={version} (stale)")
                version = v
            elif op == "c":
                if version is not None:
                    problems.append(f"{where}: insert of an existing key (v={version})")
                version, streamed = value["after"]["v"], True
            elif op == "u":
                v = value["after"]["v"]
                if version is not None and v != version + 1:
                    kind = "repeated" if v <= version else "missing"
                    problems.append(f"{where}: update to v={v} after v={version} ({kind} change)")
                version, streamed = v, True
            elif op == "d":
                deleted = streamed = True
    return problems
