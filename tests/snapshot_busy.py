"""An initial snapshot on a busy database: writes everywhere, a TRUNCATE loop, a table rewrite.

The application keeps inserting, updating and deleting orders, inserts into
an audit log that it truncates every few hundred milliseconds, and rewrites a
third table (``ALTER TABLE ... ALTER COLUMN ... TYPE``) while the connector
takes its initial snapshot in small chunks. The connector must not stop; the
tables it could no longer read in the snapshot are read again incrementally,
and every table rebuilt from Kafka must equal the source.

``python -m tests.snapshot_busy --runs 20`` repeats it on its own servers and
prints one line per run (the issue's "20 consecutive runs").
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from tests.fix_servers import TestDb
from tests.pipeline import read_topics, rebuild, settings_for, source_rows, wait_caught_up
from tests.support import running, wait_until

TABLES = ("shop.orders", "shop.audit_log", "shop.items")
SCHEMA = """
CREATE SCHEMA shop;
CREATE TABLE shop.orders (id int PRIMARY KEY, v int NOT NULL, note text);
CREATE TABLE shop.audit_log (id bigserial PRIMARY KEY, what text NOT NULL);
CREATE TABLE shop.items (id int PRIMARY KEY, qty int NOT NULL);
INSERT INTO shop.orders SELECT g, 1, md5(g::text) FROM generate_series(1, 3000) g;
INSERT INTO shop.audit_log (what) SELECT 'boot ' || g FROM generate_series(1, 2000) g;
INSERT INTO shop.items SELECT g, g FROM generate_series(1, 3000) g;
"""


@dataclass
class Application:
    """The busy application: three threads until stopped."""

    db: TestDb
    seed: int
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)
    truncates: int = 0
    rewrites: int = 0
    writes: int = 0
    rewrite_now: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Application:
        for target in (self._orders, self._audit, self._items):
            thread = threading.Thread(target=self._guard, args=(target,), daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def finish(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(60)
        if self.errors:
            raise self.errors[0]

    def _guard(self, target: Any) -> None:
        try:
            with psycopg.connect(self.db.dsn, autocommit=True) as conn:
                target(conn, random.Random(self.seed * 7 + len(self._threads)))
        except BaseException as exc:
            self.errors.append(exc)

    def _orders(self, conn: psycopg.Connection[Any], rng: random.Random) -> None:
        next_id = 3000
        while not self.stop.wait(0.002):
            roll = rng.random()
            if roll < 0.4:
                next_id += 1
                conn.execute("INSERT INTO shop.orders VALUES (%s, 1, 'new')", (next_id,))
            elif roll < 0.9:
                conn.execute("UPDATE shop.orders SET v = v + 1 WHERE id = %s", (rng.randint(1, next_id),))
            else:
                conn.execute("DELETE FROM shop.orders WHERE id = %s", (rng.randint(1, next_id),))
            self.writes += 1

    def _audit(self, conn: psycopg.Connection[Any], rng: random.Random) -> None:
        last_truncate = time.monotonic()
        while not self.stop.wait(0.003):
            conn.execute("INSERT INTO shop.audit_log (what) VALUES (%s)", (f"event {rng.random()}",))
            if time.monotonic() - last_truncate > rng.uniform(0.2, 0.6):
                conn.execute("TRUNCATE shop.audit_log")
                self.truncates += 1
                last_truncate = time.monotonic()

    def _items(self, conn: psycopg.Connection[Any], rng: random.Random) -> None:
        kind = "bigint"
        while not self.stop.wait(0.005):
            conn.execute("UPDATE shop.items SET qty = qty + 1 WHERE id = %s", (rng.randint(1, 3000),))
            if self.rewrite_now.is_set():
                self.rewrite_now.clear()
                conn.execute(f"ALTER TABLE shop.items ALTER COLUMN qty TYPE {kind}")  # a table rewrite
                kind = "int" if kind == "bigint" else "bigint"
                self.rewrites += 1


@dataclass
class Outcome:
    exact: bool
    seconds: float
    truncates: int
    rewrites: int
    writes: int
    reread: list[str]
    differences: list[str]


def busy_snapshot(db: TestDb, bootstrap: str, prefix: str, state_dir: Path, seed: int) -> Outcome:
    """One run: the snapshot under the busy application, then a comparison of every table."""
    db.execute(SCHEMA)
    settings = settings_for(
        db, bootstrap, prefix, state_dir, snapshot="initial", tables=list(TABLES), snapshot_chunk_rows=150,
        snapshot_workers=2, reconnect_max_seconds=1.0,
    )  # fmt: skip
    started = time.monotonic()
    with Application(db, seed) as app, running(settings, wait_streaming=False) as run:
        # the rewrite lands inside the snapshot: once its first chunks are in Kafka
        wait_until(
            lambda: (
                run.errors or run.connector.status.snapshot.get("tables") or run.connector.status.progressed
            ),
            timeout=60,
            message="the snapshot to start",
        )
        app.rewrite_now.set()
        wait_until(
            lambda: run.errors or run.connector.status.state == "running", timeout=180, message="streaming"
        )
        assert not run.errors, run.errors
        time.sleep(1.0)  # the application goes on while the stream and the incremental snapshots run
        app.finish()
        wait_caught_up(db, run, timeout=120)
        wait_until(
            lambda: run.errors or run.connector.status.snapshot.get("incremental") == [],
            timeout=180,
            message="the incremental snapshots to finish",
        )
        wait_caught_up(db, run, timeout=120)
        assert not run.errors, run.errors
        plans = run.connector.status.snapshot.get("tables", {})
    reread = sorted(name for name, plan in plans.items() if plan.get("gave_up"))
    topics = [f"{prefix}.{table}" for table in TABLES]
    replica = rebuild(read_topics(bootstrap, topics))
    differences = []
    for table, topic in zip(TABLES, topics, strict=True):
        source = source_rows(db, table, ["id"])
        rebuilt = replica.get(topic, {})
        if rebuilt != source:
            missing = len(set(source) - set(rebuilt))
            extra = len(set(rebuilt) - set(source))
            wrong = sum(1 for k in set(source) & set(rebuilt) if source[k] != rebuilt[k])
            differences.append(f"{table}: {missing} missing, {extra} extra, {wrong} different")
    return Outcome(
        not differences,
        time.monotonic() - started,
        app.truncates,
        app.rewrites,
        app.writes,
        reread,
        differences,
    )


def main() -> None:
    """The issue's repeated runs, on servers of their own."""
    from cdc.devservers import Broker, PostgresServer, find_pg_installs
    from tests.fix_servers import new_db

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--major", type=int, default=0, help="Postgres major version (default: newest)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    installs = sorted(find_pg_installs(), key=lambda i: i.major)
    install = next((i for i in installs if i.major == args.major), installs[-1])
    failures = 0
    with (
        PostgresServer.create(install) as server,
        Broker.create() as broker,
        tempfile.TemporaryDirectory() as tmp,
    ):
        for run in range(1, args.runs + 1):
            db = new_db(server)
            state = Path(tmp) / f"run{run}"
            try:
                outcome = busy_snapshot(db, broker.bootstrap_servers, f"busy{run}", state, seed=run)
            except BaseException as exc:  # a run that did not finish counts as a failure
                failures += 1
                print(f"run {run:2}: FAILED {exc!r}", flush=True)
                continue
            finally:
                db.drop()
            failures += not outcome.exact
            print(
                f"run {run:2} (PG {install.major}): {'exact' if outcome.exact else 'NOT EXACT'} in "
                f"{outcome.seconds:.1f} s; {outcome.truncates} truncates, {outcome.rewrites} rewrites, "
                f"{outcome.writes} order writes during it; read again: {', '.join(outcome.reread) or '-'}"
                f"{'; ' + '; '.join(outcome.differences) if outcome.differences else ''}",
                flush=True,
            )
    print(
        f"{args.runs - failures} of {args.runs} runs exact, none stopped"
        if not failures
        else f"{failures} failed"
    )
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
