"""Initial snapshot throughput: a 1M-row table into Kafka, rows/s.

    python -m bench.snapshot [--rows N] [--workers N] [--producer auto|confluent|kafka-python]
                             [--format avro|json] [--chunk-rows N] [--profile]
                             [--producer-config KEY=VALUE ...]

Starts its own Postgres and Tansu (`bench.common.servers`, on `cdc.devservers`),
loads the benchmark's six-column table (`bench.common.TABLE_DDL`), runs the
connector with ``--snapshot initial-only`` and reports the rate at which rows
reached Kafka (every row acknowledged before the snapshot completes), next to
the physical limit on the same machine in the same run: one COPY of the table
to nowhere. ``--profile`` also profiles one worker's path (COPY -> parse ->
serialize -> produce) in this process and prints its top. `make bench` takes
`snapshot_rows_per_second`.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import logging
import pstats
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench.common import load_one_transaction, servers
from cdc import pg
from cdc.config import Settings
from cdc.connector import Connector

TABLE = "public.bench_rows"


@dataclass(slots=True)
class Result:
    rows: int
    seconds: float  # the snapshot phase: planning done -> last row acknowledged
    rows_per_second: float
    copy_rows_per_second: float  # the limit: COPY of the same table, read and dropped
    wall_seconds: float  # connector start -> exit, with slot creation, topics and worker start

    @property
    def ratio(self) -> float:
        return self.rows_per_second / self.copy_rows_per_second if self.copy_rows_per_second else 0.0


def copy_limit(dsn: str) -> float:
    """Rows/s of ``COPY bench_rows TO STDOUT`` read with libpq and dropped: what Postgres can hand out."""
    with pg.connect(dsn, "bench-copy") as conn, conn.cursor() as cur:
        started = time.perf_counter()
        rows = 0
        with cur.copy("COPY bench_rows TO STDOUT") as copy:
            for _ in copy:
                rows += 1
        return rows / (time.perf_counter() - started)


def run_snapshot(dsn: str, bootstrap: str, state_dir: Path, **overrides: Any) -> tuple[Connector, float]:
    name = "bench" + secrets.token_hex(3)
    values: dict[str, Any] = {
        "dsn": dsn,
        "bootstrap_servers": bootstrap,
        "name": name,
        "topic_prefix": name,
        "tables": [TABLE],
        "state_dir": state_dir,
        "snapshot": "initial-only",
    }
    values.update(overrides)
    connector = Connector(Settings(**values))
    started = time.perf_counter()
    connector.run()
    return connector, time.perf_counter() - started


def snapshot_rate(
    rows: int = 1_000_000,
    workers: int = 2,
    producer: str = "auto",
    format: str = "avro",
    chunk_rows: int = 50_000,
    profile: bool = False,
    producer_configs: dict[str, str] | None = None,
) -> Result:
    """Load ``rows`` rows, snapshot them into Kafka; the rate (and the COPY limit) of one run."""
    with tempfile.TemporaryDirectory(prefix="cdc-bench-") as tmp, servers() as s:
        dsn, bootstrap = s.pg.dsn(), s.broker.bootstrap_servers
        with s.connect() as conn:
            load_one_transaction(conn, 1, rows)
            conn.execute("VACUUM ANALYZE bench_rows")
        limit = copy_limit(dsn)
        connector, wall = run_snapshot(
            dsn, bootstrap, Path(tmp) / "state",
            snapshot_workers=workers, producer=producer, format=format, snapshot_chunk_rows=chunk_rows,
            producer_configs=producer_configs or {},
        )  # fmt: skip
        stats = connector.status.snapshot
        if profile:
            print(profile_worker(dsn, bootstrap, Path(tmp) / "state", producer, format))
        gc.collect()  # librdkafka producers sit in reference cycles: free them before the broker stops
    return Result(int(stats["rows"]), float(stats["seconds"]), float(stats["rows_per_second"]), limit, wall)


def snapshot_rows_per_second(rows: int = 1_000_000) -> float:
    """The figure of `make bench`: rows/s of an initial snapshot into Kafka, default settings."""
    return snapshot_rate(rows).rows_per_second


def profile_worker(dsn: str, bootstrap: str, state_dir: Path, producer: str, format: str) -> str:
    """cProfile of one worker's path over 200,000 rows, in this process: the top by own time."""
    import multiprocessing

    from cdc.events import SourceInfo
    from cdc.pgtypes import TypeCatalog
    from cdc.snapshot import tables, workers

    name = "prof" + secrets.token_hex(3)
    settings = Settings(
        dsn=dsn, bootstrap_servers=bootstrap, name=name, topic_prefix=name, state_dir=state_dir,
        producer=producer, format=format,  # type: ignore[arg-type]
    )  # fmt: skip
    with pg.connect(dsn) as conn:
        spec = tables.describe_table(conn, TABLE, "none")
        table = tables.table_from_spec(spec, TypeCatalog.from_connection(conn))
        bounds = [[str(b)] for b in range(50_000, 200_001, 50_000)]
        exporter = pg.connect(dsn)
        exporter.autocommit = False
        exporter.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        row = exporter.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        source, level = SourceInfo(name, "bench"), logging.WARNING
        job = workers.WorkerJob(settings, source, str(row[0]), {"o": spec}, {"o": bounds}, 1, 1, level)
        ours, theirs = multiprocessing.Pipe()
        with workers._Worker(job, 0, theirs) as worker:
            worker.writer.ensure_topic(f"{name}.{table.schema}.{table.name}")
            profiler = cProfile.Profile()
            started = time.perf_counter()
            profiler.enable()
            for index in range(4):
                worker._chunk("o", index)
            worker.writer.flush(60)
            profiler.disable()
            elapsed = time.perf_counter() - started
        exporter.close()
        ours.close()
    out = io.StringIO()
    out.write(f"one worker, profiled (cProfile slows it down): {200_000 / elapsed:,.0f} rows/s\n")
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--producer", default="auto", choices=["auto", "confluent", "kafka-python"])
    parser.add_argument("--format", default="avro", choices=["avro", "json"])
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--producer-config", action="append", default=[], metavar="KEY=VALUE",
        help="a producer setting, as cdc start's --producer-config (repeatable)",
    )  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    configs = dict(item.split("=", 1) for item in args.producer_config)
    result = snapshot_rate(
        args.rows, args.workers, args.producer, args.format, args.chunk_rows, args.profile, configs
    )
    print(
        f"initial snapshot of {result.rows:,} rows ({args.workers} workers, {args.producer}, {args.format}): "
        f"{result.rows_per_second:,.0f} rows/s into kafka ({result.seconds:.1f} s; "
        f"{result.wall_seconds:.1f} s from start to exit)"
    )
    print(f"COPY limit on this machine: {result.copy_rows_per_second:,.0f} rows/s; ratio {result.ratio:.2f}")


if __name__ == "__main__":
    main()
