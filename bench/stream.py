"""Streaming figures: the pg_recvlogical limit, the connector end to end, latency, memory, start-up.

Run alone with ``python -m bench.stream``; `bench.__main__` runs it as part of `make bench`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.common import (
    STATUS_INTERVAL,
    Servers,
    current_lsn,
    drop_slot,
    load_one_transaction,
    load_small_transactions,
    new_slot,
    reset_table,
    servers,
)
from cdc.lsn import parse_lsn
from tests.support import ConnectorProcess, RssSampler

_ids = itertools.count(1)


def _next_range(rows: int) -> int:
    """A fresh id range per load, so loads never collide."""
    return next(_ids) * 10_000_000 + 1


@contextlib.contextmanager
def _fresh_slot(s: Servers, kind: str) -> Iterator[str]:
    """An empty workload table and a new slot + publication, dropped afterwards."""
    name = f"{kind}_{next(_ids)}"
    with s.connect() as conn:
        reset_table(conn)
        new_slot(conn, name)
    try:
        yield name
    finally:
        with s.connect() as conn:
            drop_slot(conn, name)


class _Measured:
    """A `cdc start` process with its resident set sampled whenever the benchmark looks at its status."""

    def __init__(self, process: ConnectorProcess) -> None:
        self.process = process
        self.rss = RssSampler(process.pid)

    def wait(
        self, condition: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 300
    ) -> dict[str, Any]:
        def sampled(status: dict[str, Any]) -> bool:
            self.rss.sample()
            return predicate(status)

        return self.process.wait_status(sampled, timeout, condition, interval=0.02)


@contextlib.contextmanager
def _connector(
    s: Servers,
    state_dir: Path,
    name: str,
    producer: str,
    fmt: str,
    extra: tuple[str, ...] = (),
    bootstrap: str = "",
) -> Iterator[_Measured]:
    """The connector on the slot and publication ``name``; stopped (`cdc stop`) at the end of the block.

    ``extra`` flags go to `cdc start`; ``bootstrap`` replaces the benchmark's broker (Apache
    Kafka for the exactly-once figures). BENCH_PROFILE=DIR runs it under cProfile, its stats in
    DIR/<name>.prof.
    """
    profile = os.environ.get("BENCH_PROFILE")
    python = [sys.executable]
    if profile:
        python += ["-m", "cProfile", "-o", f"{profile}/{name}.prof"]
    process = ConnectorProcess(
        s.pg.dsn(), bootstrap or s.broker.bootstrap_servers, name, name, state_dir, format=fmt,
        producer=producer, status_interval=STATUS_INTERVAL,
        extra=["--slot", name, "--publication", name, *extra],
        log_dir=state_dir / f"{name}-logs", python=python,
    )  # fmt: skip
    process.start(wait=False)
    try:
        yield _Measured(process)
    finally:
        try:
            process.stop(60)
        finally:
            process.cleanup()


#: the formats beside the native one: (label, --format, extra flags; REGISTRY stands for the URL)
REGISTRY = "{registry}"
FORMATS: dict[str, tuple[str, tuple[str, ...]]] = {
    "registry": ("avro", ("--schema-registry-url", REGISTRY)),
    "debezium_json": ("json", ("--compat", "debezium")),
    "debezium_avro": ("avro", ("--compat", "debezium", "--schema-registry-url", REGISTRY)),
}


def format_flags(name: str, registry_url: str) -> tuple[str, tuple[str, ...]]:
    """(--format, extra flags) of one of `FORMATS`, with the registry's URL filled in."""
    fmt, extra = FORMATS[name]
    return fmt, tuple(registry_url if flag == REGISTRY else flag for flag in extra)


def _confirmed(end: int) -> Callable[[dict[str, Any]], bool]:
    return lambda st: parse_lsn(st.get("confirmed_lsn") or "0/0") >= end


def limit_rate(s: Servers, rows: int, small: bool) -> tuple[float, float]:
    """pg_recvlogical (pgoutput, same publication) reading the workload, rows/s, timed two ways.

    - whole run: from its start to its exit, the way the benchmark issue measured the
      limit (200,000-280,000 rows/s); it includes connecting and the walsender's pass
      over the WAL before a transaction's first byte (changes are queued until the commit);
    - streaming: from the first byte it writes to its end, which is how the connector is
      timed (first event read to last ack), so the stricter comparison.
    """
    with _fresh_slot(s, "limit") as name:
        with s.connect() as conn:
            load = load_small_transactions if small else load_one_transaction
            end = load(conn, _next_range(rows), rows)
        env = dict(os.environ, PGPASSWORD=s.pg.password)
        started = time.perf_counter()
        proc = subprocess.Popen(
            [
                s.pg.install.tool("pg_recvlogical"), "-h", "127.0.0.1", "-p", str(s.pg.port),
                "-U", "postgres", "-d", "postgres", "--slot", name, "--start", "--no-loop",
                "-o", "proto_version=1", "-o", f"publication_names={name}", "-E", end, "-f", "-",
            ],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        first = 0.0
        while os.read(fd, 1 << 20):  # the bytes go nowhere, as with -f /dev/null
            if not first:
                first = time.perf_counter()
        last = time.perf_counter()
        proc.stdout.close()
        if proc.wait() != 0:
            raise RuntimeError(f"pg_recvlogical exited with {proc.returncode}")
        return rows / (last - started), rows / (last - first)


#: Shaping runs next to the plain one (``--transform``, ``--mask-columns``): what each costs per event.
SHAPING: dict[str, tuple[str, ...]] = {
    "noop_transform": ("--transform", "bench.transforms:nothing"),
    "masking_transform": ("--transform", "bench.transforms:mask_name"),
    "mask_columns": ("--mask-columns", "public.bench_rows:name", "--mask-salt-file", "{salt}"),
}


def shaping_args(kind: str, state_dir: Path) -> tuple[str, ...]:
    """The flags of a `SHAPING` run (the salt file it needs is made in ``state_dir``)."""
    salt = state_dir / "bench-salt"
    if not salt.exists():
        salt.write_text("the benchmark's mask salt, 32 bytes\n")
    return tuple(arg.format(salt=salt) for arg in SHAPING[kind])


def connector_rate(
    s: Servers,
    state_dir: Path,
    rows: int,
    small: bool,
    producer: str,
    fmt: str,
    extra: tuple[str, ...] = (),
    bootstrap: str = "",
    until_confirmed: bool = False,
) -> dict[str, Any]:
    """The connector on the same workload: events acknowledged per second, first event to last ack
    (``until_confirmed``: to the moment everything is confirmed, which exactly-once needs: there
    the last commit, not the last acknowledgement, makes the events visible)."""
    with _fresh_slot(s, "run") as name:
        with s.connect() as conn:
            load = load_small_transactions if small else load_one_transaction
            end = parse_lsn(load(conn, _next_range(rows), rows))
        with _connector(s, state_dir, name, producer, fmt, extra, bootstrap) as proc:
            status = proc.wait("the backlog to be confirmed", _confirmed(end))
            confirmed_at = time.time()
            proc.rss.sample()
    finished = confirmed_at if until_confirmed else status["last_ack_at"]
    elapsed = finished - status["first_event_at"]
    return {
        "events_per_s": status["events_total"] / elapsed if elapsed > 0 else 0.0,
        "events": status["events_total"],
        "peak_rss_mb": proc.rss.hwm_kb / 1024,
    }


def latency(
    s: Servers,
    state_dir: Path,
    producer: str,
    fmt: str,
    rate: int = 1000,
    seconds: float = 8,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Commit-to-ack p50/p99 with the connector following a steady load of ``rate`` txn/s."""
    with _fresh_slot(s, "lat") as name, _connector(s, state_dir, name, producer, fmt, extra) as proc:
        proc.wait("streaming", lambda st: st.get("state") == "running")
        first = _next_range(0)
        interval = 1.0 / rate
        with s.connect() as conn:
            conn.execute("INSERT INTO bench_rows VALUES (%s, 'warm', 1, now(), true, 1)", (first,))
            proc.wait("warm-up", lambda st: st.get("events_total", 0) >= 1)
            started = time.perf_counter()
            sent = 0
            while (elapsed := time.perf_counter() - started) < seconds:
                while sent < int(elapsed * rate):
                    sent += 1
                    conn.execute(
                        "INSERT INTO bench_rows VALUES (%s, 'n', 1.5, now(), true, 1)", (first + sent,)
                    )
                proc.rss.sample()
                time.sleep(max(0.0, interval - (time.perf_counter() - started - elapsed)))
            end = parse_lsn(current_lsn(conn))
        achieved = sent / (time.perf_counter() - started)
        status = proc.wait("the load to be confirmed", _confirmed(end))
    figures = status.get("latency_ms", {})
    return {
        "txn_per_s": achieved,
        "p50_ms": figures.get("p50"),
        "p99_ms": figures.get("p99"),
        "samples": figures.get("samples"),
    }


def big_transaction_rss(
    s: Servers, state_dir: Path, producer: str, fmt: str, rows: int = 1_000_000
) -> dict[str, Any]:
    """RSS of the connector while it streams one transaction of ``rows`` rows, and the most its
    producer held unacknowledged meanwhile (what --max-buffer-mb bounds: the RSS above idle)."""
    buffered = 0

    with _fresh_slot(s, "rss") as name, _connector(s, state_dir, name, producer, fmt) as proc:
        proc.wait("streaming", lambda st: st.get("state") == "running")
        proc.rss.sample()
        idle_rss = proc.rss.peak_kb
        with s.connect() as conn:
            end = parse_lsn(load_one_transaction(conn, _next_range(rows), rows))
            committed = time.time()
        reached = _confirmed(end)

        def confirmed(status: dict[str, Any]) -> bool:
            nonlocal buffered
            buffered = max(buffered, status.get("producer_queue", {}).get("bytes", 0))
            return reached(status)

        done = proc.wait("the transaction to be confirmed", confirmed, 600)
    return {
        "rows": rows,
        "commit_to_last_ack_s": done["last_ack_at"] - committed,
        "idle_rss_mb": idle_rss / 1024,
        "max_rss_mb": proc.rss.peak_kb / 1024,
        "peak_rss_mb": proc.rss.hwm_kb / 1024,
        "buffered_mb": buffered / 1024 / 1024,
        "events": done["events_total"],
    }


def start_to_first_event(s: Servers, state_dir: Path, producer: str, fmt: str) -> float:
    """Seconds from `cdc start` to the first event acknowledged by Kafka (a change is waiting)."""
    with _fresh_slot(s, "start") as name:
        with s.connect() as conn:
            load_one_transaction(conn, _next_range(1), 1)
        with _connector(s, state_dir, name, producer, fmt) as proc:
            status = proc.wait("the first event", lambda st: st.get("last_ack_at", 0) > 0)
    return float(status["last_ack_at"] - proc.process.started_at)


@contextlib.contextmanager
def schema_registry() -> Iterator[str | None]:
    """A Schema Registry (the tests' Apicurio peer) for the registry formats; None without Java."""
    try:
        from tests.peers.jvm import PeerError
        from tests.peers.registry import SchemaRegistry
    except ImportError:
        yield None
        return
    try:
        registry = SchemaRegistry.start(compatibility="NONE")
    except PeerError as exc:
        print(f"no Schema Registry ({exc}): the registry formats are not measured")
        yield None
        return
    with registry:
        yield registry.url


def main() -> None:
    """``python -m bench.stream``: the limit, then the connector per producer; ``BENCH_FORMATS=all``
    adds the registry wire format and --compat debezium (JSON, Avro) with confluent-kafka."""
    rows = int(os.environ.get("BENCH_ROWS", "200000"))
    with servers() as s, tempfile.TemporaryDirectory(prefix="cdc-bench-") as tmp:
        print(f"limit, one transaction (whole run, streaming): {limit_rate(s, rows, small=False)} rows/s")
        print(f"limit, small transactions (whole run, streaming): {limit_rate(s, rows, small=True)} rows/s")
        fmt = os.environ.get("BENCH_FORMAT", "avro")
        producers = os.environ.get("BENCH_PRODUCERS", "kafka-python,confluent").split(",")
        for producer in producers:
            result = connector_rate(s, Path(tmp), rows, False, producer, fmt)
            print(f"connector ({producer}), one transaction: {result}")
        # BENCH_SHAPING=noop_transform,masking_transform,mask_columns: the same with shaping
        for kind in filter(None, os.environ.get("BENCH_SHAPING", "").split(",")):
            for producer in producers:
                result = connector_rate(
                    s, Path(tmp), rows, False, producer, fmt, shaping_args(kind, Path(tmp))
                )
                print(f"connector ({producer}), one transaction, {kind}: {result}")
        if os.environ.get("BENCH_FORMATS") != "all":
            return
        with schema_registry() as url:
            for name in FORMATS:
                if url is None and REGISTRY in FORMATS[name][1]:
                    continue
                fmt, extra = format_flags(name, url or "")
                result = connector_rate(s, Path(tmp), rows, False, "confluent", fmt, extra)
                print(f"connector (confluent, {name}), one transaction: {result}")


if __name__ == "__main__":
    main()
