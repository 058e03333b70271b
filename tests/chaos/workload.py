"""A workload whose every change is known: the ground truth the verifier checks Kafka against.

Each transaction gets a *tag* (a number from one counter) and writes it
first into ``chaos.txlog``; every row it inserts or updates carries the tag
in its ``txn`` column and a ``version`` that counts the row's changes (1 on
insert). So each change is identified by ``(table, id, op, version)`` and
belongs to exactly one tag, and the txlog row tells, after a lost
connection, whether a transaction whose COMMIT got no answer committed.

Every writer keeps, per transaction, what it changed (in statement order)
and two WAL positions: ``pg_current_wal_insert_lsn()`` before it began and
after it committed, so the commit LSN lies between them. The verifier uses
these to decide which changes a broker that lost its data was allowed to
lose (those the connector had confirmed before).

Keys are never reused: a deleted id never comes back, so a delete is
identified by ``(table, id)`` even when the table's replica identity sends
only the key.

Mixed in, as production does: rolled-back transactions (their tag goes to
`Ledger.aborted`, and none of their changes may reach Kafka), savepoints
rolled back inside committed transactions, TOASTed values left unchanged by
later updates, transactional logical messages, and large transactions.
"""

from __future__ import annotations

import itertools
import random
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from cdc.lsn import parse_lsn

SCHEMA = "chaos"
#: Tables the small transactions write: name -> REPLICA IDENTITY
TABLES: dict[str, str] = {"accounts": "DEFAULT", "orders": "FULL", "items": "DEFAULT"}
BULK = "bulk"  # large transactions only, one writer at a time
TXLOG = "txlog"
MESSAGE_PREFIX = "chaos"

DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE {SCHEMA}.{TXLOG} (txn bigint PRIMARY KEY, kind text NOT NULL);
""" + "".join(
    f"""
CREATE TABLE {SCHEMA}.{name} (id bigint PRIMARY KEY, version int NOT NULL, txn bigint NOT NULL, body text);
ALTER TABLE {SCHEMA}.{name} REPLICA IDENTITY {identity};
"""
    for name, identity in {**TABLES, BULK: "DEFAULT"}.items()
)


def published_tables() -> list[str]:
    return [f"{SCHEMA}.{t}" for t in (TXLOG, *TABLES, BULK)]


@dataclass(slots=True, frozen=True)
class Change:
    """One expected change event. ``table`` is schema.table, or "messages" for a logical message."""

    table: str
    key: int
    op: str  # c, u, d, m
    version: int


@dataclass(slots=True)
class Txn:
    """One transaction as the writer ran it."""

    tag: int
    kind: str
    changes: list[Change]
    lsn_before: int
    lsn_after: int = 0
    committed: bool = False


@dataclass
class Ledger:
    """Every transaction the writers ran: committed ones (in the order they committed) and aborted tags."""

    committed: list[Txn] = field(default_factory=list)
    aborted: set[int] = field(default_factory=set)
    in_doubt_resolved: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    tags: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def next_tag(self) -> int:
        with self.lock:
            return next(self.tags)

    def record(self, txn: Txn) -> None:
        with self.lock:
            if txn.committed:
                self.committed.append(txn)
            else:
                self.aborted.add(txn.tag)

    @property
    def changes_committed(self) -> int:
        with self.lock:
            return sum(len(t.changes) for t in self.committed)

    def snapshot(self) -> tuple[list[Txn], set[int]]:
        with self.lock:
            return list(self.committed), set(self.aborted)


def create_schema(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(DDL)


def big_body(rng: random.Random) -> str:
    """Incompressible text above the TOAST threshold, so Postgres stores it out of line."""
    return rng.randbytes(2500).hex()


def _insert_lsn(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    assert row is not None
    return parse_lsn(row[0])


class Writer:
    """One connection running transactions and recording them; survives a lost connection."""

    def __init__(self, dsn: str, ledger: Ledger, rng: random.Random, name: str = "w") -> None:
        self.dsn = dsn
        self.ledger = ledger
        self.rng = rng
        self.name = name
        self.conn: psycopg.Connection[Any] | None = None
        self.reconnects = 0

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _connection(self, deadline: float) -> psycopg.Connection[Any]:
        while self.conn is None or self.conn.closed or self.conn.broken:
            try:
                self.conn = psycopg.connect(
                    self.dsn, autocommit=True, connect_timeout=5, application_name=f"chaos-{self.name}"
                )
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # the server restarts: poll for it
        return self.conn

    def run(self, kind: str, body: Any, deadline_s: float = 120) -> Txn | None:
        """Run ``body(conn, txn)`` in one transaction tagged in txlog; record the outcome.

        ``body`` appends the changes it makes to ``txn.changes`` and may raise
        `Rollback` to abort on purpose. On a lost connection the outcome is read
        back from txlog once the server answers again. Returns the committed txn or None.
        """
        deadline = time.monotonic() + deadline_s
        tag = self.ledger.next_tag()
        txn = Txn(tag, kind, [], 0)
        conn, txn.lsn_before = self._ready(deadline)
        try:
            with conn.transaction():
                conn.execute(
                    sql.SQL("INSERT INTO {} (txn, kind) VALUES (%s, %s)").format(
                        sql.Identifier(SCHEMA, TXLOG)
                    ),
                    (tag, kind),
                )
                txn.changes.append(Change(f"{SCHEMA}.{TXLOG}", tag, "c", 1))
                body(conn, txn)
            txn.committed = True
            txn.lsn_after = _insert_lsn(conn)
        except Rollback:
            txn.committed = False
        except psycopg.OperationalError:
            # the COMMIT may or may not have happened: ask txlog once the server is back
            txn.committed, txn.lsn_after = self._resolve(tag, deadline)
            with self.ledger.lock:
                self.ledger.in_doubt_resolved += 1
        self.ledger.record(txn)
        return txn if txn.committed else None

    def _ready(self, deadline: float) -> tuple[psycopg.Connection[Any], int]:
        """A connection that answers (an idle one may have died with a server restart) and the WAL
        insert position before the transaction begins."""
        while True:
            conn = self._connection(deadline)
            try:
                return conn, _insert_lsn(conn)
            except psycopg.OperationalError:
                self.close()
                self.reconnects += 1
                if time.monotonic() > deadline:
                    raise

    def _resolve(self, tag: int, deadline: float) -> tuple[bool, int]:
        """Did transaction ``tag`` commit? Asked again until the server answers."""
        while True:
            self.close()
            self.reconnects += 1
            conn = self._connection(deadline)
            try:
                row = conn.execute(
                    sql.SQL("SELECT 1 FROM {} WHERE txn = %s").format(sql.Identifier(SCHEMA, TXLOG)), (tag,)
                ).fetchone()
                return row is not None, _insert_lsn(conn)
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise


class Rollback(Exception):
    """Raised inside a transaction body to roll it back on purpose."""


@dataclass
class Rows:
    """The live rows of the small tables: id -> version (the writer's model of the database)."""

    versions: dict[str, dict[int, int]] = field(default_factory=lambda: {t: {} for t in TABLES})
    next_id: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 1))


class Workload:
    """Small random transactions across the tables, at a steady rate, from one writer thread.

    Large transactions come from `large_insert` on a second connection, into a
    table of their own, so the two writers never touch the same rows.
    """

    def __init__(self, dsn: str, seed: int, rate: float = 100.0, ledger: Ledger | None = None) -> None:
        self.dsn = dsn
        self.rng = random.Random(seed)
        self.rate = rate
        self.ledger = ledger or Ledger()
        self.rows = Rows()
        self.writer = Writer(dsn, self.ledger, random.Random(seed + 1), "small")
        self.bulk_writer = Writer(dsn, self.ledger, random.Random(seed + 2), "bulk")
        self.next_bulk_id = 1
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.transactions = 0

    # -- the background writer ------------------------------------------------------------

    def start(self) -> None:
        self.stop.clear()
        self.thread = threading.Thread(target=self._loop, name="workload", daemon=True)
        self.thread.start()

    def halt(self) -> None:
        """Stop the background writer (after its current transaction) and re-raise its error."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(180)
            assert not self.thread.is_alive(), "the workload thread did not stop"
            self.thread = None
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(180)
        self.writer.close()
        self.bulk_writer.close()

    def _loop(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        try:
            while not self.stop.is_set():
                self.step()
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    self.stop.wait(delay)  # pacing, not synchronization
                else:
                    next_at = time.monotonic()
        except BaseException as exc:
            self.error = exc

    # -- transactions ---------------------------------------------------------------------

    def step(self) -> None:
        """One random small transaction: committed (mostly), rolled back, or with a savepoint undone."""
        roll = self.rng.random()
        if roll < 0.06:
            self._transaction("rollback", rollback=True)
        elif roll < 0.12:
            self._transaction("savepoint", savepoint=True)
        else:
            self._transaction("small")
        self.transactions += 1

    def _transaction(self, kind: str, rollback: bool = False, savepoint: bool = False) -> None:
        rng = self.rng
        # plan on a copy of the row model: it becomes the model only if the transaction commits
        planned = Rows({t: dict(v) for t, v in self.rows.versions.items()}, dict(self.rows.next_id))
        operations = [self._pick(planned) for _ in range(rng.randint(1, 5))]
        message = rng.random() < 0.1
        undone = [self._pick(Rows({t: dict(v) for t, v in planned.versions.items()}, planned.next_id))
                  for _ in range(rng.randint(1, 2))] if savepoint else []  # fmt: skip

        def body(conn: psycopg.Connection[Any], txn: Txn) -> None:
            for op in operations:
                self._execute(conn, txn, op)
            if savepoint:
                try:
                    with conn.transaction():
                        for op in undone:
                            self._execute(conn, txn, op, record=False)
                        raise Rollback
                except Rollback:
                    pass
            if message:
                conn.execute("SELECT pg_logical_emit_message(true, %s, %s)", (MESSAGE_PREFIX, f"{txn.tag}"))
                txn.changes.append(Change("messages", txn.tag, "m", 0))
            if rollback:
                raise Rollback

        txn = self.writer.run(kind, body)
        if txn is not None:
            self.rows = planned
        else:
            self.rows.next_id = planned.next_id  # ids of rolled-back inserts are never used again

    def _pick(self, rows: Rows) -> tuple[str, str, int, int, str | None]:
        """(op, table, id, new version, body) of one change, applied to ``rows``."""
        rng = self.rng
        table = rng.choice(list(TABLES))
        live = rows.versions[table]
        roll = rng.random()
        if not live or roll < 0.45:
            key = rows.next_id[table]
            rows.next_id[table] = key + 1
            live[key] = 1
            text = big_body(rng) if rng.random() < 0.1 else f"{table}:{key}:1"
            return ("c", table, key, 1, text)
        key = rng.choice(list(live)) if len(live) < 64 else rng.choice(list(live)[-64:])
        if roll < 0.85:
            live[key] += 1
            version = live[key]
            # about half the updates leave body alone (a TOASTed body then stays unchanged)
            body = f"{table}:{key}:{version}" if rng.random() < 0.5 else None
            return ("u", table, key, version, body)
        version = live.pop(key)
        return ("d", table, key, version, None)

    def _execute(
        self,
        conn: psycopg.Connection[Any],
        txn: Txn,
        op: tuple[str, str, int, int, str | None],
        record: bool = True,
    ) -> None:
        kind, table, key, version, body = op
        ident = sql.Identifier(SCHEMA, table)
        if kind == "c":
            conn.execute(
                sql.SQL("INSERT INTO {} (id, version, txn, body) VALUES (%s, %s, %s, %s)").format(ident),
                (key, version, txn.tag, body),
            )
        elif kind == "u":
            if body is None:
                query = sql.SQL("UPDATE {} SET version = %s, txn = %s WHERE id = %s")
                params: tuple[Any, ...] = (version, txn.tag, key)
            else:
                query = sql.SQL("UPDATE {} SET version = %s, txn = %s, body = %s WHERE id = %s")
                params = (version, txn.tag, body, key)
            conn.execute(query.format(ident), params)
        else:
            conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(ident), (key,))
        if record:
            txn.changes.append(Change(f"{SCHEMA}.{table}", key, kind, version))

    def large_insert(self, rows: int) -> Txn | None:
        """One transaction inserting ``rows`` rows into chaos.bulk (its own connection)."""
        first = self.next_bulk_id

        def body(conn: psycopg.Connection[Any], txn: Txn) -> None:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (id, version, txn, body) "
                    "SELECT g, 1, %s, 'bulk:' || g FROM generate_series(%s::bigint, %s::bigint) g"
                ).format(sql.Identifier(SCHEMA, BULK)),
                (txn.tag, first, first + rows - 1),
            )
            txn.changes.extend(Change(f"{SCHEMA}.{BULK}", k, "c", 1) for k in range(first, first + rows))

        txn = self.bulk_writer.run("large", body, deadline_s=600)
        if txn is not None:
            self.next_bulk_id = first + rows
        return txn


def random_seed() -> int:
    return secrets.randbelow(2**31)
