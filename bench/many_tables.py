"""Many small tables: seconds from `cdc start --snapshot initial` to streaming.

    python -m bench.many_tables [--tables 300] [--rows 20]

A new user's database of many small tables (three columns, ``--rows`` rows
each, one schema), captured with a ``--tables schema.*`` pattern: the time
from starting the connector process to its status saying it streams, which
covers the publication, the slot, planning, the topics, the schemas and the
snapshot of every table. `make bench` takes `seconds_to_streaming` for 300
tables (and for 10,000 without ``--quick``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import STATUS_INTERVAL, Servers, servers
from tests.support import ConnectorProcess, WaitTimeout

_schemas = iter(range(1, 1_000_000))


def load_tables(s: Servers, tables: int, rows: int) -> str:
    """``tables`` tables of ``rows`` rows in a new schema (made in one transaction); its name."""
    schema = f"many{next(_schemas)}"
    with s.connect() as conn:
        # a commit every 500 tables: one transaction would run out of lock slots
        create = f"CREATE TABLE {schema}.t%s (id int PRIMARY KEY, name text, amount numeric(10,2))"
        insert = f"INSERT INTO {schema}.t%s SELECT g, ''n'' || g, g * 1.5 FROM generate_series(1, {rows}) g"
        conn.execute(
            f"""DO $$ BEGIN
                  CREATE SCHEMA {schema};
                  FOR i IN 1 .. {tables} LOOP
                    EXECUTE format('{create}', i);
                    EXECUTE format('{insert}', i);
                    IF i % 500 = 0 THEN COMMIT; END IF;
                  END LOOP;
                END $$"""
        )
        conn.execute("ANALYZE")
    return schema


def seconds_to_streaming(
    s: Servers, state_dir: Path, tables: int, rows: int = 20, timeout: float | None = None
) -> float:
    """From `cdc start --snapshot initial` (a process, as a user runs it) to ``state: running``;
    `WaitTimeout` after ``timeout`` s (by default 300 s and 0.1 s a table)."""
    schema = load_tables(s, tables, rows)
    process = ConnectorProcess(
        s.pg.dsn(), s.broker.bootstrap_servers, schema, schema, state_dir, tables=[f"{schema}.*"],
        status_interval=STATUS_INTERVAL, extra=["--snapshot", "initial"],
        log_dir=state_dir / f"{schema}-logs",
    )  # fmt: skip
    started = time.monotonic()
    process.start(wait=False)
    try:
        process.wait_status(
            lambda st: st.get("state") == "running",
            300 + tables / 10 if timeout is None else timeout,
            "streaming",
            interval=0.02,
        )
        return time.monotonic() - started
    except WaitTimeout as exc:  # what it was doing, before its log goes with the state dir
        warning = process.last_warning()
        said = f"; its last warning: {warning}" if warning else ""
        raise WaitTimeout(f"{exc}; its log ended: {process.last_lines(3)}{said}") from exc
    finally:
        try:
            process.stop(60)
        finally:
            process.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tables", type=int, default=300)
    parser.add_argument("--rows", type=int, default=20)
    args = parser.parse_args()
    with servers() as s, tempfile.TemporaryDirectory(prefix="cdc-bench-") as tmp:
        seconds = seconds_to_streaming(s, Path(tmp), args.tables, args.rows)
    print(f"{args.tables:,} tables of {args.rows} rows: streaming {seconds:.2f} s after cdc start")


if __name__ == "__main__":
    main()
